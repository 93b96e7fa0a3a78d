//! The telemetry of one JSON call: its SERVER span with the HTTP semantic conventions
//! (continuing the caller's `traceparent`), the RPC metrics labelled with its route, and its
//! access line.

use std::time::Instant;

use http::{Method, StatusCode, header};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::Code;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tracing::field::Empty;
use tracing::{Dispatch, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::routes::Route;
use crate::telemetry::rpc::{CallNote, code_name};
use crate::telemetry::{Metrics, Telemetry};

/// One JSON call being served: its SERVER span, metrics and access line, finished once when
/// its status is known, or as cancelled (499) if the caller goes away first.
pub(super) struct HttpCall {
    pub(super) span: Span,
    dispatch: Dispatch,
    route: String,
    http_method: Method,
    rpc_method: String,
    metrics: Metrics,
    /// Where the gate notes the caller it admitted.
    pub(super) note: CallNote,
    started: Instant,
    done: bool,
}

impl HttpCall {
    pub(super) fn start(
        telemetry: &Telemetry,
        route: &Route,
        parts: &http::request::Parts,
    ) -> Self {
        let rpc_method = route.grpc_path.trim_start_matches('/').to_string();
        let connection = parts.extensions.get::<TcpConnectInfo>().or_else(|| {
            parts
                .extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(TlsConnectInfo::get_ref)
        });
        let peer = connection.and_then(TcpConnectInfo::remote_addr);
        let tls = parts
            .extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .is_some();
        let version = match parts.version {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        };
        let span = tracing::info_span!(
            "http",
            otel.name = %format!("{} {}", parts.method, route.template),
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = %parts.method,
            http.route = %route.template,
            http.response.status_code = Empty,
            url.path = %parts.uri.path(),
            url.scheme = if tls { "https" } else { "http" },
            network.protocol.name = "http",
            network.protocol.version = version,
            user_agent.original = parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
            client.address = peer.map(|p| p.ip().to_string()),
            client.port = peer.map(|p| i64::from(p.port())),
            rpc.method = %rpc_method,
            rpc.response.status_code = Empty,
            error.type = Empty,
            enduser.id = Empty,
        );
        let parent = TraceContextPropagator::new()
            .extract(&opentelemetry_http::HeaderExtractor(&parts.headers));
        // Before anything reads the span's context (tracing-opentelemetry's rule).
        let _ = span.set_parent(parent);
        let metrics = telemetry.metrics().clone();
        metrics.json_started(&rpc_method, &route.template);
        Self {
            span,
            dispatch: telemetry.dispatch().clone(),
            route: route.template.clone(),
            http_method: parts.method.clone(),
            rpc_method,
            metrics,
            note: CallNote::default(),
            started: Instant::now(),
            done: false,
        }
    }

    pub(super) fn finish(&mut self, code: Code, http: StatusCode) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let name = code_name(code);
        self.span
            .record("http.response.status_code", i64::from(http.as_u16()));
        self.span.record("rpc.response.status_code", name);
        // HTTP semantic conventions: only 5xx marks a server span as failed.
        if http.is_server_error() {
            self.span.record("otel.status_code", "ERROR");
            self.span.record("error.type", name);
        }
        self.metrics
            .json_finished(&self.rpc_method, &self.route, name, elapsed);
        let caller = self.note.caller();
        tracing::dispatcher::with_default(&self.dispatch, || {
            self.span.in_scope(|| {
                tracing::info!(
                    target: "dds_gateway::access",
                    method = %self.rpc_method,
                    http_method = %self.http_method,
                    route = %self.route,
                    http_status = http.as_u16(),
                    grpc_code = name,
                    duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                    caller = %caller,
                    "call"
                );
            });
        });
    }
}

impl Drop for HttpCall {
    fn drop(&mut self) {
        // The caller went away before the answer was complete.
        self.finish(
            Code::Cancelled,
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        );
    }
}
