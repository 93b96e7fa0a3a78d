//! The CLIENT span of one Alibaba Cloud request attempt, named `Dds.<Action>`, with the HTTP
//! client conventions (`http.request.method`, `server.address`, `url.full` with credentials
//! redacted, `http.response.status_code`), `cloud.provider=alibaba_cloud`, `cloud.region`,
//! Alibaba's `RequestId` and error `Code`, and the attempt number.
//!
//! `reqwest-tracing` lags OpenTelemetry 0.33, so [`AlibabaClient::send`](crate::alibaba::AlibabaClient::send)
//! opens this span itself around the send and injects `traceparent` (Alibaba ignores it; it is
//! there for proxies and for symmetry).

use std::future::Future;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use reqwest::Url;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::dds::PRODUCT;
use super::response::{Answer, CallError};

/// The `tracing` name of an attempt's span (the OpenTelemetry name is `Dds.<Action>`).
pub(crate) const SPAN_NAME: &str = "alibaba.request";
const HTTP_STATUS: &str = "http.response.status_code";
const ERROR_CODE: &str = "alibaba_cloud.error_code";
const ERROR_TYPE: &str = "error.type";
const REQUEST_ID: &str = "alibaba_cloud.request_id";

/// Query parameters whose values never appear in `url.full`.
const SENSITIVE_PARAMS: &[&str] = &[
    "Signature",
    "AccessKeyId",
    "SecurityToken",
    "SignatureNonce",
    "x-acs-security-token",
];

tokio::task_local! {
    /// The attempt number of the upstream call being made, set by the retry loop.
    static ATTEMPT: u32;
}

/// Runs one attempt (`number` counts from 1) so that its span carries the number.
///
/// A plain function, not an `async fn`: an `async fn` would keep `attempt` as an argument beside
/// the scope it moves it into, doubling the size of every call's future (each call in flight
/// or in line holds one, and spawning it copies it).
pub(crate) fn attempt<F: Future>(number: u32, attempt: F) -> impl Future<Output = F::Output> {
    ATTEMPT.scope(number, attempt)
}

/// The span of one attempt to send `action` to `url`. Enter it (or instrument the send with
/// it) and finish with [`record`].
pub(crate) fn span(action: &'static str, region_id: &str, url: &Url) -> Span {
    let attempt = ATTEMPT.try_with(|n| *n).unwrap_or(1);
    let span = tracing::info_span!(
        SPAN_NAME,
        otel.name = %format_args!("{}.{action}", PRODUCT),
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = "POST",
        server.address = url.host_str().unwrap_or_default(),
        server.port = i64::from(url.port_or_known_default().unwrap_or_default()),
        url.full = %redacted(url),
        http.response.status_code = Empty,
        http.request.resend_count = Empty,
        error.type = Empty,
        cloud.provider = "alibaba_cloud",
        cloud.region = region_id,
        alibaba_cloud.action = action,
        alibaba_cloud.attempt = i64::from(attempt),
        alibaba_cloud.request_id = Empty,
        alibaba_cloud.error_code = Empty,
    );
    if attempt > 1 {
        span.record("http.request.resend_count", i64::from(attempt - 1));
    }
    span
}

/// W3C trace context headers (`traceparent`) naming `span` as the parent.
pub(crate) fn trace_headers(span: &Span) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    TraceContextPropagator::new().inject_context(
        &span.context(),
        &mut opentelemetry_http::HeaderInjector(&mut headers),
    );
    headers
}

/// Records what came of the attempt on its span.
pub(crate) fn record(span: &Span, result: &Result<Answer, CallError>) {
    match result {
        Ok(answer) => {
            span.record(HTTP_STATUS, i64::from(answer.http_status));
            if let Some(request_id) = request_id(&answer.bytes) {
                span.record(REQUEST_ID, request_id.as_str());
            }
        }
        Err(err) => {
            span.record("otel.status_code", "ERROR");
            match err {
                CallError::Upstream(e) => {
                    span.record(HTTP_STATUS, i64::from(e.http_status));
                    span.record(ERROR_CODE, e.code.as_str());
                    span.record(ERROR_TYPE, e.code.as_str());
                    if let Some(request_id) = &e.request_id {
                        span.record(REQUEST_ID, request_id.as_str());
                    }
                }
                CallError::Unreadable { http_status } => {
                    span.record(HTTP_STATUS, i64::from(*http_status));
                    span.record(ERROR_TYPE, "unreadable");
                }
                CallError::Unreachable(_) => {
                    span.record(ERROR_TYPE, "unreachable");
                }
                CallError::OutcomeUnknown(_) => {
                    span.record(ERROR_TYPE, "no_answer");
                }
                CallError::Credentials(_)
                | CallError::Unsupported(_)
                | CallError::QuotaExhausted { .. }
                | CallError::DeadlinePassed => {
                    span.record(ERROR_TYPE, "_OTHER");
                }
            }
        }
    }
}

/// What came of an attempt, as the metric `dds_gateway_upstream_requests_total` labels it: `ok`,
/// `alibaba_error` (with Alibaba's error `Code`), or the span's `error.type` for other failures.
pub(crate) fn outcome(result: &Result<Answer, CallError>) -> (&'static str, Option<&str>) {
    match result {
        Ok(answer) if (200..300).contains(&answer.http_status) => ("ok", None),
        Ok(_) => ("unknown", None),
        Err(CallError::Upstream(e)) => ("alibaba_error", Some(e.code.as_str())),
        Err(CallError::Unreadable { .. }) => ("unreadable", None),
        Err(CallError::Unreachable(_)) => ("unreachable", None),
        Err(CallError::OutcomeUnknown(_)) => ("no_answer", None),
        Err(CallError::QuotaExhausted { .. }) => ("quota_exhausted", None),
        Err(CallError::Credentials(_) | CallError::Unsupported(_) | CallError::DeadlinePassed) => {
            ("_OTHER", None)
        }
    }
}

/// The span of resolving (or refreshing) the gateway's credential before a request.
pub(crate) fn credentials_span() -> Span {
    tracing::info_span!("credentials.resolve")
}

/// `url` without userinfo and with the values of credential parameters replaced by
/// `REDACTED` (the OpenTelemetry convention for `url.full`).
pub(crate) fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let sensitive = SENSITIVE_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(&k));
                let value = if sensitive { "REDACTED".into() } else { v };
                (k.into_owned(), value.into_owned())
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Alibaba's `RequestId` in a successful answer.
fn request_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct WithRequestId {
        #[serde(rename = "RequestId")]
        request_id: Option<String>,
    }
    serde_json::from_slice::<WithRequestId>(body)
        .ok()
        .and_then(|b| b.request_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_full_never_carries_credentials() {
        let url: Url = "https://user:pw@mongodb.aliyuncs.com/?Action=X&AccessKeyId=LTAIkey&Signature=c2ln&SecurityToken=tok&signaturenonce=n1"
            .parse()
            .unwrap();
        let shown = redacted(&url);
        for secret in ["user", "pw", "LTAIkey", "c2ln", "tok", "n1"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.starts_with("https://mongodb.aliyuncs.com/?Action=X&AccessKeyId=REDACTED"));
        assert_eq!(
            redacted(&"http://127.0.0.1:8080/".parse().unwrap()),
            "http://127.0.0.1:8080/"
        );
    }

    #[test]
    fn request_id_of_an_answer() {
        assert_eq!(
            request_id(br#"{"RequestId":"R-1","Other":2}"#).as_deref(),
            Some("R-1")
        );
        assert_eq!(request_id(b"not json"), None);
    }

    #[tokio::test]
    async fn attempts_are_numbered_by_the_retry_loop() {
        assert_eq!(ATTEMPT.try_with(|n| *n).ok(), None);
        let seen = attempt(3, async { ATTEMPT.try_with(|n| *n).ok() }).await;
        assert_eq!(seen, Some(3));
    }
}
