use super::*;

fn rollout(sizes: &[usize], parallel: i32, soak: &str, approval: bool) -> pb::Rollout {
    let mut instances = Vec::new();
    let mut waves = Vec::new();
    for (w, size) in sizes.iter().enumerate() {
        waves.push(pb::RolloutWave {
            index: w as i32,
            size: *size as i32,
            state: if w == 0 {
                pb::WaveState::Running
            } else {
                pb::WaveState::NotStarted
            } as i32,
            max_parallel: parallel,
            approval_required: approval && w > 0,
            ..Default::default()
        });
        for _ in 0..*size {
            instances.push(pb::RolloutInstance {
                db_instance_id: format!("dds-i{}", instances.len()),
                region_id: "cn-hangzhou".into(),
                wave: w as i32,
                state: pb::InstanceState::Pending as i32,
                ..Default::default()
            });
        }
    }
    pb::Rollout {
        rollout_id: "ro-1".into(),
        state: pb::RolloutState::Running as i32,
        target_engine_version: "5.0".into(),
        waves,
        instances,
        soak: soak.into(),
        ..Default::default()
    }
}

/// The driver's world: results of sends and looks at instances, fed one tick at a time.
struct World {
    now: SystemTime,
    results: HashMap<String, SendResult>,
    looks: HashMap<String, Look>,
    in_flight: HashSet<String>,
    backoff: String,
}

impl World {
    fn new() -> Self {
        Self {
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            results: HashMap::new(),
            looks: HashMap::new(),
            in_flight: HashSet::new(),
            backoff: String::new(),
        }
    }

    fn tick(&mut self, rollout: &mut pb::Rollout) -> Vec<String> {
        let sends = step(
            rollout,
            &Tick {
                results: &self.results,
                looks: &self.looks,
                in_flight: &self.in_flight,
                may_send: self.backoff.is_empty(),
                backoff_reason: &self.backoff,
                now: self.now,
                settle_window: Duration::from_secs(60),
            },
        );
        self.results.clear();
        self.looks.clear();
        sends
            .into_iter()
            .map(|n| rollout.instances[n].db_instance_id.clone())
            .collect()
    }

    fn result(&mut self, id: &str, result: SendResult) {
        self.results.insert(format!("cn-hangzhou/{id}"), result);
    }

    fn look(&mut self, id: &str, status: &str, version: &str) {
        self.looks.insert(
            format!("cn-hangzhou/{id}"),
            Look::Status {
                status: status.into(),
                engine_version: version.into(),
            },
        );
    }
}

fn accepted() -> SendResult {
    SendResult::Accepted {
        alibaba_request_id: "R".into(),
    }
}

fn states(rollout: &pb::Rollout) -> Vec<pb::InstanceState> {
    rollout.instances.iter().map(|i| i.state()).collect()
}

#[test]
fn waves_run_in_order_within_their_parallelism_and_soak_between() {
    let mut r = rollout(&[1, 3], 2, "30s", false);
    let mut world = World::new();
    // The canary alone.
    assert_eq!(world.tick(&mut r), vec!["dds-i0"]);
    assert!(world.tick(&mut r).is_empty(), "nothing sent twice");
    world.result("dds-i0", accepted());
    world.tick(&mut r);
    assert!(!r.instances[0].accept_time.is_empty());
    world.look("dds-i0", UPGRADING, "4.4");
    world.tick(&mut r);
    assert_eq!(r.instances[0].state(), pb::InstanceState::Upgrading);
    world.look("dds-i0", RUNNING, "5.0");
    world.tick(&mut r);
    assert_eq!(r.instances[0].state(), pb::InstanceState::Done);
    // Wave 0 soaks: the rollout waits, nothing is sent.
    assert_eq!(r.state(), pb::RolloutState::Waiting);
    assert_eq!(r.waves[0].state(), pb::WaveState::Soaking);
    assert!(!r.waves[0].soak_until.is_empty());
    assert!(world.tick(&mut r).is_empty());
    world.now += Duration::from_secs(31);
    world.tick(&mut r);
    assert_eq!(r.current_wave, 1);
    assert_eq!(r.state(), pb::RolloutState::Running);
    // Two at a time in wave 1.
    assert_eq!(world.tick(&mut r), vec!["dds-i1", "dds-i2"]);
    world.result("dds-i1", SendResult::AlreadyDone);
    world.result("dds-i2", SendResult::UnderWay);
    assert_eq!(world.tick(&mut r), vec!["dds-i3"]);
    world.look("dds-i2", RUNNING, "5.0");
    world.result("dds-i3", accepted());
    world.tick(&mut r);
    world.look("dds-i3", RUNNING, "5.0");
    world.tick(&mut r);
    assert_eq!(r.state(), pb::RolloutState::Completed);
    assert_eq!(r.waves[1].state(), pb::WaveState::Completed);
    assert!(!r.end_time.is_empty());
}

#[test]
fn a_wave_after_the_first_waits_for_its_approval() {
    let mut r = rollout(&[1, 1], 1, "", true);
    let mut world = World::new();
    world.tick(&mut r);
    world.result("dds-i0", SendResult::AlreadyDone);
    world.tick(&mut r);
    assert_eq!(r.state(), pb::RolloutState::Waiting);
    assert_eq!(r.waves[1].state(), pb::WaveState::WaitingApproval);
    assert!(world.tick(&mut r).is_empty());
    crate::rollout::control::apply(
        &mut r,
        crate::rollout::control::Action::Approve,
        None,
        "alice",
        "canary fine",
    )
    .unwrap();
    assert_eq!(r.waves[1].approved_by, "alice");
    assert_eq!(r.waves[1].approval_comment, "canary fine");
    assert_eq!(world.tick(&mut r), vec!["dds-i1"]);
}

#[test]
fn failures_beyond_the_budget_stop_the_rollout_after_sends_under_way_finish() {
    let mut r = rollout(&[4], 2, "", false);
    r.max_failures = 1;
    let mut world = World::new();
    assert_eq!(world.tick(&mut r), vec!["dds-i0", "dds-i1"]);
    let failed = || SendResult::Failed {
        code: "IncorrectDBInstanceState".into(),
        message: "no".into(),
    };
    // One failure is within the budget: the next instance goes.
    world.result("dds-i0", failed());
    assert_eq!(world.tick(&mut r), vec!["dds-i2"]);
    assert_eq!(r.state(), pb::RolloutState::Running);
    // The second exceeds it: stopping, nothing new, the send under way (dds-i2) finishes.
    world.result("dds-i1", failed());
    world.in_flight.insert("cn-hangzhou/dds-i2".into());
    assert!(world.tick(&mut r).is_empty());
    assert_eq!(r.state(), pb::RolloutState::Stopping);
    assert_eq!(r.failures, 2);
    assert_eq!(r.instances[1].alibaba_code, "IncorrectDBInstanceState");
    world.in_flight.clear();
    world.result("dds-i2", accepted());
    world.tick(&mut r);
    assert_eq!(r.state(), pb::RolloutState::Stopping, "dds-i2 is under way");
    world.look("dds-i2", RUNNING, "5.0");
    world.tick(&mut r);
    assert_eq!(r.state(), pb::RolloutState::Failed);
    assert_eq!(r.instances[3].state(), pb::InstanceState::Pending);
    // Retrying one failed instance brings the failures back within the budget: it runs again.
    crate::rollout::control::apply(
        &mut r,
        crate::rollout::control::Action::Retry,
        Some("dds-i1"),
        "bob",
        "",
    )
    .unwrap();
    assert_eq!(r.state(), pb::RolloutState::Running);
    assert_eq!(world.tick(&mut r), vec!["dds-i1", "dds-i3"]);
}

#[test]
fn throttling_and_outages_wait_and_burn_no_failure() {
    let mut r = rollout(&[2], 2, "", false);
    let mut world = World::new();
    world.tick(&mut r);
    world.result(
        "dds-i0",
        SendResult::Transient {
            code: "Throttling.User".into(),
            message: "throttled".into(),
        },
    );
    world.result("dds-i1", accepted());
    world.backoff = "throttled (Throttling.User)".into();
    assert!(world.tick(&mut r).is_empty());
    assert_eq!(r.state(), pb::RolloutState::Waiting);
    assert!(
        r.waiting_reason.contains("Throttling.User"),
        "{}",
        r.waiting_reason
    );
    assert_eq!(r.failures, 0);
    assert_eq!(r.instances[0].state(), pb::InstanceState::Pending);
    assert_eq!(r.instances[0].alibaba_code, "Throttling.User");
    world.backoff.clear();
    assert_eq!(world.tick(&mut r), vec!["dds-i0"]);
}

#[test]
fn a_new_driver_looks_before_it_sends_for_an_instance_whose_outcome_is_unknown() {
    let mut r = rollout(&[3], 3, "", false);
    for i in &mut r.instances {
        i.state = pb::InstanceState::Upgrading as i32;
    }
    // The previous driver died: no result, no accept time. One is upgrading, one is done, one
    // shows nothing: that one goes back to pending, and its idempotency key decides.
    let mut world = World::new();
    world.look("dds-i0", UPGRADING, "4.4");
    world.look("dds-i1", RUNNING, "5.0");
    world.look("dds-i2", RUNNING, "4.4");
    let sends = world.tick(&mut r);
    assert_eq!(
        states(&r),
        vec![
            pb::InstanceState::Upgrading,
            pb::InstanceState::Done,
            pb::InstanceState::Upgrading
        ]
    );
    assert_eq!(
        sends,
        vec!["dds-i2"],
        "sent again under the same key only after a look"
    );
}

#[test]
fn an_accepted_upgrade_that_never_shows_fails_after_the_settle_window() {
    let mut r = rollout(&[1], 1, "", false);
    let mut world = World::new();
    world.tick(&mut r);
    world.result("dds-i0", accepted());
    world.tick(&mut r);
    world.look("dds-i0", RUNNING, "4.4");
    world.tick(&mut r);
    assert_eq!(
        r.instances[0].state(),
        pb::InstanceState::Upgrading,
        "within the window"
    );
    world.now += Duration::from_secs(61);
    world.look("dds-i0", RUNNING, "4.4");
    world.tick(&mut r);
    assert_eq!(r.instances[0].state(), pb::InstanceState::Failed);
    assert_eq!(r.state(), pb::RolloutState::Failed);
}

#[test]
fn cancel_stops_for_good_without_cutting_an_upgrade() {
    let mut r = rollout(&[1, 2], 1, "", false);
    let mut world = World::new();
    world.tick(&mut r);
    world.result("dds-i0", accepted());
    world.tick(&mut r);
    let cancel = |r: &mut pb::Rollout| {
        crate::rollout::control::apply(r, crate::rollout::control::Action::Cancel, None, "c", "")
    };
    cancel(&mut r).unwrap();
    r.actions.push(pb::RolloutAction {
        action: "cancel".into(),
        ..Default::default()
    });
    assert!(world.tick(&mut r).is_empty());
    assert_eq!(r.state(), pb::RolloutState::Stopping);
    world.look("dds-i0", RUNNING, "5.0");
    world.tick(&mut r);
    assert_eq!(r.state(), pb::RolloutState::Cancelled);
    assert_eq!(
        states(&r),
        vec![
            pb::InstanceState::Done,
            pb::InstanceState::Skipped,
            pb::InstanceState::Skipped
        ]
    );
    assert!(
        cancel(&mut r).is_err(),
        "a cancelled rollout stays cancelled"
    );
}

#[test]
fn a_paused_rollout_sends_nothing_but_follows_what_is_under_way() {
    let mut r = rollout(&[3], 1, "", false);
    let mut world = World::new();
    world.tick(&mut r);
    world.result("dds-i0", accepted());
    crate::rollout::control::apply(
        &mut r,
        crate::rollout::control::Action::Pause,
        None,
        "p",
        "",
    )
    .unwrap();
    world.tick(&mut r);
    world.look("dds-i0", RUNNING, "5.0");
    assert!(world.tick(&mut r).is_empty());
    assert_eq!(r.instances[0].state(), pb::InstanceState::Done);
    assert_eq!(r.state(), pb::RolloutState::Paused);
    crate::rollout::control::apply(
        &mut r,
        crate::rollout::control::Action::Resume,
        None,
        "p",
        "",
    )
    .unwrap();
    assert_eq!(world.tick(&mut r), vec!["dds-i1"]);
}
