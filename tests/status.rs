//! `GetEngineVersion` and `WatchUpgrade` end to end against the sandbox: what an instance runs
//! and is offered, and a stream of state changes that ends when the instance runs the target,
//! at the deadline, or when the caller goes away.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Gateway, Options, request, wait_until};
use dds_gateway::pb;
use dds_gateway::pb::engine_version_service_server::EngineVersionService as _;
use dds_gateway::testing::sandbox::{Sandbox, SandboxConfig};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

fn get(instance: &str, region: &str) -> pb::GetEngineVersionRequest {
    pb::GetEngineVersionRequest {
        db_instance_id: instance.into(),
        region_id: region.into(),
    }
}

fn watch(instance: &str, target: &str) -> pb::WatchUpgradeRequest {
    pb::WatchUpgradeRequest {
        db_instance_id: instance.into(),
        engine_version: target.into(),
        region_id: String::new(),
    }
}

fn fast_upgrades() -> Options {
    Options {
        sandbox: SandboxConfig {
            // Long enough that the watch, started right after the upgrade call, sees it under way.
            upgrade_duration: Duration::from_secs(1),
            ..Default::default()
        },
        configure: Some(|config| config.watch.poll_interval = Duration::from_millis(20)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn get_engine_version_reports_version_state_and_targets() {
    let gw = Gateway::start().await;
    let mut client = gw.client.clone();
    let answer = client
        .get_engine_version(get("dds-sandbox01", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            answer.engine_version.as_str(),
            answer.status.as_str(),
            answer.region_id.as_str()
        ),
        ("4.2", "Running", "cn-hangzhou")
    );
    assert_eq!(
        answer.available_engine_versions,
        ["4.4", "5.0", "6.0", "7.0", "8.0"]
    );
    let answer = client
        .get_engine_version(get("dds-sandboxsz", "cn-shenzhen"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.engine_version, "6.0");
    let answer = client
        .get_engine_version(get("dds-sandboxbusy", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status, "Rebooting");

    let status = client
        .get_engine_version(get("dds-nope1", ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .get_engine_version(get("DDS!", "Mars 1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["db_instance_id", "region_id"]);
    assert_eq!(gw.sandbox.calls("UpgradeDBInstanceEngineVersion"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_reports_each_change_until_running_on_the_target() {
    let gw = Gateway::start_with(fast_upgrades()).await;
    let mut client = gw.client.clone();
    client
        .upgrade_engine_version(request("dds-sandbox01", "4.4"))
        .await
        .unwrap();
    let mut stream = client
        .watch_upgrade(watch("dds-sandbox01", "4.4"))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(message) = stream.next().await {
        let message = message.unwrap();
        assert_eq!(message.target_engine_version, "4.4");
        seen.push((message.status, message.engine_version, message.done));
    }
    let last = seen.last().unwrap();
    assert_eq!(last, &("Running".to_string(), "4.4".to_string(), true));
    assert!(seen[..seen.len() - 1].iter().all(|(_, _, done)| !done));
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "only changes are reported: {seen:?}");
    }
    // Right after the upgrade call the instance is upgrading; the watch saw that first.
    assert_eq!(seen[0].0, "EngineVersionUpgrading", "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_ends_with_deadline_exceeded_and_validates_its_request() {
    let gw = Gateway::start_with(Options {
        configure: Some(|config| {
            config.watch.poll_interval = Duration::from_millis(20);
            config.watch.max_duration = Duration::from_millis(300);
        }),
        ..Default::default()
    })
    .await;
    let mut client = gw.client.clone();
    // Nothing upgrades dds-sandbox02, so the watch runs into its limit.
    let mut stream = client
        .watch_upgrade(watch("dds-sandbox02", "8.0"))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!((first.status.as_str(), first.done), ("Running", false));
    let end = stream.next().await.unwrap().unwrap_err();
    assert_eq!(end.code(), Code::DeadlineExceeded, "{end:?}");
    assert_eq!(
        end.get_details_error_info().unwrap().reason,
        "DEADLINE_EXCEEDED"
    );
    assert!(stream.next().await.is_none());

    let status = client
        .watch_upgrade(watch("dds-sandbox02", ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut stream = client
        .watch_upgrade(watch("dds-nope1", "8.0"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stream.next().await.unwrap().unwrap_err().code(),
        Code::NotFound
    );
}

/// The service is driven directly so the test can see its watch tasks end.
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_stops_polling_when_the_caller_goes_away() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut config = common::default_config();
    config.alibaba.endpoint = Some(sandbox.endpoint());
    config.watch.poll_interval = Duration::from_millis(10);
    let client = dds_gateway::testing::alibaba::AlibabaClient::new(
        &config.alibaba,
        common::credentials_of(&sandbox),
    )
    .unwrap();
    let service = dds_gateway::testing::api::service::EngineVersionService::from_config(
        &config,
        Arc::new(client),
        None,
    );
    let mut stream = service
        .watch_upgrade(tonic::Request::new(watch("dds-sandbox02", "8.0")))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.next().await.unwrap().is_ok());
    assert_eq!(service.status_reader().active_watches(), 1);
    drop(stream);
    let status = service.status_reader().clone();
    wait_until("the watch task ends", || status.active_watches() == 0).await;
    let polls = sandbox.calls("DescribeDBInstanceAttribute");
    // Polling every 10 ms, a live watch would add several reads in this time.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sandbox.calls("DescribeDBInstanceAttribute"), polls);
}

/// An instance already `Running` on a later version than the target will never run the target:
/// the watch says so and ends, rather than poll until its deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_ends_when_the_instance_runs_a_later_version_than_the_target() {
    let gw = Gateway::start_with(Options {
        configure: Some(|config| {
            config.watch.poll_interval = Duration::from_millis(20);
            config.watch.max_duration = Duration::from_secs(3);
        }),
        ..Default::default()
    })
    .await;
    // dds-sandbox03 runs 5.0.
    let mut stream = gw
        .client
        .clone()
        .watch_upgrade(watch("dds-sandbox03", "4.4"))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(
        (
            first.status.as_str(),
            first.engine_version.as_str(),
            first.done
        ),
        ("Running", "5.0", false)
    );
    let end = stream.next().await.unwrap().unwrap_err();
    assert_eq!(end.code(), Code::FailedPrecondition, "{end:?}");
    assert_eq!(
        end.get_details_error_info().unwrap().reason,
        "ENGINE_VERSION_NOT_LATER"
    );
    assert!(stream.next().await.is_none());
    assert_eq!(gw.sandbox.calls("DescribeDBInstanceAttribute"), 1);
}

/// Twenty watches of one instance share its poll: between the first watch and the last answer,
/// the sandbox sees at most one `DescribeDBInstanceAttribute` per poll interval (reads start at
/// least an interval apart, so k reads in a window of length w have k ≤ w / interval + 2),
/// where twenty polls of their own would make about twenty times that.
#[tokio::test(flavor = "multi_thread")]
async fn watches_of_one_instance_share_one_read_per_poll_interval() {
    const WATCHERS: usize = 20;
    let interval = Duration::from_millis(50);
    let gw = Gateway::start_with(Options {
        sandbox: SandboxConfig {
            upgrade_duration: Duration::from_secs(1),
            ..Default::default()
        },
        configure: Some(|config| config.watch.poll_interval = Duration::from_millis(50)),
        ..Default::default()
    })
    .await;
    let mut client = gw.client.clone();
    client
        .upgrade_engine_version(request("dds-sandbox01", "4.4"))
        .await
        .unwrap();
    let before = gw.sandbox.calls("DescribeDBInstanceAttribute");
    let started = std::time::Instant::now();
    let mut streams = Vec::new();
    for _ in 0..WATCHERS {
        let stream = client
            .watch_upgrade(watch("dds-sandbox01", "4.4"))
            .await
            .unwrap()
            .into_inner();
        streams.push(stream);
    }
    let mut ends = Vec::new();
    for mut stream in streams {
        let mut last = None;
        while let Some(message) = stream.next().await {
            last = Some(message.unwrap());
        }
        ends.push(last.unwrap());
    }
    let elapsed = started.elapsed();
    let reads = gw.sandbox.calls("DescribeDBInstanceAttribute") - before;
    assert!(
        ends.iter()
            .all(|m| m.done && m.status == "Running" && m.engine_version == "4.4"),
        "{ends:?}"
    );
    let bound = (elapsed.as_millis() / interval.as_millis()) as usize + 2;
    assert!(
        reads <= bound,
        "{WATCHERS} watches made {reads} reads in {elapsed:?} (one poll: at most {bound})"
    );
}

/// A watcher that leaves does not stop the poll the others follow; the poll ends when the
/// last one leaves, and the next watcher starts a new one.
#[tokio::test(flavor = "multi_thread")]
async fn a_shared_poll_outlives_a_leaving_watcher_and_ends_with_the_last() {
    let sandbox = Sandbox::start(SandboxConfig {
        upgrade_duration: Duration::from_millis(500),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut config = common::default_config();
    config.alibaba.endpoint = Some(sandbox.endpoint());
    config.watch.poll_interval = Duration::from_millis(10);
    let client = dds_gateway::testing::alibaba::AlibabaClient::new(
        &config.alibaba,
        common::credentials_of(&sandbox),
    )
    .unwrap();
    let service = dds_gateway::testing::api::service::EngineVersionService::from_config(
        &config,
        Arc::new(client),
        None,
    );
    let status = service.status_reader().clone();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = service
            .watch_upgrade(tonic::Request::new(watch("dds-sandbox01", "4.4")))
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!((first.status.as_str(), first.done), ("Running", false));
        streams.push(stream);
    }
    assert_eq!(status.poller().polls_running(), 1);
    drop(streams.remove(0));
    wait_until("the leaving watch ends", || status.active_watches() == 2).await;
    assert_eq!(status.poller().polls_running(), 1);

    service
        .upgrade_engine_version(tonic::Request::new(request("dds-sandbox01", "4.4")))
        .await
        .unwrap();
    for mut stream in streams {
        let mut last = None;
        while let Some(message) = stream.next().await {
            last = Some(message.unwrap());
        }
        let last = last.unwrap();
        assert_eq!((last.engine_version.as_str(), last.done), ("4.4", true));
    }
    wait_until("the poll ends with its last watcher", || {
        status.poller().polls_running() == 0
    })
    .await;

    // Another instance: every watcher leaving (rather than finishing) ends its poll too.
    let mut stream = service
        .watch_upgrade(tonic::Request::new(watch("dds-sandbox02", "8.0")))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.next().await.unwrap().is_ok());
    assert_eq!(status.poller().polls_running(), 1);
    drop(stream);
    wait_until("the poll ends when its watcher leaves", || {
        status.poller().polls_running() == 0
    })
    .await;
}
