//! The regions the gateway knows (the values of the endpoint table, whose hosts the Alibaba
//! client derives), and the check of a configured or requested region against them.
//! Source: the generated SDK's endpoint map, with the 2024 Hong Kong and Singapore moves and the
//! regional hosts of the endpoint doc page.

/// Regions served by the central host, `mongodb.aliyuncs.com`.
pub(crate) const CENTRAL_REGIONS: &[&str] = &[
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
pub(crate) const REGIONAL_REGIONS: &[&str] = &[
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
pub(crate) const MAX_REGION_LEN: usize = 32;

/// Whether `region_id` has the shape of a region: lowercase letters, digits and hyphens,
/// starting with a letter, at most [`MAX_REGION_LEN`] characters.
pub(crate) fn is_well_formed(region_id: &str) -> bool {
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
pub(crate) fn check_region(region_id: &str, explicit_endpoint: bool) -> Result<(), String> {
    if !is_well_formed(region_id) {
        return Err(format!(
            "must be lowercase letters, digits and hyphens like \"cn-hangzhou\", at most {MAX_REGION_LEN} characters"
        ));
    }
    if !explicit_endpoint && !is_known(region_id) {
        return Err(format!(
            "unknown region \"{region_id}\": not in the gateway's endpoint table"
        ));
    }
    Ok(())
}

/// Whether the endpoint table has a host for `region_id`.
pub(crate) fn is_known(region_id: &str) -> bool {
    CENTRAL_REGIONS.contains(&region_id) || REGIONAL_REGIONS.contains(&region_id)
}
