//! Metrics end to end: the Prometheus endpoint's counters moving, metrics pushed over OTLP, junk
//! paths folded into one `unknown` method, and background credential refreshes counted in the
//! metrics the provider was built with.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::fake_cloud;
use common::otlp::metrics_receiver;
use common::traced::{Traced, UPGRADE_METHOD, reporting_caller, sample};
use common::{default_config, request, wait_until};
use dds_gateway::pb;
use dds_gateway::testing::config::Config;
use dds_gateway::testing::telemetry::{LogOutput, Otlp, Protocol, Telemetry};

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
async fn background_credential_refreshes_count_in_the_metrics_the_provider_was_built_with() {
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
        &dds_gateway::testing::config::Overrides::default(),
    )
    .unwrap();
    // Logs off: counting does not depend on what is logged, or where.
    let telemetry = Telemetry::new(
        &default_config().telemetry,
        LogOutput::Off,
        tracing_subscriber::EnvFilter::new("off"),
    )
    .unwrap();
    let provider = dds_gateway::testing::alibaba::credentials::build(
        &config.credentials,
        &|_| None,
        telemetry.metrics(),
    )
    .unwrap();
    provider.credential().await.unwrap();
    // The first fetch and the refreshes that follow in the background are all counted.
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

/// Scrapes the admin endpoint until `condition` holds of its text (at most 30 s); the text.
async fn scrape_until(gateway: &Traced, what: &str, condition: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = gateway.metrics().await;
        if condition(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not seen in\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback port nothing listens on (the kernel handed it out and took it back).
fn closed_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The gateway's WARN lines about failed OTLP exports of `signal`.
fn export_warnings(gateway: &Traced, signal: &str) -> usize {
    gateway
        .log_lines()
        .iter()
        .filter(|l| l["level"] == "WARN" && l["signal"] == signal)
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("cannot export telemetry over OTLP"))
        })
        .count()
}

/// With the collector unreachable every failed export counts, and each episode is one WARN
/// line (then INFO when exports work again); a second outage is a second episode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_is_counted_and_warned_about_once_per_episode() {
    let collector = closed_port();
    let gateway = Traced::start(|config| {
        let otlp = Otlp {
            endpoint: format!("http://{collector}"),
            protocol: Protocol::Grpc,
        };
        config.telemetry.traces = Some(otlp.clone());
        config.telemetry.metrics = Some(otlp);
        config.telemetry.metrics_interval = Duration::from_millis(50);
    })
    .await;
    let failures = |text: &str, signal: &str| {
        sample(
            text,
            "dds_gateway_telemetry_export_failures_total",
            &[("signal", signal)],
        )
        .unwrap_or_default()
    };
    scrape_until(&gateway, "five failed metric exports", |text| {
        failures(text, "metrics") >= 5.0
    })
    .await;
    assert_eq!(export_warnings(&gateway, "metrics"), 1);
    // A call makes spans; the batch that carries them fails too (sent within 5 s).
    gateway
        .upgrade(request("dds-sandbox01", "4.4"))
        .await
        .unwrap();
    scrape_until(&gateway, "a failed span export", |text| {
        failures(text, "traces") >= 1.0
    })
    .await;
    assert_eq!(export_warnings(&gateway, "traces"), 1);
    let warning = gateway
        .log_lines()
        .into_iter()
        .find(|l| l["level"] == "WARN" && l["signal"] == "metrics")
        .unwrap();
    assert_eq!(warning["endpoint"], format!("http://{collector}/"));
    assert!(!warning["error"].as_str().unwrap().is_empty(), "{warning}");

    // The collector comes up on that port: exports work again, which is said once.
    let (received, stop) = metrics_receiver_on(collector).await;
    let recovered = || {
        gateway
            .log_lines()
            .iter()
            .filter(|l| l["level"] == "INFO" && l["signal"] == "metrics")
            .filter(|l| l["message"] == "telemetry export over OTLP works again")
            .count()
    };
    wait_until("the metrics exporter recovers", || recovered() == 1).await;
    assert!(!received.0.lock().unwrap().is_empty());
    // It goes away again: a new episode, a second WARN line.
    stop.stop().await;
    let before = failures(&gateway.metrics().await, "metrics");
    scrape_until(&gateway, "failures after the second outage", |text| {
        failures(text, "metrics") >= before + 3.0
    })
    .await;
    assert_eq!(export_warnings(&gateway, "metrics"), 2);
    assert_eq!(recovered(), 1);
    gateway.shutdown().await;
}

/// An OTLP/gRPC metrics receiver on `addr`, until the sender is used or dropped (its
/// connections closed too).
async fn metrics_receiver_on(
    addr: std::net::SocketAddr,
) -> (common::otlp::ReceivedMetrics, Receiving) {
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer;
    let received = common::otlp::ReceivedMetrics::default();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(received.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    (received, Receiving { stop, task })
}

struct Receiving {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Receiving {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// `dds_gateway_build_info` names the version; the process metrics follow what the process
/// does: CPU burnt, memory touched, files opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_info_and_process_metrics_follow_the_process() {
    let gateway = Traced::start(|_| {}).await;
    let text = gateway.metrics().await;
    assert_eq!(
        sample(
            &text,
            "dds_gateway_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE dds_gateway_build_info gauge"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter"),
        "{text}"
    );
    let value = |text: &str, name: &str| sample(text, name, &[]).unwrap();

    // CPU: busy work until the counter moves (its resolution is a clock tick).
    let cpu = value(&text, "process_cpu_seconds_total");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut spin = 0u64;
    loop {
        for i in 0..10_000_000u64 {
            spin = std::hint::black_box(spin.wrapping_add(i));
        }
        if value(&gateway.metrics().await, "process_cpu_seconds_total") > cpu {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "CPU time never moved");
    }

    // Memory: 256 MiB touched are resident.
    const HELD: usize = 256 << 20;
    let held = vec![1u8; HELD];
    let resident = value(&gateway.metrics().await, "process_resident_memory_bytes");
    assert!(resident >= HELD as f64, "{resident} bytes resident");
    drop(std::hint::black_box(held));

    // File descriptors: 500 more files open.
    let files: Vec<std::fs::File> = (0..500)
        .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
        .collect();
    let open = value(&gateway.metrics().await, "process_open_fds");
    assert!(open >= 500.0, "{open} open");
    drop(files);
    gateway.shutdown().await;
}

/// The state store's reachability follows a real `redis-server` going away and coming back, and
/// while it is away a caller's rate is taken from this replica's bucket, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_reachability_and_local_rate_fallbacks_follow_redis() {
    use common::redis::RedisServer;
    use common::traced::{REPORTING_TOKEN, reporting_caller};
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let gateway = Traced::start(|config| {
        config.state.store = dds_gateway::testing::config::StoreKind::Redis;
        config.state.redis_url = Some(dds_gateway::testing::config::RedisUrl::parse(&url).unwrap());
        reporting_caller(config, "rate_per_second = 100.0\nburst = 100");
    })
    .await;
    let reachable = |text: &str| sample(text, "dds_gateway_state_store_up", &[]);
    let fallbacks = |text: &str| {
        sample(text, "dds_gateway_rate_limit_local_fallbacks_total", &[]).unwrap_or_default()
    };
    let read = || {
        let mut client = gateway.client.clone();
        async move {
            let mut request = tonic::Request::new(pb::GetEngineVersionRequest {
                db_instance_id: "dds-sandbox01".to_string(),
                ..Default::default()
            });
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {REPORTING_TOKEN}").parse().unwrap(),
            );
            client.get_engine_version(request).await
        }
    };
    read().await.unwrap();
    let text = scrape_until(&gateway, "the store reachable", |text| {
        reachable(text) == Some(1.0)
    })
    .await;
    assert_eq!(fallbacks(&text), 0.0, "{text}");

    redis.kill().await;
    scrape_until(&gateway, "the store unreachable", |text| {
        reachable(text) == Some(0.0)
    })
    .await;
    read().await.unwrap();
    read().await.unwrap();
    assert_eq!(fallbacks(&gateway.metrics().await), 2.0);

    let _redis = RedisServer::start_on(redis.port).await;
    scrape_until(&gateway, "the store reachable again", |text| {
        reachable(text) == Some(1.0)
    })
    .await;
    gateway.shutdown().await;
}

/// Connections open and closed by the gateway, by reason: over `server.max_connections` at
/// accept, and without the HTTP/2 preface in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_opened_and_closed_are_counted_by_reason() {
    let gateway = Traced::start(|config| {
        config.server.max_connections = 2;
        config.server.preface_timeout = Duration::from_millis(300);
    })
    .await;
    let open = |text: &str| sample(text, "dds_gateway_connections_open", &[]).unwrap_or_default();
    let closed = |text: &str, reason: &str| {
        sample(
            text,
            "dds_gateway_connections_closed_total",
            &[("reason", reason)],
        )
        .unwrap_or_default()
    };
    // The test's own channel.
    gateway
        .upgrade(request("dds-sandbox01", "4.4"))
        .await
        .unwrap();
    let before = open(&gateway.metrics().await);
    assert!(before >= 1.0);
    // A second client: one more open, and the limit reached.
    let second = common::channel(gateway.addr).await;
    let mut client =
        dds_gateway::pb::engine_version_service_client::EngineVersionServiceClient::new(
            second.clone(),
        );
    client
        .get_engine_version(pb::GetEngineVersionRequest {
            db_instance_id: "dds-sandbox01".to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(open(&gateway.metrics().await), before + 1.0);
    // A third is closed as it is accepted.
    let _third = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    scrape_until(&gateway, "a connection closed at the limit", |text| {
        closed(text, "max_connections") >= 1.0
    })
    .await;
    // Once the second is gone, a connection that never sends the preface is closed for it.
    drop((client, second));
    scrape_until(&gateway, "the second connection ended", |text| {
        open(text) == before
    })
    .await;
    let _silent = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    scrape_until(&gateway, "a connection closed without a preface", |text| {
        closed(text, "preface_timeout") >= 1.0
    })
    .await;
    gateway.shutdown().await;
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

/// Waits for a place in the account's budget (`[alibaba.quota]`) are measured by outcome: a
/// read that got its place, and one the budget's rate could not start before its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_the_account_budget_are_measured_by_outcome() {
    let gateway = Traced::start(|config| {
        config.alibaba.quota.calls_per_second = 1;
        config.alibaba.quota.max_in_flight = 1;
    })
    .await;
    // GetEngineVersion makes two calls: the first takes the second's only token.
    let mut request = tonic::Request::new(pb::GetEngineVersionRequest {
        db_instance_id: "dds-sandbox02".into(),
        region_id: String::new(),
    });
    request.set_timeout(Duration::from_millis(300));
    let err = gateway
        .client
        .clone()
        .get_engine_version(request)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    let text = gateway.metrics().await;
    let waits = |outcome| {
        sample(
            &text,
            "dds_gateway_alibaba_quota_wait_seconds_count",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(waits("granted"), Some(1.0), "{text}");
    assert_eq!(waits("exhausted"), Some(1.0), "{text}");
    assert_eq!(waits("deadline"), None, "{text}");
    assert!(text.contains("# TYPE dds_gateway_alibaba_quota_wait_seconds histogram"));
    gateway.shutdown().await;
}
