//! Answers in Alibaba's shapes: JSON bodies, the error body with its `RequestId`, `HostId` and
//! `Recommend`, and request ids.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The sandbox's host name in `HostId`.
const HOST_ID: &str = "mongodb.sandbox.local";

/// An Alibaba-shaped error answer.
pub(super) fn error(status: u16, code: &str, message: &str) -> Response {
    let request_id = new_request_id();
    let body = json!({
        "RequestId": request_id,
        "HostId": HOST_ID,
        "Code": code,
        "Message": message,
        "Recommend": format!("https://api.alibabacloud.com/troubleshoot?q={code}&product=Dds&requestId={request_id}"),
    });
    json_response(status, &body)
}

/// [`error`], boxed for `Result`s (a response is large).
pub(super) fn reject(status: u16, code: &str, message: &str) -> Box<Response> {
    Box::new(error(status, code, message))
}

/// A JSON answer; a status outside HTTP's range becomes 500.
pub(super) fn json_response(status: u16, body: &serde_json::Value) -> Response {
    (
        status_code(status),
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

/// `status` as an HTTP status, 500 when it is not one (faults take any `u16`).
pub(super) fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A new `RequestId`: an upper-case UUID, as Alibaba's.
pub(super) fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string().to_uppercase()
}
