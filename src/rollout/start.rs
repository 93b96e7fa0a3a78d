//! Starting a rollout: the request checked (waves that add up, positive limits, a configured
//! target, a soak that parses), the fleet planned again (and compared with the caller's plan
//! hash), the waves laid out (the first is the canary), and the record stored with its
//! instances, none of which may be in another unfinished rollout.

use std::time::Duration;

use prost::Message as _;

use crate::pb;
use crate::rollout::error::RolloutError;
use crate::rollout::plan::PolicyCheck;
use crate::rollout::{Rollouts, instance_key, now};
use crate::state::rollouts::Created;

/// The longest soak between two waves (GKE's limit).
const MAX_SOAK: Duration = Duration::from_secs(30 * 24 * 3600);

/// The namespace of the instances' idempotency keys (UUID v5 of rollout, region, instance,
/// target).
const KEY_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6a1c_52f4_0d8e_4b7e_9d61_3c2f_a4e0_7b15);

/// The settings of a start request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    waves: Vec<pb::WaveSpec>,
    max_parallel: Option<Share>,
    max_failures: Share,
    pub soak: Duration,
}

/// A number, or a percentage of a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Share {
    Count(u32),
    Percent(u32),
}

/// Checks what a start request asks for, every violation at once.
pub(crate) fn check(request: &pb::StartRolloutRequest) -> Result<Limits, RolloutError> {
    let mut violations = Vec::new();
    let mut violate = |field: &str, what: String| violations.push((field.to_string(), what));
    for (i, wave) in request.waves.iter().enumerate() {
        match wave.size_or_percent {
            Some(pb::wave_spec::SizeOrPercent::Size(n)) if n >= 1 => {}
            Some(pb::wave_spec::SizeOrPercent::Percent(p)) if (1..=100).contains(&p) => {}
            Some(pb::wave_spec::SizeOrPercent::Size(n)) => violate(
                &format!("waves[{i}].size"),
                format!("must be at least 1, got {n}"),
            ),
            Some(pb::wave_spec::SizeOrPercent::Percent(p)) => violate(
                &format!("waves[{i}].percent"),
                format!("must be 1 to 100, got {p}"),
            ),
            None => violate(
                &format!("waves[{i}]"),
                "needs a size or a percent".to_string(),
            ),
        }
    }
    let max_parallel = match (request.max_parallel, request.max_parallel_percent) {
        (Some(_), Some(_)) => {
            violate(
                "max_parallel",
                "give max_parallel or max_parallel_percent, not both".to_string(),
            );
            None
        }
        (Some(n), None) if n >= 1 => Some(Share::Count(n.unsigned_abs())),
        (Some(n), None) => {
            violate("max_parallel", format!("must be at least 1, got {n}"));
            None
        }
        (None, Some(p)) if (1..=100).contains(&p) => Some(Share::Percent(p.unsigned_abs())),
        (None, Some(p)) => {
            violate("max_parallel_percent", format!("must be 1 to 100, got {p}"));
            None
        }
        (None, None) => None,
    };
    let max_failures = match (request.max_failures, request.max_failures_percent) {
        (Some(_), Some(_)) => {
            violate(
                "max_failures",
                "give max_failures or max_failures_percent, not both".to_string(),
            );
            Share::Count(0)
        }
        (Some(n), None) if n >= 0 => Share::Count(n.unsigned_abs()),
        (Some(n), None) => {
            violate("max_failures", format!("must not be negative, got {n}"));
            Share::Count(0)
        }
        (None, Some(p)) if (0..=100).contains(&p) => Share::Percent(p.unsigned_abs()),
        (None, Some(p)) => {
            violate("max_failures_percent", format!("must be 0 to 100, got {p}"));
            Share::Count(0)
        }
        (None, None) => Share::Count(0),
    };
    let soak = if request.soak.is_empty() {
        Duration::ZERO
    } else {
        match humantime::parse_duration(&request.soak) {
            Ok(soak) if soak <= MAX_SOAK => soak,
            Ok(_) => {
                violate("soak", "must be at most 30 days".to_string());
                Duration::ZERO
            }
            Err(_) => {
                violate(
                    "soak",
                    format!(
                        "expected a duration such as \"30s\" or \"10m\", got {:?}",
                        request.soak
                    ),
                );
                Duration::ZERO
            }
        }
    };
    if pb::SwitchMode::try_from(request.switch_mode).is_err() {
        violate(
            "switch_mode",
            format!("unknown value {}", request.switch_mode),
        );
    }
    if request.comment.len() > 1024 {
        violate("comment", "at most 1024 characters".to_string());
    }
    if violations.is_empty() {
        Ok(Limits {
            waves: request.waves.clone(),
            max_parallel,
            max_failures,
            soak,
        })
    } else {
        Err(RolloutError::Invalid(violations))
    }
}

/// The sizes of the waves for `eligible` instances: each a size or a percentage (rounded up),
/// in order; none may be empty, and none may be left over.
pub(crate) fn wave_sizes(
    waves: &[pb::WaveSpec],
    eligible: usize,
) -> Result<Vec<usize>, RolloutError> {
    if waves.is_empty() {
        return Ok(vec![eligible]);
    }
    let mut left = eligible;
    let mut sizes = Vec::new();
    for (i, wave) in waves.iter().enumerate() {
        let wanted = match wave.size_or_percent {
            Some(pb::wave_spec::SizeOrPercent::Size(n)) => usize::try_from(n).unwrap_or(0),
            Some(pb::wave_spec::SizeOrPercent::Percent(p)) => {
                (eligible * usize::try_from(p).unwrap_or(0)).div_ceil(100)
            }
            None => 0,
        };
        let size = wanted.min(left);
        if size == 0 {
            return Err(RolloutError::invalid(
                &format!("waves[{i}]"),
                format!("has no instance left ({eligible} eligible in all, fewer waves would do)"),
            ));
        }
        left -= size;
        sizes.push(size);
    }
    if left > 0 {
        return Err(RolloutError::invalid(
            "waves",
            format!(
                "add up to {} of the {eligible} eligible instances: {left} would be left over; add a wave",
                eligible - left
            ),
        ));
    }
    Ok(sizes)
}

fn resolve(share: Share, whole: usize, round_up: bool) -> usize {
    match share {
        Share::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
        Share::Percent(p) => {
            let scaled = whole * usize::try_from(p).unwrap_or(0);
            if round_up {
                scaled.div_ceil(100)
            } else {
                scaled / 100
            }
        }
    }
}

/// The idempotency key of an instance's upgrade in a rollout.
pub(crate) fn request_id(
    rollout_id: &str,
    region_id: &str,
    db_instance_id: &str,
    target: &str,
) -> uuid::Uuid {
    uuid::Uuid::new_v5(
        &KEY_NAMESPACE,
        format!("{rollout_id}\n{region_id}\n{db_instance_id}\n{target}").as_bytes(),
    )
}

impl Rollouts {
    /// Checks, plans and stores a new rollout for `caller`; its driver picks it up.
    pub(crate) async fn start(
        &self,
        request: pb::StartRolloutRequest,
        caller: &str,
        allowed: PolicyCheck<'_>,
    ) -> Result<pb::Rollout, RolloutError> {
        let limits = check(&request)?;
        let selector = request.selector.clone().unwrap_or_default();
        let plan = self
            .plan(&selector, &request.target_engine_version, allowed)
            .await?;
        if !request.plan_hash.is_empty() && request.plan_hash != plan.plan_hash {
            let difference = self.difference(&request.plan_hash, &plan).await?;
            return Err(RolloutError::PlanChanged {
                hash: request.plan_hash,
                difference,
            });
        }
        if plan.eligible.is_empty() {
            return Err(RolloutError::NothingEligible);
        }
        let sizes = wave_sizes(&limits.waves, plan.eligible.len())?;
        let id = format!("ro-{}", uuid::Uuid::new_v4().simple());
        let created = now();
        let target = request.target_engine_version.clone();
        let mut waves = Vec::new();
        let mut instances = Vec::new();
        let mut eligible = plan.eligible.into_iter();
        for (index, size) in sizes.iter().enumerate() {
            let index32 = i32::try_from(index).unwrap_or(i32::MAX);
            let parallel = limits
                .max_parallel
                .map_or(*size, |share| resolve(share, *size, true))
                .clamp(1, *size);
            waves.push(pb::RolloutWave {
                index: index32,
                size: i32::try_from(*size).unwrap_or(i32::MAX),
                state: if index == 0 {
                    pb::WaveState::Running
                } else {
                    pb::WaveState::NotStarted
                } as i32,
                max_parallel: i32::try_from(parallel).unwrap_or(i32::MAX),
                start_time: if index == 0 {
                    created.clone()
                } else {
                    String::new()
                },
                approval_required: request.approval_required && index > 0,
                ..Default::default()
            });
            for planned in eligible.by_ref().take(*size) {
                instances.push(pb::RolloutInstance {
                    request_id: request_id(
                        &id,
                        &planned.region_id,
                        &planned.db_instance_id,
                        &target,
                    )
                    .to_string(),
                    db_instance_id: planned.db_instance_id,
                    wave: index32,
                    state: pb::InstanceState::Pending as i32,
                    region_id: planned.region_id,
                    from_engine_version: planned.engine_version,
                    ..Default::default()
                });
            }
        }
        let max_failures = resolve(limits.max_failures, instances.len(), false);
        let rollout = pb::Rollout {
            rollout_id: id.clone(),
            state: pb::RolloutState::Running as i32,
            target_engine_version: target,
            waves,
            instances,
            excluded: plan.excluded,
            plan_hash: plan.plan_hash,
            selector: Some(selector),
            current_wave: 0,
            waiting_reason: String::new(),
            max_failures: i32::try_from(max_failures).unwrap_or(i32::MAX),
            failures: 0,
            soak: if limits.soak.is_zero() {
                String::new()
            } else {
                humantime::format_duration(limits.soak).to_string()
            },
            approval_required: request.approval_required,
            switch_mode: request.switch_mode,
            created_by: caller.to_string(),
            create_time: created.clone(),
            update_time: created.clone(),
            end_time: String::new(),
            actions: vec![pb::RolloutAction {
                time: created,
                action: "start".to_string(),
                caller: caller.to_string(),
                comment: request.comment.clone(),
            }],
            version: 1,
            comment: request.comment,
        };
        let keys: Vec<String> = rollout.instances.iter().map(instance_key).collect();
        match self
            .inner
            .store
            .create(&id, &rollout.encode_to_vec(), &keys)
            .await?
        {
            Created::Created => {}
            Created::Busy {
                instance,
                rollout_id,
            } => {
                return Err(RolloutError::InstanceInRollout {
                    instance: instance.rsplit('/').next().unwrap_or_default().to_string(),
                    rollout_id,
                });
            }
            Created::Exists => {
                return Err(RolloutError::Store(
                    "a rollout id was drawn twice".to_string(),
                ));
            }
        }
        self.audit_action(&rollout, "start", caller, &rollout.comment)
            .await;
        self.drive_if_free(&id).await;
        Ok(rollout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(n: i32) -> pb::WaveSpec {
        pb::WaveSpec {
            size_or_percent: Some(pb::wave_spec::SizeOrPercent::Size(n)),
        }
    }
    fn percent(p: i32) -> pb::WaveSpec {
        pb::WaveSpec {
            size_or_percent: Some(pb::wave_spec::SizeOrPercent::Percent(p)),
        }
    }

    #[test]
    fn waves_are_sizes_or_percents_and_must_add_up() {
        assert_eq!(
            wave_sizes(&[size(1), size(5), size(24)], 30).unwrap(),
            vec![1, 5, 24]
        );
        assert_eq!(
            wave_sizes(&[percent(10), percent(100)], 30).unwrap(),
            vec![3, 27]
        );
        // Rounded up: 10% of 7 is one instance.
        assert_eq!(
            wave_sizes(&[percent(10), percent(100)], 7).unwrap(),
            vec![1, 6]
        );
        assert_eq!(wave_sizes(&[], 4).unwrap(), vec![4]);
        let left = wave_sizes(&[size(1), size(5)], 30).unwrap_err().to_string();
        assert!(left.contains("24 would be left over"), "{left}");
        let empty = wave_sizes(&[size(30), size(1)], 30)
            .unwrap_err()
            .to_string();
        assert!(empty.contains("waves[1]"), "{empty}");
    }

    #[test]
    fn limits_must_be_positive_and_one_of_number_or_percent() {
        let request = |f: &dyn Fn(&mut pb::StartRolloutRequest)| {
            let mut r = pb::StartRolloutRequest::default();
            f(&mut r);
            check(&r).map(|_| ()).map_err(|e| e.to_string())
        };
        assert!(request(&|_| {}).is_ok());
        assert!(
            request(&|r| r.max_parallel = Some(0))
                .unwrap_err()
                .contains("max_parallel")
        );
        assert!(
            request(&|r| r.max_failures = Some(-1))
                .unwrap_err()
                .contains("max_failures")
        );
        assert!(
            request(&|r| {
                r.max_parallel = Some(2);
                r.max_parallel_percent = Some(10);
            })
            .unwrap_err()
            .contains("not both")
        );
        assert!(
            request(&|r| r.waves = vec![size(0)])
                .unwrap_err()
                .contains("waves[0].size")
        );
        assert!(
            request(&|r| r.soak = "soon".into())
                .unwrap_err()
                .contains("soak")
        );
        assert!(request(&|r| r.max_failures = Some(0)).is_ok());
    }

    #[test]
    fn percents_resolve_against_their_whole() {
        assert_eq!(resolve(Share::Percent(10), 24, true), 3);
        assert_eq!(resolve(Share::Percent(10), 24, false), 2);
        assert_eq!(resolve(Share::Count(4), 24, true), 4);
    }

    #[test]
    fn an_instances_key_is_the_same_for_every_replica_and_differs_by_rollout() {
        let a = request_id("ro-1", "cn-hangzhou", "dds-a", "5.0");
        assert_eq!(a, request_id("ro-1", "cn-hangzhou", "dds-a", "5.0"));
        assert_ne!(a, request_id("ro-2", "cn-hangzhou", "dds-a", "5.0"));
        assert_ne!(a, request_id("ro-1", "cn-hangzhou", "dds-a", "6.0"));
    }
}
