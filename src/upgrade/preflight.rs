//! Checks before an irreversible upgrade, through Alibaba's own view of the instance:
//! `DescribeDBInstanceAttribute` (it exists in the request's region, is `Running`, and runs a
//! version lower than the target) and `DescribeAvailableEngineVersion` (the target is offered).
//! A failure says what the instance's state and version are, so the caller knows what to wait
//! for or fix. Reads are retried on transient failures (they change nothing).

use tokio::time::Instant;

use crate::alibaba::{Alibaba, InstanceAttribute};
use crate::upgrade::error::Error;
use crate::upgrade::instance::{PreflightFailure, RUNNING, UPGRADING, version_key};

/// `DescribeDBInstanceAttribute`, retried as a read; an instance that is absent, or present in
/// another region than the one asked for, is [`PreflightFailure::NotFound`].
pub(crate) async fn describe(
    alibaba: &Alibaba,
    region_id: &str,
    db_instance_id: &str,
    deadline: Instant,
) -> Result<InstanceAttribute, Error> {
    let found = alibaba
        .describe_db_instance_attribute(region_id, db_instance_id, deadline)
        .await?;
    match found {
        Some(attribute) if attribute.region_id.is_empty() || attribute.region_id == region_id => {
            Ok(attribute)
        }
        other => Err(PreflightFailure::NotFound {
            db_instance_id: db_instance_id.to_string(),
            region_id: region_id.to_string(),
            request_id: other.map(|a| a.request_id).unwrap_or_default(),
        }
        .into()),
    }
}

/// The versions Alibaba offers the instance (`DescribeAvailableEngineVersion`), retried as a read.
pub(crate) async fn offered_versions(
    alibaba: &Alibaba,
    region_id: &str,
    db_instance_id: &str,
    deadline: Instant,
) -> Result<crate::alibaba::AvailableEngineVersions, Error> {
    Ok(alibaba
        .describe_available_engine_version(region_id, db_instance_id, deadline)
        .await?)
}

/// Checks that `attribute`'s instance can be upgraded to `target`: `Running`, on an earlier
/// version, and offered the target by `DescribeAvailableEngineVersion`.
pub(crate) async fn check(
    alibaba: &Alibaba,
    attribute: &InstanceAttribute,
    region_id: &str,
    target: &str,
    deadline: Instant,
) -> Result<(), Error> {
    if attribute.status != RUNNING {
        return Err(PreflightFailure::NotRunning {
            attribute: attribute.clone(),
        }
        .into());
    }
    if version_key(&attribute.engine_version) >= version_key(target) {
        return Err(PreflightFailure::NotLater {
            attribute: attribute.clone(),
            target: target.to_string(),
        }
        .into());
    }
    let offered = offered_versions(alibaba, region_id, &attribute.db_instance_id, deadline).await?;
    if !offered.versions.iter().any(|v| v == target) {
        return Err(PreflightFailure::NotOffered {
            attribute: attribute.clone(),
            target: target.to_string(),
            offered: offered.versions,
            offered_request_id: offered.request_id,
        }
        .into());
    }
    Ok(())
}

/// Whether an instance shows that an upgrade to `target` was applied: it is upgrading, or
/// already runs the target.
pub(crate) fn shows_upgrade(attribute: &InstanceAttribute, target: &str) -> bool {
    attribute.status == UPGRADING || attribute.engine_version == target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        assert!(version_key("4.10") > version_key("4.9"));
        assert!(version_key("10.0") > version_key("8.0"));
        assert!(version_key("4.4") < version_key("5.0"));
        assert_eq!(version_key("5"), (5, 0));
        // A patch level never hides the minor version: 4.4.1 is later than 4.2.
        assert_eq!(version_key("4.4.1"), (4, 4));
        assert!(version_key("4.4.1") > version_key("4.2"));
    }

    #[test]
    fn an_upgrade_shows_as_upgrading_or_on_the_target() {
        let attribute = |status: &str, version: &str| InstanceAttribute {
            db_instance_id: "dds-a".into(),
            status: status.into(),
            engine_version: version.into(),
            region_id: String::new(),
            request_id: String::new(),
        };
        assert!(shows_upgrade(&attribute(UPGRADING, "4.2"), "4.4"));
        assert!(shows_upgrade(&attribute(RUNNING, "4.4"), "4.4"));
        assert!(!shows_upgrade(&attribute(RUNNING, "4.2"), "4.4"));
        assert!(!shows_upgrade(&attribute("Rebooting", "4.2"), "4.4"));
    }
}
