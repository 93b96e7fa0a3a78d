//! Why the work of a call failed: bad input, the instance not ready, Alibaba's answer (or its
//! absence), the state store, the audit trail, the deadline. The API turns each into a gRPC
//! status ([`api::error`](crate::api::error)).

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::details::{
    DEFAULT_RETRY_DELAY, DOMAIN, UPGRADE_IN_PROGRESS_RETRY_DELAY, call_status,
    outcome_unknown_status, preflight_status, scheduled_outcome_unknown_status, settling_status,
    status,
};
use crate::alibaba::{CallError, InstanceAttribute};
use crate::audit::AuditError;
use crate::state::store::StoreError;
use crate::upgrade::instance::PreflightFailure;
use crate::upgrade::validation::ValidationError;

/// Why an upgrade, a validation or a read of the instance failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Call(#[from] CallError),
    /// The caller's deadline passed before the gateway had an answer.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The instance cannot be upgraded to the target now (preflight).
    #[error(transparent)]
    Preflight(#[from] PreflightFailure),
    /// The `request_id` was used before for a different request.
    #[error("request_id already used for a different request")]
    RequestIdReused,
    /// An upgrade call may or may not have been applied, and the instance did not show it.
    #[error("upgrade outcome unknown ({cause}); instance seen: {observed:?}")]
    OutcomeUnknown {
        cause: CallError,
        observed: Option<InstanceAttribute>,
    },
    /// An upgrade for the maintenance window may or may not have been scheduled, and the
    /// instance cannot show which: it stays `Running` on its version until the window either way.
    #[error("scheduled upgrade outcome unknown; instance seen: {observed:?}")]
    ScheduledOutcomeUnknown { observed: Option<InstanceAttribute> },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another upgrade of the instance is in flight (any `request_id`, or none).
    #[error("another upgrade of the instance is in flight")]
    UpgradeInProgress,
    /// An earlier attempt with this key sent the upgrade with an unknown outcome, within the
    /// settle window, and the instance does not show it (yet): nothing is sent.
    #[error(
        "an earlier attempt's outcome is unknown and the instance does not show it yet; instance seen: {observed:?}"
    )]
    Settling {
        observed: Option<InstanceAttribute>,
        retry_after: Duration,
    },
    /// A watch reached the caller's deadline (or the gateway's limit) before the upgrade ended.
    #[error("watch deadline exceeded")]
    WatchDeadlineExceeded,
    /// A watch reached the end of its connection's life (`server.max_connection_age`): the
    /// caller resumes it on a new connection.
    #[error("the watch's connection ages out")]
    ConnectionAged,
    /// The audit file cannot take an upgrade's `sending` event, so the upgrade is not sent.
    #[error(transparent)]
    AuditUnavailable(#[from] AuditError),
}

impl Error {
    /// The Alibaba error code, when there was an upstream answer.
    pub fn alibaba_code(&self) -> Option<&str> {
        match self {
            Self::Call(CallError::Upstream(e))
            | Self::OutcomeUnknown {
                cause: CallError::Upstream(e),
                ..
            } => Some(&e.code),
            _ => None,
        }
    }

    /// Alibaba's `RequestId`, when there was an upstream answer.
    pub fn alibaba_request_id(&self) -> Option<&str> {
        match self {
            Self::Call(CallError::Upstream(e))
            | Self::OutcomeUnknown {
                cause: CallError::Upstream(e),
                ..
            } => e.request_id.as_deref(),
            _ => None,
        }
    }
}

/// In a retry loop, only an Alibaba call's failure may be retried; a refusal to send never is.
impl crate::alibaba::retry::AttemptError for Error {
    fn call_error(&self) -> Option<&CallError> {
        match self {
            Self::Call(err) => Some(err),
            _ => None,
        }
    }
}

/// The work of a call failed: the status says whether anything reached Alibaba Cloud.
impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::Invalid(invalid) => {
                let mut details = ErrorDetails::new();
                for v in &invalid.violations {
                    details.add_bad_request_violation(v.field, v.description.clone());
                }
                let fields: Vec<&str> = invalid.violations.iter().map(|v| v.field).collect();
                details.set_error_info(
                    "INVALID_REQUEST",
                    DOMAIN,
                    [("fields".to_string(), fields.join(","))],
                );
                let message = invalid
                    .violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("invalid request: {message}"),
                    details,
                )
            }
            Error::DeadlineExceeded => status(
                Code::DeadlineExceeded,
                "the caller's deadline passed before Alibaba Cloud answered; the upgrade may or may not have started, retry with the same request_id",
                "DEADLINE_EXCEEDED",
                &[],
                None,
            ),
            Error::WatchDeadlineExceeded => status(
                Code::DeadlineExceeded,
                "the watch reached its deadline (the caller's, or watch.max_duration) before the instance ran the target version; watch again to follow it further",
                "DEADLINE_EXCEEDED",
                &[],
                None,
            ),
            Error::ConnectionAged => status(
                Code::Unavailable,
                "the watch's connection reached server.max_connection_age; watch again (on a new connection) to follow it further",
                "CONNECTION_AGED",
                &[],
                Some(Duration::ZERO),
            ),
            Error::Call(call) => call_status(call),
            Error::Preflight(failure) => preflight_status(&failure),
            Error::RequestIdReused => {
                let mut details = ErrorDetails::new();
                details.add_bad_request_violation(
                    "request_id",
                    "was already used for a different request; use a new UUID for a new request",
                );
                details.set_error_info(
                    "REQUEST_ID_REUSED",
                    DOMAIN,
                    [("fields".to_string(), "request_id".to_string())],
                );
                Status::with_error_details(
                    Code::InvalidArgument,
                    "request_id was already used for a different request (another instance, target, region or switch mode)",
                    details,
                )
            }
            Error::OutcomeUnknown { cause, observed } => {
                outcome_unknown_status(&cause, observed.as_ref())
            }
            Error::ScheduledOutcomeUnknown { observed } => {
                scheduled_outcome_unknown_status(observed.as_ref())
            }
            Error::Store(StoreError::Full(keys)) => status(
                Code::ResourceExhausted,
                "the gateway holds too many idempotency keys to take another; retry later",
                "IDEMPOTENCY_STORE_FULL",
                &[("keys", keys.to_string()), ("scope", "gateway".to_string())],
                Some(DEFAULT_RETRY_DELAY),
            ),
            Error::AuditUnavailable(_) => status(
                Code::Unavailable,
                "the gateway cannot write its audit trail, so it sends no upgrade; nothing was sent to Alibaba Cloud",
                "AUDIT_UNAVAILABLE",
                &[],
                Some(DEFAULT_RETRY_DELAY),
            ),
            Error::Store(StoreError::CallerFull(keys)) => status(
                Code::ResourceExhausted,
                "the caller holds its share of idempotency keys (idempotency.max_keys_per_caller); retry later",
                "IDEMPOTENCY_STORE_FULL",
                &[("keys", keys.to_string()), ("scope", "caller".to_string())],
                Some(DEFAULT_RETRY_DELAY),
            ),
            Error::Store(StoreError::Unavailable(_) | StoreError::Lapsed) => status(
                Code::Unavailable,
                "the gateway cannot reach its state store; nothing was sent to Alibaba Cloud",
                "STATE_STORE_UNAVAILABLE",
                &[],
                Some(DEFAULT_RETRY_DELAY),
            ),
            Error::UpgradeInProgress => status(
                Code::Aborted,
                "another upgrade of this instance is in flight; nothing was sent. Retry once it has ended",
                "UPGRADE_IN_PROGRESS",
                &[],
                Some(UPGRADE_IN_PROGRESS_RETRY_DELAY),
            ),
            Error::Settling {
                observed,
                retry_after,
            } => settling_status(observed.as_ref(), retry_after),
        }
    }
}
