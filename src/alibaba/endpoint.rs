//! Where a region's Dds API lives. The table is the only source of hosts (besides an explicitly
//! configured endpoint), so a request's region can never steer it to any other host.
//! Sources: the generated SDK's endpoint map, Alibaba's notice of the 2024 Hong Kong and Singapore
//! moves (<https://alibabacloud.com/help/en/mongodb/product-overview/notice-update-of-the-api-endpoints-of-the-china-hong-kong-and-singapore-regions>)
//! and the endpoint page (<https://alibabacloud.com/help/en/mongodb/developer-reference/api-dds-2015-12-01-endpoint>).

pub(crate) use crate::config::regions::{CENTRAL_REGIONS, REGIONAL_REGIONS, check_region};

/// The central endpoint, serving [`CENTRAL_REGIONS`].
pub(crate) const CENTRAL_HOST: &str = "mongodb.aliyuncs.com";

/// The Dds API host of a region in the table, `None` for any region not in it.
pub(crate) fn host(region_id: &str) -> Option<String> {
    if CENTRAL_REGIONS.contains(&region_id) {
        Some(CENTRAL_HOST.to_string())
    } else if REGIONAL_REGIONS.contains(&region_id) {
        Some(format!("mongodb.{region_id}.aliyuncs.com"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::regions::is_well_formed;

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
