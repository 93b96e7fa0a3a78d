//! Connection ageing and shutdown over loopback: an aged connection gets GOAWAY while its calls
//! in flight finish, and is closed after the age's grace; a watch longer than the age ends with a
//! whole UNAVAILABLE answer (gRPC) or a last error line (HTTP) before that close, and the CLI
//! resumes it; at shutdown health turns NOT_SERVING while the listener still answers, and a stuck
//! call cannot hold the shutdown past its grace.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Gateway, Options, request, upgrade_in_flight};
use dds_gateway::pb::engine_version_service_client::EngineVersionServiceClient;
use dds_gateway::testing::config::Config;
use dds_gateway::testing::sandbox::Fault;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const SERVICE: &str = "dds.gateway.v1.EngineVersionService";
/// Long enough that nothing in these tests ends by itself: only the gateway can end it.
const STUCK: Duration = Duration::from_secs(600);
/// How long a test waits for something that must happen; never reached when all is well.
const PATIENCE: Duration = Duration::from_secs(30);

/// A channel that counts the TCP connections it opens.
fn counting_channel(addr: SocketAddr, connects: Arc<AtomicUsize>) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            connects.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::net::TcpStream::connect(addr)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
}

/// The health of `service`, asked over a new connection (so the listener must answer).
async fn health_over_a_new_connection(
    addr: SocketAddr,
    service: &str,
) -> Result<ServingStatus, String> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map_err(|e| format!("check: {e}"))?;
    Ok(answer.into_inner().status())
}

/// Calls and Alibaba answers never time out by themselves.
fn patient(config: &mut Config) {
    config.server.request_timeout = Duration::from_secs(3600);
    config.alibaba.read_timeout = Duration::from_secs(3600);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aged_connection_gets_goaway_and_its_calls_in_flight_finish() {
    let gw = Gateway::start_with(Options {
        configure: Some(|config| {
            config.server.max_connection_age = Some(Duration::from_millis(300));
            config.server.max_connection_age_grace = Duration::from_secs(3600);
        }),
        ..Options::default()
    })
    .await;
    let connects = Arc::new(AtomicUsize::new(0));
    let channel = counting_channel(gw.addr, Arc::clone(&connects));
    gw.sandbox.push_fault(Fault::Delay(Duration::from_secs(6)));
    let in_flight = upgrade_in_flight(
        EngineVersionServiceClient::new(channel.clone()),
        &gw.sandbox,
        request("dds-sandbox01", "5.0"),
    )
    .await;
    assert_eq!(connects.load(Ordering::SeqCst), 1);

    // After the age the gateway sends GOAWAY: the channel opens a new connection for new calls.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut health = HealthClient::new(channel.clone());
    loop {
        let answered = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok();
        if answered && connects.load(Ordering::SeqCst) >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client never moved to a new connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the GOAWAY came while the call was in flight"
    );
    let answer = in_flight
        .await
        .unwrap()
        .expect("the call in flight finishes on the old connection");
    assert!(!answer.into_inner().alibaba_request_id.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aged_connection_is_closed_after_its_grace_even_with_a_stuck_call() {
    let gw = Gateway::start_with(Options {
        configure: Some(|config| {
            patient(config);
            config.server.max_connection_age = Some(Duration::from_millis(200));
            config.server.max_connection_age_grace = Duration::from_millis(300);
        }),
        ..Options::default()
    })
    .await;
    gw.sandbox.push_fault(Fault::Delay(STUCK));
    let outcome = tokio::time::timeout(
        PATIENCE,
        gw.client
            .clone()
            .upgrade_engine_version(request("dds-sandbox01", "5.0")),
    )
    .await
    .expect("the stuck call ends when its connection is closed");
    assert!(outcome.is_err(), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_turns_not_serving_at_shutdown_while_the_listener_still_answers() {
    let mut gw = Gateway::start_with(Options {
        configure: Some(|config| config.server.shutdown_delay = Duration::from_secs(3600)),
        ..Options::default()
    })
    .await;
    assert_eq!(
        health_over_a_new_connection(gw.addr, SERVICE).await,
        Ok(ServingStatus::Serving)
    );
    gw.stop_signal();

    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match health_over_a_new_connection(gw.addr, SERVICE).await {
            Ok(ServingStatus::NotServing) => break,
            Ok(ServingStatus::Serving) => {}
            other => panic!("the listener must keep answering during the delay: {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never turned NOT_SERVING"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The server as a whole is up, and calls are still served during the delay.
    assert_eq!(
        health_over_a_new_connection(gw.addr, "").await,
        Ok(ServingStatus::Serving)
    );
    let mut validate = request("dds-sandbox02", "5.0");
    validate.validate_only = true;
    let channel = common::channel(gw.addr).await;
    EngineVersionServiceClient::new(channel)
        .upgrade_engine_version(validate)
        .await
        .expect("calls are served during the delay");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_within_its_grace_and_closes_a_stuck_call() {
    let mut gw = Gateway::start_with(Options {
        configure: Some(|config| {
            patient(config);
            config.server.shutdown_grace = Duration::from_millis(300);
        }),
        ..Options::default()
    })
    .await;
    gw.sandbox.push_fault(Fault::Delay(STUCK));
    let stuck = upgrade_in_flight(
        gw.client.clone(),
        &gw.sandbox,
        request("dds-sandbox01", "5.0"),
    )
    .await;

    tokio::time::timeout(PATIENCE, gw.shutdown())
        .await
        .expect("shutdown ends")
        .unwrap();
    let outcome = tokio::time::timeout(PATIENCE, stuck)
        .await
        .expect("the stuck call's connection is closed when the grace is over")
        .unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
}

/// A gateway whose connections age out after 300 ms (+ 400 ms grace), in front of a sandbox whose
/// upgrades take `upgrade`, watching every 20 ms.
async fn ageing_gateway(upgrade: Duration) -> Gateway {
    Gateway::start_with(Options {
        sandbox: dds_gateway::testing::sandbox::SandboxConfig {
            upgrade_duration: upgrade,
            ..Default::default()
        },
        configure: Some(|config| {
            config.server.max_connection_age = Some(Duration::from_millis(300));
            config.server.max_connection_age_grace = Duration::from_millis(400);
            config.watch.poll_interval = Duration::from_millis(20);
        }),
        ..Options::default()
    })
    .await
}

/// Starts an upgrade of dds-sandbox01 to 4.4 (on a connection of its own).
async fn start_upgrade(gw: &Gateway) {
    let channel = common::channel(gw.addr).await;
    EngineVersionServiceClient::new(channel)
        .upgrade_engine_version(request("dds-sandbox01", "4.4"))
        .await
        .unwrap();
}

fn watch_request() -> dds_gateway::pb::WatchUpgradeRequest {
    dds_gateway::pb::WatchUpgradeRequest {
        db_instance_id: "dds-sandbox01".into(),
        engine_version: "4.4".into(),
        region_id: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_ends_with_unavailable_before_its_connection_ages_out() {
    use tonic_types::StatusExt as _;
    let gw = ageing_gateway(Duration::from_secs(30)).await;
    start_upgrade(&gw).await;
    let channel = common::channel(gw.addr).await;
    let mut stream = EngineVersionServiceClient::new(channel)
        .watch_upgrade(watch_request())
        .await
        .unwrap()
        .into_inner();
    let status = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the watch ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the watch ends before the upgrade");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "CONNECTION_AGED", "{status:?}");
    assert!(status.get_details_retry_info().is_some(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_watch_ends_with_a_last_error_line_before_its_connection_ages_out() {
    let gw = ageing_gateway(Duration::from_secs(30)).await;
    start_upgrade(&gw).await;
    let mut response = reqwest::get(format!(
        "http://{}/v1/instances/dds-sandbox01/engineVersion:watch?engineVersion=4.4&timeout=30s",
        gw.addr
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    // A truncated chunked body is an error here.
    while let Some(chunk) = response.chunk().await.expect("a whole chunked body") {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], 14, "{text}");
    let reasons: Vec<&serde_json::Value> = last["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["reason"])
        .collect();
    assert!(
        reasons.contains(&&serde_json::json!("CONNECTION_AGED")),
        "{text}"
    );
}

/// The CLI's watch follows an upgrade that lasts several connection ages to its end.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_watch_resumes_across_several_connection_ages() {
    let gw = ageing_gateway(Duration::from_millis(2500)).await;
    start_upgrade(&gw).await;
    let args = dds_gateway::client::StatusArgs {
        target: dds_gateway::client::Target {
            url: format!("http://{}", gw.addr),
            token: None,
            ca_cert: None,
            client_cert: None,
        },
        instance: "dds-sandbox01".into(),
        region: None,
        version: "4.4".into(),
        timeout: PATIENCE,
    };
    let mut lines = Vec::new();
    let outcome = dds_gateway::client::watch(args, |line| lines.push(line.to_string())).await;
    assert!(
        matches!(outcome, dds_gateway::client::Outcome::Answered(_)),
        "{outcome:?} after {lines:?}"
    );
    assert!(lines.last().unwrap().ends_with(": done\n"), "{lines:?}");
    assert_eq!(lines.len(), 2, "each state once, across resumes: {lines:?}");
}
