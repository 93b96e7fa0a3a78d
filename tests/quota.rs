//! The account's budget of calls to Alibaba (`[alibaba.quota]`), measured where it matters: at
//! the sandbox, which counts the requests it is answering at once and those that arrive within
//! any window.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::Gateway;
use dds_gateway::pb;
use dds_gateway::testing::sandbox::{Fault, SandboxConfig};

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
