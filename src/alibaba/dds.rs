//! The Dds API the gateway speaks: product code, version and operations.

/// Alibaba's product code of ApsaraDB for MongoDB.
pub(crate) const PRODUCT: &str = "Dds";
/// The Dds API version.
pub(crate) const API_VERSION: &str = "2015-12-01";

/// The Dds operations the gateway calls.
pub mod action {
    pub const UPGRADE_DB_INSTANCE_ENGINE_VERSION: &str = "UpgradeDBInstanceEngineVersion";
    pub const DESCRIBE_DB_INSTANCE_ATTRIBUTE: &str = "DescribeDBInstanceAttribute";
    pub const DESCRIBE_AVAILABLE_ENGINE_VERSION: &str = "DescribeAvailableEngineVersion";
    pub const DESCRIBE_DB_INSTANCES: &str = "DescribeDBInstances";
}
