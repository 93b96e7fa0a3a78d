//! The one owner of the gateway's Dds calls: the client and how to retry, so that preflight,
//! upgrade and status ask for an answer by deadline instead of each threading a client, a retry
//! policy and an effect into [`retry`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use tokio::time::Instant;

use super::client::AlibabaClient;
use super::dds::action;
use super::inventory::{self, InstanceFilter, InstanceSummary};
use super::response::{AvailableEngineVersions, CallError, InstanceAttribute};
use super::retry::{self, AttemptError, Effect, RetryPolicy};

/// The Dds client with its retry policy. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Alibaba {
    client: Arc<AlibabaClient>,
    retry: RetryPolicy,
}

impl Alibaba {
    pub fn new(client: Arc<AlibabaClient>, retry: RetryPolicy) -> Self {
        Self { client, retry }
    }

    /// The client, for a change whose attempts sign and send in steps.
    pub fn client(&self) -> &AlibabaClient {
        &self.client
    }

    /// `DescribeDBInstanceAttribute`, retried as a read within `deadline`; `Ok(None)` when the
    /// answer lists no such instance.
    pub async fn describe_db_instance_attribute(
        &self,
        region_id: &str,
        db_instance_id: &str,
        deadline: Instant,
    ) -> Result<Option<InstanceAttribute>, CallError> {
        self.read(deadline, action::DESCRIBE_DB_INSTANCE_ATTRIBUTE, || {
            self.client
                .describe_db_instance_attribute(region_id, db_instance_id)
        })
        .await
    }

    /// `DescribeAvailableEngineVersion`, retried as a read within `deadline`.
    pub async fn describe_available_engine_version(
        &self,
        region_id: &str,
        db_instance_id: &str,
        deadline: Instant,
    ) -> Result<AvailableEngineVersions, CallError> {
        self.read(deadline, action::DESCRIBE_AVAILABLE_ENGINE_VERSION, || {
            self.client
                .describe_available_engine_version(region_id, db_instance_id)
        })
        .await
    }

    /// Every instance `filter` selects: each of its regions and instance types (both unless it
    /// names some), every page, each instance once, sorted by region and id. Each page is a
    /// read retried within `deadline`.
    pub async fn list_instances(
        &self,
        filter: &InstanceFilter,
        deadline: Instant,
    ) -> Result<Vec<InstanceSummary>, CallError> {
        let mut found: BTreeMap<(String, String), InstanceSummary> = BTreeMap::new();
        for region_id in &filter.region_ids {
            for instance_type in filter.types() {
                let (mut pages, mut seen) = (0, 0);
                loop {
                    let page = self
                        .read(deadline, action::DESCRIBE_DB_INSTANCES, || {
                            self.client.describe_db_instances(
                                filter,
                                region_id,
                                instance_type,
                                pages + 1,
                            )
                        })
                        .await?;
                    pages += 1;
                    let last = page.instances.len();
                    seen += last;
                    for instance in page.instances {
                        if filter.matches(&instance) {
                            found.insert(
                                (instance.region_id.clone(), instance.db_instance_id.clone()),
                                instance,
                            );
                        }
                    }
                    if !inventory::more_pages(pages, seen, last, page.total_count) {
                        break;
                    }
                }
            }
        }
        Ok(found.into_values().collect())
    }

    /// A read: retried on any failure worth retrying.
    async fn read<T, F, Fut>(
        &self,
        deadline: Instant,
        action: &'static str,
        attempt: F,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        super::quota::with_deadline(
            deadline,
            retry::retry(&self.retry, Effect::Read, deadline, action, attempt),
        )
        .await
    }

    /// A change (one `attempt` signs and sends it): retried only when Alibaba surely did not act
    /// on the failed attempt.
    pub async fn change<T, E, F, Fut>(
        &self,
        deadline: Instant,
        action: &'static str,
        attempt: F,
    ) -> Result<T, E>
    where
        E: AttemptError,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        super::quota::with_deadline(
            deadline,
            retry::retry(&self.retry, Effect::Change, deadline, action, attempt),
        )
        .await
    }
}
