//! Errors over HTTP: the JSON form of `google.rpc.Status` (`code`, `message`, and `details`
//! with `@type`, read from the gRPC status's `grpc-status-details-bin`), with the HTTP status of
//! Google's mapping (`google/rpc/code.proto`) and `Retry-After` when a retry may help.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};
use serde::Serialize as _;
use tonic::Code;
use tonic::body::Body;
use tonic_types::StatusExt as _;

/// The JSON answers' content type.
pub(crate) const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Writes gRPC statuses as JSON `google.rpc.Status` messages.
#[derive(Debug, Clone)]
pub(crate) struct StatusWriter {
    status: MessageDescriptor,
}

impl StatusWriter {
    /// From the encoded descriptor set of `google/rpc/status.proto` and its details' types.
    pub(crate) fn new(descriptor: &[u8]) -> Result<Self, String> {
        let pool = DescriptorPool::decode(descriptor)
            .map_err(|e| format!("unreadable google.rpc descriptor: {e}"))?;
        let status = pool
            .get_message_by_name("google.rpc.Status")
            .ok_or("the google.rpc descriptor lacks google.rpc.Status")?;
        Ok(Self { status })
    }

    /// `{"code": 3, "message": "...", "details": [{"@type": "type.googleapis.com/...", ...}]}`.
    pub(crate) fn json(&self, status: &tonic::Status) -> Vec<u8> {
        let mut message = DynamicMessage::decode(self.status.clone(), status.details())
            .unwrap_or_else(|_| DynamicMessage::new(self.status.clone()));
        // The status itself is the authority on its code and message.
        message.set_field_by_name("code", Value::I32(status.code() as i32));
        message.set_field_by_name("message", Value::String(status.message().to_string()));
        // Default values left out, as Google writes errors (`details` is never empty here).
        let mut out = Vec::new();
        let written = message.serialize(&mut serde_json::Serializer::new(&mut out));
        if let Err(err) = written {
            // A detail of a type the descriptor does not know: the code and message still go out.
            tracing::warn!(error = %err, "cannot write an error's details as JSON");
            message.clear_field_by_name("details");
            out.clear();
            let _ = message.serialize(&mut serde_json::Serializer::new(&mut out));
        }
        out
    }

    /// The whole HTTP answer for `status`.
    pub(crate) fn response(&self, status: &tonic::Status) -> http::Response<Body> {
        let mut response =
            http::Response::new(Body::new(Full::new(Bytes::from(self.json(status)))));
        *response.status_mut() = http_status(status);
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, JSON);
        if let Some(seconds) = retry_after(status) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status.code() == Code::Unauthenticated {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Google's HTTP status for a gRPC code, more precise for a few of the gateway's own reasons.
pub(crate) fn http_status(status: &tonic::Status) -> StatusCode {
    let reason = status.get_details_error_info().map(|info| info.reason);
    match reason.as_deref() {
        Some("REQUEST_TOO_LARGE") => return StatusCode::PAYLOAD_TOO_LARGE,
        Some("UNSUPPORTED_MEDIA_TYPE") => return StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Some("METHOD_NOT_ALLOWED") => return StatusCode::METHOD_NOT_ALLOWED,
        Some("HEADERS_TOO_LARGE") => return StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => {}
    }
    match status.code() {
        Code::Ok => StatusCode::OK,
        // 499 Client Closed Request: no constant in `http`, and always valid.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Whole seconds to wait before a retry (`RetryInfo`, rounded up; 1 when the status has none),
/// for the codes that are worth retrying: RESOURCE_EXHAUSTED and UNAVAILABLE.
fn retry_after(status: &tonic::Status) -> Option<u64> {
    if !matches!(status.code(), Code::ResourceExhausted | Code::Unavailable) {
        return None;
    }
    let delay = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .unwrap_or_default();
    let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    Some(seconds.max(1))
}

/// The answer for a gRPC answer that cannot be turned into JSON (a gateway bug): logged,
/// INTERNAL to the caller.
pub(crate) fn internal(what: &str) -> tonic::Status {
    tracing::error!(error = what, "cannot turn a gRPC answer into JSON");
    crate::upgrade::details::with_error_info(tonic::Status::internal(
        "the gateway could not write its answer as JSON",
    ))
}

/// The status a gRPC answer carries in `headers` (trailers-only answer) or its trailers.
pub(crate) fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Status> {
    headers
        .contains_key("grpc-status")
        .then(|| tonic::Status::from_header_map(headers))?
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::error::Error;

    fn writer() -> StatusWriter {
        StatusWriter::new(crate::pb::GOOGLE_RPC_DESCRIPTOR_SET).unwrap()
    }

    fn json(status: &tonic::Status) -> serde_json::Value {
        serde_json::from_slice(&writer().json(status)).unwrap()
    }

    #[test]
    fn details_are_written_with_their_type() {
        let status: tonic::Status = Error::RateLimited {
            caller: "billing".into(),
            retry_after: Duration::from_millis(1500),
        }
        .into();
        assert!(!status.details().is_empty());
        let body = json(&status);
        assert_eq!(body["code"], 8);
        assert_eq!(body["message"], status.message());
        let details = body["details"].as_array().unwrap();
        let info = details
            .iter()
            .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
            .unwrap();
        assert_eq!(info["reason"], "CALLER_RATE_LIMITED");
        assert_eq!(info["domain"], "dds-gateway");
        assert_eq!(info["metadata"]["caller"], "billing");
        let retry = details
            .iter()
            .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
            .unwrap();
        assert_eq!(retry["retryDelay"], "1.500s");
        let response = writer().response(&status);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn a_status_without_details_is_still_a_status() {
        let body = json(&tonic::Status::internal("boom"));
        assert_eq!(body, serde_json::json!({"code": 13, "message": "boom"}));
    }

    #[test]
    fn codes_map_to_googles_http_statuses() {
        let table = [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::OutOfRange, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::Aborted, 409),
            (Code::ResourceExhausted, 429),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::Internal, 500),
            (Code::DataLoss, 500),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
        ];
        for (code, http) in table {
            let status = tonic::Status::new(code, "m");
            assert_eq!(http_status(&status).as_u16(), http, "{code:?}");
            let retry = writer().response(&status);
            assert_eq!(
                retry.headers().contains_key(header::RETRY_AFTER),
                matches!(code, Code::ResourceExhausted | Code::Unavailable),
                "{code:?}"
            );
        }
    }
}
