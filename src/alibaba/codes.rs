//! The one classification of Alibaba Cloud's answers. For every failed call (an Alibaba `Code`
//! with its HTTP status, or a transport failure) it answers, once for the whole gateway:
//! is a read worth retrying, did Alibaba act (may an upgrade be sent again), which gRPC code and
//! `ErrorInfo.reason` the caller gets (with or without `RetryInfo`), and whether Alibaba's own
//! `Message` is safe to pass on. [`retry`](super::retry), the [`upgrader`](crate::upgrade::upgrader) and the
//! statuses ([`upgrade::details`](crate::upgrade::details)) ask it.
//!
//! Alibaba answers throttling with HTTP 400 or 403, so the `Code` decides first; a server error
//! (5xx) is a server error whatever its body says: after one, Alibaba may have acted.

use tonic::Code;

use super::response::CallError;

/// Alibaba's answer when a request's STS security token has expired.
pub(crate) const SECURITY_TOKEN_EXPIRED: &str = "InvalidSecurityToken.Expired";

/// Whether Alibaba acted on a request that failed, as far as the gateway can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acted {
    /// Alibaba surely did not act, and the same request may succeed later (throttled at its
    /// front door, or never sent): an upgrade may be sent again.
    SurelyNot,
    /// A definite answer (a refusal, or nothing could be sent): Alibaba did not act, and the same
    /// request would fail the same way.
    Refused,
    /// Alibaba may have acted (no answer, a server error, an unreadable success): an upgrade is
    /// never sent again on a guess; the gateway looks at the instance instead.
    Maybe,
}

/// What the gateway makes of one failed Alibaba call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Classification {
    /// A read (`Describe*`) that failed this way is worth trying again.
    pub retry_read: bool,
    /// Whether Alibaba acted.
    pub acted: Acted,
    /// The gRPC code the caller gets.
    pub code: Code,
    /// The `ErrorInfo.reason` the caller gets.
    pub reason: &'static str,
    /// The status carries `RetryInfo`: the caller may retry after a delay.
    pub retry_info: bool,
    /// Alibaba's `Message` may reach the caller (see [`SAFE_MESSAGE_CODES`]).
    pub safe_message: bool,
}

impl Classification {
    /// Alibaba surely did not act, so a change (an upgrade) may be sent again.
    pub(crate) fn surely_not_applied(&self) -> bool {
        self.acted == Acted::SurelyNot
    }

    /// Alibaba may have acted: an upgrade's outcome is unknown.
    pub(crate) fn outcome_unknown(&self) -> bool {
        self.acted == Acted::Maybe
    }
}

/// The Alibaba error codes whose `Message` is passed to callers: each is a fixed sentence about
/// the request or the instance (Alibaba's documented texts). Every other code gets a message the
/// gateway writes, because some messages echo what was signed (the string to sign, naming the
/// AccessKeyId) or name keys and accounts, and a code nobody has read cannot be trusted not to.
pub(crate) const SAFE_MESSAGE_CODES: &[&str] = &[
    "Throttling",
    "Throttling.User",
    "Throttling.Api",
    "Forbidden.RAM",
    "Forbidden.RiskControl",
    "Forbedden.NotSupportRAM",
    "InvalidInstanceId.NotFound",
    "InvalidDbInstanceId.NotFound",
    "InvalidDBInstanceId.NotFound",
    "InvalidRegion.NotFound",
    "EngineVersion.ERROR",
    "IncorrectDBInstanceState",
    "IncorrectDBInstanceType",
    "IncorrectDBInstanceLockMode",
];

/// Alibaba's throttling codes (`Throttling`, `Throttling.User`, `Throttling.Api`, ...).
pub(crate) fn is_throttling(code: &str) -> bool {
    code.starts_with("Throttling") || code == "Rejected.Throttling"
}

/// Whether Alibaba rejected the request's security token as expired: it refused the request at
/// authentication, so it surely did not act on it (a 4xx answer; a 5xx is a server error first).
/// The request is worth one more attempt, signed with a fresh credential, even for an upgrade.
pub(crate) fn credential_expired(err: &CallError) -> bool {
    matches!(err, CallError::Upstream(e) if e.http_status < 500 && e.code == SECURITY_TOKEN_EXPIRED)
}

/// Classifies a failed call.
pub(crate) fn classify(err: &CallError) -> Classification {
    match err {
        CallError::Upstream(e) => upstream(&e.code, e.http_status),
        // The request was never sent.
        CallError::Unreachable(_) => transport(
            true,
            Acted::SurelyNot,
            Code::Unavailable,
            "UPSTREAM_UNREACHABLE",
            true,
        ),
        CallError::OutcomeUnknown(_) => transport(
            true,
            Acted::Maybe,
            Code::Unavailable,
            "UPSTREAM_OUTCOME_UNKNOWN",
            true,
        ),
        // A success or a server error the gateway cannot read may have been acted on; an
        // unreadable refusal was not.
        CallError::Unreadable { http_status } => transport(
            *http_status >= 500,
            if (200..300).contains(http_status) || *http_status >= 500 {
                Acted::Maybe
            } else {
                Acted::Refused
            },
            Code::Internal,
            "UPSTREAM_RESPONSE_UNREADABLE",
            false,
        ),
        CallError::Credentials(_) => transport(
            false,
            Acted::Refused,
            Code::Unavailable,
            "CREDENTIALS_UNAVAILABLE",
            true,
        ),
        CallError::Unsupported(_) => transport(
            false,
            Acted::Refused,
            Code::Internal,
            "GATEWAY_UNSUPPORTED",
            false,
        ),
        // Nothing was sent, and the caller's deadline cannot wait for a place.
        CallError::QuotaExhausted { .. } => transport(
            false,
            Acted::SurelyNot,
            Code::ResourceExhausted,
            "ALIBABA_QUOTA_EXHAUSTED",
            true,
        ),
        // Nothing was sent, and the caller has stopped waiting: the gateway's deadline answer.
        CallError::DeadlinePassed => transport(
            false,
            Acted::SurelyNot,
            Code::DeadlineExceeded,
            "DEADLINE_EXCEEDED",
            false,
        ),
    }
}

const fn transport(
    retry_read: bool,
    acted: Acted,
    code: Code,
    reason: &'static str,
    retry_info: bool,
) -> Classification {
    Classification {
        retry_read,
        acted,
        code,
        reason,
        retry_info,
        safe_message: false,
    }
}

/// Classifies an answer with Alibaba's error `code` and HTTP status.
pub(crate) fn upstream(code: &str, http_status: u16) -> Classification {
    let (grpc, reason) = status_of(code, http_status);
    // RetryInfo goes with throttling and unavailability, whatever the status code.
    let retry_info = matches!(reason, "UPSTREAM_THROTTLED" | "UPSTREAM_UNAVAILABLE");
    let server_error = http_status >= 500;
    let acted = if server_error {
        Acted::Maybe
    } else if is_throttling(code) {
        Acted::SurelyNot
    } else {
        Acted::Refused
    };
    Classification {
        retry_read: server_error || retry_info,
        acted,
        code: grpc,
        reason,
        retry_info,
        safe_message: SAFE_MESSAGE_CODES.contains(&code),
    }
}

/// The contract's error table for Alibaba's codes (docs/errors.md).
fn status_of(code: &str, http_status: u16) -> (Code, &'static str) {
    // The gateway's own credentials or signing were rejected: our fault, never the caller's.
    const CREDENTIAL_CODES: &[&str] = &[
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "SignatureNonceUsed",
        "InvalidSignatureMethod",
        "MissingSecurityToken",
    ];
    const CREDENTIAL_PREFIXES: &[&str] = &[
        "InvalidAccessKeyId",
        "InvalidTimeStamp",
        "InvalidSecurityToken",
    ];
    if CREDENTIAL_CODES.contains(&code) || CREDENTIAL_PREFIXES.iter().any(|p| code.starts_with(p)) {
        return (Code::Internal, "GATEWAY_CREDENTIALS_REJECTED");
    }
    if is_throttling(code) {
        return (Code::ResourceExhausted, "UPSTREAM_THROTTLED");
    }
    // Requests the gateway built wrongly (unknown action, missing parameter): our bug.
    if matches!(
        code,
        "InvalidApi.NotFound"
            | "InvalidAction.NotFound"
            | "UnsupportedHTTPMethod"
            | "InvalidParameter.Format"
    ) || code.starts_with("Missing")
    {
        return (Code::Internal, "GATEWAY_REQUEST_REJECTED");
    }
    if code.starts_with("Forbidden") || code.starts_with("Forbedden") {
        return (Code::PermissionDenied, "UPSTREAM_PERMISSION_DENIED");
    }
    if code.ends_with(".NotFound") {
        return (Code::NotFound, "INSTANCE_NOT_FOUND");
    }
    match code {
        "EngineVersion.ERROR" => return (Code::FailedPrecondition, "ENGINE_VERSION_NOT_LATER"),
        "IncorrectDBInstanceState" => {
            return (Code::FailedPrecondition, "INSTANCE_STATE_INCORRECT");
        }
        "IncorrectDBInstanceType"
        | "IncorrectDBInstanceLockMode"
        | "InsufficientBalance"
        | "RealNameAuthenticationError" => {
            return (Code::FailedPrecondition, "UPSTREAM_FAILED_PRECONDITION");
        }
        "ServiceUnavailable" | "InternalError" | "System.Busy" | "Operation.Blocking" => {
            return (Code::Unavailable, "UPSTREAM_UNAVAILABLE");
        }
        _ => {}
    }
    if code.starts_with("Invalid") {
        return (Code::InvalidArgument, "UPSTREAM_INVALID_ARGUMENT");
    }
    if http_status >= 500 {
        return (Code::Unavailable, "UPSTREAM_UNAVAILABLE");
    }
    // An answer we have no row for: name Alibaba's code rather than guess a meaning.
    (Code::Unknown, "UPSTREAM_ERROR")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alibaba::credentials::CredentialsError;
    use crate::alibaba::response::UpstreamError;

    fn up(code: &str, http_status: u16) -> CallError {
        CallError::Upstream(UpstreamError {
            http_status,
            code: code.to_string(),
            message: String::new(),
            request_id: None,
            host_id: None,
            recommend: None,
            retry_after: None,
        })
    }

    /// The error table (docs/errors.md), row by row, for every situation that comes from an Alibaba
    /// call: what is retried, whether an upgrade may be sent again, and what the caller gets.
    #[test]
    #[rustfmt::skip]
    fn mirrors_the_readme_error_table() {
        use Acted::{Maybe, Refused, SurelyNot};
        // (row, failure, gRPC code, reason, RetryInfo, retry a read, acted)
        let rows: Vec<(&str, CallError, Code, &str, bool, bool, Acted)> = vec![
            // Alibaba `Forbidden.RAM` (and other `Forbidden*`)
            ("Forbidden.RAM", up("Forbidden.RAM", 403), Code::PermissionDenied, "UPSTREAM_PERMISSION_DENIED", false, false, Refused),
            ("Forbidden*", up("Forbidden.RiskControl", 403), Code::PermissionDenied, "UPSTREAM_PERMISSION_DENIED", false, false, Refused),
            ("Forbedden*", up("Forbedden.NotSupportRAM", 403), Code::PermissionDenied, "UPSTREAM_PERMISSION_DENIED", false, false, Refused),
            // Alibaba `*.NotFound` (instance, region)
            ("*.NotFound instance", up("InvalidDBInstanceId.NotFound", 404), Code::NotFound, "INSTANCE_NOT_FOUND", false, false, Refused),
            ("*.NotFound instance", up("InvalidInstanceId.NotFound", 404), Code::NotFound, "INSTANCE_NOT_FOUND", false, false, Refused),
            ("*.NotFound instance", up("InvalidDbInstanceId.NotFound", 404), Code::NotFound, "INSTANCE_NOT_FOUND", false, false, Refused),
            ("*.NotFound region", up("InvalidRegion.NotFound", 404), Code::NotFound, "INSTANCE_NOT_FOUND", false, false, Refused),
            // Alibaba `EngineVersion.ERROR` (target not later)
            ("EngineVersion.ERROR", up("EngineVersion.ERROR", 400), Code::FailedPrecondition, "ENGINE_VERSION_NOT_LATER", false, false, Refused),
            // Alibaba `IncorrectDBInstanceState` (instance not `Running`)
            ("IncorrectDBInstanceState", up("IncorrectDBInstanceState", 400), Code::FailedPrecondition, "INSTANCE_STATE_INCORRECT", false, false, Refused),
            // Alibaba `IncorrectDBInstanceType`, `IncorrectDBInstanceLockMode`, `InsufficientBalance`, …
            ("IncorrectDBInstanceType", up("IncorrectDBInstanceType", 400), Code::FailedPrecondition, "UPSTREAM_FAILED_PRECONDITION", false, false, Refused),
            ("IncorrectDBInstanceLockMode", up("IncorrectDBInstanceLockMode", 400), Code::FailedPrecondition, "UPSTREAM_FAILED_PRECONDITION", false, false, Refused),
            ("InsufficientBalance", up("InsufficientBalance", 400), Code::FailedPrecondition, "UPSTREAM_FAILED_PRECONDITION", false, false, Refused),
            ("RealNameAuthenticationError", up("RealNameAuthenticationError", 400), Code::FailedPrecondition, "UPSTREAM_FAILED_PRECONDITION", false, false, Refused),
            // Alibaba `Throttling*`, after retries: the only 4xx an upgrade is sent again after
            ("Throttling", up("Throttling", 400), Code::ResourceExhausted, "UPSTREAM_THROTTLED", true, true, SurelyNot),
            ("Throttling.User", up("Throttling.User", 400), Code::ResourceExhausted, "UPSTREAM_THROTTLED", true, true, SurelyNot),
            ("Throttling.Api", up("Throttling.Api", 403), Code::ResourceExhausted, "UPSTREAM_THROTTLED", true, true, SurelyNot),
            ("Rejected.Throttling", up("Rejected.Throttling", 400), Code::ResourceExhausted, "UPSTREAM_THROTTLED", true, true, SurelyNot),
            // A throttling code in a 5xx answer is a server error: Alibaba may have acted.
            ("Throttling in a 5xx", up("Throttling", 503), Code::ResourceExhausted, "UPSTREAM_THROTTLED", true, true, Maybe),
            // Alibaba 5xx / `ServiceUnavailable` / `InternalError` on a read, after retries
            ("ServiceUnavailable", up("ServiceUnavailable", 503), Code::Unavailable, "UPSTREAM_UNAVAILABLE", true, true, Maybe),
            ("InternalError", up("InternalError", 500), Code::Unavailable, "UPSTREAM_UNAVAILABLE", true, true, Maybe),
            ("other 5xx", up("SomethingNew", 502), Code::Unavailable, "UPSTREAM_UNAVAILABLE", true, true, Maybe),
            ("System.Busy", up("System.Busy", 400), Code::Unavailable, "UPSTREAM_UNAVAILABLE", true, true, Refused),
            ("Operation.Blocking", up("Operation.Blocking", 400), Code::Unavailable, "UPSTREAM_UNAVAILABLE", true, true, Refused),
            // Alibaba unreachable (connection refused, DNS, TLS): request not sent, after retries
            ("unreachable", CallError::Unreachable("refused".into()), Code::Unavailable, "UPSTREAM_UNREACHABLE", true, true, SurelyNot),
            // no definite answer (timeout, reset, 5xx, unreadable success) to an upgrade
            ("no answer", CallError::OutcomeUnknown("reset".into()), Code::Unavailable, "UPSTREAM_OUTCOME_UNKNOWN", true, true, Maybe),
            ("unreadable success", CallError::Unreadable { http_status: 200 }, Code::Internal, "UPSTREAM_RESPONSE_UNREADABLE", false, false, Maybe),
            ("unreadable 5xx", CallError::Unreadable { http_status: 502 }, Code::Internal, "UPSTREAM_RESPONSE_UNREADABLE", false, true, Maybe),
            // Alibaba's answer unreadable
            ("unreadable 4xx", CallError::Unreadable { http_status: 400 }, Code::Internal, "UPSTREAM_RESPONSE_UNREADABLE", false, false, Refused),
            // gateway has no usable credentials
            ("no credentials", CallError::Credentials(CredentialsError::Unavailable { provider: "test", reason: "none".into() }), Code::Unavailable, "CREDENTIALS_UNAVAILABLE", true, false, Refused),
            // Alibaba rejected the gateway's own credentials or signature
            ("SignatureDoesNotMatch", up("SignatureDoesNotMatch", 400), Code::Internal, "GATEWAY_CREDENTIALS_REJECTED", false, false, Refused),
            ("InvalidAccessKeyId.NotFound", up("InvalidAccessKeyId.NotFound", 404), Code::Internal, "GATEWAY_CREDENTIALS_REJECTED", false, false, Refused),
            ("InvalidAccessKeyId.Inactive", up("InvalidAccessKeyId.Inactive", 400), Code::Internal, "GATEWAY_CREDENTIALS_REJECTED", false, false, Refused),
            ("InvalidTimeStamp.Expired", up("InvalidTimeStamp.Expired", 400), Code::Internal, "GATEWAY_CREDENTIALS_REJECTED", false, false, Refused),
            ("SignatureNonceUsed", up("SignatureNonceUsed", 400), Code::Internal, "GATEWAY_CREDENTIALS_REJECTED", false, false, Refused),
            ("InvalidSecurityToken.Expired", up(SECURITY_TOKEN_EXPIRED, 400), Code::Internal, "GATEWAY_CREDENTIALS_REJECTED", false, false, Refused),
            ("InvalidSecurityToken in a 5xx", up(SECURITY_TOKEN_EXPIRED, 500), Code::Internal, "GATEWAY_CREDENTIALS_REJECTED", false, true, Maybe),
            // Alibaba rejected a request the gateway built (`InvalidApi.NotFound`, `Missing*`)
            ("InvalidApi.NotFound", up("InvalidApi.NotFound", 404), Code::Internal, "GATEWAY_REQUEST_REJECTED", false, false, Refused),
            ("MissingParameter", up("MissingParameter", 400), Code::Internal, "GATEWAY_REQUEST_REJECTED", false, false, Refused),
            ("Missing*", up("MissingDBInstanceId", 400), Code::Internal, "GATEWAY_REQUEST_REJECTED", false, false, Refused),
            // the account's budget of calls has no place before the caller's deadline
            ("quota exhausted", CallError::QuotaExhausted { retry_after: std::time::Duration::from_secs(1) }, Code::ResourceExhausted, "ALIBABA_QUOTA_EXHAUSTED", true, false, SurelyNot),
            ("deadline passed in line", CallError::DeadlinePassed, Code::DeadlineExceeded, "DEADLINE_EXCEEDED", false, false, SurelyNot),
            // the gateway cannot build the request
            ("unsupported", CallError::Unsupported("region has no endpoint"), Code::Internal, "GATEWAY_UNSUPPORTED", false, false, Refused),
            // Alibaba `InvalidParameter*` / other `Invalid*`
            ("InvalidParameter", up("InvalidParameter", 400), Code::InvalidArgument, "UPSTREAM_INVALID_ARGUMENT", false, false, Refused),
            ("Invalid*", up("InvalidEngineVersion", 400), Code::InvalidArgument, "UPSTREAM_INVALID_ARGUMENT", false, false, Refused),
            // any other Alibaba 4xx code
            ("other 4xx", up("SomethingNew", 400), Code::Unknown, "UPSTREAM_ERROR", false, false, Refused),
        ];
        for (row, failure, code, reason, retry_info, retry_read, acted) in rows {
            let c = classify(&failure);
            assert_eq!(
                (c.code, c.reason, c.retry_info, c.retry_read, c.acted),
                (code, reason, retry_info, retry_read, acted),
                "{row}"
            );
        }
    }

    #[test]
    fn a_status_with_retry_info_is_a_read_worth_retrying() {
        for code in ["Operation.Blocking", "System.Busy", "Throttling.Api", "X"] {
            for http_status in [400, 403, 500, 503] {
                let c = upstream(code, http_status);
                assert!(!c.retry_info || c.retry_read, "{code} {http_status}");
            }
        }
    }

    #[test]
    fn an_upgrade_is_sent_again_only_when_alibaba_surely_did_not_act() {
        for (failure, resend) in [
            (up("Throttling", 400), true),
            (up("Throttling.User", 403), true),
            (CallError::Unreachable("refused".into()), true),
            (up("Throttling", 503), false),
            (up("Throttling.User", 500), false),
            (up("ServiceUnavailable", 503), false),
            (up("Operation.Blocking", 400), false),
            (up("System.Busy", 400), false),
            (up("IncorrectDBInstanceState", 400), false),
            (
                CallError::OutcomeUnknown("timeout after sending".into()),
                false,
            ),
            (CallError::Unreadable { http_status: 200 }, false),
        ] {
            assert_eq!(classify(&failure).surely_not_applied(), resend, "{failure}");
        }
    }

    #[test]
    fn only_allow_listed_codes_are_safe_to_pass_on() {
        for code in SAFE_MESSAGE_CODES {
            assert!(upstream(code, 400).safe_message, "{code}");
        }
        for code in [
            "SignatureDoesNotMatch",
            "InvalidSecurityToken.Expired",
            "Throttling.New",
        ] {
            assert!(!upstream(code, 400).safe_message, "{code}");
        }
        assert!(!classify(&CallError::Unreachable("x".into())).safe_message);
    }
}
