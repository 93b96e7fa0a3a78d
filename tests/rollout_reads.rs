//! What a rollout costs in calls to Alibaba, counted at the sandbox: the rollout engine follows
//! its instances under way through the replica's shared poller, so a rollout plus `WatchUpgrade`
//! watches of the same instances cost one `DescribeDBInstanceAttribute` per instance per poll
//! interval; and its calls keep to the account's budget (`[alibaba.quota]`) like every other
//! call, while the rollout still completes (follow-up polls give way to sends). A plan judges
//! several instances at once, so a fleet of hundreds is judged within the plan's time.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::rollouts::until;
use common::{Gateway, Options};
use dds_gateway::pb;
use dds_gateway::pb::rollout_service_client::RolloutServiceClient;
use dds_gateway::testing::alibaba::action::{
    DESCRIBE_AVAILABLE_ENGINE_VERSION as AVAILABLE, UPGRADE_DB_INSTANCE_ENGINE_VERSION as UPGRADE,
};
use dds_gateway::testing::sandbox::{Fault, FleetSpec, SandboxConfig};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const TARGET: &str = "5.0";
const DESCRIBE: &str = "DescribeDBInstanceAttribute";

fn fleet(count: usize, upgrade_time: Duration) -> SandboxConfig {
    SandboxConfig {
        fleet: FleetSpec {
            count,
            engine_versions: vec!["4.4".to_string()],
            upgrade_time,
            ..FleetSpec::default()
        },
        ..SandboxConfig::default()
    }
}

async fn start(
    gw: &Gateway,
    instances: usize,
) -> (RolloutServiceClient<Channel>, String, Vec<String>) {
    let mut rollouts = RolloutServiceClient::new(common::channel(gw.addr).await);
    let ids: Vec<String> = (0..instances).map(|n| format!("dds-fleet{n:03}")).collect();
    let started = rollouts
        .start_rollout(pb::StartRolloutRequest {
            selector: Some(pb::Selector {
                instance_ids: ids.clone(),
                ..Default::default()
            }),
            target_engine_version: TARGET.to_string(),
            max_parallel: Some(i32::try_from(instances).unwrap()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (rollouts, started.rollout_id, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_and_watches_of_its_instances_share_one_read_per_instance_per_interval() {
    const INSTANCES: usize = 4;
    const WATCHERS: usize = 3;
    let interval = Duration::from_millis(50);
    let gw = Gateway::start_with(Options {
        sandbox: fleet(INSTANCES, Duration::from_secs(2)),
        configure: Some(|config| {
            config.watch.poll_interval = Duration::from_millis(50);
            // A budget far above what the reads need: what is counted is what was asked for.
            config.alibaba.quota.calls_per_second = 10_000;
            config.alibaba.quota.max_in_flight = 100;
        }),
        ..Default::default()
    })
    .await;
    let (mut rollouts, id, ids) = start(&gw, INSTANCES).await;
    // Every send is answered: from here on, the only reads are the looks at instances under way.
    until(&mut rollouts, &id, "every instance accepted", |r| {
        r.instances.iter().all(|i| !i.accept_time.is_empty())
    })
    .await;
    let before = gw.sandbox.calls(DESCRIBE);
    let started = std::time::Instant::now();
    let mut streams = Vec::new();
    for instance in &ids {
        for _ in 0..WATCHERS {
            let stream = gw
                .client
                .clone()
                .watch_upgrade(pb::WatchUpgradeRequest {
                    db_instance_id: instance.clone(),
                    engine_version: TARGET.to_string(),
                    region_id: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            streams.push(stream);
        }
    }
    for mut stream in streams {
        let mut last = None;
        while let Some(message) = stream.next().await {
            last = Some(message.unwrap());
        }
        assert!(last.unwrap().done);
    }
    let done = until(&mut rollouts, &id, "completed", |r| {
        r.state() == pb::RolloutState::Completed
    })
    .await;
    let elapsed = started.elapsed();
    let reads = gw.sandbox.calls(DESCRIBE) - before;
    assert!(
        done.instances
            .iter()
            .all(|i| i.state() == pb::InstanceState::Done),
        "{done:#?}"
    );
    // One poll per instance, whoever follows it: at most one read per interval each (and one
    // more for a poll that starts anew after its followers all left for a moment).
    let per_instance = usize::try_from(elapsed.as_millis() / interval.as_millis()).unwrap() + 2;
    let bound = INSTANCES * per_instance;
    assert!(
        reads <= bound,
        "a rollout and {WATCHERS} watches on each of {INSTANCES} instances made {reads} reads in \
         {elapsed:?} (one poll per instance: at most {bound})"
    );
    assert_eq!(gw.sandbox.calls(UPGRADE), INSTANCES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_keeps_to_the_account_budget_and_still_completes() {
    const INSTANCES: usize = 6;
    const PER_SECOND: usize = 5;
    let gw = Gateway::start_with(Options {
        sandbox: fleet(INSTANCES, Duration::from_millis(500)),
        configure: Some(|config| {
            // Followed every 20 ms, six instances would want 300 reads a second.
            config.watch.poll_interval = Duration::from_millis(20);
            config.alibaba.quota.calls_per_second = 5;
            config.alibaba.quota.max_in_flight = 2;
        }),
        ..Default::default()
    })
    .await;
    let (mut rollouts, id, ids) = start(&gw, INSTANCES).await;
    let done = until(&mut rollouts, &id, "completed", |r| {
        r.state() == pb::RolloutState::Completed
    })
    .await;
    assert!(
        done.instances
            .iter()
            .all(|i| i.state() == pb::InstanceState::Done),
        "{done:#?}"
    );
    for instance in &ids {
        assert_eq!(gw.sandbox.upgrades_started(instance), 1, "{instance}");
    }
    // Starts are spaced on the gateway's clock; arrival adds a little jitter, so the window
    // measured here is a little shorter than the second the budget counts.
    let peak = gw.sandbox.peak_rate(None, Duration::from_millis(900));
    assert!(
        peak <= PER_SECOND,
        "{peak} calls reached Alibaba within 0.9 s (budget: {PER_SECOND} a second)"
    );
    assert!(gw.sandbox.peak_in_flight() <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_judges_several_instances_at_once_and_keeps_the_fleets_order() {
    const INSTANCES: usize = 12;
    let gw = Gateway::start_with(Options {
        sandbox: fleet(INSTANCES, Duration::from_secs(1)),
        ..Default::default()
    })
    .await;
    // Each instance's look at what Alibaba offers takes a second: judged one at a time, the
    // sandbox would never have two open at once.
    for _ in 0..INSTANCES {
        gw.sandbox
            .push_fault_on(AVAILABLE, Fault::Delay(Duration::from_secs(1)));
    }
    let ids: Vec<String> = (0..INSTANCES).map(|n| format!("dds-fleet{n:03}")).collect();
    let mut rollouts = RolloutServiceClient::new(common::channel(gw.addr).await);
    let plan = rollouts
        .plan_rollout(pb::PlanRolloutRequest {
            selector: Some(pb::Selector {
                instance_ids: ids.clone(),
                ..Default::default()
            }),
            target_engine_version: TARGET.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let eligible: Vec<&str> = plan
        .eligible
        .iter()
        .map(|i| i.db_instance_id.as_str())
        .collect();
    // In the order Alibaba listed them (the sandbox lists by id), whichever was judged first.
    assert_eq!(eligible, ids, "{plan:#?}");
    assert_eq!(gw.sandbox.calls(AVAILABLE), INSTANCES);
    let peak = gw.sandbox.peak_in_flight();
    assert!(
        (2..=4).contains(&peak),
        "the sandbox had at most {peak} requests open at once while the plan judged \
         {INSTANCES} instances (expected several, at most four)"
    );
}
