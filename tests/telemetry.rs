//! Telemetry end to end: the gateway in front of the sandbox, exporting to an in-process OTLP
//! receiver (opentelemetry-proto's tonic server, and a plain HTTP one for http/protobuf).
//! Asserts the span tree, the parent taken from the caller's `traceparent`, the attributes, the
//! absence of secrets, the Prometheus endpoint, log lines with trace ids, and the audit file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/fake_cloud.rs"]
mod fake_cloud;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use common::{default_config, request, wait_until};
use dds_gateway::alibaba::credentials::StaticProvider;
use dds_gateway::config::Config;
use dds_gateway::pb;
use dds_gateway::pb::engine_version_service_client::EngineVersionServiceClient;
use dds_gateway::sandbox::{self, Sandbox, SandboxConfig};
use dds_gateway::server;
use dds_gateway::telemetry::{LogOutput, Otlp, Protocol, Telemetry};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
const SECURITY_TOKEN: &str = "sts-token-never-exported";

/// Spans the receiver got, in arrival order.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    fn spans(&self) -> Vec<Span> {
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

/// An OTLP/gRPC receiver on an ephemeral port.
async fn grpc_receiver() -> (Received, SocketAddr) {
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

/// An OTLP/HTTP (protobuf) receiver on an ephemeral port: `POST /v1/traces`.
async fn http_receiver() -> (Received, SocketAddr) {
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

/// A gateway in front of a sandbox whose credential carries a security token, with its own
/// telemetry pipeline (logs into a buffer).
struct Traced {
    sandbox: Sandbox,
    addr: SocketAddr,
    telemetry: Telemetry,
    logs: Arc<Mutex<Vec<u8>>>,
    channel: tonic::transport::Channel,
    client: EngineVersionServiceClient<tonic::transport::Channel>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), server::ServeError>>,
}

impl Traced {
    async fn start(configure: impl FnOnce(&mut Config)) -> Self {
        let sandbox = Sandbox::start(SandboxConfig {
            security_token: Some(SECURITY_TOKEN.to_string()),
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
        let mut config = default_config();
        config.alibaba.endpoint = Some(sandbox.endpoint());
        config.alibaba.preflight = true;
        config.telemetry.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        configure(&mut config);
        let logs = Arc::new(Mutex::new(Vec::new()));
        let telemetry = Telemetry::new(
            &config.telemetry,
            LogOutput::Buffer(Arc::clone(&logs)),
            tracing_subscriber::EnvFilter::new("info"),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve_with(
            config,
            Arc::new(StaticProvider::new(sandbox.credential())),
            listener,
            async {
                let _ = stopped.await;
            },
            telemetry.clone(),
        ));
        let channel = common::channel(addr).await;
        let client = EngineVersionServiceClient::new(channel.clone());
        Self {
            sandbox,
            addr,
            telemetry,
            logs,
            channel,
            client,
            stop: Some(stop),
            task,
        }
    }

    /// Calls UpgradeEngineVersion as a caller inside trace [`TRACE_ID`].
    async fn upgrade(
        &self,
        message: pb::UpgradeEngineVersionRequest,
    ) -> Result<tonic::Response<pb::UpgradeEngineVersionResponse>, tonic::Status> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            "traceparent",
            format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
                .parse()
                .unwrap(),
        );
        self.client.clone().upgrade_engine_version(request).await
    }

    async fn metrics(&self) -> String {
        let telemetry = self.telemetry.clone();
        wait_until("the admin endpoint listens", || {
            telemetry.admin_addr().is_some()
        })
        .await;
        let addr = self.telemetry.admin_addr().unwrap();
        let response = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        response.text().await.unwrap()
    }

    fn log_lines(&self) -> Vec<serde_json::Value> {
        String::from_utf8(self.logs.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Graceful shutdown: the server stops, then the pipeline flushes its spans.
    async fn shutdown(mut self) -> Sandbox {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
        self.telemetry.shutdown().await;
        self.sandbox
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(span: &Span) -> HashMap<String, Value> {
    span.attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?.value?)))
        .collect()
}

fn string(span: &Span, key: &str) -> String {
    match attributes(span).get(key) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("{} has no string {key}: {other:?}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attributes(span).get(key) {
        Some(Value::IntValue(i)) => *i,
        other => panic!("{} has no int {key}: {other:?}", span.name),
    }
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// Whether `span` descends from `ancestor` within `spans`.
fn descends(spans: &[Span], span: &Span, ancestor: &Span) -> bool {
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

const UPGRADE_METHOD: &str = "dds.gateway.v1.EngineVersionService/UpgradeEngineVersion";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_span_tree_continues_the_callers_trace() {
    let (received, receiver) = grpc_receiver().await;
    let gateway = Traced::start(|config| {
        config.telemetry.traces = Some(Otlp {
            endpoint: format!("http://{receiver}"),
            protocol: Protocol::Grpc,
        });
    })
    .await;
    let answer = gateway
        .upgrade(request("dds-sandbox01", "4.4"))
        .await
        .unwrap()
        .into_inner();
    let refused = gateway
        .upgrade(request("dds-sandboxforbidden", "5.0"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let logs = gateway.log_lines();
    let sandbox = gateway.shutdown().await;
    let spans = received.spans();

    // Two SERVER spans, children of the caller's span, in the caller's trace.
    let servers = named(&spans, UPGRADE_METHOD);
    assert_eq!(servers.len(), 2, "{spans:#?}");
    for server in &servers {
        assert_eq!(server.kind, SpanKind::Server as i32);
        assert_eq!(hex(&server.trace_id), TRACE_ID);
        assert_eq!(hex(&server.parent_span_id), PARENT_SPAN_ID);
        assert_eq!(string(server, "rpc.system"), "grpc");
        assert_eq!(string(server, "rpc.system.name"), "grpc");
        assert_eq!(
            string(server, "rpc.service"),
            "dds.gateway.v1.EngineVersionService"
        );
        assert_eq!(string(server, "rpc.method"), UPGRADE_METHOD);
    }
    let ok = servers
        .iter()
        .find(|s| string(s, "rpc.response.status_code") == "OK")
        .expect("the accepted upgrade's span");
    assert_eq!(int(ok, "rpc.grpc.status_code"), 0);
    let denied = servers
        .iter()
        .find(|s| string(s, "rpc.response.status_code") == "PERMISSION_DENIED")
        .expect("the refused upgrade's span");
    assert_eq!(int(denied, "rpc.grpc.status_code"), 7);

    // Children of the accepted call: validation, credentials, one CLIENT span per attempt.
    let under_ok = |name: &str| -> Vec<&Span> {
        named(&spans, name)
            .into_iter()
            .filter(|s| descends(&spans, s, ok))
            .collect()
    };
    assert_eq!(under_ok("validate").len(), 1);
    assert_eq!(under_ok("validate")[0].parent_span_id, ok.span_id);
    assert!(!under_ok("credentials.resolve").is_empty());
    let upgrades = under_ok("Dds.UpgradeDBInstanceEngineVersion");
    assert_eq!(upgrades.len(), 1, "one attempt, one span");
    let client = upgrades[0];
    assert_eq!(client.kind, SpanKind::Client as i32);
    assert_eq!(hex(&client.trace_id), TRACE_ID);
    assert_eq!(string(client, "http.request.method"), "POST");
    assert_eq!(string(client, "server.address"), "127.0.0.1");
    assert_eq!(string(client, "url.full"), sandbox.endpoint().to_string());
    assert_eq!(int(client, "http.response.status_code"), 200);
    assert_eq!(string(client, "cloud.provider"), "alibaba_cloud");
    assert_eq!(string(client, "cloud.region"), "cn-hangzhou");
    assert_eq!(
        string(client, "alibaba_cloud.request_id"),
        answer.alibaba_request_id
    );
    assert_eq!(int(client, "alibaba_cloud.attempt"), 1);
    assert_eq!(
        int(client, "server.port"),
        i64::from(sandbox.endpoint().port().unwrap())
    );
    assert!(
        !under_ok("Dds.DescribeDBInstanceAttribute").is_empty(),
        "the preflight's calls are in the tree too"
    );

    // The refused call's CLIENT span carries Alibaba's Code and RequestId.
    let forbidden = named(&spans, "Dds.DescribeDBInstanceAttribute")
        .into_iter()
        .chain(named(&spans, "Dds.DescribeAvailableEngineVersion"))
        .find(|s| {
            descends(&spans, s, denied) && attributes(s).contains_key("alibaba_cloud.error_code")
        })
        .expect("an upstream span with Alibaba's error Code");
    assert_eq!(
        string(forbidden, "alibaba_cloud.error_code"),
        "Forbidden.RAM"
    );
    assert_eq!(int(forbidden, "http.response.status_code"), 403);
    assert!(!string(forbidden, "alibaba_cloud.request_id").is_empty());

    // No secret anywhere in what was exported.
    let exported = format!("{spans:?}");
    let mut secrets = vec![
        sandbox::ACCESS_KEY_SECRET.to_string(),
        SECURITY_TOKEN.to_string(),
        sandbox::ACCESS_KEY_ID.to_string(),
    ];
    secrets.extend(
        sandbox
            .received()
            .iter()
            .filter_map(|r| r.params.get("Signature").cloned()),
    );
    for secret in &secrets {
        assert!(!exported.contains(secret.as_str()), "{secret} exported");
    }

    // One access line per call at info, carrying the caller's trace id and the call's span id.
    let access: Vec<_> = logs
        .iter()
        .filter(|l| l["target"] == "dds_gateway::access")
        .collect();
    assert_eq!(access.len(), 2, "{logs:#?}");
    for line in &access {
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["trace_id"], TRACE_ID);
        assert_eq!(line["method"], UPGRADE_METHOD);
    }
    let span_ids: Vec<String> = servers.iter().map(|s| hex(&s.span_id)).collect();
    assert!(
        access
            .iter()
            .all(|l| span_ids.contains(&l["span_id"].as_str().unwrap().to_string()))
    );
    let text = format!("{logs:?}");
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "{secret} logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_protobuf_exports_the_same_trace() {
    let (received, receiver) = http_receiver().await;
    let gateway = Traced::start(|config| {
        config.telemetry.traces = Some(Otlp {
            endpoint: format!("http://{receiver}/v1/traces"),
            protocol: Protocol::HttpProtobuf,
        });
    })
    .await;
    gateway
        .upgrade(request("dds-sandbox02", "5.0"))
        .await
        .unwrap();
    gateway.shutdown().await;
    let spans = received.spans();
    let server = named(&spans, UPGRADE_METHOD);
    assert_eq!(server.len(), 1, "{spans:#?}");
    assert_eq!(hex(&server[0].trace_id), TRACE_ID);
    let client = named(&spans, "Dds.UpgradeDBInstanceEngineVersion");
    assert_eq!(client.len(), 1);
    assert!(descends(&spans, client[0], server[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_upstream_attempt_has_its_own_client_span() {
    let (received, receiver) = grpc_receiver().await;
    let gateway = Traced::start(|config| {
        config.telemetry.traces = Some(Otlp {
            endpoint: format!("http://{receiver}"),
            protocol: Protocol::Grpc,
        });
    })
    .await;
    gateway.sandbox.push_fault_on(
        "UpgradeDBInstanceEngineVersion",
        sandbox::Fault::Error {
            status: 400,
            code: "Throttling.User",
            retry_after_ms: Some(10),
        },
    );
    gateway
        .upgrade(request("dds-sandbox01", "4.4"))
        .await
        .unwrap();
    gateway.shutdown().await;
    let spans = received.spans();
    let mut attempts = named(&spans, "Dds.UpgradeDBInstanceEngineVersion");
    attempts.sort_by_key(|s| int(s, "alibaba_cloud.attempt"));
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    assert_eq!(int(attempts[0], "alibaba_cloud.attempt"), 1);
    assert_eq!(
        string(attempts[0], "alibaba_cloud.error_code"),
        "Throttling.User"
    );
    assert_eq!(string(attempts[0], "error.type"), "Throttling.User");
    assert_eq!(int(attempts[0], "http.response.status_code"), 400);
    assert_eq!(int(attempts[1], "alibaba_cloud.attempt"), 2);
    assert_eq!(int(attempts[1], "http.request.resend_count"), 1);
    assert_eq!(int(attempts[1], "http.response.status_code"), 200);
    assert_eq!(attempts[0].trace_id, attempts[1].trace_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_never_fails_a_call() {
    // Nothing listens there: export fails in the background, calls do not notice.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let gateway = Traced::start(|config| {
        config.telemetry.traces = Some(Otlp {
            endpoint: format!("http://{addr}"),
            protocol: Protocol::Grpc,
        });
    })
    .await;
    gateway
        .upgrade(request("dds-sandbox03", "6.0"))
        .await
        .unwrap();
    gateway.shutdown().await;
}

/// The value of the sample `name{labels...}` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_endpoint_shows_the_counters_moving() {
    let gateway = Traced::start(|_| {}).await;
    gateway
        .upgrade(request("dds-sandbox01", "4.4"))
        .await
        .unwrap();
    let before = gateway.metrics().await;
    let ok = [
        ("rpc_method", UPGRADE_METHOD),
        ("rpc_response_status_code", "OK"),
    ];
    assert_eq!(
        sample(&before, "dds_gateway_rpc_requests_total", &ok),
        Some(1.0),
        "{before}"
    );
    assert_eq!(
        sample(&before, "dds_gateway_rpc_duration_seconds_count", &ok),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &before,
            "dds_gateway_rpc_in_flight",
            &[("rpc_method", UPGRADE_METHOD)]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &before,
            "dds_gateway_upstream_requests_total",
            &[
                ("alibaba_cloud_action", "UpgradeDBInstanceEngineVersion"),
                ("outcome", "ok")
            ]
        ),
        Some(1.0)
    );

    gateway
        .upgrade(request("dds-sandbox02", "5.0"))
        .await
        .unwrap();
    gateway
        .upgrade(request("dds-sandboxforbidden", "5.0"))
        .await
        .unwrap_err();
    gateway
        .upgrade(request("not-an-instance", "5.0"))
        .await
        .unwrap_err();
    let after = gateway.metrics().await;
    assert_eq!(
        sample(&after, "dds_gateway_rpc_requests_total", &ok),
        Some(2.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "dds_gateway_rpc_requests_total",
            &[("rpc_response_status_code", "PERMISSION_DENIED")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "dds_gateway_rpc_requests_total",
            &[("rpc_response_status_code", "INVALID_ARGUMENT")]
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &after,
            "dds_gateway_upstream_requests_total",
            &[
                ("outcome", "alibaba_error"),
                ("alibaba_cloud_error_code", "Forbidden.RAM")
            ]
        )
        .is_some_and(|n| n >= 1.0),
        "{after}"
    );
    assert!(after.contains("# TYPE dds_gateway_upstream_duration_seconds histogram"));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_file_holds_one_line_per_upgrade_attempt() {
    let dir = std::env::temp_dir().join(format!("dds-gateway-audit-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.jsonl");
    let file = path.clone();
    let gateway = Traced::start(move |config| config.audit.file = Some(file)).await;
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    let key = uuid::Uuid::new_v4().to_string();
    let keyed = pb::UpgradeEngineVersionRequest {
        request_id: key.clone(),
        ..request("dds-sandbox01", "4.4")
    };
    let answer = gateway.upgrade(keyed.clone()).await.unwrap().into_inner();
    // On disk before the answer came back, after the `sending` event written before the send.
    let lines = read();
    assert_eq!(lines.len(), 2);
    let sending = &lines[0];
    assert_eq!(sending["outcome"], "sending");
    assert_eq!(sending["from_version"], "4.2");
    assert_eq!(sending["alibaba_request_id"], "");
    assert_eq!(sending["request_id"], key.as_str());
    assert_eq!(sending["trace_id"], TRACE_ID);
    let first = &lines[1];
    assert_eq!(first["kind"], "upgrade");
    assert_eq!(first["outcome"], "accepted");
    assert_eq!(first["grpc_code"], "OK");
    assert_eq!(first["db_instance_id"], "dds-sandbox01");
    assert_eq!(first["region_id"], "cn-hangzhou");
    assert_eq!(first["from_version"], "4.2");
    assert_eq!(first["to_version"], "4.4");
    assert_eq!(
        first["alibaba_request_id"],
        answer.alibaba_request_id.as_str()
    );
    assert_eq!(first["request_id"], key.as_str());
    assert_eq!(first["trace_id"], TRACE_ID);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));

    // A replay says so, and names the first call's RequestId.
    let replay = gateway.upgrade(keyed).await.unwrap();
    assert_eq!(
        replay
            .metadata()
            .get(dds_gateway::api::service::REPLAYED_HEADER)
            .unwrap(),
        "true"
    );
    let validate = pb::UpgradeEngineVersionRequest {
        validate_only: true,
        ..request("dds-sandbox02", "5.0")
    };
    gateway.upgrade(validate).await.unwrap();
    gateway
        .upgrade(request("dds-sandboxforbidden", "5.0"))
        .await
        .unwrap_err();

    let lines = read();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert_eq!(lines[2]["outcome"], "replayed");
    assert_eq!(
        lines[2]["alibaba_request_id"],
        answer.alibaba_request_id.as_str()
    );
    assert_eq!(lines[3]["kind"], "validate_only");
    assert_eq!(lines[3]["outcome"], "validated");
    assert_eq!(lines[3]["from_version"], "4.4");
    assert_eq!(lines[4]["outcome"], "failed");
    assert_eq!(lines[4]["grpc_code"], "PERMISSION_DENIED");
    assert_eq!(lines[4]["alibaba_code"], "Forbidden.RAM");
    assert_eq!(
        gateway.sandbox.upgrades_started("dds-sandbox01"),
        1,
        "the replay sent nothing"
    );
    // The audit target reaches the logs too.
    let audited = gateway
        .log_lines()
        .iter()
        .filter(|l| l["target"] == "dds_gateway::audit")
        .count();
    assert_eq!(audited, 5);
    gateway.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_audit_file_refuses_new_upgrades_before_sending() {
    // Every write to /dev/full fails (ENOSPC), as on a full disk.
    let gateway = Traced::start(|config| config.audit.file = Some("/dev/full".into())).await;
    // The `sending` event could not be written, so the upgrade was not sent...
    let refused = gateway
        .upgrade(request("dds-sandbox01", "4.4"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(
        tonic_types::StatusExt::get_details_error_info(&refused)
            .unwrap()
            .reason,
        "AUDIT_UNAVAILABLE"
    );
    assert_eq!(
        gateway
            .sandbox
            .calls(dds_gateway::alibaba::action::UPGRADE_DB_INSTANCE_ENGINE_VERSION),
        0
    );
    // ...and the events that missed the file are in the logs, whole, at ERROR: the `sending`
    // event and the refusal.
    let lost: Vec<String> = gateway
        .log_lines()
        .iter()
        .filter(|l| l["target"] == "dds_gateway::audit" && l["level"] == "ERROR")
        .map(|l| l["event"].as_str().unwrap().to_string())
        .collect();
    assert!(
        lost.iter().any(|e| e.contains(r#""outcome":"sending""#)),
        "{lost:#?}"
    );
    assert!(
        lost.iter()
            .any(|e| e.contains(r#""grpc_code":"UNAVAILABLE""#)),
        "{lost:#?}"
    );
    // Validation still works.
    let validate = pb::UpgradeEngineVersionRequest {
        validate_only: true,
        ..request("dds-sandbox03", "6.0")
    };
    gateway.upgrade(validate).await.unwrap();
    let failures = gateway.metrics().await;
    assert!(
        sample(&failures, "dds_gateway_audit_write_failures_total", &[]).is_some_and(|n| n >= 2.0),
        "{failures}"
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn background_credential_refreshes_report_to_the_gateways_telemetry() {
    use tracing::instrument::WithSubscriber as _;
    let fake = fake_cloud::Fake::start().await;
    // Issued credentials live 32 s: with the 30 s safety margin they refresh within seconds.
    fake.state().lifetime = Some(std::time::Duration::from_secs(32));
    let scratch = fake_cloud::Scratch::new("telemetry-refresh");
    let token_file = scratch.write("token", "oidc-token");
    let config = Config::from_toml(
        &format!(
            "[credentials]\nprovider = \"oidc_role_arn\"\nrole_arn = \"{}\"\noidc_provider_arn = \"{}\"\noidc_token_file = \"{}\"\nsts_endpoint = \"{}\"",
            fake_cloud::ROLE_ARN,
            fake_cloud::OIDC_PROVIDER_ARN,
            token_file.display(),
            fake.url()
        ),
        "test",
        |_| None,
        &dds_gateway::config::Overrides::default(),
    )
    .unwrap();
    let provider =
        dds_gateway::alibaba::credentials::build(&config.credentials, &|_| None).unwrap();
    let telemetry = Telemetry::new(
        &default_config().telemetry,
        LogOutput::Buffer(Arc::default()),
        tracing_subscriber::EnvFilter::new("info"),
    )
    .unwrap();
    // The first fetch happens inside the gateway's telemetry (as during a call)...
    provider
        .credential()
        .with_subscriber(telemetry.dispatch().clone())
        .await
        .unwrap();
    // ...and the refreshes that follow in the background are counted there too.
    let counted = |text: &str| {
        sample(
            text,
            "dds_gateway_credentials_refreshes_total",
            &[("outcome", "ok")],
        )
        .unwrap_or_default()
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while counted(&telemetry.prometheus_text()) < 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no background refresh counted: {}",
            telemetry.prometheus_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(fake.state().sts_actions.len() >= 2);
}

/// What an OTLP/gRPC metrics receiver got: the names of the metrics in every export.
#[derive(Clone, Default)]
struct ReceivedMetrics(Arc<Mutex<Vec<String>>>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService
    for ReceivedMetrics
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse,
        >,
        tonic::Status,
    > {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_pushed_over_otlp() {
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer;
    let received = ReceivedMetrics::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(received.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let gateway = Traced::start(|config| {
        config.telemetry.metrics = Some(Otlp {
            endpoint: format!("http://{receiver}"),
            protocol: Protocol::Grpc,
        });
        config.telemetry.metrics_interval = std::time::Duration::from_millis(50);
    })
    .await;
    gateway
        .upgrade(request("dds-sandbox01", "4.4"))
        .await
        .unwrap();
    let names = received.0.clone();
    wait_until("the RPC and upstream metrics are exported", || {
        let names = names.lock().unwrap();
        [
            "dds_gateway.rpc.requests",
            "dds_gateway.rpc.duration",
            "dds_gateway.upstream.requests",
        ]
        .iter()
        .all(|n| names.iter().any(|m| m == n))
    })
    .await;
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_and_server_spans_name_the_admitted_caller() {
    const TOKEN: &str = "reporting-token-0123456789";
    let (received, receiver) = grpc_receiver().await;
    let gateway = Traced::start(|config| {
        config.telemetry.traces = Some(Otlp {
            endpoint: format!("http://{receiver}"),
            protocol: Protocol::Grpc,
        });
        let callers = Config::from_toml(
            &format!(
                "[[callers]]\nname = \"reporting\"\ntoken_sha256 = \"{}\"\nregions = [\"cn-hangzhou\"]\ninstances = [\"dds-sandbox*\"]\nvalidate_only = true\n",
                dds_gateway::api::auth::hash_token(TOKEN)
            ),
            "test",
            |_| None,
            &dds_gateway::config::Overrides::default(),
        )
        .unwrap()
        .callers;
        config.callers = callers;
    })
    .await;
    let mut admitted = tonic::Request::new(pb::GetEngineVersionRequest {
        db_instance_id: "dds-sandbox01".into(),
        region_id: String::new(),
    });
    admitted
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    gateway
        .client
        .clone()
        .get_engine_version(admitted)
        .await
        .unwrap();
    let refused = gateway
        .client
        .clone()
        .get_engine_version(pb::GetEngineVersionRequest {
            db_instance_id: "dds-sandbox01".into(),
            region_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let logs = gateway.log_lines();
    gateway.shutdown().await;

    let callers: Vec<&str> = logs
        .iter()
        .filter(|l| l["target"] == "dds_gateway::access")
        .map(|l| l["caller"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(callers, ["reporting", ""], "{logs:#?}");
    let spans = received.spans();
    let servers = named(
        &spans,
        "dds.gateway.v1.EngineVersionService/GetEngineVersion",
    );
    assert_eq!(servers.len(), 2, "{spans:#?}");
    // Only the admitted call's span names a caller.
    let named_callers: Vec<String> = servers
        .iter()
        .filter_map(|s| match attributes(s).get("enduser.id") {
            Some(Value::StringValue(caller)) => Some(caller.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(named_callers, ["reporting"]);
}

/// Paths under `/dds.gateway.v1.` that name no method, sent without credentials: each would
/// have been a new `rpc.method` value (and a new series on `/metrics`, for ever). They all
/// count as `unknown`, and no log line carries the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_paths_fold_into_one_unknown_method() {
    let gateway = Traced::start(|config| {
        config.callers = Config::from_toml(
            &format!(
                "[[callers]]\nname = \"reporting\"\ntoken_sha256 = \"{}\"\nregions = [\"cn-hangzhou\"]\ninstances = [\"dds-sandbox*\"]\n",
                dds_gateway::api::auth::hash_token("reporting-token-0123456789")
            ),
            "test",
            |_| None,
            &dds_gateway::config::Overrides::default(),
        )
        .unwrap()
        .callers;
    })
    .await;
    const JUNK: usize = 300;
    for i in 0..JUNK {
        let path = if i % 2 == 0 {
            format!("/dds.gateway.v1.EngineVersionService/JunkMethod{i:04}")
        } else {
            format!("/dds.gateway.v1.JunkService{i:04}/Call")
        };
        let mut grpc = tonic::client::Grpc::new(gateway.channel.clone());
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<
            pb::GetEngineVersionRequest,
            pb::GetEngineVersionResponse,
        >::default();
        let status = grpc
            .unary(
                tonic::Request::new(pb::GetEngineVersionRequest::default()),
                http::uri::PathAndQuery::try_from(path).unwrap(),
                codec,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unauthenticated | tonic::Code::Unimplemented
            ),
            "{status:?}"
        );
    }
    let metrics = gateway.metrics().await;
    assert!(!metrics.contains("Junk"), "{metrics}");
    let unknown: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("dds_gateway_rpc_requests_total{"))
        .filter(|l| l.contains("rpc_method=\"unknown\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(unknown, JUNK as f64, "{metrics}");
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("dds_gateway_rpc_requests_total{"))
        .count();
    assert!(series <= 2, "one series per code of `unknown`: {metrics}");
    assert!(metrics.len() < 64 * 1024, "{} bytes", metrics.len());
    let logs = String::from_utf8(gateway.logs.lock().unwrap().clone()).unwrap();
    assert!(!logs.contains("Junk"), "a path reached the logs");
    assert!(logs.contains("\"method\":\"unknown\""), "{logs}");
    gateway.shutdown().await;
}

/// A JSON call over HTTP has one SERVER span with the HTTP semantic conventions (continuing the
/// caller's trace, the upstream calls below it), the RPC metrics with its route as `http.route`,
/// and an access line naming the route, the HTTP status and the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_calls_have_http_server_spans_and_the_rpc_metrics_by_route() {
    const TOKEN: &str = "reporting-token-0123456789";
    const ROUTE: &str = "/v1/instances/{db_instance_id}:upgradeEngineVersion";
    let (received, receiver) = grpc_receiver().await;
    let gateway = Traced::start(|config| {
        config.telemetry.traces = Some(Otlp {
            endpoint: format!("http://{receiver}"),
            protocol: Protocol::Grpc,
        });
        config.callers = Config::from_toml(
            &format!(
                "[[callers]]\nname = \"reporting\"\ntoken_sha256 = \"{}\"\nregions = [\"cn-hangzhou\"]\ninstances = [\"dds-sandbox*\"]\n",
                dds_gateway::api::auth::hash_token(TOKEN)
            ),
            "test",
            |_| None,
            &dds_gateway::config::Overrides::default(),
        )
        .unwrap()
        .callers;
    })
    .await;
    let client = reqwest::Client::new();
    let upgrade = client
        .post(format!(
            "http://{}/v1/instances/dds-sandbox01:upgradeEngineVersion",
            gateway.addr
        ))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01"))
        .body(r#"{"engineVersion":"4.4"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(upgrade.status(), 200);
    let refused = client
        .get(format!(
            "http://{}/v1/instances/dds-sandbox01/engineVersion",
            gateway.addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let metrics = gateway.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "dds_gateway_rpc_requests_total",
            &[
                ("rpc_method", UPGRADE_METHOD),
                ("http_route", ROUTE),
                ("rpc_response_status_code", "OK")
            ]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "dds_gateway_rpc_requests_total",
            &[
                ("http_route", "/v1/instances/{db_instance_id}/engineVersion"),
                ("rpc_response_status_code", "UNAUTHENTICATED")
            ]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "dds_gateway_rpc_in_flight",
            &[("rpc_method", UPGRADE_METHOD), ("http_route", ROUTE)]
        ),
        Some(0.0)
    );
    let logs = gateway.log_lines();
    gateway.shutdown().await;

    let access: Vec<_> = logs
        .iter()
        .filter(|l| l["target"] == "dds_gateway::access")
        .collect();
    assert_eq!(access.len(), 2, "{logs:#?}");
    assert_eq!(access[0]["route"], ROUTE);
    assert_eq!(access[0]["http_status"], 200);
    assert_eq!(access[0]["caller"], "reporting");
    assert_eq!(access[0]["trace_id"], TRACE_ID);
    assert_eq!(access[1]["http_status"], 401);
    assert_eq!(access[1]["grpc_code"], "UNAUTHENTICATED");

    let spans = received.spans();
    let servers = named(&spans, &format!("POST {ROUTE}"));
    assert_eq!(servers.len(), 1, "{spans:#?}");
    let server = servers[0];
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(hex(&server.trace_id), TRACE_ID);
    assert_eq!(hex(&server.parent_span_id), PARENT_SPAN_ID);
    assert_eq!(string(server, "http.request.method"), "POST");
    assert_eq!(string(server, "http.route"), ROUTE);
    assert_eq!(
        string(server, "url.path"),
        "/v1/instances/dds-sandbox01:upgradeEngineVersion"
    );
    assert_eq!(string(server, "url.scheme"), "http");
    assert_eq!(string(server, "network.protocol.version"), "1.1");
    assert_eq!(int(server, "http.response.status_code"), 200);
    assert_eq!(string(server, "rpc.method"), UPGRADE_METHOD);
    assert_eq!(string(server, "enduser.id"), "reporting");
    assert_eq!(string(server, "client.address"), "127.0.0.1");
    // No second SERVER span for the gRPC call it became; the upstream call is below this one.
    assert!(named(&spans, UPGRADE_METHOD).is_empty(), "{spans:#?}");
    let upstream = named(&spans, "Dds.UpgradeDBInstanceEngineVersion");
    assert_eq!(upstream.len(), 1);
    assert!(descends(&spans, upstream[0], server));
    // A refusal is the caller's doing (4xx): not an error of the server's span.
    let refused = named(&spans, "GET /v1/instances/{db_instance_id}/engineVersion");
    assert_eq!(refused.len(), 1, "{spans:#?}");
    assert_eq!(int(refused[0], "http.response.status_code"), 401);
    assert_eq!(refused[0].status.as_ref().map_or(0, |s| s.code), 0);
}
