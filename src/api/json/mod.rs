//! JSON over HTTP on the gRPC port. A request whose content type is not `application/grpc*` is
//! matched against the routes of the proto's `google.api.http` options ([`routes`]), turned
//! into the gRPC call of that RPC ([`message`]) and sent down the same stack as every gRPC call:
//! the gate (caller, rate, in-flight place, message deadline), then the service (validation,
//! policy, idempotency, preflight, audit). There is no second implementation of the API here.
//! The gRPC answer comes back as JSON, a stream as newline-delimited JSON, an error as the JSON
//! `google.rpc.Status` with Google's HTTP status ([`status`]). HTTP/1.1 and HTTP/2 both work.
//!
//! The caller's deadline is a `timeout` query parameter or header (e.g. `30s`, `1500ms`), sent on
//! as `grpc-timeout` and so bounded like a gRPC caller's. Each call has a SERVER span with the
//! HTTP semantic conventions, the RPC metrics with the route as `http.route`, and an access line
//! (`call`); the request and streamed answer bodies are in `body`.

mod body;
mod call;
pub(crate) mod message;
pub(crate) mod request_error;
pub(crate) mod routes;
pub(crate) mod status;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use prost_reflect::MessageDescriptor;
use tonic::Code;
use tonic::body::Body;
use tracing::instrument::Instrument as _;

use crate::api::error::Error;
use crate::api::service::{RECONCILED_HEADER, REPLAYED_HEADER};
use crate::telemetry::Telemetry;
use crate::telemetry::rpc::CallNote;
use body::{JsonLines, MessageBody};
use call::HttpCall;
pub(crate) use request_error::RequestError;
use routes::{Route, Routes, Selected};
use status::{StatusWriter, internal};

/// The content type of a streamed answer: one JSON message per line.
const NDJSON: HeaderValue = HeaderValue::from_static("application/x-ndjson");
/// The query parameter and header that carry the caller's deadline.
const TIMEOUT: &str = "timeout";

/// The tower layer; add it inside the RPC telemetry layer and outside everything that must see
/// the call as gRPC (the deadline, the error details, the gate).
#[derive(Debug, Clone)]
pub(crate) struct JsonLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    routes: Routes,
    statuses: StatusWriter,
    telemetry: Telemetry,
    /// `server.max_request_bytes`, for the JSON body.
    max_body: usize,
}

impl JsonLayer {
    /// The routes of the gateway's services, from their descriptor; the error says what in the
    /// proto's annotations is not supported.
    pub(crate) fn new(telemetry: Telemetry, max_request_bytes: usize) -> Result<Self, String> {
        let routes = Routes::of_package(crate::pb::FILE_DESCRIPTOR_SET, crate::pb::PACKAGE)
            .map_err(|e| e.to_string())?;
        let statuses = StatusWriter::new(crate::pb::GOOGLE_RPC_DESCRIPTOR_SET)?;
        Ok(Self {
            shared: Arc::new(Shared {
                routes,
                statuses,
                telemetry,
                max_body: max_request_bytes,
            }),
        })
    }

    /// `METHOD template` of every route, for the start-up log.
    pub(crate) fn describe(&self) -> String {
        self.shared.routes_text()
    }
}

impl<S> tower::Layer<S> for JsonLayer {
    type Service = JsonService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        JsonService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// See [`JsonLayer`].
#[derive(Debug, Clone)]
pub(crate) struct JsonService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> tower::Service<http::Request<Body>> for JsonService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready is the one called.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        if is_grpc(request.headers()) {
            let mut inner = inner;
            return Box::pin(inner.call(request));
        }
        let shared = Arc::clone(&self.shared);
        let head = request.method() == Method::HEAD;
        Box::pin(async move {
            let response = shared.serve(inner, request).await?;
            Ok(if head {
                without_body(response)
            } else {
                response
            })
        })
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl Shared {
    fn routes_text(&self) -> String {
        self.routes
            .iter()
            .map(|r| format!("{} {}", r.method, r.template))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One JSON request, start to answer.
    async fn serve<S>(
        &self,
        mut inner: S,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, S::Error>
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    {
        let (parts, body) = request.into_parts();
        // One limit for both protocols: HTTP/2 refuses more metadata itself.
        let size = header_list_size(&parts.headers);
        if size > crate::api::MAX_HEADER_LIST_BYTES {
            return Ok(self.refuse(RequestError::HeadersTooLarge {
                size,
                limit: crate::api::MAX_HEADER_LIST_BYTES,
            }));
        }
        // HEAD is GET without the answer's body (RFC 9110 9.3.2), where a GET route is.
        let method = if parts.method == Method::HEAD {
            &Method::GET
        } else {
            &parts.method
        };
        let (route, bound) = match self.routes.select(method, parts.uri.path()) {
            Selected::Route { route, bound } => (route, bound),
            Selected::MethodNotAllowed { mut allowed } => {
                if allowed.contains(&Method::GET) {
                    allowed.push(Method::HEAD);
                }
                let allowed = allowed
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                let err = RequestError::MethodNotAllowed {
                    method: clip(parts.method.as_str()),
                    path: clip(parts.uri.path()),
                    allowed: allowed.clone(),
                };
                let mut response = self.refuse(err);
                if let Ok(allow) = HeaderValue::from_str(&allowed) {
                    response.headers_mut().insert(header::ALLOW, allow);
                }
                return Ok(response);
            }
            Selected::NotFound => {
                tracing::info!(
                    method = %clip(parts.method.as_str()),
                    path = %clip(parts.uri.path()),
                    "HTTP request matched no route"
                );
                self.telemetry.metrics().route_missed();
                return Ok(self.refuse(RequestError::RouteNotFound {
                    method: clip(parts.method.as_str()),
                    path: clip(parts.uri.path()),
                    routes: self.routes_text(),
                }));
            }
        };
        let call = HttpCall::start(&self.telemetry, route, &parts);
        let span = call.span.clone();
        let prepared = span.in_scope(|| self.prepare(route, &parts));
        // What is wrong with the headers is the message's fault, answered once the gate has
        // authenticated the caller: a stranger hears 401, not 415 or 413.
        let (timeout, parameters, refused) = match prepared {
            Ok(Prepared {
                timeout,
                parameters,
            }) => (timeout, parameters, None),
            Err(err) => (None, Vec::new(), Some(err)),
        };

        // The message is read and parsed as the body of the gRPC call, so the gate has admitted
        // the caller first and bounds the wait for it, exactly as for a gRPC message.
        let input = route.input.clone();
        let max_body = self.max_body;
        let with_body = route.body;
        let message = async move {
            if let Some(err) = refused {
                return Err(tonic::Status::from(Error::from(err)));
            }
            let body = if with_body {
                Some(read_body(body, max_body).await?)
            } else {
                None
            };
            message::request(&input, bound, &parameters, body.as_deref())
                .map(|m| message::frame(&m))
                .map_err(|e| tonic::Status::from(Error::from(e)))
        };
        let grpc = grpc_request(parts, route, timeout, MessageBody::new(message), &call.note);
        let response = span
            .in_scope(|| inner.call(grpc))
            .instrument(span.clone())
            .await?;
        Ok(if route.streaming {
            self.stream(response, route.output.clone(), call)
                .instrument(span)
                .await
        } else {
            self.unary(response, &route.output, call)
                .instrument(span)
                .await
        })
    }

    /// An answer for a request that matched no route: no call, no span, only a debug line.
    fn refuse(&self, err: RequestError) -> http::Response<Body> {
        tracing::debug!(refused = %err, "JSON request refused");
        self.statuses
            .response(&tonic::Status::from(Error::from(err)))
    }

    /// What can be checked from the headers: the content type and size of a body, the
    /// deadline; and the query parameters that are left for the message.
    fn prepare(
        &self,
        route: &Route,
        parts: &http::request::Parts,
    ) -> Result<Prepared, RequestError> {
        let mut parameters: Vec<(String, String)> = parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let from_query = parameters.iter().position(|(name, _)| name == TIMEOUT);
        let timeout = match from_query {
            Some(i) => Some(parameters.remove(i).1),

            None => match parts.headers.get(TIMEOUT) {
                Some(value) => Some(value.to_str().map(str::to_string).map_err(|_| {
                    RequestError::InvalidParameter {
                        name: TIMEOUT.to_string(),
                        detail: "is not text".to_string(),
                    }
                })?),
                None => None,
            },
        };
        if parameters.iter().any(|(name, _)| name == TIMEOUT) {
            return Err(RequestError::InvalidParameter {
                name: TIMEOUT.to_string(),
                detail: "is given more than once".to_string(),
            });
        }
        let timeout = timeout.map(|t| parse_timeout(&t)).transpose()?;
        if route.body {
            if let Some((name, _)) = parameters.first() {
                return Err(RequestError::InvalidParameter {
                    name: name.clone(),
                    detail: "this route reads its fields from the JSON body; the query takes only timeout"
                        .to_string(),
                });
            }
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .map(|v| clip(&String::from_utf8_lossy(v.as_bytes())))
                .unwrap_or_default();
            if !is_json(&content_type) {
                return Err(RequestError::UnsupportedMediaType {
                    found: content_type,
                });
            }
            let length = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if length.is_some_and(|n| n > self.max_body as u64) {
                return Err(RequestError::TooLarge {
                    limit: self.max_body,
                });
            }
        }
        Ok(Prepared {
            timeout,
            parameters,
        })
    }

    /// A unary gRPC answer as JSON.
    async fn unary(
        &self,
        response: http::Response<Body>,
        output: &MessageDescriptor,
        mut call: HttpCall,
    ) -> http::Response<Body> {
        let (parts, body) = response.into_parts();
        let answer = match status::grpc_status(&parts.headers) {
            Some(status) => Err(status),
            None => match body.collect().await {
                Ok(collected) => {
                    let trailers = collected.trailers().cloned().unwrap_or_default();
                    let mut data = BytesMut::from(collected.to_bytes().as_ref());
                    match status::grpc_status(&trailers) {
                        Some(status) if status.code() != Code::Ok => Err(status),
                        Some(_) => match message::next_frame(&mut data) {
                            Ok(Some(payload)) => {
                                message::answer(output, &payload).map_err(|e| internal(&e))
                            }
                            Ok(None) => Err(internal("the answer had no message")),
                            Err(e) => Err(internal(&e)),
                        },
                        None => Err(internal("the answer had no status")),
                    }
                }
                Err(status) => Err(status),
            },
        };
        match answer {
            Ok(json) => {
                let mut response = http::Response::new(Body::new(Full::new(Bytes::from(json))));
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_TYPE, status::JSON);
                for name in [RECONCILED_HEADER, REPLAYED_HEADER] {
                    if let Some(value) = parts.headers.get(name) {
                        headers.insert(HeaderName::from_static(name), value.clone());
                    }
                }
                call.finish(Code::Ok, StatusCode::OK);
                response
            }
            Err(status) => {
                let response = self.statuses.response(&status);
                call.finish(status.code(), response.status());
                response
            }
        }
    }

    /// A streamed gRPC answer as newline-delimited JSON. Its status waits for the first frame:
    /// a failure before the first message (the first poll of a watch) is an ordinary error
    /// answer with its HTTP status, as for a unary call; only later ones are a last line.
    async fn stream(
        &self,
        response: http::Response<Body>,
        output: MessageDescriptor,
        mut call: HttpCall,
    ) -> http::Response<Body> {
        let (parts, mut body) = response.into_parts();
        let first = match status::grpc_status(&parts.headers) {
            Some(status) => Err(status),
            None => match body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => Ok(Some(data)),
                    Err(frame) => match frame.trailers_ref().and_then(status::grpc_status) {
                        Some(status) if status.code() == Code::Ok => Ok(None),
                        Some(status) => Err(status),
                        None => Err(internal("the answer's trailers had no status")),
                    },
                },
                Some(Err(status)) => Err(status),
                None => Err(internal("the answer ended without a status")),
            },
        };
        let first = match first {
            Ok(first) => first,
            Err(status) => {
                let response = self.statuses.response(&status);
                call.finish(status.code(), response.status());
                return response;
            }
        };
        let mut response = match first {
            Some(data) => http::Response::new(Body::new(JsonLines::new(
                data,
                body,
                output,
                self.statuses.clone(),
                call,
            ))),
            // A stream that ended well without a message.
            None => {
                call.finish(Code::Ok, StatusCode::OK);
                http::Response::new(Body::empty())
            }
        };
        response.headers_mut().insert(header::CONTENT_TYPE, NDJSON);
        response
    }
}

/// The answer to a HEAD request: GET's status and headers, its length, no body. Dropping the
/// body ends the call (a watch stops there).
fn without_body(response: http::Response<Body>) -> http::Response<Body> {
    let (mut parts, body) = response.into_parts();
    if let Some(length) = http_body::Body::size_hint(&body).exact() {
        parts.headers.insert(header::CONTENT_LENGTH, length.into());
    }
    http::Response::from_parts(parts, Body::empty())
}

/// What the headers of a JSON request say: its deadline, and the query parameters left for the
/// message.
struct Prepared {
    timeout: Option<Duration>,
    parameters: Vec<(String, String)>,
}

/// The size of a header list as HTTP/2 counts it (RFC 9113 6.5.2): name, value and 32 bytes
/// for each field.
fn header_list_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

/// A caller's text, cut to a length fit for an error message.
fn clip(text: &str) -> String {
    const MAX_CHARS: usize = 200;
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// `application/json`, with an optional `charset=utf-8`.
fn is_json(content_type: &str) -> bool {
    let mut parts = content_type.split(';').map(str::trim);
    let essence = parts.next().unwrap_or_default();
    essence.eq_ignore_ascii_case("application/json")
        && parts.all(|p| match p.split_once('=') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
                value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
            }
            _ => true,
        })
}

/// A positive duration like `30s`, `1500ms` or `2m`.
fn parse_timeout(text: &str) -> Result<Duration, RequestError> {
    match humantime::parse_duration(text.trim()) {
        Ok(timeout) if !timeout.is_zero() => Ok(timeout),
        Ok(_) => Err(RequestError::InvalidParameter {
            name: TIMEOUT.to_string(),
            detail: "must be more than zero".to_string(),
        }),
        Err(err) => Err(RequestError::InvalidParameter {
            name: TIMEOUT.to_string(),
            detail: format!("{text:?} is not a duration like 30s or 1500ms: {err}"),
        }),
    }
}

/// `grpc-timeout` for `timeout`: at most 8 digits, in the finest unit that fits.
fn grpc_timeout(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let micros = timeout.as_micros();
    if micros <= MAX {
        format!("{micros}u")
    } else if timeout.as_millis() <= MAX {
        format!("{}m", timeout.as_millis())
    } else {
        format!("{}S", u128::from(timeout.as_secs()).min(MAX))
    }
}

/// Reads a JSON body of at most `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, tonic::Status> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => {
            let err = if err.downcast_ref::<LengthLimitError>().is_some() {
                RequestError::TooLarge { limit }
            } else {
                RequestError::BodyUnreadable(err.to_string())
            };
            Err(tonic::Status::from(Error::from(err)))
        }
    }
}

/// Headers that describe the HTTP exchange itself, not the call, and are not passed on.
fn passes_on(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "content-type"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "upgrade"
            | "te"
            | "host"
            | "expect"
            | "accept"
            | "accept-encoding"
            | TIMEOUT
    ) && !name.as_str().starts_with("grpc-")
}

/// The gRPC call of `route`: the caller's headers (its token, trace context) and connection
/// (peer address, client certificate), the deadline as `grpc-timeout`, and `message` as body.
fn grpc_request(
    parts: http::request::Parts,
    route: &Route,
    timeout: Option<Duration>,
    message: MessageBody,
    note: &CallNote,
) -> http::Request<Body> {
    let mut request = http::Request::new(Body::new(message));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = route.grpc_uri.clone();
    *request.version_mut() = http::Version::HTTP_2;
    let headers = request.headers_mut();
    for (name, value) in &parts.headers {
        if passes_on(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    if let Some(timeout) = timeout
        && let Ok(value) = HeaderValue::from_str(&grpc_timeout(timeout))
    {
        headers.insert("grpc-timeout", value);
    }
    *request.extensions_mut() = parts.extensions;
    request.extensions_mut().insert(note.clone());
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_become_grpc_timeouts() {
        assert_eq!(parse_timeout("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_timeout("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        for bad in ["0s", "soon", "", "-1s", "30"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
        assert_eq!(grpc_timeout(Duration::from_millis(1500)), "1500000u");
        assert_eq!(grpc_timeout(Duration::from_secs(3600)), "3600000m");
        assert_eq!(grpc_timeout(Duration::from_secs(10_000_000)), "10000000S");
        assert_eq!(grpc_timeout(Duration::from_secs(u64::MAX)), "99999999S");
    }

    #[test]
    fn long_caller_text_is_clipped_on_a_char_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(300);
        assert_eq!(clip(&long), format!("{}...", "é".repeat(200)));
    }

    #[test]
    fn json_content_types() {
        for good in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(is_json(good), "{good}");
        }
        for bad in [
            "",
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin1",
            "application/jsonp",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
    }

    #[test]
    fn only_the_calls_own_headers_pass_on() {
        for name in ["authorization", "traceparent", "user-agent", "x-request-id"] {
            assert!(passes_on(&HeaderName::from_static(name)), "{name}");
        }
        for name in [
            "content-type",
            "grpc-timeout",
            "timeout",
            "te",
            "host",
            "accept",
        ] {
            assert!(!passes_on(&HeaderName::from_static(name)), "{name}");
        }
    }
}
