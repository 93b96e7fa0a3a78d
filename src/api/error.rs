//! Every failure as a gRPC status: the API's own refusals (authentication, policy, rate, load,
//! JSON requests) and the work's failures ([`UpgradeError`]). Every status carries
//! `google.rpc.ErrorInfo` (domain `dds-gateway`); internal details never reach the caller. Which
//! code and reason an Alibaba failure gets is [`codes`](crate::alibaba::codes)' answer; the
//! messages and details are written by [`details`](crate::upgrade::details).

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::auth::AuthError;
use super::json::request_error::RequestError;
use super::policy::Denied;
pub(crate) use crate::upgrade::details::DOMAIN;
use crate::upgrade::details::{DEFAULT_RETRY_DELAY, status};
pub(crate) use crate::upgrade::error::Error as UpgradeError;

/// A failed call, before it is turned into a [`Status`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The work of the call failed (validation, preflight, Alibaba, the state store...).
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
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
    /// A JSON over HTTP request that does not make a call: route, content type, size, body,
    /// query.
    #[error(transparent)]
    Json(#[from] RequestError),
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::Upgrade(err) => Status::from(err),
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
            Error::Json(err) => json_status(&err),
        }
    }
}

/// JSON over HTTP requests that never became a call, or whose message could not be read.
fn json_status(err: &RequestError) -> Status {
    use RequestError as E;
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
        E::HeadersTooLarge { limit, .. } => status(
            Code::ResourceExhausted,
            &message,
            "HEADERS_TOO_LARGE",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alibaba::codes::SAFE_MESSAGE_CODES;
    use crate::alibaba::{CallError, UpstreamError};
    use crate::upgrade::validation::ValidationError;

    fn upstream(code: &str, http_status: u16, message: &str) -> Status {
        UpgradeError::Call(CallError::Upstream(UpstreamError {
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
        let status: Status = UpgradeError::Call(CallError::Upstream(UpstreamError {
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
        let status: Status = UpgradeError::Invalid(ValidationError {
            violations: vec![
                crate::upgrade::validation::FieldViolation {
                    field: "db_instance_id",
                    description: "bad".into(),
                },
                crate::upgrade::validation::FieldViolation {
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
            let status: Status = UpgradeError::Call(err).into();
            assert_eq!(status.code(), Code::Unavailable);
            assert!(status.get_details_retry_info().is_some());
            assert!(!status.message().contains("refused") && !status.message().contains("reset"));
        }
        let status: Status = UpgradeError::DeadlineExceeded.into();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        let status: Status = UpgradeError::Call(CallError::Unreadable { http_status: 200 }).into();
        assert_eq!(status.code(), Code::Internal);
    }
}
