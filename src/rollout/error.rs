//! Why a rollout call is refused, and each refusal as a status with its `ErrorInfo` reason.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::state::store::StoreError;
use crate::upgrade::details::{DOMAIN, status};

/// A refused rollout call.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RolloutError {
    /// Bad input: every violation, as `(field, description)`.
    #[error("invalid rollout request: {}", describe(.0))]
    Invalid(Vec<(String, String)>),
    #[error("no rollout {0}")]
    NotFound(String),
    /// The fleet no longer matches the plan the caller previewed.
    #[error("the fleet changed since plan {hash}: {difference}")]
    PlanChanged { hash: String, difference: String },
    #[error("instance {instance} is in the unfinished rollout {rollout_id}")]
    InstanceInRollout {
        instance: String,
        rollout_id: String,
    },
    #[error("nothing to upgrade: no instance the selector names is eligible")]
    NothingEligible,
    /// The action does not apply to the rollout as it is now.
    #[error("{0}")]
    NotNow(String),
    #[error("the state store is unavailable: {0}")]
    Store(String),
    /// Listing or looking at the fleet failed (Alibaba's answer, as a status).
    #[error("{}", .0.message())]
    Upstream(Status),
}

fn describe(violations: &[(String, String)]) -> String {
    violations
        .iter()
        .map(|(field, what)| format!("{field} {what}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl RolloutError {
    pub(crate) fn invalid(field: &str, what: impl Into<String>) -> Self {
        Self::Invalid(vec![(field.to_string(), what.into())])
    }
}

impl From<StoreError> for RolloutError {
    fn from(err: StoreError) -> Self {
        Self::Store(err.to_string())
    }
}

impl From<RolloutError> for Status {
    fn from(err: RolloutError) -> Self {
        let message = err.to_string();
        match err {
            RolloutError::Invalid(violations) => {
                let mut details = ErrorDetails::new();
                for (field, description) in &violations {
                    details.add_bad_request_violation(field.clone(), description.clone());
                }
                details.set_error_info(
                    "INVALID_ROLLOUT",
                    DOMAIN,
                    std::collections::HashMap::<String, String>::new(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            RolloutError::NotFound(id) => status(
                Code::NotFound,
                &message,
                "ROLLOUT_NOT_FOUND",
                &[("rolloutId", id)],
                None,
            ),
            RolloutError::PlanChanged { hash, difference } => status(
                Code::FailedPrecondition,
                &message,
                "PLAN_CHANGED",
                &[("planHash", hash), ("difference", difference)],
                None,
            ),
            RolloutError::InstanceInRollout {
                instance,
                rollout_id,
            } => status(
                Code::FailedPrecondition,
                &message,
                "INSTANCE_IN_ROLLOUT",
                &[("dbInstanceId", instance), ("rolloutId", rollout_id)],
                None,
            ),
            RolloutError::NothingEligible => status(
                Code::FailedPrecondition,
                &message,
                "NOTHING_ELIGIBLE",
                &[],
                None,
            ),
            RolloutError::NotNow(_) => status(
                Code::FailedPrecondition,
                &message,
                "ROLLOUT_STATE",
                &[],
                None,
            ),
            RolloutError::Store(_) => status(
                Code::Unavailable,
                &message,
                "STATE_STORE_UNAVAILABLE",
                &[],
                Some(std::time::Duration::from_secs(1)),
            ),
            RolloutError::Upstream(status) => status,
        }
    }
}
