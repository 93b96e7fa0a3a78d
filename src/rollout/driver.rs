//! Driving rollouts. Each replica runs a supervisor that takes the lease of every unfinished
//! rollout nobody holds (a lease that ran out is free: its holder died or lost the store) and
//! drives it: a tick renews the lease, reads the record, applies what came back from sends and
//! looks at instances under way, moves waves on, and writes the record fenced by the lease; only
//! then does it start the sends the tick decided. A replica that lost the lease writes nothing.
//!
//! An instance is sent at most once: before a send the record marks it UPGRADING (so a new
//! driver knows the outcome may be unknown, and looks at the instance first), the send looks at
//! the instance too (upgrading or already on the target: nothing is sent), and the upgrade goes
//! through the upgrade path with an idempotency key derived from (rollout, instance, target):
//! a second send with that key replays the first answer, waits for its holder, or looks at the
//! instance within the settle window. Throttling, an outage or an unreachable store make the
//! rollout wait; they are not failures.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use prost::Message as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Code;
use tonic_types::StatusExt as _;
use tracing::instrument::WithSubscriber as _;

use crate::audit::{self, AuditEvent};
use crate::pb;
use crate::rollout::{Rollouts, finished, instance_key, now};
use crate::upgrade::instance::{RUNNING, UPGRADING};

/// The state of an instance that went wrong (Alibaba's `DBInstanceStatus`).
const ABNORMAL: &str = "Abnormal";

/// How long sends wait after throttling, an outage or an unreachable store.
const BACKOFF: Duration = Duration::from_secs(2);

/// What came of one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SendResult {
    /// Alibaba accepted it (or the upgrade path found it under way: `reconciled`).
    Accepted { alibaba_request_id: String },
    /// The instance already ran the target: nothing was sent.
    AlreadyDone,
    /// The instance was upgrading already: nothing was sent.
    UnderWay,
    /// It failed for this instance (counts against `max_failures`).
    Failed { code: String, message: String },
    /// Throttling, an outage, an unreachable store, the instance busy: try again later.
    Transient { code: String, message: String },
}

/// What a look at an instance under way showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Look {
    Status {
        status: String,
        engine_version: String,
    },
    Gone,
}

/// What one tick knows besides the record.
#[derive(Debug)]
pub(crate) struct Tick<'a> {
    pub results: &'a HashMap<String, SendResult>,
    pub looks: &'a HashMap<String, Look>,
    pub in_flight: &'a HashSet<String>,
    /// No backoff is running: sends may start.
    pub may_send: bool,
    pub backoff_reason: &'a str,
    pub now: SystemTime,
    pub settle_window: Duration,
}

fn is(instance: &pb::RolloutInstance, state: pb::InstanceState) -> bool {
    instance.state() == state
}

fn terminal(instance: &pb::RolloutInstance) -> bool {
    matches!(
        instance.state(),
        pb::InstanceState::Done | pb::InstanceState::Failed | pb::InstanceState::Skipped
    )
}

fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

fn format_time(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// One step of a rollout: applies `tick` to `rollout` and says which instances to send now (their
/// indexes). Pure, so that every rule here is tested without a clock or a network.
pub(crate) fn step(rollout: &mut pb::Rollout, tick: &Tick<'_>) -> Vec<usize> {
    let stamp = format_time(tick.now);
    let target = rollout.target_engine_version.clone();
    for instance in &mut rollout.instances {
        let key = instance_key(instance);
        if !is(instance, pb::InstanceState::Upgrading) {
            continue;
        }
        if let Some(result) = tick.results.get(&key) {
            match result {
                SendResult::Accepted { alibaba_request_id } => {
                    instance.accept_time.clone_from(&stamp);
                    instance.alibaba_request_id.clone_from(alibaba_request_id);
                    instance.alibaba_code.clear();
                    instance.message = "accepted; following the upgrade".to_string();
                }
                SendResult::UnderWay => {
                    instance.accept_time.clone_from(&stamp);
                    instance.message = "found upgrading: nothing sent; following it".to_string();
                }
                SendResult::AlreadyDone => {
                    instance.state = pb::InstanceState::Done as i32;
                    instance.end_time.clone_from(&stamp);
                    instance.message = format!("already runs {target}: nothing sent");
                }
                SendResult::Failed { code, message } => {
                    instance.state = pb::InstanceState::Failed as i32;
                    instance.end_time.clone_from(&stamp);
                    instance.alibaba_code.clone_from(code);
                    instance.message.clone_from(message);
                }
                SendResult::Transient { code, message } => {
                    instance.state = pb::InstanceState::Pending as i32;
                    instance.alibaba_code.clone_from(code);
                    instance.message = format!("will try again: {message}");
                }
            }
            continue;
        }
        if tick.in_flight.contains(&key) {
            continue;
        }
        match tick.looks.get(&key) {
            Some(Look::Status {
                status,
                engine_version,
            }) => {
                if status == RUNNING && *engine_version == target {
                    instance.state = pb::InstanceState::Done as i32;
                    instance.end_time.clone_from(&stamp);
                    instance.message = format!("Running on {target}");
                } else if status == UPGRADING {
                    if instance.accept_time.is_empty() {
                        instance.accept_time.clone_from(&stamp);
                    }
                    instance.message = "upgrading".to_string();
                } else if status == RUNNING {
                    let accepted = parse_time(&instance.accept_time);
                    match accepted {
                        // A send whose outcome is unknown (its driver died): its key decides.
                        None => {
                            instance.state = pb::InstanceState::Pending as i32;
                            instance.message = "outcome of a send unknown and no upgrade seen: its idempotency key decides whether to send".to_string();
                        }
                        Some(at)
                            if tick.now.duration_since(at).unwrap_or_default()
                                > tick.settle_window =>
                        {
                            instance.state = pb::InstanceState::Failed as i32;
                            instance.end_time.clone_from(&stamp);
                            instance.message = format!(
                                "the upgrade was accepted, but the instance runs {engine_version} and is Running"
                            );
                        }
                        Some(_) => {}
                    }
                } else if status == ABNORMAL {
                    instance.state = pb::InstanceState::Failed as i32;
                    instance.end_time.clone_from(&stamp);
                    instance.message = format!("the instance is {ABNORMAL} on {engine_version}");
                } else {
                    // Restarts and switch-overs are part of an upgrade: follow on.
                    instance.message = format!("is {status}");
                }
            }
            Some(Look::Gone) => {
                instance.state = pb::InstanceState::Failed as i32;
                instance.end_time.clone_from(&stamp);
                instance.message = "the instance no longer exists".to_string();
            }
            None => {}
        }
    }
    let failures = rollout
        .instances
        .iter()
        .filter(|i| is(i, pb::InstanceState::Failed))
        .count();
    rollout.failures = i32::try_from(failures).unwrap_or(i32::MAX);
    let upgrading = rollout
        .instances
        .iter()
        .filter(|i| is(i, pb::InstanceState::Upgrading))
        .count();
    let state = rollout.state();
    if matches!(
        state,
        pb::RolloutState::Running | pb::RolloutState::Waiting | pb::RolloutState::Paused
    ) && rollout.failures > rollout.max_failures
    {
        rollout.state = pb::RolloutState::Stopping as i32;
        rollout.waiting_reason = format!(
            "{} failed instance(s) exceed max_failures ({}): nothing new is sent",
            rollout.failures, rollout.max_failures
        );
    }
    match rollout.state() {
        pb::RolloutState::Stopping => {
            if upgrading == 0 && tick.in_flight.is_empty() {
                conclude_stop(rollout, &stamp);
            }
            Vec::new()
        }
        pb::RolloutState::Running | pb::RolloutState::Waiting => advance(rollout, tick, &stamp),
        _ => Vec::new(),
    }
}

/// A stopping rollout with nothing under way ends: cancelled (when a caller cancelled it) or
/// failed.
fn conclude_stop(rollout: &mut pb::Rollout, stamp: &str) {
    let cancelled = rollout.actions.iter().any(|a| a.action == "cancel");
    for instance in &mut rollout.instances {
        if cancelled && is(instance, pb::InstanceState::Pending) {
            instance.state = pb::InstanceState::Skipped as i32;
            instance.message = "not sent: the rollout was cancelled".to_string();
        }
    }
    for wave in &mut rollout.waves {
        if !matches!(
            wave.state(),
            pb::WaveState::Completed | pb::WaveState::Skipped
        ) {
            wave.state = if wave.state() == pb::WaveState::NotStarted {
                pb::WaveState::Skipped
            } else {
                pb::WaveState::Stopped
            } as i32;
            if wave.end_time.is_empty() && !wave.start_time.is_empty() {
                wave.end_time = stamp.to_string();
            }
        }
    }
    rollout.state = if cancelled {
        pb::RolloutState::Cancelled
    } else {
        pb::RolloutState::Failed
    } as i32;
    if cancelled {
        rollout.waiting_reason = "cancelled".to_string();
    }
    rollout.end_time = stamp.to_string();
}

/// A running (or waiting) rollout: sends within the wave's parallelism, then the wave's end,
/// the soak and the gate before the next one.
fn advance(rollout: &mut pb::Rollout, tick: &Tick<'_>, stamp: &str) -> Vec<usize> {
    let Ok(w) = usize::try_from(rollout.current_wave) else {
        return Vec::new();
    };
    let Some(wave) = rollout.waves.get(w).cloned() else {
        return Vec::new();
    };
    let mut sends = Vec::new();
    match wave.state() {
        pb::WaveState::Running | pb::WaveState::Completed => {
            let in_waves =
                |i: &pb::RolloutInstance| usize::try_from(i.wave).is_ok_and(|iw| iw <= w);
            let under_way = rollout
                .instances
                .iter()
                .filter(|i| in_waves(i) && is(i, pb::InstanceState::Upgrading))
                .count();
            let room = usize::try_from(wave.max_parallel)
                .unwrap_or(1)
                .saturating_sub(under_way);
            let pending: Vec<usize> = rollout
                .instances
                .iter()
                .enumerate()
                .filter(|(_, i)| in_waves(i) && is(i, pb::InstanceState::Pending))
                .map(|(n, _)| n)
                .collect();
            if !pending.is_empty() && !tick.may_send {
                rollout.state = pb::RolloutState::Waiting as i32;
                rollout.waiting_reason =
                    format!("waiting before sending again: {}", tick.backoff_reason);
                return sends;
            }
            rollout.state = pb::RolloutState::Running as i32;
            rollout.waiting_reason.clear();
            for n in pending.into_iter().take(room) {
                let instance = &mut rollout.instances[n];
                instance.state = pb::InstanceState::Upgrading as i32;
                if instance.start_time.is_empty() {
                    instance.start_time = stamp.to_string();
                }
                instance.message = "sending".to_string();
                sends.push(n);
            }
            let wave_done = rollout
                .instances
                .iter()
                .filter(|i| in_waves(i))
                .all(terminal);
            if wave_done && sends.is_empty() {
                let soak = humantime::parse_duration(&rollout.soak).unwrap_or_default();
                let last = w + 1 >= rollout.waves.len();
                let current = &mut rollout.waves[w];
                if current.end_time.is_empty() || current.state() != pb::WaveState::Completed {
                    current.end_time = stamp.to_string();
                }
                if last {
                    current.state = pb::WaveState::Completed as i32;
                    rollout.state = pb::RolloutState::Completed as i32;
                    rollout.waiting_reason.clear();
                    rollout.end_time = stamp.to_string();
                } else if !soak.is_zero() {
                    current.state = pb::WaveState::Soaking as i32;
                    let until = format_time(tick.now + soak);
                    current.soak_until.clone_from(&until);
                    rollout.state = pb::RolloutState::Waiting as i32;
                    rollout.waiting_reason = format!("soaking after wave {w} until {until}");
                } else {
                    current.state = pb::WaveState::Completed as i32;
                    open(rollout, w + 1, stamp);
                }
            }
        }
        pb::WaveState::Soaking => {
            let due = parse_time(&wave.soak_until).is_none_or(|until| tick.now >= until);
            if due {
                rollout.waves[w].state = pb::WaveState::Completed as i32;
                open(rollout, w + 1, stamp);
            } else {
                rollout.state = pb::RolloutState::Waiting as i32;
                rollout.waiting_reason =
                    format!("soaking after wave {w} until {}", wave.soak_until);
            }
        }
        pb::WaveState::WaitingApproval => {
            rollout.state = pb::RolloutState::Waiting as i32;
            rollout.waiting_reason = format!("wave {w} waits for approval");
        }
        _ => {}
    }
    sends
}

/// Opens wave `n`: at its gate when it needs an approval not given yet, else running.
fn open(rollout: &mut pb::Rollout, n: usize, stamp: &str) {
    let Some(wave) = rollout.waves.get_mut(n) else {
        return;
    };
    rollout.current_wave = i32::try_from(n).unwrap_or(i32::MAX);
    if wave.approval_required && wave.approved_by.is_empty() {
        wave.state = pb::WaveState::WaitingApproval as i32;
        rollout.state = pb::RolloutState::Waiting as i32;
        rollout.waiting_reason = format!("wave {n} waits for approval");
    } else {
        wave.state = pb::WaveState::Running as i32;
        wave.start_time = stamp.to_string();
        rollout.state = pb::RolloutState::Running as i32;
        rollout.waiting_reason.clear();
    }
}

/// The local side of driving one rollout.
struct Driver {
    rollouts: Rollouts,
    id: String,
    results_tx: mpsc::UnboundedSender<(String, SendResult)>,
    results_rx: mpsc::UnboundedReceiver<(String, SendResult)>,
    in_flight: HashSet<String>,
    /// Results not written yet.
    results: HashMap<String, SendResult>,
    backoff: Option<(Instant, String)>,
    /// The shared polls of instances under way that this driver follows.
    following: HashMap<String, crate::upgrade::poller::Looks>,
}

impl Rollouts {
    /// Drives every unfinished rollout whose lease is free, looking again every third of a
    /// lease, until the handle is aborted.
    pub(crate) fn spawn_supervisor(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let every = (self.inner.settings.lease / 3).max(Duration::from_millis(50));
        tokio::spawn(
            async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let all = match this.inner.store.list().await {
                        Ok(all) => all,
                        Err(err) => {
                            tracing::debug!(error = %err, "cannot list rollouts; trying again");
                            continue;
                        }
                    };
                    let rollouts: Vec<pb::Rollout> = all
                        .iter()
                        .filter_map(|v| crate::rollout::decode(v).ok())
                        .collect();
                    this.measure(&rollouts);
                    for rollout in rollouts {
                        if !finished(rollout.state()) {
                            this.drive_if_free(&rollout.rollout_id).await;
                        }
                    }
                }
            }
            .with_current_subscriber(),
        )
    }

    /// Records how many rollouts, and instances of unfinished ones, are in each state.
    fn measure(&self, rollouts: &[pb::Rollout]) {
        let Some(metrics) = &self.inner.metrics else {
            return;
        };
        let rollout_states = [
            pb::RolloutState::Running,
            pb::RolloutState::Waiting,
            pb::RolloutState::Paused,
            pb::RolloutState::Stopping,
            pb::RolloutState::Cancelled,
            pb::RolloutState::Completed,
            pb::RolloutState::Failed,
        ]
        .map(|state| {
            let n = rollouts.iter().filter(|r| r.state() == state).count();
            (state.as_str_name(), u64::try_from(n).unwrap_or(u64::MAX))
        });
        let instance_states = [
            pb::InstanceState::Pending,
            pb::InstanceState::Upgrading,
            pb::InstanceState::Done,
            pb::InstanceState::Failed,
            pb::InstanceState::Skipped,
        ]
        .map(|state| {
            let n = rollouts
                .iter()
                .filter(|r| !finished(r.state()))
                .flat_map(|r| &r.instances)
                .filter(|i| i.state() == state)
                .count();
            (state.as_str_name(), u64::try_from(n).unwrap_or(u64::MAX))
        });
        metrics.rollout_states(&rollout_states, &instance_states);
    }

    /// Takes the rollout's lease when it is free and drives it in its own task.
    pub(crate) async fn drive_if_free(&self, id: &str) {
        {
            let driving = self.driving();
            if driving.contains(id) {
                return;
            }
        }
        let lease = self.inner.settings.lease;
        match self.inner.store.acquire(id, &self.inner.token, lease).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => {
                tracing::debug!(rollout_id = id, error = %err, "cannot take a rollout's lease");
                return;
            }
        }
        if !self.driving().insert(id.to_string()) {
            return;
        }
        tracing::info!(rollout_id = id, "driving the rollout (lease taken)");
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        let driver = Driver {
            rollouts: self.clone(),
            id: id.to_string(),
            results_tx,
            results_rx,
            in_flight: HashSet::new(),
            results: HashMap::new(),
            backoff: None,
            following: HashMap::new(),
        };
        tokio::spawn(driver.run().with_current_subscriber());
    }

    fn driving(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.inner
            .driving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Driver {
    async fn run(mut self) {
        let settings = self.rollouts.inner.settings.clone();
        let mut renewed = Instant::now();
        loop {
            let store = std::sync::Arc::clone(&self.rollouts.inner.store);
            match store
                .acquire(&self.id, &self.rollouts.inner.token, settings.lease)
                .await
            {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    tracing::warn!(rollout_id = %self.id, "lost the rollout's lease; another replica drives it");
                    break;
                }
                Err(err) => {
                    // Nothing is written or sent while the store cannot be reached; past a
                    // lease, another replica may hold the rollout.
                    tracing::warn!(rollout_id = %self.id, error = %err, "cannot renew the rollout's lease; waiting");
                    if renewed.elapsed() > settings.lease {
                        break;
                    }
                    self.wait(settings.poll_interval).await;
                    continue;
                }
            }
            while let Ok((key, result)) = self.results_rx.try_recv() {
                self.in_flight.remove(&key);
                self.results.insert(key, result);
            }
            let (version, mut rollout) = match self.rollouts.get(&self.id).await {
                Ok(found) => found,
                Err(crate::rollout::error::RolloutError::NotFound(_)) => break,
                Err(err) => {
                    tracing::warn!(rollout_id = %self.id, error = %err, "cannot read the rollout; waiting");
                    self.wait(settings.poll_interval).await;
                    continue;
                }
            };
            if finished(rollout.state()) && self.in_flight.is_empty() && self.results.is_empty() {
                break;
            }
            let looks = self.look(&rollout);
            if let Some((code, message)) = self.results.values().find_map(|r| match r {
                SendResult::Transient { code, message } => Some((code.clone(), message.clone())),
                _ => None,
            }) {
                let why = if code.is_empty() {
                    message
                } else {
                    format!("{message} ({code})")
                };
                self.backoff = Some((Instant::now() + BACKOFF, why));
            }
            let backoff_reason = match &self.backoff {
                Some((until, why)) if Instant::now() < *until => why.clone(),
                _ => String::new(),
            };
            let before = rollout.clone();
            let sends = step(
                &mut rollout,
                &Tick {
                    results: &self.results,
                    looks: &looks,
                    in_flight: &self.in_flight,
                    may_send: backoff_reason.is_empty(),
                    backoff_reason: &backoff_reason,
                    now: SystemTime::now(),
                    settle_window: settings.settle_window,
                },
            );
            // Sends decided on an unchanged record still go out: an instance whose send had an
            // unknown outcome goes back to PENDING and is picked again in the same tick, which
            // leaves the record as it was ("sending"); waiting here would wait forever.
            if rollout == before && sends.is_empty() {
                self.results.clear();
                self.wait(settings.poll_interval).await;
                continue;
            }
            rollout.update_time = now();
            let record = rollout.encode_to_vec();
            match store
                .update(&self.id, version, Some(&self.rollouts.inner.token), &record)
                .await
            {
                Ok(Some(_)) => {
                    self.results.clear();
                    self.after_write(&before, &rollout, &sends).await;
                }
                // Changed meanwhile (a caller's action), or the lease is gone: look again.
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(rollout_id = %self.id, error = %err, "cannot write the rollout; waiting");
                    self.wait(settings.poll_interval).await;
                    continue;
                }
            }
            self.wait(settings.poll_interval).await;
        }
        let _ = self
            .rollouts
            .inner
            .store
            .release(&self.id, &self.rollouts.inner.token)
            .await;
        self.rollouts.driving().remove(&self.id);
    }

    /// Waits for a send's result or `poll`, whichever comes first.
    async fn wait(&mut self, poll: Duration) {
        tokio::select! {
            received = self.results_rx.recv() => {
                if let Some((key, result)) = received {
                    self.in_flight.remove(&key);
                    self.results.insert(key, result);
                }
            }
            () = tokio::time::sleep(poll) => {}
        }
    }

    /// Starts the sends of a written tick, and logs what changed.
    async fn after_write(&mut self, before: &pb::Rollout, after: &pb::Rollout, sends: &[usize]) {
        if before.state != after.state || before.current_wave != after.current_wave {
            tracing::info!(
                rollout_id = %self.id,
                state = ?after.state(),
                wave = after.current_wave,
                reason = %after.waiting_reason,
                "rollout moved on"
            );
        }
        if matches!(
            after.state(),
            pb::RolloutState::Completed | pb::RolloutState::Cancelled
        ) && !finished(before.state())
        {
            let keys: Vec<String> = after.instances.iter().map(instance_key).collect();
            let _ = self
                .rollouts
                .inner
                .store
                .free_instances(&self.id, &keys)
                .await;
        }
        for &n in sends {
            let Some(instance) = after.instances.get(n) else {
                continue;
            };
            let key = instance_key(instance);
            self.in_flight.insert(key.clone());
            let rollouts = self.rollouts.clone();
            let rollout = after.clone();
            let instance = instance.clone();
            let results = self.results_tx.clone();
            tokio::spawn(
                async move {
                    let result = rollouts.send(&rollout, &instance).await;
                    let _ = results.send((key, result));
                }
                .with_current_subscriber(),
            );
        }
    }

    /// The latest look at each instance under way that no local send follows, through the
    /// replica's shared poller: one `DescribeDBInstanceAttribute` per instance per poll
    /// interval, shared with any `WatchUpgrade` of the instance, and never awaited here (a tick
    /// does not wait on the account's budget for its looks). Follows of instances no longer
    /// under way are left; a follow whose read failed is left too, and taken again next tick.
    fn look(&mut self, rollout: &pb::Rollout) -> HashMap<String, Look> {
        let mut looks = HashMap::new();
        let mut following = HashMap::new();
        for instance in &rollout.instances {
            let key = instance_key(instance);
            if !is(instance, pb::InstanceState::Upgrading)
                || self.in_flight.contains(&key)
                || self.results.contains_key(&key)
            {
                continue;
            }
            let follow = self.following.remove(&key).unwrap_or_else(|| {
                self.rollouts
                    .inner
                    .poller
                    .follow(&instance.region_id, &instance.db_instance_id)
            });
            let latest = follow.borrow().clone();
            match latest {
                Some(Ok(attribute)) => {
                    looks.insert(
                        key.clone(),
                        Look::Status {
                            status: attribute.status,
                            engine_version: attribute.engine_version,
                        },
                    );
                }
                Some(Err(status)) if status.code() == Code::NotFound => {
                    looks.insert(key, Look::Gone);
                    continue;
                }
                // No answer now: look again next tick, on a new follow.
                Some(Err(status)) => {
                    tracing::debug!(db_instance_id = %instance.db_instance_id, error = %status.message(), "cannot look at an instance under way");
                    continue;
                }
                // The first read of the poll is not in yet.
                None => {}
            }
            following.insert(key, follow);
        }
        // What is left was not under way any more: dropping it leaves the poll.
        self.following = following;
        looks
    }
}

impl Rollouts {
    /// One instance's upgrade: a look first (upgrading, or already on the target: nothing to
    /// send), then the upgrade path with the instance's key.
    async fn send(&self, rollout: &pb::Rollout, instance: &pb::RolloutInstance) -> SendResult {
        let settings = &self.inner.settings;
        let target = &rollout.target_engine_version;
        let deadline = Instant::now() + settings.send_timeout;
        match self
            .inner
            .alibaba
            .describe_db_instance_attribute(&instance.region_id, &instance.db_instance_id, deadline)
            .await
        {
            Ok(Some(attribute)) if attribute.status == UPGRADING => return SendResult::UnderWay,
            Ok(Some(attribute)) if attribute.engine_version == *target => {
                return if attribute.status == RUNNING {
                    SendResult::AlreadyDone
                } else {
                    SendResult::UnderWay
                };
            }
            Ok(_) => {}
            Err(err) => {
                return classify(&crate::upgrade::details::call_status(err));
            }
        }
        let request = pb::UpgradeEngineVersionRequest {
            db_instance_id: instance.db_instance_id.clone(),
            engine_version: target.clone(),
            region_id: instance.region_id.clone(),
            switch_mode: rollout.switch_mode,
            request_id: instance.request_id.clone(),
            validate_only: false,
        };
        let valid = match self.inner.validator.validate(request) {
            Ok(valid) => valid,
            Err(invalid) => {
                return SendResult::Failed {
                    code: String::new(),
                    message: invalid.to_string(),
                };
            }
        };
        let event = AuditEvent {
            time: audit::now(),
            kind: "upgrade",
            caller: rollout.created_by.clone(),
            db_instance_id: instance.db_instance_id.clone(),
            region_id: instance.region_id.clone(),
            from_version: String::new(),
            to_version: target.clone(),
            outcome: "failed",
            grpc_code: "OK",
            alibaba_request_id: String::new(),
            alibaba_code: String::new(),
            request_id: instance.request_id.clone(),
            trace_id: crate::telemetry::current_trace_id(),
            rollout_id: rollout.rollout_id.clone(),
            comment: String::new(),
        };
        let scope = format!("rollout:{}", rollout.rollout_id);
        match self
            .inner
            .upgrader
            .run(valid, &scope, deadline, event)
            .await
        {
            Ok(outcome) => SendResult::Accepted {
                alibaba_request_id: outcome.accepted.response.alibaba_request_id,
            },
            Err(status) => classify(&status),
        }
    }
}

/// A failed send: worth waiting for (throttling, an outage, the store, the instance busy with
/// another upgrade, an unknown outcome that the key will resolve), or a failure of the instance.
fn classify(status: &tonic::Status) -> SendResult {
    let info = status.get_details_error_info();
    let code = info
        .as_ref()
        .and_then(|i| i.metadata.get("alibabaCode").cloned())
        .unwrap_or_default();
    let reason = info.map(|i| i.reason).unwrap_or_default();
    let message = if reason.is_empty() {
        status.message().to_string()
    } else {
        format!("{reason}: {}", status.message())
    };
    match status.code() {
        Code::Unavailable
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown => SendResult::Transient { code, message },
        _ => SendResult::Failed { code, message },
    }
}

#[cfg(test)]
mod tests;

/// A driver against the sandbox (a test module may drive its module from above).
#[cfg(test)]
mod takeover {
    use std::sync::Arc;

    use super::*;
    use crate::alibaba::Alibaba;
    use crate::alibaba::client::AlibabaClient;
    use crate::alibaba::credentials::credential::StaticProvider;
    use crate::config::{Config, Overrides};
    use crate::rollout::{RolloutSettings, Rollouts};
    use crate::sandbox::{FleetSpec, Sandbox, SandboxConfig};
    use crate::state::rollouts::{MemoryRollouts, RolloutStore as _};
    use crate::upgrade::idempotency::Idempotency;
    use crate::upgrade::poller::Poller;
    use crate::upgrade::upgrader::{UpgradeSettings, Upgrader};

    /// A takeover end to end on this process: a rollout whose driver died between marking its only
    /// instance "sending" and sending (the record says UPGRADING, nothing reached Alibaba) is taken
    /// over by a new driver, which looks at the instance, finds it untouched, and sends once. Before
    /// the fix, the look sent the instance back to PENDING and the same tick picked it again, so the
    /// record came out as it went in and the driver, seeing no change, waited without sending:
    /// forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_takeover_sends_an_instance_its_dead_driver_marked_but_never_sent() {
        let sandbox = Sandbox::start(SandboxConfig {
            fleet: FleetSpec {
                count: 1,
                upgrade_time: Duration::from_millis(200),
                ..FleetSpec::default()
            },
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
        let mut config = Config::from_toml("", "t", |_| None, &Overrides::default()).unwrap();
        config.alibaba.endpoint = Some(sandbox.endpoint());
        config.watch.poll_interval = Duration::from_millis(50);
        let client = AlibabaClient::new(
            &config.alibaba,
            Arc::new(StaticProvider::new(sandbox.credential())),
        )
        .unwrap();
        let alibaba = Alibaba::new(Arc::new(client), config.alibaba.retry.into());
        let store = Arc::new(MemoryRollouts::new());
        let upgrader = Upgrader::new(
            alibaba.clone(),
            UpgradeSettings {
                preflight: config.alibaba.preflight,
                settle_window: config.idempotency.settle_window,
            },
            Idempotency::new(Arc::new(crate::state::memory::MemoryStore::new(
                crate::state::store::StoreLimits::from_config(&config),
            ))),
            crate::audit::Audit::log_only(),
        );
        let rollouts = Rollouts::new(
            Arc::clone(&store) as _,
            alibaba.clone(),
            Poller::new(alibaba, config.watch.poll_interval),
            upgrader,
            crate::upgrade::validation::Validator::new(&config),
            crate::audit::Audit::log_only(),
            RolloutSettings::from_config(&config),
        );
        // What a driver killed right after its write leaves behind.
        let r = pb::Rollout {
            rollout_id: "ro-1".into(),
            state: pb::RolloutState::Running as i32,
            target_engine_version: "5.0".into(),
            waves: vec![pb::RolloutWave {
                size: 1,
                state: pb::WaveState::Running as i32,
                max_parallel: 1,
                ..Default::default()
            }],
            instances: vec![pb::RolloutInstance {
                db_instance_id: "dds-fleet000".into(),
                region_id: "cn-hangzhou".into(),
                request_id: crate::rollout::start::request_id(
                    "ro-1",
                    "cn-hangzhou",
                    "dds-fleet000",
                    "5.0",
                )
                .to_string(),
                state: pb::InstanceState::Upgrading as i32,
                start_time: "2026-01-01T00:00:00.000Z".into(),
                message: "sending".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        store
            .create(
                "ro-1",
                &r.encode_to_vec(),
                &["cn-hangzhou/dds-fleet000".into()],
            )
            .await
            .unwrap();
        rollouts.drive_if_free("ro-1").await;
        let give_up = Instant::now() + Duration::from_secs(30);
        let done = loop {
            let (_, now) = rollouts.get("ro-1").await.unwrap();
            if now.state() == pb::RolloutState::Completed {
                break now;
            }
            assert!(
                Instant::now() < give_up,
                "the new driver never finished the rollout: {now:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(done.instances[0].state(), pb::InstanceState::Done);
        assert_eq!(sandbox.upgrades_started("dds-fleet000"), 1);
    }
}
