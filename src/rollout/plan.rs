//! A plan (a dry run): the selector checked, the fleet listed, and a verdict for each instance
//! it names: eligible, or excluded with the reason (not Running, locked, already on the target,
//! the target not offered, an intermediate version needed, the caller's policy). The hash of
//! the eligible set is what a start can insist on.

use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use prost::Message as _;
use tokio::time::Instant;

use crate::alibaba::endpoint::check_region;
use crate::alibaba::inventory::{InstanceFilter, InstanceSummary, TagFilter};
use crate::pb;
use crate::rollout::Rollouts;
use crate::rollout::error::RolloutError;
use crate::state::store::Fingerprint;
use crate::upgrade::details::call_status;
use crate::upgrade::instance::{RUNNING, version_key};
use crate::upgrade::validation::check_instance_id;

/// What the caller's policy says of an instance: `Some(reason)` when it may not touch it.
pub(crate) type PolicyCheck<'a> = &'a (dyn Fn(&str, &str) -> Option<String> + Send + Sync);

/// How long a previewed plan is kept for a start to compare with.
const PLAN_KEPT: Duration = Duration::from_secs(24 * 3600);
/// How long listing and judging the fleet may take.
const PLAN_TIMEOUT: Duration = Duration::from_secs(120);
/// Conditions of one selector, at most (Alibaba takes 20 tags).
const MAX_CONDITIONS: usize = 1000;
/// Instances judged at once. Judging one takes a round trip to Alibaba
/// (`DescribeAvailableEngineVersion`), so a fleet of hundreds judged one at a time would
/// outlast [`PLAN_TIMEOUT`]; four at a time keep up with the account budget's default rate
/// (`[alibaba.quota]`, 20 calls/s) at 200 ms a call, and leave most of a replica's places
/// (10 by default) to upgrades.
const JUDGED_AT_ONCE: usize = 4;

impl Rollouts {
    /// Lists and judges the instances `selector` names for an upgrade to `target`.
    pub(crate) async fn plan(
        &self,
        selector: &pb::Selector,
        target: &str,
        allowed: PolicyCheck<'_>,
    ) -> Result<pb::RolloutPlan, RolloutError> {
        self.check_selector(selector, target)?;
        let deadline = Instant::now() + PLAN_TIMEOUT;
        let filter = filter_of(selector, &self.inner.settings.default_region);
        let listed = self
            .inner
            .alibaba
            .list_instances(&filter, deadline)
            .await
            .map_err(|e| RolloutError::Upstream(call_status(e)))?;
        let regions = &filter.region_ids;

        let mut plan = pb::RolloutPlan {
            target_engine_version: target.to_string(),
            ..Default::default()
        };
        for id in &selector.instance_ids {
            if !listed.iter().any(|i| &i.db_instance_id == id) {
                plan.excluded.push(pb::PlannedInstance {
                    db_instance_id: id.clone(),
                    region_id: regions.join(","),
                    reason: format!("not found in region(s) {}", regions.join(", ")),
                    ..Default::default()
                });
            }
        }
        // By index: a closure over `&InstanceSummary` would not be `Send` for every lifetime.
        let verdicts: Vec<Option<String>> = stream::iter(0..listed.len())
            .map(|n| self.verdict(&listed[n], target, allowed, deadline))
            .buffered(JUDGED_AT_ONCE)
            .try_collect()
            .await?;
        for (instance, reason) in listed.into_iter().zip(verdicts) {
            let mut planned = pb::PlannedInstance {
                db_instance_id: instance.db_instance_id,
                region_id: instance.region_id,
                engine_version: instance.engine_version,
                reason: reason.unwrap_or_default(),
                status: instance.status,
                lock_mode: instance.lock_mode,
                db_instance_type: instance.instance_type,
                warnings: Vec::new(),
            };
            if planned.reason.is_empty() {
                planned.warnings = warnings(&planned.engine_version, target);
                plan.eligible.push(planned);
            } else {
                plan.excluded.push(planned);
            }
        }
        plan.plan_hash = plan_hash(target, &plan.eligible);
        self.inner
            .store
            .save_plan(&plan.plan_hash, &plan.encode_to_vec(), PLAN_KEPT)
            .await?;
        Ok(plan)
    }

    /// What was eligible in the plan `hash` previewed and is not now, and the other way round.
    pub(crate) async fn difference(
        &self,
        hash: &str,
        now: &pb::RolloutPlan,
    ) -> Result<String, RolloutError> {
        let Some(bytes) = self.inner.store.load_plan(hash).await? else {
            return Ok(format!(
                "plan {hash} is unknown here or expired; the fleet's plan is now {}",
                now.plan_hash
            ));
        };
        let before = pb::RolloutPlan::decode(bytes.as_slice())
            .map_err(|e| RolloutError::Store(format!("unreadable plan: {e}")))?;
        let key = |i: &pb::PlannedInstance| {
            format!(
                "{} ({} {})",
                i.db_instance_id, i.region_id, i.engine_version
            )
        };
        let was: Vec<String> = before.eligible.iter().map(key).collect();
        let is: Vec<String> = now.eligible.iter().map(key).collect();
        let gone: Vec<&str> = was
            .iter()
            .filter(|k| !is.contains(k))
            .map(String::as_str)
            .collect();
        let new: Vec<&str> = is
            .iter()
            .filter(|k| !was.contains(k))
            .map(String::as_str)
            .collect();
        let mut parts = Vec::new();
        if !gone.is_empty() {
            parts.push(format!("no longer eligible: {}", gone.join(", ")));
        }
        if !new.is_empty() {
            parts.push(format!("newly eligible: {}", new.join(", ")));
        }
        if before.target_engine_version != now.target_engine_version {
            parts.push(format!(
                "target {} instead of {}",
                now.target_engine_version, before.target_engine_version
            ));
        }
        Ok(parts.join("; "))
    }

    fn check_selector(&self, selector: &pb::Selector, target: &str) -> Result<(), RolloutError> {
        let settings = &self.inner.settings;
        let mut violations = Vec::new();
        let mut violate = |field: &str, what: String| violations.push((field.to_string(), what));
        let conditions = selector.region_ids.len()
            + selector.engine_versions.len()
            + selector.instance_ids.len()
            + selector.instance_patterns.len()
            + selector.tags.len()
            + usize::from(!selector.resource_group_id.is_empty());
        if conditions == 0 {
            violate(
                "selector",
                "is empty: name regions, versions, instances, patterns, tags or a resource group (a fleet operation never means everything by accident)".to_string(),
            );
        }
        if conditions > MAX_CONDITIONS {
            violate(
                "selector",
                format!("has more than {MAX_CONDITIONS} conditions"),
            );
        }
        if target.is_empty() {
            violate(
                "target_engine_version",
                "is required, e.g. \"5.0\"".to_string(),
            );
        } else if !settings.engine_versions.iter().any(|v| v == target) {
            violate(
                "target_engine_version",
                format!(
                    "must be one of {}, got {target:?}",
                    settings.engine_versions.join(", ")
                ),
            );
        }
        for region in &selector.region_ids {
            if let Err(problem) = check_region(region, settings.explicit_endpoint) {
                violate("selector.region_ids", problem);
            }
        }
        for id in &selector.instance_ids {
            if let Err(problem) = check_instance_id(id) {
                violate("selector.instance_ids", format!("{id:?}: {problem}"));
            }
        }
        for pattern in &selector.instance_patterns {
            if pattern.is_empty() || pattern.len() > 64 || pattern.chars().any(char::is_control) {
                violate(
                    "selector.instance_patterns",
                    format!("{pattern:?}: expected a glob of at most 64 characters"),
                );
            }
        }
        for version in &selector.engine_versions {
            if version.is_empty() || version.len() > 16 {
                violate(
                    "selector.engine_versions",
                    format!("{version:?} is no version"),
                );
            }
        }
        if selector.tags.len() > 20 {
            violate(
                "selector.tags",
                "at most 20 tags (Alibaba's limit)".to_string(),
            );
        }
        for tag in &selector.tags {
            if tag.key.is_empty() || tag.key.len() > 128 || tag.value.len() > 128 {
                violate(
                    "selector.tags",
                    "each needs a key; key and value at most 128 characters".to_string(),
                );
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(RolloutError::Invalid(violations))
        }
    }

    /// Why `instance` cannot be part of the rollout, or `None` when it is eligible.
    async fn verdict(
        &self,
        instance: &InstanceSummary,
        target: &str,
        allowed: PolicyCheck<'_>,
        deadline: Instant,
    ) -> Result<Option<String>, RolloutError> {
        if let Some(denied) = allowed(&instance.region_id, &instance.db_instance_id) {
            return Ok(Some(denied));
        }
        if instance.status != RUNNING {
            return Ok(Some(format!("is {}, not Running", instance.status)));
        }
        if !instance.lock_mode.is_empty() && instance.lock_mode != "Unlock" {
            return Ok(Some(format!(
                "LockMode is {}, not Unlock",
                instance.lock_mode
            )));
        }
        if version_key(&instance.engine_version) >= version_key(target) {
            return Ok(Some(format!(
                "runs {}, not earlier than {target}",
                instance.engine_version
            )));
        }
        let offered = self
            .inner
            .alibaba
            .describe_available_engine_version(
                &instance.region_id,
                &instance.db_instance_id,
                deadline,
            )
            .await
            .map_err(|e| RolloutError::Upstream(call_status(e)))?;
        if offered.versions.iter().any(|v| v == target) {
            return Ok(None);
        }
        let mut between: Vec<&String> = offered
            .versions
            .iter()
            .filter(|v| version_key(v) < version_key(target))
            .filter(|v| version_key(v) > version_key(&instance.engine_version))
            .collect();
        between.sort_by_key(|v| version_key(v));
        Ok(Some(match between.first() {
            Some(next) => format!(
                "needs an intermediate upgrade to {next} first (Alibaba upgrades one major version at a time; a rollout never chains upgrades)"
            ),
            None => format!(
                "Alibaba does not offer {target} to it (offered: {})",
                if offered.versions.is_empty() {
                    "none".to_string()
                } else {
                    offered.versions.join(", ")
                }
            ),
        }))
    }
}

/// The listing `selector` asks for (both instance types; the default region when it names
/// none).
fn filter_of(selector: &pb::Selector, default_region: &str) -> InstanceFilter {
    InstanceFilter {
        region_ids: if selector.region_ids.is_empty() {
            vec![default_region.to_string()]
        } else {
            selector.region_ids.clone()
        },
        engine_versions: selector.engine_versions.clone(),
        instance_types: Vec::new(),
        tags: selector
            .tags
            .iter()
            .map(|t| TagFilter {
                key: t.key.clone(),
                value: Some(t.value.clone()),
            })
            .collect(),
        resource_group_id: Some(selector.resource_group_id.clone()).filter(|g| !g.is_empty()),
        instance_ids: selector.instance_ids.clone(),
        instance_patterns: selector.instance_patterns.clone(),
    }
}

/// SHA-256 (hex) of the eligible set and the target: instance, region and current version of
/// each, in order.
pub(crate) fn plan_hash(target: &str, eligible: &[pb::PlannedInstance]) -> String {
    let mut fields = vec!["rollout-plan/v1", target];
    for instance in eligible {
        fields.extend([
            instance.region_id.as_str(),
            instance.db_instance_id.as_str(),
            instance.engine_version.as_str(),
        ]);
    }
    Fingerprint::of_fields(&fields).to_hex()
}

/// What to know about going from `from` to `target`.
fn warnings(from: &str, target: &str) -> Vec<String> {
    let mut warnings = vec!["irreversible: the instance restarts two to three times".to_string()];
    if version_key(from) < (5, 0) && version_key(target) >= (5, 0) {
        warnings.push("from 5.0 the default write concern is majority (it was w:1)".to_string());
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: &str, version: &str, tags: &[(&str, &str)]) -> InstanceSummary {
        InstanceSummary {
            db_instance_id: id.into(),
            region_id: "cn-hangzhou".into(),
            zone_id: String::new(),
            engine_version: version.into(),
            status: RUNNING.into(),
            instance_type: "sharding".into(),
            lock_mode: "Unlock".into(),
            resource_group_id: "rg-1".into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn every_condition_of_a_selector_must_hold_in_its_listing() {
        let selector = pb::Selector {
            engine_versions: vec!["4.4".into()],
            instance_patterns: vec!["dds-bp*".into()],
            tags: vec![pb::Tag {
                key: "env".into(),
                value: "prod".into(),
            }],
            ..Default::default()
        };
        let filter = filter_of(&selector, "cn-hangzhou");
        assert_eq!(filter.region_ids, vec!["cn-hangzhou".to_string()]);
        assert!(filter.instance_types.is_empty(), "both types are listed");
        assert!(filter.matches(&summary("dds-bp1", "4.4", &[("env", "prod")])));
        assert!(!filter.matches(&summary("dds-bp1", "4.2", &[("env", "prod")])));
        assert!(!filter.matches(&summary("dds-xx1", "4.4", &[("env", "prod")])));
        assert!(!filter.matches(&summary("dds-bp1", "4.4", &[("env", "test")])));
        let group = filter_of(
            &pb::Selector {
                resource_group_id: "rg-2".into(),
                region_ids: vec!["cn-shenzhen".into()],
                ..Default::default()
            },
            "cn-hangzhou",
        );
        assert_eq!(group.region_ids, vec!["cn-shenzhen".to_string()]);
        assert!(!group.matches(&summary("dds-bp1", "4.4", &[])));
    }

    #[test]
    fn the_hash_changes_with_the_eligible_set() {
        let one = |id: &str, version: &str| pb::PlannedInstance {
            db_instance_id: id.into(),
            region_id: "cn-hangzhou".into(),
            engine_version: version.into(),
            ..Default::default()
        };
        let a = plan_hash("5.0", &[one("dds-a", "4.4"), one("dds-b", "4.4")]);
        assert_eq!(
            a,
            plan_hash("5.0", &[one("dds-a", "4.4"), one("dds-b", "4.4")])
        );
        assert_ne!(a, plan_hash("5.0", &[one("dds-a", "4.4")]));
        assert_ne!(
            a,
            plan_hash("5.0", &[one("dds-a", "4.4"), one("dds-b", "4.2")])
        );
        assert_ne!(
            a,
            plan_hash("6.0", &[one("dds-a", "4.4"), one("dds-b", "4.4")])
        );
        assert_eq!(a.len(), 64);
    }
}
