//! A Redis outage, on a real `redis-server` that is killed: the replica stays in the Service
//! (health `SERVING` for the engine service), reads and validate-only calls go on, upgrades are
//! refused with `STATE_STORE_UNAVAILABLE`, and `dds_gateway_state_store_up` says so. Only with
//! `state.readiness_follows_store` does health turn `NOT_SERVING`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::redis::RedisServer;
use common::request;
use common::traced::{Traced, sample};
use dds_gateway::pb;
use dds_gateway::testing::config::{RedisUrl, StoreKind};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt;

const INSTANCE: &str = "dds-sandbox01"; // Running, 4.2
const GAUGE: &str = "dds_gateway_state_store_up";

async fn gateway_on(redis: &RedisServer, readiness_follows_store: bool) -> Traced {
    let url = redis.url();
    Traced::start(move |config| {
        config.state.store = StoreKind::Redis;
        config.state.redis_url = Some(RedisUrl::parse(&url).unwrap());
        config.state.readiness_follows_store = readiness_follows_store;
    })
    .await
}

async fn health_of(gateway: &Traced, service: &str) -> i32 {
    HealthClient::new(gateway.channel.clone())
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// Waits (at most 10 s; the store is checked every second) until the gauge reads `value`.
async fn wait_for_gauge(gateway: &Traced, value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = gateway.metrics().await;
        if sample(&text, GAUGE, &[]) == Some(value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{GAUGE} never read {value}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .expect("every error carries ErrorInfo")
        .reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_the_replica_serving_reads_and_refuses_only_upgrades() {
    let mut redis = RedisServer::start().await;
    let gateway = gateway_on(&redis, false).await;
    let service = dds_gateway::testing::api::service::SERVICE_NAME;
    wait_for_gauge(&gateway, 1.0).await;

    redis.kill().await;
    wait_for_gauge(&gateway, 0.0).await;
    // The reporter has seen the outage: readiness still holds, for the service and the server.
    assert_eq!(
        health_of(&gateway, service).await,
        ServingStatus::Serving as i32
    );
    assert_eq!(health_of(&gateway, "").await, ServingStatus::Serving as i32);

    let mut client = gateway.client.clone();
    client
        .upgrade_engine_version(pb::UpgradeEngineVersionRequest {
            validate_only: true,
            ..request(INSTANCE, "4.4")
        })
        .await
        .expect("validate-only needs no store");
    let version = client
        .get_engine_version(pb::GetEngineVersionRequest {
            db_instance_id: INSTANCE.to_string(),
            ..Default::default()
        })
        .await
        .expect("a read needs no store")
        .into_inner();
    assert_eq!(version.engine_version, "4.2");
    let status = client
        .upgrade_engine_version(request(INSTANCE, "4.4"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "STATE_STORE_UNAVAILABLE");

    // Back again: the gauge follows, and upgrades go through.
    redis = RedisServer::start_on(redis.port).await;
    wait_for_gauge(&gateway, 1.0).await;
    client
        .upgrade_engine_version(request(INSTANCE, "4.4"))
        .await
        .unwrap();
    assert_eq!(
        health_of(&gateway, service).await,
        ServingStatus::Serving as i32
    );
    gateway.shutdown().await;
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_readiness_following_the_store_an_outage_turns_the_service_not_serving() {
    let mut redis = RedisServer::start().await;
    let gateway = gateway_on(&redis, true).await;
    let service = dds_gateway::testing::api::service::SERVICE_NAME;
    wait_for_gauge(&gateway, 1.0).await;
    assert_eq!(
        health_of(&gateway, service).await,
        ServingStatus::Serving as i32
    );

    redis.kill().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while health_of(&gateway, service).await != ServingStatus::NotServing as i32 {
        assert!(tokio::time::Instant::now() < deadline, "never NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health_of(&gateway, "").await, ServingStatus::Serving as i32);
    wait_for_gauge(&gateway, 0.0).await;

    redis = RedisServer::start_on(redis.port).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while health_of(&gateway, service).await != ServingStatus::Serving as i32 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never SERVING again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.shutdown().await;
    drop(redis);
}
