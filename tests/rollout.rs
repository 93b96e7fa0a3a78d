//! Rebalancing and clean rollouts over loopback: an aged connection gets GOAWAY while its calls
//! in flight finish, and is closed after the age's grace; at shutdown health turns NOT_SERVING
//! while the listener still answers, and a stuck call cannot hold the shutdown past its grace.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Gateway, Options, request, upgrade_in_flight};
use dds_gateway::config::Config;
use dds_gateway::pb::engine_version_service_client::EngineVersionServiceClient;
use dds_gateway::sandbox::Fault;
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
