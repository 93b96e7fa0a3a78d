//! The one place where a failure becomes a gRPC status. Every status carries
//! `google.rpc.ErrorInfo` (domain `dds-gateway`); internal details never reach the caller.
//! Which code and reason an Alibaba failure gets is [`codes`](crate::alibaba::codes)' answer;
//! this module writes the message and the details.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::alibaba::codes::{self, Classification};
use crate::alibaba::{CallError, InstanceAttribute, UpstreamError};
use crate::auth::AuthError;
use crate::idempotency::StoreError;
use crate::policy::Denied;
use crate::preflight::PreflightFailure;
use crate::validation::ValidationError;

/// `ErrorInfo.domain` of every error the gateway returns.
pub const DOMAIN: &str = "dds-gateway";

/// How long a caller should wait before retrying when Alibaba did not say.
const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long a caller should wait before retrying an upgrade refused because another is in
/// flight: the other one's answer takes seconds.
const UPGRADE_IN_PROGRESS_RETRY_DELAY: Duration = Duration::from_secs(5);

/// A failed RPC, before it is turned into a [`Status`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Call(#[from] CallError),
    /// The caller's deadline passed before the gateway had an answer.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// No caller could be identified from the call's credentials.
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// The caller's policy does not allow the request.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The caller is over its rate.
    #[error("caller {caller:?} is over its rate limit")]
    RateLimited {
        caller: String,
        retry_after: Duration,
    },
    /// The gateway has `server.max_in_flight` calls in flight already.
    #[error("too many calls in flight")]
    Overloaded,
    /// The request message had not arrived by the call's deadline; nothing was done.
    #[error("the request message did not arrive in time")]
    RequestIncomplete,
    /// The gateway has `watch.max_active` watches running already.
    #[error("too many watches running")]
    WatchLimitReached,
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
    /// The audit file cannot take an upgrade's `sending` event, so the upgrade is not sent.
    #[error(transparent)]
    AuditUnavailable(#[from] crate::audit::AuditError),
    /// A JSON over HTTP request that does not make a call: route, content type, size, body,
    /// query.
    #[error(transparent)]
    Json(#[from] crate::json::RequestError),
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
            Error::Call(call) => call_status(call),
            Error::Unauthenticated(err) => status(
                Code::Unauthenticated,
                &err.to_string(),
                err.reason(),
                &[],
                None,
            ),
            Error::Denied(denied) => status(
                Code::PermissionDenied,
                &denied.to_string(),
                "CALLER_NOT_PERMITTED",
                &[
                    ("caller", denied.caller.clone()),
                    ("rule", denied.rule.key().to_string()),
                ],
                None,
            ),
            Error::RateLimited {
                caller,
                retry_after,
            } => status(
                Code::ResourceExhausted,
                &format!("caller {caller:?} is over its rate limit; retry after {retry_after:?}"),
                "CALLER_RATE_LIMITED",
                &[("caller", caller)],
                Some(retry_after),
            ),
            Error::Overloaded => status(
                Code::Unavailable,
                "the gateway is at its limit of calls in flight; retry shortly",
                "GATEWAY_OVERLOADED",
                &[],
                Some(DEFAULT_RETRY_DELAY),
            ),
            Error::RequestIncomplete => status(
                Code::DeadlineExceeded,
                "the request message did not arrive before the deadline (the caller's, or server.request_timeout); nothing was done",
                "REQUEST_INCOMPLETE",
                &[],
                None,
            ),
            // A quota, not a passing overload: watches last long, so retrying at once rarely helps.
            Error::WatchLimitReached => status(
                Code::ResourceExhausted,
                "the gateway is at its limit of running watches (watch.max_active); retry later or poll GetEngineVersion",
                "WATCH_LIMIT_REACHED",
                &[],
                Some(DEFAULT_RETRY_DELAY),
            ),
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
            Error::Json(err) => json_status(&err),
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

/// JSON over HTTP requests that never became a call, or whose message could not be read.
fn json_status(err: &crate::json::RequestError) -> Status {
    use crate::json::RequestError as E;
    let message = err.to_string();
    match err {
        E::RouteNotFound { .. } => status(Code::NotFound, &message, "ROUTE_NOT_FOUND", &[], None),
        E::MethodNotAllowed { allowed, .. } => status(
            Code::Unimplemented,
            &message,
            "METHOD_NOT_ALLOWED",
            &[("allowed", allowed.clone())],
            None,
        ),
        E::UnsupportedMediaType { .. } => status(
            Code::InvalidArgument,
            &message,
            "UNSUPPORTED_MEDIA_TYPE",
            &[],
            None,
        ),
        E::TooLarge { limit } => status(
            Code::OutOfRange,
            &message,
            "REQUEST_TOO_LARGE",
            &[("limit", limit.to_string())],
            None,
        ),
        E::InvalidJson { line, column, .. } => status(
            Code::InvalidArgument,
            &message,
            "INVALID_JSON",
            &[("line", line.to_string()), ("column", column.to_string())],
            None,
        ),
        E::InvalidParameter { name, detail } => {
            let mut details = ErrorDetails::new();
            details.add_bad_request_violation(name.clone(), detail.clone());
            details.set_error_info(
                "INVALID_PARAMETER",
                DOMAIN,
                [("fields".to_string(), name.clone())],
            );
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        E::BodyUnreadable(_) => status(Code::InvalidArgument, &message, "INVALID_JSON", &[], None),
    }
}

/// Gives a status that tonic or the transport made (an oversized or undecodable message, an
/// unknown method) the `ErrorInfo` every error carries; a status that has one is returned as is.
pub fn with_error_info(original: Status) -> Status {
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
fn preflight_status(failure: &PreflightFailure) -> Status {
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
fn outcome_unknown_status(cause: &CallError, observed: Option<&InstanceAttribute>) -> Status {
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
fn settling_status(observed: Option<&InstanceAttribute>, retry_after: Duration) -> Status {
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
fn scheduled_outcome_unknown_status(observed: Option<&InstanceAttribute>) -> Status {
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
        _ => DEFAULT_RETRY_DELAY,
    }
}

fn call_status(err: CallError) -> Status {
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

fn status(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alibaba::codes::SAFE_MESSAGE_CODES;

    fn upstream(code: &str, http_status: u16, message: &str) -> Status {
        Error::Call(CallError::Upstream(UpstreamError {
            http_status,
            code: code.to_string(),
            message: message.to_string(),
            request_id: Some("REQ-1".to_string()),
            host_id: None,
            recommend: None,
            retry_after: None,
        }))
        .into()
    }

    #[test]
    fn maps_the_contract_table() {
        let table: &[(&str, u16, Code)] = &[
            ("Forbidden.RAM", 403, Code::PermissionDenied),
            ("InvalidInstanceId.NotFound", 404, Code::NotFound),
            ("InvalidDbInstanceId.NotFound", 404, Code::NotFound),
            ("InvalidRegion.NotFound", 404, Code::NotFound),
            ("EngineVersion.ERROR", 400, Code::FailedPrecondition),
            ("IncorrectDBInstanceState", 400, Code::FailedPrecondition),
            ("Throttling", 400, Code::ResourceExhausted),
            ("Throttling.User", 400, Code::ResourceExhausted),
            ("Throttling.Api", 403, Code::ResourceExhausted),
            ("ServiceUnavailable", 503, Code::Unavailable),
            ("InternalError", 500, Code::Unavailable),
            ("SomethingNew", 502, Code::Unavailable),
            ("SignatureDoesNotMatch", 400, Code::Internal),
            ("InvalidAccessKeyId.NotFound", 404, Code::Internal),
            ("InvalidAccessKeyId.Inactive", 400, Code::Internal),
            ("InvalidTimeStamp.Expired", 400, Code::Internal),
            ("SignatureNonceUsed", 400, Code::Internal),
            ("InvalidSecurityToken.Expired", 400, Code::Internal),
            ("InvalidApi.NotFound", 404, Code::Internal),
            ("MissingParameter", 400, Code::Internal),
            ("InvalidParameter", 400, Code::InvalidArgument),
            ("SomethingNew", 400, Code::Unknown),
        ];
        for (code, http, expected) in table {
            let status = upstream(code, *http, "m");
            assert_eq!(status.code(), *expected, "{code} {http}");
            let info = status
                .get_details_error_info()
                .expect("every error has ErrorInfo");
            assert_eq!(info.domain, DOMAIN);
            assert_eq!(info.metadata["alibabaCode"], *code);
            assert_eq!(info.metadata["alibabaRequestId"], "REQ-1");
            assert!(
                info.reason
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{}",
                info.reason
            );
        }
    }

    #[test]
    fn credential_errors_never_echo_alibaba_messages() {
        let echoed = "server string to sign is:POST&%2F&AccessKeyId%3Dtestid";
        let status = upstream("SignatureDoesNotMatch", 400, echoed);
        assert!(!status.message().contains("testid"), "{}", status.message());
        assert!(status.message().contains("SignatureDoesNotMatch"));
    }

    #[test]
    fn only_allow_listed_codes_pass_alibabas_message_on() {
        let echoed = "stringToSign: POST&%2F&AccessKeyId%3Dtestid";
        for code in SAFE_MESSAGE_CODES {
            let status = upstream(code, 400, "a documented sentence");
            assert!(
                status.message().contains("a documented sentence"),
                "{code}: {}",
                status.message()
            );
        }
        // Every row of the table but the listed codes, and codes nobody has seen.
        for (code, http_status) in [
            ("SignatureDoesNotMatch", 400),
            ("InvalidAccessKeyId.NotFound", 404),
            ("InvalidSecurityToken.Expired", 400),
            ("MissingParameter", 400),
            ("InvalidParameter", 400),
            ("InsufficientBalance", 400),
            ("Forbidden.SomethingNew", 403),
            ("Throttling.SomethingNew", 400),
            ("ServiceUnavailable", 503),
            ("SomethingNew", 400),
            ("SomethingNew", 502),
        ] {
            let status = upstream(code, http_status, echoed);
            let message = status.message();
            assert!(
                !message.contains("testid") && !message.contains("stringToSign"),
                "{code}: {message}"
            );
            assert!(message.contains(code), "{code}: {message}");
            assert!(message.contains("REQ-1"), "{code}: {message}");
        }
    }

    #[test]
    fn throttling_carries_retry_info_from_alibaba() {
        let status: Status = Error::Call(CallError::Upstream(UpstreamError {
            http_status: 400,
            code: "Throttling.User".into(),
            message: String::new(),
            request_id: None,
            host_id: None,
            recommend: None,
            retry_after: Some(Duration::from_millis(2500)),
        }))
        .into();
        let retry = status.get_details_retry_info().unwrap();
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(2500)));
    }

    #[test]
    fn validation_lists_every_field() {
        let status: Status = Error::Invalid(ValidationError {
            violations: vec![
                crate::validation::FieldViolation {
                    field: "db_instance_id",
                    description: "bad".into(),
                },
                crate::validation::FieldViolation {
                    field: "engine_version",
                    description: "bad".into(),
                },
            ],
        })
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations.len(), 2);
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "INVALID_REQUEST"
        );
    }

    #[test]
    fn transport_failures_are_unavailable_with_retry_info() {
        for err in [
            CallError::Unreachable("refused".into()),
            CallError::OutcomeUnknown("reset".into()),
        ] {
            let status: Status = Error::Call(err).into();
            assert_eq!(status.code(), Code::Unavailable);
            assert!(status.get_details_retry_info().is_some());
            assert!(!status.message().contains("refused") && !status.message().contains("reset"));
        }
        let status: Status = Error::DeadlineExceeded.into();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        let status: Status = Error::Call(CallError::Unreadable { http_status: 200 }).into();
        assert_eq!(status.code(), Code::Internal);
    }
}
