//! Fleet rollouts end to end: two gateway processes share one real `redis-server` and one
//! sandbox with a generated fleet (in this process). A 30-instance rollout in waves of 1, 5 and
//! 24 with a soak survives a SIGKILL of its driver mid-wave and upgrades each instance exactly
//! once; failures beyond `max_failures` stop a rollout; pause, resume, cancel and approval gates;
//! a plan the fleet no longer matches is refused; the same over JSON/HTTP with curl.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::ServingBinary;
use common::redis::RedisServer;
use common::rollouts::until;
use dds_gateway::pb;
use dds_gateway::pb::rollout_service_client::RolloutServiceClient;
use dds_gateway::testing::alibaba::action::UPGRADE_DB_INSTANCE_ENGINE_VERSION as UPGRADE;
use dds_gateway::testing::sandbox::{Failure, FailureRule, FleetSpec, Sandbox, SandboxConfig};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const TARGET: &str = "5.0";

fn fleet(count: usize, failures: Vec<FailureRule>) -> FleetSpec {
    FleetSpec {
        count,
        engine_versions: vec!["4.4".to_string()],
        upgrade_time: Duration::from_millis(1500),
        failures,
        ..FleetSpec::default()
    }
}

struct Setup {
    sandbox: Sandbox,
    _redis: RedisServer,
    a: ServingBinary,
    b: ServingBinary,
}

async fn replica(sandbox: &Sandbox, redis: &RedisServer) -> ServingBinary {
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
            ("DDS_GATEWAY_STATE_LEASE", "2s"),
            // Thirty instances followed every 100 ms want more reads than the default account
            // budget (20 calls/s) allows: the looks share one poll per instance and give way to
            // sends, and a takeover still finishes.
            ("DDS_GATEWAY_WATCH_POLL_INTERVAL", "100ms"),
            // A send whose driver died between marking it and its answer is not sent again
            // within the settle window (the default two minutes is long for a test).
            ("DDS_GATEWAY_IDEMPOTENCY_SETTLE_WINDOW", "4s"),
        ],
    )
    .await
}

async fn setup(spec: FleetSpec) -> Setup {
    let sandbox = Sandbox::start(SandboxConfig {
        fleet: spec,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let redis = RedisServer::start().await;
    let a = replica(&sandbox, &redis).await;
    let b = replica(&sandbox, &redis).await;
    Setup {
        sandbox,
        _redis: redis,
        a,
        b,
    }
}

async fn client(replica: &ServingBinary) -> RolloutServiceClient<Channel> {
    RolloutServiceClient::new(common::channel(replica.addr.parse().unwrap()).await)
}

fn fleet_selector() -> pb::Selector {
    pb::Selector {
        instance_patterns: vec!["dds-fleet*".to_string()],
        ..Default::default()
    }
}

fn sizes(sizes: &[i32]) -> Vec<pb::WaveSpec> {
    sizes
        .iter()
        .map(|n| pb::WaveSpec {
            size_or_percent: Some(pb::wave_spec::SizeOrPercent::Size(*n)),
        })
        .collect()
}

fn reason(status: &tonic::Status) -> String {
    status.get_details_error_info().expect("ErrorInfo").reason
}

fn count(rollout: &pb::Rollout, state: pb::InstanceState) -> usize {
    rollout
        .instances
        .iter()
        .filter(|i| i.state() == state)
        .count()
}

fn time(text: &str) -> std::time::SystemTime {
    humantime::parse_rfc3339_weak(text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_instances_in_waves_survive_a_sigkill_of_their_driver_and_each_is_upgraded_once() {
    let mut s = setup(fleet(30, Vec::new())).await;
    let mut a = client(&s.a).await;
    let mut b = client(&s.b).await;
    let plan = a
        .plan_rollout(pb::PlanRolloutRequest {
            selector: Some(fleet_selector()),
            target_engine_version: TARGET.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.eligible.len(), 30, "{plan:#?}");
    let started = a
        .start_rollout(pb::StartRolloutRequest {
            plan_hash: plan.plan_hash.clone(),
            selector: Some(fleet_selector()),
            target_engine_version: TARGET.to_string(),
            waves: sizes(&[1, 5, 24]),
            max_parallel: Some(8),
            soak: "1s".to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = started.rollout_id.clone();
    assert_eq!(started.state(), pb::RolloutState::Running);
    assert_eq!(
        started.waves.iter().map(|w| w.size).collect::<Vec<_>>(),
        vec![1, 5, 24]
    );
    // Mid-wave: the last wave has upgrades under way and others still pending.
    let mid = until(&mut b, &id, "upgrades under way in the last wave", |r| {
        r.current_wave == 2
            && r.instances
                .iter()
                .any(|i| i.wave == 2 && i.state() == pb::InstanceState::Upgrading)
    })
    .await;
    assert!(count(&mid, pb::InstanceState::Pending) > 0, "{mid:#?}");
    // The replica that started it drives it (it took the lease at once): kill it.
    s.a.process.start_kill().unwrap();
    s.a.process.wait().await.unwrap();
    // The survivor's log, shown if the test fails.
    let mut survivor_log =
        std::mem::replace(&mut s.b.log, tokio::sync::mpsc::unbounded_channel().1);
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(line) = survivor_log.recv().await {
            eprintln!("replica b: {line}");
            let _ = seen_tx.send(line);
        }
    });
    let done = until(&mut b, &id, "completed", |r| {
        r.state() == pb::RolloutState::Completed
    })
    .await;
    assert_eq!(count(&done, pb::InstanceState::Done), 30, "{done:#?}");
    for instance in &done.instances {
        assert_eq!(
            s.sandbox.upgrades_started(&instance.db_instance_id),
            1,
            "{} got exactly one upgrade call",
            instance.db_instance_id
        );
        let now = s.sandbox.instance(&instance.db_instance_id).unwrap();
        assert_eq!(now.engine_version, TARGET);
    }
    assert_eq!(s.sandbox.calls(UPGRADE), 30);
    // Waves in order, each after the previous one's soak.
    for pair in done.waves.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        assert!(!before.soak_until.is_empty());
        assert!(
            time(&after.start_time) >= time(&before.soak_until),
            "{done:#?}"
        );
        assert!(time(&after.start_time) >= time(&before.end_time));
    }
    // The survivor took over and said so.
    let mut took_over = false;
    while let Ok(line) = seen_rx.try_recv() {
        took_over |= line.contains("driving the rollout");
    }
    assert!(took_over, "replica b never said it drove the rollout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_beyond_max_failures_stop_the_rollout_and_sends_under_way_finish() {
    let failing = vec![FailureRule {
        pattern: "dds-fleet00?".to_string(),
        failure: Failure::Answer("IncorrectDBInstanceState".to_string()),
    }];
    let s = setup(fleet(12, failing)).await;
    let mut a = client(&s.a).await;
    let started = a
        .start_rollout(pb::StartRolloutRequest {
            selector: Some(fleet_selector()),
            target_engine_version: TARGET.to_string(),
            max_parallel: Some(1),
            max_failures: Some(2),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let failed = until(&mut a, &started.rollout_id, "failed", |r| {
        r.state() == pb::RolloutState::Failed
    })
    .await;
    // Stopped when failures exceeded 2: at the third, as SSM counts.
    assert_eq!(failed.failures, 3, "{failed:#?}");
    assert_eq!(s.sandbox.calls(UPGRADE), 3);
    let codes: Vec<&str> = failed
        .instances
        .iter()
        .filter(|i| i.state() == pb::InstanceState::Failed)
        .map(|i| i.alibaba_code.as_str())
        .collect();
    assert_eq!(codes, vec!["IncorrectDBInstanceState"; 3]);
    assert_eq!(count(&failed, pb::InstanceState::Pending), 9);
    // Skipping two failed instances brings the failures within the budget: it runs on, and
    // fails again at the next failing instance.
    for instance in ["dds-fleet000", "dds-fleet001"] {
        a.skip_rollout_instance(pb::RolloutInstanceRequest {
            rollout_id: started.rollout_id.clone(),
            db_instance_id: instance.to_string(),
            comment: "known bad".to_string(),
        })
        .await
        .unwrap();
    }
    let again = until(&mut a, &started.rollout_id, "failed again", |r| {
        r.state() == pb::RolloutState::Failed && r.failures == 3
    })
    .await;
    assert_eq!(count(&again, pb::InstanceState::Skipped), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_gates_pause_resume_and_cancel() {
    let s = setup(fleet(6, Vec::new())).await;
    let mut a = client(&s.a).await;
    let mut b = client(&s.b).await;
    let started = a
        .start_rollout(pb::StartRolloutRequest {
            selector: Some(fleet_selector()),
            target_engine_version: TARGET.to_string(),
            waves: sizes(&[1, 2, 3]),
            max_parallel: Some(1),
            approval_required: true,
            comment: "4.4 end of life".to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = started.rollout_id.clone();
    let gate = until(&mut b, &id, "wave 1 at its gate", |r| {
        r.current_wave == 1 && r.waves[1].state() == pb::WaveState::WaitingApproval
    })
    .await;
    assert_eq!(gate.state(), pb::RolloutState::Waiting);
    assert_eq!(
        s.sandbox.calls(UPGRADE),
        1,
        "only the canary before the gate"
    );
    // Nothing to resume; approving is for the wave at the gate.
    let err = b
        .resume_rollout(pb::RolloutControlRequest {
            rollout_id: id.clone(),
            comment: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let approved = b
        .approve_rollout(pb::RolloutControlRequest {
            rollout_id: id.clone(),
            comment: "canary looks fine".to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.waves[1].approval_comment, "canary looks fine");
    assert!(!approved.waves[1].approve_time.is_empty());
    // Pause as soon as wave 1 has sent: nothing new leaves while paused.
    until(&mut b, &id, "wave 1 sending", |r| {
        r.instances
            .iter()
            .any(|i| i.wave == 1 && i.state() != pb::InstanceState::Pending)
    })
    .await;
    b.pause_rollout(pb::RolloutControlRequest {
        rollout_id: id.clone(),
        comment: "looking at dashboards".to_string(),
    })
    .await
    .unwrap();
    let paused = until(&mut a, &id, "paused with nothing under way", |r| {
        r.state() == pb::RolloutState::Paused && count(r, pb::InstanceState::Upgrading) == 0
    })
    .await;
    let calls = s.sandbox.calls(UPGRADE);
    assert!(
        count(&paused, pb::InstanceState::Pending) > 0,
        "{paused:#?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.sandbox.calls(UPGRADE), calls, "no send while paused");
    a.resume_rollout(pb::RolloutControlRequest {
        rollout_id: id.clone(),
        comment: String::new(),
    })
    .await
    .unwrap();
    until(&mut a, &id, "wave 2 at its gate", |r| {
        r.current_wave == 2 && r.waves[2].state() == pb::WaveState::WaitingApproval
    })
    .await;
    let cancelled = a
        .cancel_rollout(pb::RolloutControlRequest {
            rollout_id: id.clone(),
            comment: "enough".to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state(), pb::RolloutState::Stopping);
    let end = until(&mut a, &id, "cancelled", |r| {
        r.state() == pb::RolloutState::Cancelled
    })
    .await;
    assert_eq!(count(&end, pb::InstanceState::Done), 3);
    assert_eq!(count(&end, pb::InstanceState::Skipped), 3);
    assert_eq!(s.sandbox.calls(UPGRADE), 3);
    let actions: Vec<&str> = end.actions.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        vec!["start", "approve", "pause", "resume", "cancel"]
    );
    // A cancelled rollout let its instances go: a new one may take them.
    let again = a
        .start_rollout(pb::StartRolloutRequest {
            selector: Some(fleet_selector()),
            target_engine_version: TARGET.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.instances.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_starts_are_refused_before_anything_is_sent() {
    let s = setup(fleet(4, Vec::new())).await;
    let mut a = client(&s.a).await;
    let plan = a
        .plan_rollout(pb::PlanRolloutRequest {
            selector: Some(fleet_selector()),
            target_engine_version: TARGET.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(s.sandbox.set_lock_mode("dds-fleet002", "ManualLock"));
    let start = |plan_hash: &str, selector: pb::Selector, waves: Vec<pb::WaveSpec>| {
        pb::StartRolloutRequest {
            plan_hash: plan_hash.to_string(),
            selector: Some(selector),
            target_engine_version: TARGET.to_string(),
            waves,
            ..Default::default()
        }
    };
    let changed = a
        .start_rollout(start(&plan.plan_hash, fleet_selector(), vec![]))
        .await
        .unwrap_err();
    assert_eq!(changed.code(), Code::FailedPrecondition);
    assert_eq!(reason(&changed), "PLAN_CHANGED");
    assert!(
        changed
            .message()
            .contains("no longer eligible: dds-fleet002"),
        "{}",
        changed.message()
    );
    let empty = a
        .plan_rollout(pb::PlanRolloutRequest {
            selector: Some(pb::Selector::default()),
            target_engine_version: TARGET.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    let left_over = a
        .start_rollout(start("", fleet_selector(), sizes(&[1, 1])))
        .await
        .unwrap_err();
    assert_eq!(left_over.code(), Code::InvalidArgument);
    assert!(
        left_over.message().contains("left over"),
        "{}",
        left_over.message()
    );
    let unknown_version = a
        .start_rollout(pb::StartRolloutRequest {
            target_engine_version: "9.9".to_string(),
            ..start("", fleet_selector(), vec![])
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_version.code(), Code::InvalidArgument);
    assert_eq!(s.sandbox.calls(UPGRADE), 0);
    // One rollout holds its instances: a second one that touches any is refused, naming it.
    let first = a
        .start_rollout(pb::StartRolloutRequest {
            soak: "1h".to_string(),
            ..start("", fleet_selector(), sizes(&[1, 2]))
        })
        .await
        .unwrap()
        .into_inner();
    let second = a
        .start_rollout(start(
            "",
            pb::Selector {
                instance_ids: vec!["dds-fleet003".to_string()],
                ..Default::default()
            },
            vec![],
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&second), "INSTANCE_IN_ROLLOUT");
    assert!(
        second.message().contains(&first.rollout_id),
        "{}",
        second.message()
    );
}

/// curl against the JSON routes of DESIGN.md: plan, start, get, list, the NDJSON watch, approve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_over_json_with_curl() {
    let s = setup(fleet(3, Vec::new())).await;
    let base = format!("http://{}", s.a.addr);
    let curl = |args: Vec<String>| async move {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "60"])
            .args(&args)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let post = |path: &str, body: serde_json::Value| {
        vec![
            "-X".to_string(),
            "POST".to_string(),
            "-H".to_string(),
            "content-type: application/json".to_string(),
            "-d".to_string(),
            body.to_string(),
            format!("{base}{path}"),
        ]
    };
    let plan: serde_json::Value = serde_json::from_str(
        &curl(post(
            "/v1/rollouts:plan",
            serde_json::json!({"selector": {"instancePatterns": ["dds-fleet*"]}, "targetEngineVersion": TARGET}),
        ))
        .await,
    )
    .unwrap();
    assert_eq!(plan["eligible"].as_array().unwrap().len(), 3, "{plan}");
    let hash = plan["planHash"].as_str().unwrap().to_string();
    let rollout: serde_json::Value = serde_json::from_str(
        &curl(post(
            "/v1/rollouts",
            serde_json::json!({
                "planHash": hash,
                "selector": {"instancePatterns": ["dds-fleet*"]},
                "targetEngineVersion": TARGET,
                "waves": [{"size": 1}, {"percent": 100}],
                "maxParallel": 2,
                "maxFailures": 0,
                "soak": "1s",
                "approvalRequired": true,
            }),
        ))
        .await,
    )
    .unwrap();
    let id = rollout["rolloutId"].as_str().unwrap().to_string();
    assert_eq!(rollout["state"], "ROLLOUT_STATE_RUNNING");
    assert_eq!(rollout["instances"][0]["state"], "INSTANCE_STATE_PENDING");
    // Follow it: NDJSON, one rollout per change, until the gate.
    let mut c = client(&s.b).await;
    until(&mut c, &id, "at its gate", |r| {
        r.state() == pb::RolloutState::Waiting && r.current_wave == 1
    })
    .await;
    let approved: serde_json::Value = serde_json::from_str(
        &curl(post(
            &format!("/v1/rollouts/{id}:approve"),
            serde_json::json!({"comment": "ship it"}),
        ))
        .await,
    )
    .unwrap();
    assert_eq!(approved["waves"][1]["approvalComment"], "ship it");
    let watched = curl(vec![format!("{base}/v1/rollouts/{id}:watch")]).await;
    let lines: Vec<serde_json::Value> = watched
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    assert_eq!(
        lines.last().unwrap()["state"],
        "ROLLOUT_STATE_COMPLETED",
        "{watched}"
    );
    let got: serde_json::Value =
        serde_json::from_str(&curl(vec![format!("{base}/v1/rollouts/{id}")]).await).unwrap();
    assert_eq!(got["instances"][2]["state"], "INSTANCE_STATE_DONE");
    let listed: serde_json::Value =
        serde_json::from_str(&curl(vec![format!("{base}/v1/rollouts")]).await).unwrap();
    assert_eq!(listed["rollouts"][0]["rolloutId"], id.as_str());
    let refused = curl(post(
        "/v1/rollouts:plan",
        serde_json::json!({"targetEngineVersion": TARGET}),
    ))
    .await;
    assert!(refused.contains("INVALID_ROLLOUT"), "{refused}");
}

/// The command line: plan, start (waves, limits, approval), approve, watch with its per-wave
/// progress bars and final table, status and list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_plans_starts_approves_and_watches() {
    let s = setup(fleet(3, Vec::new())).await;
    let target = format!("http://{}", s.a.addr);
    let cli = |args: Vec<&str>| {
        let mut all = vec!["rollout", "--target", target.as_str()];
        all.extend(args);
        let all: Vec<String> = all.into_iter().map(str::to_string).collect();
        async move {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            common::run_cli(&args, &[]).await
        }
    };
    let (code, plan, err) = cli(vec!["plan", "--pattern", "dds-fleet*", "--version", TARGET]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(plan.contains("eligible: 3"), "{plan}");
    let hash = plan
        .lines()
        .find_map(|l| l.strip_prefix("plan_hash: "))
        .unwrap()
        .to_string();
    let (code, started, err) = cli(vec![
        "start",
        "--pattern",
        "dds-fleet*",
        "--version",
        TARGET,
        "--plan-hash",
        &hash,
        "--waves",
        "1,100%",
        "--max-parallel",
        "50%",
        "--approval",
        "--comment",
        "eol",
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    let id = started
        .lines()
        .find_map(|l| l.strip_prefix("rollout_id: "))
        .unwrap()
        .to_string();
    let mut c = client(&s.b).await;
    until(&mut c, &id, "at its gate", |r| {
        r.current_wave == 1 && r.state() == pb::RolloutState::Waiting
    })
    .await;
    let (code, approved, err) = cli(vec!["approve", &id, "--comment", "canary ok"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        approved.contains("approved by \"\": canary ok"),
        "{approved}"
    );
    let (code, watched, err) = cli(vec!["watch", &id]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        watched.contains("wave 1 [####################] 2/2 done"),
        "{watched}"
    );
    assert!(
        watched.contains("ended ROLLOUT_STATE_COMPLETED"),
        "{watched}"
    );
    assert_eq!(
        watched.matches("INSTANCE_STATE_DONE").count(),
        3,
        "{watched}"
    );
    let (code, listed, _) = cli(vec!["list"]).await;
    assert_eq!(code, Some(0));
    assert!(
        listed.contains(&id) && listed.contains("3/3 done"),
        "{listed}"
    );
    let (code, _, err) = cli(vec!["pause", &id]).await;
    assert_eq!(code, Some(1), "a completed rollout cannot be paused: {err}");
    assert!(
        err.contains("FAILED_PRECONDITION") || err.contains("FailedPrecondition"),
        "{err}"
    );
}
