//! Fleet rollouts: a fleet upgraded in waves, each instance at most once, driven by whichever
//! replica holds the rollout's lease.
//!
//! [`plan`] lists what a selector names and judges each instance (a dry run with a hash of
//! the eligible set); [`start`] checks the request, plans again and stores the rollout;
//! [`driver`] takes leases and moves rollouts on (sends through the upgrade path, follows
//! instances, soaks and gates between waves, stops on failures); [`control`] is what callers do
//! to a running rollout (pause, resume, cancel, approve, retry or skip an instance). The record
//! is the `Rollout` message itself, kept in [`crate::state::rollouts`]; [`error`] has the
//! refusals.

pub(crate) mod control;
pub(crate) mod driver;
pub(crate) mod error;
pub(crate) mod plan;
pub(crate) mod start;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;

use crate::alibaba::Alibaba;
use crate::audit::{self, Audit, AuditEvent};
use crate::pb;
use crate::state::rollouts::{RolloutStore, Versioned};
use crate::state::store::Token;
use crate::upgrade::poller::Poller;
use crate::upgrade::upgrader::Upgrader;
use crate::upgrade::validation::Validator;
use error::RolloutError;

/// How rollouts are carried out.
#[derive(Debug, Clone)]
pub(crate) struct RolloutSettings {
    /// A driver's lease on a rollout without renewal (`state.lease`).
    pub lease: Duration,
    /// How often instances under way are looked at (`watch.poll_interval`).
    pub poll_interval: Duration,
    /// The configured target versions.
    pub engine_versions: Vec<String>,
    pub default_region: String,
    /// Whether a region outside the endpoint table is allowed (an explicit endpoint).
    pub explicit_endpoint: bool,
    /// How long after an accepted upgrade an instance may still show its old version.
    pub settle_window: Duration,
    /// How long one send may take (`server.request_timeout`, at least 30 s).
    pub send_timeout: Duration,
}

impl RolloutSettings {
    pub(crate) fn from_config(config: &crate::config::Config) -> Self {
        Self {
            lease: config.state.lease,
            poll_interval: config.watch.poll_interval,
            engine_versions: config.alibaba.engine_versions.clone(),
            default_region: config.alibaba.region_id.clone(),
            explicit_endpoint: config.alibaba.endpoint.is_some(),
            settle_window: config.idempotency.settle_window,
            send_timeout: config.server.request_timeout.max(Duration::from_secs(30)),
        }
    }
}

/// The rollouts of this gateway: plans, starts, drives and controls them. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Rollouts {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn RolloutStore>,
    alibaba: Alibaba,
    /// The replica's shared polls of instances (those of `WatchUpgrade`): instances under way
    /// are followed through it.
    poller: Poller,
    upgrader: Upgrader,
    validator: Validator,
    audit: Audit,
    settings: RolloutSettings,
    /// This replica's lease token.
    token: Token,
    /// Rollouts this replica drives now.
    driving: Mutex<HashSet<String>>,
    /// Gauges of rollouts and instances by state, recorded by the supervisor.
    metrics: Option<crate::telemetry::Metrics>,
}

impl Rollouts {
    pub(crate) fn new(
        store: Arc<dyn RolloutStore>,
        alibaba: Alibaba,
        poller: Poller,
        upgrader: Upgrader,
        validator: Validator,
        audit: Audit,
        settings: RolloutSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                alibaba,
                poller,
                upgrader,
                validator,
                audit,
                settings,
                token: Token::new(),
                driving: Mutex::new(HashSet::new()),
                metrics: None,
            }),
        }
    }

    /// Records the gauges of rollouts and instances by state in `metrics`. Call before the
    /// supervisor starts.
    pub(crate) fn with_metrics(mut self, metrics: crate::telemetry::Metrics) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.metrics = Some(metrics);
        }
        self
    }

    /// The rollout `id` as stored now.
    pub(crate) async fn get(&self, id: &str) -> Result<(i64, pb::Rollout), RolloutError> {
        let found = self.inner.store.get(id).await?;
        let versioned = found.ok_or_else(|| RolloutError::NotFound(id.to_string()))?;
        decode(&versioned).map(|r| (versioned.version, r))
    }

    /// Every rollout, newest first.
    pub(crate) async fn list(&self) -> Result<Vec<pb::Rollout>, RolloutError> {
        let all = self.inner.store.list().await?;
        all.iter().map(decode).collect()
    }

    /// The rollout now, then at each change (looked at every `poll_interval`), until it has
    /// ended, the receiver goes away or `deadline` passes.
    pub(crate) fn watch(
        &self,
        id: String,
        deadline: tokio::time::Instant,
    ) -> tokio::sync::mpsc::Receiver<Result<pb::Rollout, RolloutError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let this = self.clone();
        let poll = self.inner.settings.poll_interval;
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                let read = tokio::time::timeout_at(deadline, this.get(&id)).await;
                match read {
                    Err(_) => return,
                    Ok(Ok((version, rollout))) => {
                        if version != seen {
                            seen = version;
                            let done = finished(rollout.state());
                            if tx.send(Ok(rollout)).await.is_err() || done {
                                return;
                            }
                        }
                    }
                    // A store that does not answer now may later; a missing rollout never will.
                    Ok(Err(RolloutError::NotFound(id))) => {
                        let _ = tx.send(Err(RolloutError::NotFound(id))).await;
                        return;
                    }
                    Ok(Err(err)) => tracing::debug!(error = %err, "cannot read a watched rollout"),
                }
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => return,
                    () = tokio::time::sleep(poll) => {}
                    () = tx.closed() => return,
                }
            }
        });
        rx
    }

    /// Records a caller's action on a rollout in the audit trail.
    async fn audit_action(
        &self,
        rollout: &pb::Rollout,
        action: &'static str,
        caller: &str,
        comment: &str,
    ) {
        let event = AuditEvent {
            time: audit::now(),
            kind: "rollout",
            caller: caller.to_string(),
            db_instance_id: String::new(),
            region_id: String::new(),
            from_version: String::new(),
            to_version: rollout.target_engine_version.clone(),
            outcome: action,
            grpc_code: "OK",
            alibaba_request_id: String::new(),
            alibaba_code: String::new(),
            request_id: String::new(),
            trace_id: crate::telemetry::current_trace_id(),
            rollout_id: rollout.rollout_id.clone(),
            comment: comment.to_string(),
        };
        tracing::info!(rollout_id = %rollout.rollout_id, action, caller, "rollout action");
        let _ = self.inner.audit.record(event).await;
    }
}

fn decode(versioned: &Versioned) -> Result<pb::Rollout, RolloutError> {
    let mut rollout = pb::Rollout::decode(versioned.record.as_slice())
        .map_err(|e| RolloutError::Store(format!("unreadable rollout record: {e}")))?;
    rollout.version = versioned.version;
    Ok(rollout)
}

/// Whether a rollout has ended for good (nothing will change it but retry and skip of a
/// failed one).
pub(crate) fn finished(state: pb::RolloutState) -> bool {
    matches!(
        state,
        pb::RolloutState::Cancelled | pb::RolloutState::Completed | pb::RolloutState::Failed
    )
}

/// The store key of an instance: region and id.
fn instance_key(instance: &pb::RolloutInstance) -> String {
    format!("{}/{}", instance.region_id, instance.db_instance_id)
}

/// RFC 3339 time, as every timestamp of a rollout.
fn now() -> String {
    audit::now()
}
