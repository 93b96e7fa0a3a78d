//! A simulated fleet: many instances generated from a seed, so a rollout can be tried on the
//! sandbox (versions, both instance types, tags, resource groups, regions, lock modes), and
//! failures by instance-id pattern (an upgrade call answered with an error code, or an upgrade
//! that ends rolled back or abnormal). The same seed always gives the same fleet.

use crate::alibaba::inventory::glob_match;
pub use crate::config::sandbox::{Failure, FailureRule, FleetSpec};

/// One generated instance, as the Dds simulation keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Generated {
    pub(super) id: String,
    pub(super) region_id: String,
    pub(super) engine_version: String,
    pub(super) instance_type: &'static str,
    pub(super) resource_group_id: String,
    pub(super) tags: Vec<(String, String)>,
    pub(super) lock_mode: &'static str,
}

/// The resource group of instances when the spec names none.
pub(super) const DEFAULT_RESOURCE_GROUP: &str = "rg-default";

/// The fleet's instances, the same for the same spec.
pub(super) fn generate(spec: &FleetSpec) -> Vec<Generated> {
    let mut random = SplitMix64(spec.seed);
    let width = spec.count.saturating_sub(1).to_string().len().max(3);
    (0..spec.count)
        .map(|i| {
            let id = format!("dds-fleet{i:0width$}");
            let pick = |random: &mut SplitMix64, list: &[String]| -> Option<String> {
                let n = u64::try_from(list.len()).ok().filter(|n| *n > 0)?;
                let index = usize::try_from(random.next() % n).ok()?;
                list.get(index).cloned()
            };
            let region_id = spec
                .regions
                .get(i % spec.regions.len().max(1))
                .cloned()
                .unwrap_or_else(|| "cn-hangzhou".to_string());
            let engine_version =
                pick(&mut random, &spec.engine_versions).unwrap_or_else(|| "4.4".to_string());
            let instance_type = if random.next() % 100 < u64::from(spec.sharding_percent) {
                "sharding"
            } else {
                "replicate"
            };
            let resource_group_id = pick(&mut random, &spec.resource_groups)
                .unwrap_or_else(|| DEFAULT_RESOURCE_GROUP.to_string());
            let tags = spec
                .tags
                .iter()
                .filter_map(|(key, values)| Some((key.clone(), pick(&mut random, values)?)))
                .collect();
            let lock_mode = if spec.locked.iter().any(|p| glob_match(p, &id)) {
                "ManualLock"
            } else {
                "Unlock"
            };
            Generated {
                id,
                region_id,
                engine_version,
                instance_type,
                resource_group_id,
                tags,
                lock_mode,
            }
        })
        .collect()
}

/// How upgrades of `id` fail, if they do.
pub(super) fn failure_of<'a>(spec: &'a FleetSpec, id: &str) -> Option<&'a Failure> {
    spec.failures
        .iter()
        .find(|rule| glob_match(&rule.pattern, id))
        .map(|rule| &rule.failure)
}

/// SplitMix64 (Steele, Lea and Flood): a tiny seeded generator, enough to vary a demo fleet
/// the same way on every run. Not for anything secret.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FleetSpec {
        FleetSpec {
            count: 40,
            seed: 7,
            regions: vec!["cn-hangzhou".into(), "cn-shenzhen".into()],
            engine_versions: vec!["4.2".into(), "4.4".into(), "5.0".into()],
            sharding_percent: 30,
            tags: vec![("env".into(), vec!["prod".into(), "staging".into()])],
            resource_groups: vec!["rg-a".into(), "rg-b".into()],
            locked: vec!["dds-fleet01?".into()],
            ..FleetSpec::default()
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_fleet_and_another_seed_another() {
        let a = generate(&spec());
        assert_eq!(a, generate(&spec()));
        let other = generate(&FleetSpec { seed: 8, ..spec() });
        assert_ne!(a, other);
        assert_eq!(a.len(), 40);
        assert_eq!(a[0].id, "dds-fleet000");
        assert_eq!(a[39].id, "dds-fleet039");
        assert_eq!(a[1].region_id, "cn-shenzhen");
    }

    #[test]
    fn every_choice_is_used_and_patterns_lock() {
        let fleet = generate(&spec());
        for version in ["4.2", "4.4", "5.0"] {
            assert!(
                fleet.iter().any(|i| i.engine_version == version),
                "{version}"
            );
        }
        for kind in ["replicate", "sharding"] {
            assert!(fleet.iter().any(|i| i.instance_type == kind), "{kind}");
        }
        for env in ["prod", "staging"] {
            assert!(fleet.iter().any(|i| i.tags == [("env".into(), env.into())]));
        }
        let locked: Vec<_> = fleet
            .iter()
            .filter(|i| i.lock_mode == "ManualLock")
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(locked.len(), 10);
        assert!(locked.iter().all(|id| id.starts_with("dds-fleet01")));
    }

    #[test]
    fn the_first_matching_failure_rule_applies() {
        let spec = FleetSpec {
            failures: vec![
                FailureRule {
                    pattern: "dds-fleet00?".into(),
                    failure: Failure::RolledBack,
                },
                FailureRule {
                    pattern: "dds-fleet*".into(),
                    failure: Failure::Answer("InternalError".into()),
                },
            ],
            ..spec()
        };
        assert_eq!(
            failure_of(&spec, "dds-fleet003"),
            Some(&Failure::RolledBack)
        );
        assert_eq!(
            failure_of(&spec, "dds-fleet013"),
            Some(&Failure::Answer("InternalError".into()))
        );
        assert_eq!(failure_of(&spec, "dds-sandbox01"), None);
    }
}
