//! Where a region's Dds API lives. The table is the only source of hosts (besides an explicitly
//! configured endpoint), so a request's region can never steer it to any other host.
//! Source: `reference/alibaba-api.md` §4 (the generated SDK's map, with the 2024 Hong Kong and
//! Singapore moves and the regional hosts of the endpoint doc page).

/// The central endpoint, serving the regions mapped to it below.
pub const CENTRAL_HOST: &str = "mongodb.aliyuncs.com";

/// Regions served by [`CENTRAL_HOST`].
const CENTRAL_REGIONS: &[&str] = &[
    "cn-qingdao",
    "cn-beijing",
    "cn-wulanchabu",
    "cn-hangzhou",
    "cn-shanghai",
    "cn-heyuan",
    "cn-hangzhou-finance",
    "cn-beijing-finance-1",
    "ap-northeast-2-pop",
    "cn-fujian",
    "cn-wuhan",
    "cn-zhangbei",
    "cn-edge-1",
];

/// Regions with a host of their own, `mongodb.<region>.aliyuncs.com`.
const REGIONAL_REGIONS: &[&str] = &[
    "cn-zhangjiakou",
    "cn-huhehaote",
    "cn-shenzhen",
    "cn-guangzhou",
    "cn-chengdu",
    "cn-hongkong",
    "cn-nanjing",
    "cn-fuzhou",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-south-1",
    "us-east-1",
    "us-west-1",
    "eu-west-1",
    "eu-central-1",
    "me-east-1",
    "cn-shanghai-finance-1",
    "cn-shenzhen-finance-1",
    "cn-north-2-gov-1",
];

/// The longest region id accepted.
pub const MAX_REGION_LEN: usize = 32;

/// The Dds API host of a region in the table, `None` for any region not in it.
pub fn host(region_id: &str) -> Option<String> {
    if CENTRAL_REGIONS.contains(&region_id) {
        Some(CENTRAL_HOST.to_string())
    } else if REGIONAL_REGIONS.contains(&region_id) {
        Some(format!("mongodb.{region_id}.aliyuncs.com"))
    } else {
        None
    }
}

/// Whether `region_id` has the shape of a region: lowercase letters, digits and hyphens,
/// starting with a letter, at most [`MAX_REGION_LEN`] characters.
pub fn is_well_formed(region_id: &str) -> bool {
    !region_id.is_empty()
        && region_id.len() <= MAX_REGION_LEN
        && region_id.starts_with(|c: char| c.is_ascii_lowercase())
        && !region_id.ends_with('-')
        && region_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks a region for use: well formed, and in the table unless an explicit endpoint is
/// configured. The error says what is wrong, for a `BadRequest` violation or a config error.
pub fn check_region(region_id: &str, explicit_endpoint: bool) -> Result<(), String> {
    if !is_well_formed(region_id) {
        return Err(format!(
            "must be lowercase letters, digits and hyphens like \"cn-hangzhou\", at most {MAX_REGION_LEN} characters"
        ));
    }
    if !explicit_endpoint && host(region_id).is_none() {
        return Err(format!(
            "unknown region \"{region_id}\": not in the gateway's endpoint table"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_central_and_regional_hosts() {
        assert_eq!(host("cn-hangzhou").as_deref(), Some("mongodb.aliyuncs.com"));
        assert_eq!(
            host("cn-hongkong").as_deref(),
            Some("mongodb.cn-hongkong.aliyuncs.com")
        );
        assert_eq!(
            host("ap-southeast-1").as_deref(),
            Some("mongodb.ap-southeast-1.aliyuncs.com")
        );
        assert_eq!(host("evil.example.com"), None);
        assert_eq!(host("cn-hangzhou.evil"), None);
    }

    #[test]
    fn every_table_region_is_well_formed_and_unique() {
        let all: Vec<&str> = CENTRAL_REGIONS
            .iter()
            .chain(REGIONAL_REGIONS)
            .copied()
            .collect();
        for region in &all {
            assert!(is_well_formed(region), "{region}");
        }
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len());
    }

    #[test]
    fn rejects_shapes_that_could_steer_a_host() {
        for bad in [
            "",
            "CN-hangzhou",
            "cn_hangzhou",
            "cn-hangzhou.",
            "a/b",
            "x@y",
            "-cn",
            "cn-",
            "1cn",
        ] {
            assert!(!is_well_formed(bad), "{bad:?}");
        }
        assert!(!is_well_formed(&"a".repeat(33)));
        assert!(check_region("xx-private-1", true).is_ok());
        assert!(check_region("xx-private-1", false).is_err());
    }
}
