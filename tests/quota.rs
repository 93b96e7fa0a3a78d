//! The account's budget of calls to Alibaba (`[alibaba.quota]`), measured where it matters: at
//! the sandbox, which counts the requests it is answering at once and those that arrive within
//! any window.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::Gateway;
use dds_gateway::pb;
use dds_gateway::testing::alibaba::action;
use dds_gateway::testing::sandbox::{Fault, FleetSpec, SandboxConfig};

#[tokio::test]
async fn a_burst_waits_in_line_within_the_budget() {
    let gw = Gateway::from_toml(
        SandboxConfig::default(),
        "[alibaba.quota]\ncalls_per_second = 10\nmax_in_flight = 3\n",
    )
    .await;
    // Every answer takes a while, so calls pile up at the gateway.
    for _ in 0..40 {
        gw.sandbox
            .push_fault(Fault::Delay(Duration::from_millis(30)));
    }
    let calls = (0..15).map(|_| {
        let mut client = gw.client.clone();
        async move {
            client
                .get_engine_version(pb::GetEngineVersionRequest {
                    db_instance_id: "dds-sandbox02".into(),
                    region_id: String::new(),
                })
                .await
        }
    });
    for answer in futures_join(calls).await {
        answer.expect("every call is served, in line, within its deadline");
    }
    assert_eq!(gw.sandbox.received().len(), 30);
    assert!(
        gw.sandbox.peak_in_flight() <= 3,
        "{} open at once",
        gw.sandbox.peak_in_flight()
    );
    // Starts are spaced on the gateway's clock; arrival adds a little jitter, so the window
    // measured here is a little shorter than the second the budget counts.
    let peak = gw.sandbox.peak_rate(None, Duration::from_millis(900));
    assert!(peak <= 10, "{peak} calls within 0.9 s");
}

#[tokio::test]
async fn a_call_that_cannot_get_a_place_before_its_deadline_is_resource_exhausted() {
    let gw = Gateway::from_toml(
        SandboxConfig::default(),
        "[alibaba.quota]\ncalls_per_second = 1\nmax_in_flight = 1\n",
    )
    .await;
    // The first read takes the second's only token (GetEngineVersion makes two calls).
    let mut request = tonic::Request::new(pb::GetEngineVersionRequest {
        db_instance_id: "dds-sandbox02".into(),
        region_id: String::new(),
    });
    request.set_timeout(Duration::from_millis(300));
    let err = gw
        .client
        .clone()
        .get_engine_version(request)
        .await
        .unwrap_err();
    let metadata = common::assert_error(
        &err,
        tonic::Code::ResourceExhausted,
        "ALIBABA_QUOTA_EXHAUSTED",
    );
    assert!(!metadata.contains_key("alibabaCode"), "nothing was sent");
    assert_eq!(
        gw.sandbox.received().len(),
        1,
        "the second call was never sent"
    );
}

/// A sandbox with `count` instances on 4.2 in cn-hangzhou, whose upgrades take a while.
fn fleet(count: usize) -> SandboxConfig {
    SandboxConfig {
        fleet: FleetSpec {
            count,
            regions: vec!["cn-hangzhou".into()],
            engine_versions: vec!["4.2".into()],
            ..FleetSpec::default()
        },
        ..SandboxConfig::default()
    }
}

/// The generated instances' ids.
fn fleet_ids(gw: &Gateway) -> Vec<String> {
    gw.sandbox
        .instances()
        .into_iter()
        .map(|i| i.db_instance_id)
        .filter(|id| id.starts_with("dds-fleet"))
        .collect()
}

#[tokio::test]
async fn upgrades_beyond_the_replicas_bound_wait_in_line_and_reuse_its_connections() {
    // A per-replica bound of 3 and a rate the burst never reaches: only the bound holds calls.
    let gw = Gateway::from_toml(
        fleet(12),
        "preflight = false\n[alibaba.quota]\ncalls_per_second = 1000\nmax_in_flight = 3\n",
    )
    .await;
    let ids = fleet_ids(&gw);
    assert_eq!(ids.len(), 12);
    // A slow upstream: every answer takes 50 ms, so 12 upgrades pile up behind 3 places.
    for _ in 0..ids.len() {
        gw.sandbox
            .push_fault(Fault::Delay(Duration::from_millis(50)));
    }
    let calls = ids.iter().map(|id| {
        let mut client = gw.client.clone();
        let request = common::request(id, "4.4");
        async move { client.upgrade_engine_version(request).await }
    });
    for answer in futures_join(calls).await {
        answer.expect("every upgrade is sent in its turn, within its deadline");
    }
    assert_eq!(
        gw.sandbox.calls(action::UPGRADE_DB_INSTANCE_ENGINE_VERSION),
        12
    );
    let peak = gw.sandbox.peak_in_flight();
    assert!(peak <= 3, "{peak} upstream calls open at once");
    // The calls in line took the connections their predecessors left: the pool keeps as many
    // idle connections as there may be calls in flight.
    let opened = gw.sandbox.connections_accepted();
    assert!(opened <= 3, "{opened} connections opened for 12 calls");
    // One at a time, calls reuse the connection the last one left.
    for id in &ids {
        gw.client
            .clone()
            .get_engine_version(pb::GetEngineVersionRequest {
                db_instance_id: id.clone(),
                region_id: String::new(),
            })
            .await
            .expect("the instance is read");
    }
    let after = gw.sandbox.connections_accepted();
    assert_eq!(after, opened, "sequential calls opened new connections");
}

#[tokio::test]
async fn an_upgrade_whose_deadline_passes_in_line_is_deadline_exceeded_and_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let gw = Gateway::from_toml(
        fleet(2),
        &format!(
            "preflight = false\n[alibaba.quota]\ncalls_per_second = 1000\nmax_in_flight = 1\n\
             [audit]\nfile = {:?}\n",
            audit.display().to_string()
        ),
    )
    .await;
    let ids = fleet_ids(&gw);
    // The first upgrade holds the only place for two seconds.
    gw.sandbox.push_fault(Fault::Delay(Duration::from_secs(2)));
    let first = common::upgrade_in_flight(
        gw.client.clone(),
        &gw.sandbox,
        common::request(&ids[0], "4.4"),
    )
    .await;
    let mut request = tonic::Request::new(common::request(&ids[1], "4.4"));
    request.set_timeout(Duration::from_millis(300));
    let err = gw
        .client
        .clone()
        .upgrade_engine_version(request)
        .await
        .unwrap_err();
    let metadata = common::assert_error(&err, tonic::Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    assert!(!metadata.contains_key("alibabaCode"), "nothing was sent");
    // The upgrade's own task concludes it as the caller heard it: the deadline passed in line
    // (not a spent budget), nothing sent, no `sending` event.
    let events = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["db_instance_id"] == ids[1].as_str())
            .collect()
    };
    common::wait_until("the queued upgrade's outcome is audited", || {
        !events().is_empty()
    })
    .await;
    let events = events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["outcome"], "failed");
    assert_eq!(events[0]["grpc_code"], "DEADLINE_EXCEEDED");
    first.await.unwrap().expect("the first upgrade is answered");
    assert_eq!(gw.sandbox.upgrades_started(&ids[1]), 0);
    assert_eq!(
        gw.sandbox.calls(action::UPGRADE_DB_INSTANCE_ENGINE_VERSION),
        1,
        "only the first upgrade reached the upstream"
    );
}

/// Runs every future concurrently and returns their outputs in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}
