//! In-process OTLP receivers on ephemeral loopback ports: traces over gRPC (opentelemetry-proto's
//! tonic server) and over plain HTTP (http/protobuf), metrics over gRPC; and the helpers that
//! read the spans they got.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// Spans the receiver got, in arrival order.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    pub fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }

    fn push(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC trace receiver on an ephemeral port.
pub async fn grpc_receiver() -> (Received, SocketAddr) {
    let received = Received::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(received.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (received, addr)
}

/// An OTLP/HTTP (protobuf) trace receiver on an ephemeral port: `POST /v1/traces`.
pub async fn http_receiver() -> (Received, SocketAddr) {
    use axum::routing::post;
    let received = Received::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = received.clone();
    let router = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.push(ExportTraceServiceRequest::decode(body).unwrap());
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    (received, addr)
}

/// What an OTLP/gRPC metrics receiver got: the names of the metrics in every export.
#[derive(Clone, Default)]
pub struct ReceivedMetrics(pub Arc<Mutex<Vec<String>>>);

#[tonic::async_trait]
impl MetricsService for ReceivedMetrics {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let names = request
            .into_inner()
            .resource_metrics
            .into_iter()
            .flat_map(|r| r.scope_metrics)
            .flat_map(|s| s.metrics)
            .map(|m| m.name);
        self.0.lock().unwrap().extend(names);
        Ok(tonic::Response::new(Default::default()))
    }
}

/// An OTLP/gRPC metrics receiver on an ephemeral port.
pub async fn metrics_receiver() -> (ReceivedMetrics, SocketAddr) {
    let received = ReceivedMetrics::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(received.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (received, addr)
}

/// Trace and span ids as the W3C `traceparent` writes them.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn attributes(span: &Span) -> HashMap<String, Value> {
    span.attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?.value?)))
        .collect()
}

pub fn string(span: &Span, key: &str) -> String {
    match attributes(span).get(key) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("{} has no string {key}: {other:?}", span.name),
    }
}

pub fn int(span: &Span, key: &str) -> i64 {
    match attributes(span).get(key) {
        Some(Value::IntValue(i)) => *i,
        other => panic!("{} has no int {key}: {other:?}", span.name),
    }
}

pub fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// Whether `span` descends from `ancestor` within `spans`.
pub fn descends(spans: &[Span], span: &Span, ancestor: &Span) -> bool {
    let mut parent = span.parent_span_id.clone();
    while !parent.is_empty() {
        if parent == ancestor.span_id {
            return true;
        }
        parent = spans
            .iter()
            .find(|s| s.span_id == parent)
            .map(|s| s.parent_span_id.clone())
            .unwrap_or_default();
    }
    false
}
