//! The outermost layer of the gRPC server: for every call of the gateway's service, a SERVER
//! span that continues the caller's W3C `traceparent`, the RPC metrics (count and latency by
//! gRPC code, calls in flight), and one concise access log line when the status is known.
//!
//! The status of a gRPC call is usually in the trailers, after the body, so the layer watches
//! the response body for them; a body dropped before its trailers is a cancelled call. Every
//! call also runs inside the gateway's own `tracing` dispatcher (see [`super`]).
//!
//! Semantic conventions: both the older (`rpc.system`, `rpc.service`, `rpc.grpc.status_code`)
//! and the newer (`rpc.system.name`, `rpc.response.status_code`) names. `rpc.method` cannot be
//! both: it carries the newer, fully qualified `pkg.Service/Method`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::Code;
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;
use tracing::field::Empty;
use tracing::instrument::{Instrument as _, WithSubscriber as _};
use tracing::{Dispatch, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{Metrics, Telemetry};

/// Calls under this path prefix are traced (health checks and reflection are not).
const TRACED_PREFIX: &str = "/dds.gateway.v1.";

/// The gateway's methods, the only values of the `rpc.method` label and attribute.
const METHODS: &[&str] = &[
    "dds.gateway.v1.EngineVersionService/UpgradeEngineVersion",
    "dds.gateway.v1.EngineVersionService/GetEngineVersion",
    "dds.gateway.v1.EngineVersionService/WatchUpgrade",
    "dds.gateway.v1.EngineVersionService/GetCaller",
    "dds.gateway.v1.EngineVersionService/ListEngineVersions",
    "dds.gateway.v1.EngineVersionService/ListActivity",
    "dds.gateway.v1.EngineVersionService/ListInstances",
];

/// What stands for every other path: a path is whatever the caller sent, authenticated or not,
/// so it never becomes a label, a span name or a log field as it is.
pub(crate) const UNKNOWN_METHOD: &str = "unknown";

/// The `pkg.Service/Method` a request path names, or [`UNKNOWN_METHOD`].
pub(crate) fn method_label(path: &str) -> &'static str {
    let method = path.strip_prefix('/').unwrap_or(path);
    METHODS
        .iter()
        .find(|known| **known == method)
        .copied()
        .unwrap_or(UNKNOWN_METHOD)
}

/// What the service learns about a call that the access line and audit want: the caller.
/// The layer puts one in the request's extensions; the service fills it in.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallNote(Arc<Mutex<Option<String>>>);

impl CallNote {
    /// Records the authenticated caller of this call.
    pub(crate) fn set_caller(&self, caller: &str) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(caller.to_string());
        }
    }

    /// The caller recorded, or "" when none was.
    pub(crate) fn caller(&self) -> String {
        self.0
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .unwrap_or_default()
    }
}

/// Records the caller on the call's note (if any, in the request's `extensions`) and on the
/// current span; the gate calls it when it admits a caller.
pub(crate) fn note_caller(extensions: &http::Extensions, caller: &str) {
    if let Some(note) = extensions.get::<CallNote>() {
        note.set_caller(caller);
    }
    Span::current().record("enduser.id", caller);
}

/// The tower layer; add it first, so it wraps everything else.
#[derive(Debug, Clone)]
pub(crate) struct RpcLayer {
    telemetry: Telemetry,
}

impl RpcLayer {
    pub(crate) fn new(telemetry: Telemetry) -> Self {
        Self { telemetry }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            telemetry: self.telemetry.clone(),
        }
    }
}

/// See [`RpcLayer`].
#[derive(Debug, Clone)]
pub(crate) struct RpcService<S> {
    inner: S,
    telemetry: Telemetry,
}

impl<S> tower::Service<http::Request<Body>> for RpcService<S>
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

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let dispatch = self.telemetry.dispatch().clone();
        let _default = tracing::dispatcher::set_default(&dispatch);
        // The clone that was made ready is the one called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !request.uri().path().starts_with(TRACED_PREFIX) {
            return Box::pin(inner.call(request).with_subscriber(dispatch));
        }
        let method = method_label(request.uri().path());
        let span = server_span(&request, method);
        let note = CallNote::default();
        request.extensions_mut().insert(note.clone());
        let metrics = self.telemetry.metrics().clone();
        metrics.rpc_started(method);
        let mut call = Call {
            span: span.clone(),
            dispatch: dispatch.clone(),
            method,
            metrics,
            note,
            started: Instant::now(),
            done: false,
        };
        let future = span.in_scope(|| inner.call(request));
        Box::pin(
            async move {
                let response = future.await;
                Ok(match response {
                    Ok(response) => {
                        let (parts, body) = response.into_parts();
                        // A "trailers-only" answer has its status in the headers.
                        if let Some(code) = header_status(&parts.headers) {
                            call.finish(code);
                        }
                        http::Response::from_parts(parts, Body::new(Observed { body, call }))
                    }
                    Err(err) => {
                        call.finish(Code::Unknown);
                        return Err(err);
                    }
                })
            }
            .instrument(span)
            .with_subscriber(dispatch),
        )
    }
}

/// The SERVER span of a call, child of the caller's `traceparent` when there is one.
fn server_span(request: &http::Request<Body>, method: &str) -> Span {
    let service = method
        .split_once('/')
        .map_or(method, |(service, _)| service);
    let peer = request
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr);
    let span = tracing::info_span!(
        "rpc",
        otel.name = %method,
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.system.name = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = Empty,
        rpc.response.status_code = Empty,
        error.type = Empty,
        client.address = peer.map(|p| p.ip().to_string()),
        client.port = peer.map(|p| i64::from(p.port())),
        enduser.id = Empty,
    );
    let parent = TraceContextPropagator::new()
        .extract(&opentelemetry_http::HeaderExtractor(request.headers()));
    // Before anything reads the span's context (tracing-opentelemetry's rule).
    let _ = span.set_parent(parent);
    span
}

/// `grpc-status` of a header or trailer map.
fn header_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.trim().parse().ok()?))
}

/// Whether a call that ended with `code` failed by the caller's own mistake (a request that is
/// not valid, names nothing that exists, or is out of range): worth an info line, not a warning
/// for whoever runs the gateway.
pub(crate) fn callers_mistake(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument | Code::OutOfRange | Code::NotFound
    )
}

/// The UPPER_SNAKE_CASE name of a gRPC code, as `rpc.response.status_code` spells it.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One call being served, finished once when its status is known (or it is dropped).
struct Call {
    span: Span,
    dispatch: Dispatch,
    method: &'static str,
    metrics: Metrics,
    note: CallNote,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let name = code_name(code);
        self.span.record("rpc.grpc.status_code", code as i32);
        self.span.record("rpc.response.status_code", name);
        // Only these mark a server span as failed: the others are the caller's doing.
        if matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ) {
            self.span.record("otel.status_code", "ERROR");
            self.span.record("error.type", name);
        }
        self.metrics.rpc_finished(self.method, name, elapsed);
        let caller = self.note.caller();
        tracing::dispatcher::with_default(&self.dispatch, || {
            self.span.in_scope(|| {
                tracing::info!(
                    target: "dds_gateway::access",
                    method = %self.method,
                    grpc_code = name,
                    duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                    caller = %caller,
                    "call"
                );
            });
        });
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // The body went away before its trailers: the caller cancelled (or the connection died).
        self.finish(Code::Cancelled);
    }
}

/// A response body that finishes its [`Call`] at the trailers.
struct Observed {
    body: Body,
    call: Call,
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(header_status) {
                    this.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish(Code::Unknown),
            // Ended without trailers: a trailers-only answer was finished from its headers.
            Poll::Ready(None) => this.call.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_services_methods_are_labels() {
        // Every rpc of the proto is known: a new one must be added to METHODS.
        let proto = include_str!("../../proto/dds/gateway/v1/gateway.proto");
        let declared: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .filter_map(|l| l.split('(').next())
            .map(str::trim)
            .collect();
        assert_eq!(declared.len(), METHODS.len(), "{declared:?}");
        for name in declared {
            let path = format!("/dds.gateway.v1.EngineVersionService/{name}");
            assert_eq!(method_label(&path), &path[1..]);
        }
        for junk in [
            "/dds.gateway.v1.EngineVersionService/Nope",
            "/dds.gateway.v1.Junk/UpgradeEngineVersion",
            "/dds.gateway.v1.EngineVersionService/UpgradeEngineVersion/x",
            "/dds.gateway.v1.EngineVersionService/upgradeengineversion",
            "",
            "/",
        ] {
            assert_eq!(method_label(junk), UNKNOWN_METHOD, "{junk}");
        }
    }
}
