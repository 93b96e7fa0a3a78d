//! Traces end to end: the gateway in front of the sandbox, exporting to an in-process OTLP
//! receiver over gRPC or http/protobuf. Asserts the span tree, the parent taken from the caller's
//! `traceparent`, the attributes, one CLIENT span per upstream attempt, the absence of secrets,
//! an unreachable collector, and the HTTP SERVER span of a JSON call.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::otlp::{attributes, descends, grpc_receiver, hex, http_receiver, int, named, string};
use common::request;
use common::traced::{
    PARENT_SPAN_ID, REPORTING_TOKEN, SECURITY_TOKEN, TRACE_ID, Traced, UPGRADE_METHOD, grpc_traces,
    reporting_caller, sample,
};
use dds_gateway::testing::sandbox;
use dds_gateway::testing::telemetry::{Otlp, Protocol};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_span_tree_continues_the_callers_trace() {
    let (received, receiver) = grpc_receiver().await;
    let gateway = Traced::start(|config| {
        grpc_traces(config, receiver);
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
        grpc_traces(config, receiver);
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
        grpc_traces(config, addr);
    })
    .await;
    gateway
        .upgrade(request("dds-sandbox03", "6.0"))
        .await
        .unwrap();
    gateway.shutdown().await;
}

/// A JSON call over HTTP has one SERVER span with the HTTP semantic conventions (continuing the
/// caller's trace, the upstream calls below it), the RPC metrics with its route as `http.route`,
/// and an access line naming the route, the HTTP status and the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_calls_have_http_server_spans_and_the_rpc_metrics_by_route() {
    const ROUTE: &str = "/v1/instances/{db_instance_id}:upgradeEngineVersion";
    let (received, receiver) = grpc_receiver().await;
    let gateway = Traced::start(|config| {
        grpc_traces(config, receiver);
        reporting_caller(config, "");
    })
    .await;
    dds_gateway::testing::tls::install_crypto_provider();
    let client = reqwest::Client::new();
    let upgrade = client
        .post(format!(
            "http://{}/v1/instances/dds-sandbox01:upgradeEngineVersion",
            gateway.addr
        ))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {REPORTING_TOKEN}"))
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
