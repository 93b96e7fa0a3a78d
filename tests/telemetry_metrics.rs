//! Metrics end to end: the Prometheus endpoint's counters moving, metrics pushed over OTLP, junk
//! paths folded into one `unknown` method, and background credential refreshes counted in the
//! gateway's telemetry.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::Arc;

use common::fake_cloud;
use common::otlp::metrics_receiver;
use common::traced::{Traced, UPGRADE_METHOD, reporting_caller, sample};
use common::{default_config, request, wait_until};
use dds_gateway::config::Config;
use dds_gateway::pb;
use dds_gateway::telemetry::{LogOutput, Otlp, Protocol, Telemetry};

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
async fn metrics_are_pushed_over_otlp() {
    let (received, receiver) = metrics_receiver().await;
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

/// Paths under `/dds.gateway.v1.` that name no method, sent without credentials: each would
/// have been a new `rpc.method` value (and a new series on `/metrics`, for ever). They all
/// count as `unknown`, and no log line carries the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_paths_fold_into_one_unknown_method() {
    let gateway = Traced::start(|config| {
        reporting_caller(config, "");
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

/// A request that matches no JSON route is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_misses_are_counted() {
    let gateway = Traced::start(|_| {}).await;
    for _ in 0..2 {
        let answer = reqwest::get(format!("http://{}/v1/nowhere", gateway.addr))
            .await
            .unwrap();
        assert_eq!(answer.status(), 404);
    }
    let text = gateway.metrics().await;
    assert_eq!(
        sample(&text, "dds_gateway_http_route_misses_total", &[]),
        Some(2.0),
        "{text}"
    );
}
