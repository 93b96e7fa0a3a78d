//! The fleet as a rollout sees it: the instances a region lists (every page, replica sets and
//! sharded clusters), each with what a plan needs to judge it.

use tokio::time::Instant;

use crate::alibaba::CallError;

/// One listed instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Listed {
    pub db_instance_id: String,
    pub region_id: String,
    pub engine_version: String,
    /// `DBInstanceStatus`.
    pub status: String,
    /// `LockMode`; empty when the answer did not say.
    pub lock_mode: String,
    /// `replicate` or `sharding`.
    pub db_instance_type: String,
    pub resource_group_id: String,
    pub tags: Vec<(String, String)>,
}

/// What a listing may ask Alibaba to filter on (the selector filters again after it).
#[derive(Debug, Clone, Default)]
pub(crate) struct ListFilter {
    /// Only when the selector names exactly one version.
    pub engine_version: Option<String>,
    pub tags: Vec<(String, String)>,
    pub resource_group_id: Option<String>,
}

/// Lists a region's instances.
#[async_trait::async_trait]
pub(crate) trait Fleet: Send + Sync + std::fmt::Debug + 'static {
    async fn list(
        &self,
        region_id: &str,
        filter: &ListFilter,
        deadline: Instant,
    ) -> Result<Vec<Listed>, CallError>;
}
