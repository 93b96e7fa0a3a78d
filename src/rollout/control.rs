//! What callers do to a rollout: pause, resume, cancel, approve the wave at its gate, retry or
//! skip an instance. Each is a compare-and-set on the record's version (no lease needed: the
//! driver re-reads and follows), recorded in the rollout's actions and audited.

use prost::Message as _;

use crate::pb;
use crate::rollout::error::RolloutError;
use crate::rollout::{Rollouts, finished, now};

/// A control action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Pause,
    Resume,
    Cancel,
    Approve,
    Retry,
    Skip,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
            Self::Approve => "approve",
            Self::Retry => "retry",
            Self::Skip => "skip",
        }
    }
}

/// How many times a caller's action is tried against a record the driver keeps changing.
const ATTEMPTS: usize = 20;

impl Rollouts {
    /// Applies `action` (to `instance`, for retry and skip) on behalf of `caller`.
    pub(crate) async fn control(
        &self,
        id: &str,
        action: Action,
        instance: Option<&str>,
        caller: &str,
        comment: &str,
    ) -> Result<pb::Rollout, RolloutError> {
        if comment.len() > 1024 {
            return Err(RolloutError::invalid("comment", "at most 1024 characters"));
        }
        for _ in 0..ATTEMPTS {
            let (version, mut rollout) = self.get(id).await?;
            apply(&mut rollout, action, instance, caller, comment)?;
            let stamp = now();
            rollout.update_time.clone_from(&stamp);
            rollout.actions.push(pb::RolloutAction {
                time: stamp,
                action: match instance {
                    Some(instance) => format!("{} {instance}", action.name()),
                    None => action.name().to_string(),
                },
                caller: caller.to_string(),
                comment: comment.to_string(),
            });
            if let Some(version) = self
                .inner
                .store
                .update(id, version, None, &rollout.encode_to_vec())
                .await?
            {
                rollout.version = version;
                self.audit_action(&rollout, action.name(), caller, comment)
                    .await;
                if !finished(rollout.state()) {
                    self.drive_if_free(id).await;
                }
                return Ok(rollout);
            }
        }
        Err(RolloutError::Store(
            "the rollout kept changing; try again".to_string(),
        ))
    }
}

/// The action's change to the record, or why it does not apply now.
pub(crate) fn apply(
    rollout: &mut pb::Rollout,
    action: Action,
    instance: Option<&str>,
    caller: &str,
    comment: &str,
) -> Result<(), RolloutError> {
    let state = rollout.state();
    let not_now = |what: &str| {
        Err(RolloutError::NotNow(format!(
            "cannot {what} rollout {}: it is {}",
            rollout.rollout_id,
            state.as_str_name()
        )))
    };
    match action {
        Action::Pause => match state {
            pb::RolloutState::Running | pb::RolloutState::Waiting => {
                rollout.state = pb::RolloutState::Paused as i32;
                rollout.waiting_reason = format!("paused by {caller}");
            }
            _ => return not_now("pause"),
        },
        Action::Resume => match state {
            pb::RolloutState::Paused => {
                // The driver decides at once whether it runs or waits (soak, gate).
                rollout.state = pb::RolloutState::Running as i32;
                rollout.waiting_reason.clear();
            }
            _ => return not_now("resume"),
        },
        Action::Cancel => {
            if finished(state) && state != pb::RolloutState::Failed {
                return not_now("cancel");
            }
            rollout.state = pb::RolloutState::Stopping as i32;
            rollout.waiting_reason = format!("cancelled by {caller}: upgrades under way finish");
        }
        Action::Approve => {
            let w = usize::try_from(rollout.current_wave).unwrap_or(usize::MAX);
            let gate = rollout
                .waves
                .get_mut(w)
                .filter(|wave| wave.state() == pb::WaveState::WaitingApproval);
            let Some(wave) = gate else {
                return Err(RolloutError::NotNow(format!(
                    "rollout {} has no wave waiting for approval",
                    rollout.rollout_id
                )));
            };
            let stamp = now();
            wave.approved_by = caller.to_string();
            wave.approval_comment = comment.to_string();
            wave.approve_time.clone_from(&stamp);
            wave.state = pb::WaveState::Running as i32;
            wave.start_time = stamp;
            if state == pb::RolloutState::Waiting {
                rollout.state = pb::RolloutState::Running as i32;
                rollout.waiting_reason.clear();
            }
        }
        Action::Retry | Action::Skip => {
            let id = instance.unwrap_or_default();
            let Some(found) = rollout
                .instances
                .iter_mut()
                .find(|i| i.db_instance_id == id)
            else {
                return Err(RolloutError::NotFound(format!(
                    "{} (instance {id})",
                    rollout.rollout_id
                )));
            };
            let allowed = match action {
                Action::Retry => found.state() == pb::InstanceState::Failed,
                _ => matches!(
                    found.state(),
                    pb::InstanceState::Failed | pb::InstanceState::Pending
                ),
            };
            if !allowed || matches!(state, pb::RolloutState::Cancelled) {
                return Err(RolloutError::NotNow(format!(
                    "cannot {} instance {id}: it is {} in a {} rollout",
                    action.name(),
                    found.state().as_str_name(),
                    state.as_str_name()
                )));
            }
            if action == Action::Retry {
                found.state = pb::InstanceState::Pending as i32;
                found.message = format!("retry asked by {caller}");
                found.end_time.clear();
                found.accept_time.clear();
            } else {
                found.state = pb::InstanceState::Skipped as i32;
                found.message = format!("skipped by {caller}");
                found.end_time = now();
            }
            let failures = rollout
                .instances
                .iter()
                .filter(|i| i.state() == pb::InstanceState::Failed)
                .count();
            rollout.failures = i32::try_from(failures).unwrap_or(i32::MAX);
            // A rollout stopped by failures runs again once they are within the budget.
            let stopped_on_failures = matches!(
                state,
                pb::RolloutState::Failed | pb::RolloutState::Stopping | pb::RolloutState::Completed
            ) && !rollout.actions.iter().any(|a| a.action == "cancel");
            if stopped_on_failures && rollout.failures <= rollout.max_failures {
                rollout.state = pb::RolloutState::Running as i32;
                rollout.waiting_reason.clear();
                rollout.end_time.clear();
                let w = usize::try_from(rollout.current_wave).unwrap_or(0);
                for wave in rollout.waves.iter_mut().skip(w) {
                    match wave.state() {
                        pb::WaveState::Stopped => {
                            wave.state = pb::WaveState::Running as i32;
                            wave.end_time.clear();
                        }
                        pb::WaveState::Skipped => wave.state = pb::WaveState::NotStarted as i32,
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(())
}
