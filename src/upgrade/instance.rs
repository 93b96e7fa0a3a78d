//! What an instance must be to be upgraded: its states, the order of engine versions, and why
//! it cannot be upgraded now.

use crate::alibaba::InstanceAttribute;

/// The state an instance must be in to be upgraded.
pub(crate) const RUNNING: &str = "Running";
/// The state of an instance whose engine upgrade is under way.
pub(crate) const UPGRADING: &str = "EngineVersionUpgrading";

/// Why an instance cannot be upgraded to the target now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(clippy::enum_variant_names)] // every refusal is a `Not…`
pub enum PreflightFailure {
    #[error("instance {db_instance_id} does not exist in region {region_id}")]
    NotFound {
        db_instance_id: String,
        region_id: String,
        /// The `RequestId` of the describe call that did not find it.
        request_id: String,
    },
    #[error("instance {} is {}, not Running", .attribute.db_instance_id, .attribute.status)]
    NotRunning { attribute: InstanceAttribute },
    #[error("instance {} runs {}, not earlier than {target}", .attribute.db_instance_id, .attribute.engine_version)]
    NotLater {
        attribute: InstanceAttribute,
        target: String,
    },
    #[error("Alibaba Cloud does not offer {target} to instance {}", .attribute.db_instance_id)]
    NotOffered {
        attribute: InstanceAttribute,
        target: String,
        offered: Vec<String>,
        offered_request_id: String,
    },
}

/// Orders `major.minor` versions numerically (`4.10` after `4.9`); a patch level after them is
/// ignored, and a missing or unparsable part counts 0.
pub(crate) fn version_key(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|part| part.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}
