//! The account's budget of calls to Alibaba (`[alibaba.quota]`) across replicas: two gateway
//! processes share one real `redis-server` and one sandbox (in this process), which measures what
//! reaches it. A burst through both keeps to the account's `max_in_flight` and
//! `calls_per_second`; a replica SIGKILLed while holding places frees them within a lease.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::ServingBinary;
use common::redis::RedisServer;
use dds_gateway::pb;
use dds_gateway::pb::engine_version_service_client::EngineVersionServiceClient;
use dds_gateway::testing::sandbox::{Fault, Sandbox, SandboxConfig};
use tonic::transport::Channel;

async fn replica(
    sandbox: &Sandbox,
    redis: &RedisServer,
    lease: &str,
    calls_per_second: &str,
    max_in_flight: &str,
) -> ServingBinary {
    let endpoint = sandbox.endpoint().to_string();
    let url = redis.url();
    ServingBinary::start(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("RUST_LOG", "info"),
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "testid"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "testsecret"),
            ("DDS_GATEWAY_ALIBABA_ENDPOINT", &endpoint),
            ("DDS_GATEWAY_STATE_STORE", "redis"),
            ("DDS_GATEWAY_STATE_REDIS_URL", &url),
            ("DDS_GATEWAY_STATE_LEASE", lease),
            (
                "DDS_GATEWAY_ALIBABA_QUOTA_CALLS_PER_SECOND",
                calls_per_second,
            ),
            ("DDS_GATEWAY_ALIBABA_QUOTA_MAX_IN_FLIGHT", max_in_flight),
        ],
    )
    .await
}

async fn client(replica: &ServingBinary) -> EngineVersionServiceClient<Channel> {
    EngineVersionServiceClient::new(common::channel(replica.addr.parse().unwrap()).await)
}

/// A read of the demo instance (two calls to Alibaba) that waits at most `timeout`.
fn read(timeout: Duration) -> tonic::Request<pb::GetEngineVersionRequest> {
    let mut request = tonic::Request::new(pb::GetEngineVersionRequest {
        db_instance_id: "dds-sandbox02".into(),
        region_id: String::new(),
    });
    request.set_timeout(timeout);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_through_two_replicas_keeps_to_one_account_budget() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let redis = RedisServer::start().await;
    let a = replica(&sandbox, &redis, "10s", "5", "2").await;
    let b = replica(&sandbox, &redis, "10s", "5", "2").await;
    // Every answer takes a while, so calls pile up at both gateways.
    for _ in 0..40 {
        sandbox.push_fault(Fault::Delay(Duration::from_millis(50)));
    }
    let (ca, cb) = (client(&a).await, client(&b).await);
    let handles: Vec<_> = (0..12)
        .map(|i| {
            let mut c = if i % 2 == 0 { ca.clone() } else { cb.clone() };
            tokio::spawn(async move { c.get_engine_version(read(Duration::from_secs(60))).await })
        })
        .collect();
    for handle in handles {
        handle
            .await
            .unwrap()
            .expect("every call is served, in line, within its deadline");
    }
    assert_eq!(sandbox.received().len(), 24);
    assert!(
        sandbox.peak_in_flight() <= 2,
        "{} open at once across both replicas",
        sandbox.peak_in_flight()
    );
    // Starts are spaced on Redis's clock; arrival adds a little jitter, so the window measured
    // here is a little shorter than the second the budget counts.
    let peak = sandbox.peak_rate(None, Duration::from_millis(900));
    assert!(peak <= 5, "{peak} calls within 0.9 s across both replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_held_by_a_killed_replica_come_back_within_a_lease() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let redis = RedisServer::start().await;
    let mut a = replica(&sandbox, &redis, "6s", "100", "2").await;
    let b = replica(&sandbox, &redis, "6s", "100", "2").await;
    // A's two reads take both places and are answered only long after A is gone.
    sandbox.push_fault(Fault::Delay(Duration::from_secs(120)));
    sandbox.push_fault(Fault::Delay(Duration::from_secs(120)));
    let ca = client(&a).await;
    let _held: Vec<_> = (0..2)
        .map(|_| {
            let mut c = ca.clone();
            tokio::spawn(async move { c.get_engine_version(read(Duration::from_secs(120))).await })
        })
        .collect();
    common::wait_until("A's two calls reach the sandbox", || {
        sandbox.received().len() == 2
    })
    .await;
    a.process.start_kill().unwrap();
    a.process.wait().await.unwrap();

    let mut cb = client(&b).await;
    // The dead replica's places are still leased (6 s): a call that cannot wait that long is
    // refused unsent. Its deadline leaves room for a loaded machine's round trips to Redis.
    let err = cb
        .get_engine_version(read(Duration::from_secs(1)))
        .await
        .unwrap_err();
    common::assert_error(
        &err,
        tonic::Code::ResourceExhausted,
        "ALIBABA_QUOTA_EXHAUSTED",
    );
    assert_eq!(sandbox.received().len(), 2, "nothing more was sent");
    // Once the leases lapse, B's calls go through.
    cb.get_engine_version(read(Duration::from_secs(30)))
        .await
        .expect("the dead replica's places came back within a lease");
    assert_eq!(sandbox.received().len(), 4);
}
