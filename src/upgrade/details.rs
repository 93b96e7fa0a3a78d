//! The messages and `google.rpc` details of the gateway's statuses: one writer per kind of
//! failure, the `ErrorInfo` every status carries (domain `dds-gateway`), and what the caller may do.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::alibaba::codes::{self, Classification};
use crate::alibaba::{CallError, InstanceAttribute, UpstreamError};
use crate::upgrade::instance::PreflightFailure;

/// `ErrorInfo.domain` of every error the gateway returns.
pub(crate) const DOMAIN: &str = "dds-gateway";

/// How long a caller should wait before retrying when Alibaba did not say.
pub(crate) const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long a caller should wait before retrying an upgrade refused because another is in
/// flight: the other one's answer takes seconds.
pub(crate) const UPGRADE_IN_PROGRESS_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Gives a status that tonic or the transport made (an oversized or undecodable message, an
/// unknown method) the `ErrorInfo` every error carries; a status that has one is returned as is.
pub(crate) fn with_error_info(original: Status) -> Status {
    if original.get_details_error_info().is_some() {
        return original;
    }
    let reason = match original.code() {
        Code::OutOfRange => "REQUEST_TOO_LARGE",
        // tonic's answer to a message it cannot decode (gRPC specifies INTERNAL for it).
        Code::Internal => "MALFORMED_REQUEST",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::ResourceExhausted => "REQUEST_TOO_LARGE",
        Code::Cancelled => "CANCELLED",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        _ => "TRANSPORT_ERROR",
    };
    status(original.code(), original.message(), reason, &[], None)
}

/// Preflight failures: FAILED_PRECONDITION (NOT_FOUND for a missing instance) with the state
/// and version the gateway saw, in the message, ErrorInfo metadata and a `PreconditionFailure`.
pub(crate) fn preflight_status(failure: &PreflightFailure) -> Status {
    let (attribute, target) = match failure {
        PreflightFailure::NotFound {
            db_instance_id,
            region_id,
            request_id,
        } => {
            let mut metadata = vec![
                ("dbInstanceId", db_instance_id.clone()),
                ("regionId", region_id.clone()),
            ];
            if !request_id.is_empty() {
                metadata.push(("alibabaRequestId", request_id.clone()));
            }
            return status(
                Code::NotFound,
                &format!("instance {db_instance_id} does not exist in region {region_id}"),
                "INSTANCE_NOT_FOUND",
                &metadata,
                None,
            );
        }
        PreflightFailure::NotRunning { attribute } => (attribute, None),
        PreflightFailure::NotLater { attribute, target }
        | PreflightFailure::NotOffered {
            attribute, target, ..
        } => (attribute, Some(target)),
    };
    let seen = format!(
        "instance {} is {} on engine version {}",
        attribute.db_instance_id, attribute.status, attribute.engine_version
    );
    let (reason, kind, message) = match (failure, target) {
        (PreflightFailure::NotOffered { offered, .. }, Some(target)) => (
            "ENGINE_VERSION_NOT_OFFERED",
            "ENGINE_VERSION",
            format!(
                "{seen}; Alibaba Cloud does not offer it {target} (offered: {})",
                if offered.is_empty() {
                    "none".to_string()
                } else {
                    offered.join(", ")
                }
            ),
        ),
        (_, Some(target)) => (
            "ENGINE_VERSION_NOT_LATER",
            "ENGINE_VERSION",
            format!("{seen}; the target {target} is not later"),
        ),
        (_, None) => (
            "INSTANCE_STATE_INCORRECT",
            "INSTANCE_STATE",
            format!("{seen}; an upgrade needs it Running"),
        ),
    };
    let mut metadata = vec![
        ("dbInstanceId", attribute.db_instance_id.clone()),
        ("instanceStatus", attribute.status.clone()),
        ("engineVersion", attribute.engine_version.clone()),
        ("alibabaRequestId", attribute.request_id.clone()),
    ];
    if let Some(target) = target {
        metadata.push(("targetEngineVersion", target.clone()));
    }
    if let PreflightFailure::NotOffered { offered, .. } = failure {
        metadata.push(("availableEngineVersions", offered.join(",")));
    }
    let mut details = ErrorDetails::with_precondition_failure_violation(
        kind,
        format!("dbinstance/{}", attribute.db_instance_id),
        message.clone(),
    );
    details.set_error_info(
        reason,
        DOMAIN,
        metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<std::collections::HashMap<_, _>>(),
    );
    Status::with_error_details(Code::FailedPrecondition, message, details)
}

/// What the gateway saw of the instance, for a message (`the instance is S on engine version V,
/// {meaning}`, or `unseen`), with metadata `instanceStatus` and `engineVersion` when it saw it.
fn seen(
    observed: Option<&InstanceAttribute>,
    metadata: &mut Vec<(&'static str, String)>,
    meaning: &str,
    unseen: &str,
) -> String {
    match observed {
        Some(a) => {
            metadata.push(("instanceStatus", a.status.clone()));
            metadata.push(("engineVersion", a.engine_version.clone()));
            format!(
                "the instance is {} on engine version {}, {meaning}",
                a.status, a.engine_version
            )
        }
        None => unseen.to_string(),
    }
}

/// An upgrade call whose outcome is unknown, after the gateway looked at the instance and did
/// not see the upgrade: UNAVAILABLE, safe to retry with the same `request_id`.
pub(crate) fn outcome_unknown_status(
    cause: &CallError,
    observed: Option<&InstanceAttribute>,
) -> Status {
    let mut metadata = Vec::new();
    if let CallError::Upstream(e) = cause {
        metadata.push(("alibabaCode", e.code.clone()));
        if let Some(id) = &e.request_id {
            metadata.push(("alibabaRequestId", id.clone()));
        }
    }
    let seen = seen(
        observed,
        &mut metadata,
        "which does not show the upgrade",
        "the gateway could not look at the instance either",
    );
    status(
        Code::Unavailable,
        &format!(
            "no definite answer from Alibaba Cloud to the upgrade; {seen}; retry with the same request_id"
        ),
        "UPSTREAM_OUTCOME_UNKNOWN",
        &metadata,
        Some(cause_retry_delay(cause)),
    )
}

/// A retry within the settle window of a send with an unknown outcome: the same answer as the
/// unknown outcome itself, because that is what the gateway still knows.
pub(crate) fn settling_status(
    observed: Option<&InstanceAttribute>,
    retry_after: Duration,
) -> Status {
    let mut metadata = Vec::new();
    let seen = seen(
        observed,
        &mut metadata,
        "which does not show it yet",
        "the gateway could not look at the instance",
    );
    status(
        Code::Unavailable,
        &format!(
            "an earlier attempt with this request_id sent the upgrade without a definite answer; {seen}. \
             Alibaba's view can lag its own action, so nothing is sent again within idempotency.settle_window; \
             retry with the same request_id"
        ),
        "UPSTREAM_OUTCOME_UNKNOWN",
        &metadata,
        Some(retry_after.max(Duration::from_millis(100))),
    )
}

/// A maintenance-window upgrade whose outcome is unknown: FAILED_PRECONDITION, because a retry
/// with the same `request_id` cannot resolve it and the gateway will not send it again on a guess.
pub(crate) fn scheduled_outcome_unknown_status(observed: Option<&InstanceAttribute>) -> Status {
    let mut metadata = Vec::new();
    let seen = seen(
        observed,
        &mut metadata,
        "as it would be with the upgrade scheduled or not",
        "the gateway could not look at the instance either",
    );
    status(
        Code::FailedPrecondition,
        &format!(
            "no definite answer from Alibaba Cloud to an upgrade for the maintenance window (by this or an earlier call with this request_id); {seen}, so the gateway will not send it again; check the instance's scheduled tasks, and use a new request_id to upgrade anyway"
        ),
        "UPGRADE_OUTCOME_UNRESOLVED",
        &metadata,
        None,
    )
}

fn cause_retry_delay(cause: &CallError) -> Duration {
    match cause {
        CallError::Upstream(e) => e.retry_after.unwrap_or(DEFAULT_RETRY_DELAY),
        CallError::QuotaExhausted { retry_after } => *retry_after,
        _ => DEFAULT_RETRY_DELAY,
    }
}

pub(crate) fn call_status(err: CallError) -> Status {
    let class = codes::classify(&err);
    let retry = class.retry_info.then_some(DEFAULT_RETRY_DELAY);
    let answer = |message: &str, metadata: &[(&str, String)]| {
        status(class.code, message, class.reason, metadata, retry)
    };
    match err {
        CallError::Upstream(upstream) => upstream_status(&upstream, class),
        CallError::Unreachable(_) => answer(
            "Alibaba Cloud is unreachable; the request was not sent",
            &[],
        ),
        CallError::OutcomeUnknown(_) => answer(
            "no definite answer from Alibaba Cloud (no answer, or a server error without a body); retry with the same request_id",
            &[],
        ),
        CallError::Credentials(_) => answer(
            "the gateway has no usable Alibaba Cloud credentials; its operators have been told in its logs",
            &[],
        ),
        CallError::Unreadable { http_status } => answer(
            "the gateway could not read Alibaba Cloud's answer",
            &[("httpStatus", http_status.to_string())],
        ),
        CallError::Unsupported(what) => answer(what, &[]),
        CallError::QuotaExhausted { retry_after } => status(
            class.code,
            "the account's budget of calls to Alibaba Cloud in this region ([alibaba.quota]) has no place before the deadline; nothing was sent",
            class.reason,
            &[],
            Some(retry_after),
        ),
        CallError::DeadlinePassed => answer(
            "the caller's deadline passed while the call waited for its turn among this gateway's calls to Alibaba Cloud ([alibaba.quota] max_in_flight); nothing was sent",
            &[],
        ),
    }
}

fn upstream_status(e: &UpstreamError, class: Classification) -> Status {
    let mut metadata = vec![("alibabaCode", e.code.clone())];
    if let Some(id) = &e.request_id {
        metadata.push(("alibabaRequestId", id.clone()));
    }
    let request = e
        .request_id
        .as_deref()
        .map(|id| format!(" (RequestId {id})"))
        .unwrap_or_default();
    let message = if class.safe_message && !e.message.is_empty() {
        format!("Alibaba Cloud answered {}: {}{request}", e.code, e.message)
    } else {
        format!("{} ({}){request}", meaning(class.reason), e.code)
    };
    let retry = class
        .retry_info
        .then(|| e.retry_after.unwrap_or(DEFAULT_RETRY_DELAY));
    status(class.code, &message, class.reason, &metadata, retry)
}

/// What the gateway says of an Alibaba error whose own message it does not pass on.
fn meaning(reason: &str) -> &'static str {
    match reason {
        "GATEWAY_CREDENTIALS_REJECTED" | "GATEWAY_REQUEST_REJECTED" => {
            "Alibaba Cloud rejected the gateway's own credentials or request"
        }
        "UPSTREAM_THROTTLED" => "Alibaba Cloud throttled the request",
        "UPSTREAM_PERMISSION_DENIED" => {
            "Alibaba Cloud does not allow the gateway's identity this operation"
        }
        "INSTANCE_NOT_FOUND" => "Alibaba Cloud does not know the instance or region",
        "ENGINE_VERSION_NOT_LATER"
        | "INSTANCE_STATE_INCORRECT"
        | "UPSTREAM_FAILED_PRECONDITION" => {
            "Alibaba Cloud refused the operation for the instance as it is now"
        }
        "UPSTREAM_UNAVAILABLE" => "Alibaba Cloud is unavailable",
        "UPSTREAM_INVALID_ARGUMENT" => "Alibaba Cloud refused a parameter of the request",
        _ => "Alibaba Cloud answered with an error",
    }
}

pub(crate) fn status(
    code: Code,
    message: &str,
    reason: &str,
    metadata: &[(&str, String)],
    retry_after: Option<Duration>,
) -> Status {
    let mut details = match retry_after {
        Some(delay) => ErrorDetails::with_retry_info(Some(delay)),
        None => ErrorDetails::new(),
    };
    details.set_error_info(
        reason,
        DOMAIN,
        metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<std::collections::HashMap<_, _>>(),
    );
    Status::with_error_details(code, message, details)
}
