//! `[sandbox.fleet]`: the generated fleet of `serve --sandbox` (count, seed, regions, versions,
//! types, tags, resource groups, locks, upgrade time, failures by instance-id pattern). Used only
//! with `--sandbox`; the default is a 40-instance fleet in two regions, enough to try a rollout.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::value::{ConfigError, HOUR, duration_or, invalid};

/// `[sandbox]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxSettings {
    pub fleet: FleetSpec,
}

/// What the sandbox's generated fleet looks like. `FleetSpec::default()` is no fleet at all
/// (only the demo instances); the configuration's default is [`FleetSpec::demo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSpec {
    /// Instances to generate, named `dds-fleet000`, `dds-fleet001`, … (at least three digits).
    pub count: usize,
    /// The seed of every random choice: the same seed, the same fleet.
    pub seed: u64,
    /// Regions, given to instances in turn (instance i is in `regions[i % len]`).
    pub regions: Vec<String>,
    /// Engine versions, drawn uniformly.
    pub engine_versions: Vec<String>,
    /// Percent of instances that are sharded clusters (`DBInstanceType` `sharding`), 0 to 100.
    pub sharding_percent: u8,
    /// Tag keys, each with the values one is drawn from; every instance gets one value per key.
    pub tags: Vec<(String, Vec<String>)>,
    /// Resource groups, drawn uniformly (none: every instance in `rg-default`).
    pub resource_groups: Vec<String>,
    /// Instance-id patterns (`*`, `?`) of instances in `LockMode` `ManualLock`.
    pub locked: Vec<String>,
    /// How long an upgrade of a fleet instance takes.
    pub upgrade_time: Duration,
    /// What goes wrong, by instance-id pattern; the first matching rule applies.
    pub failures: Vec<FailureRule>,
}

impl Default for FleetSpec {
    fn default() -> Self {
        Self {
            count: 0,
            seed: 1,
            regions: vec!["cn-hangzhou".to_string()],
            engine_versions: vec!["4.4".to_string()],
            sharding_percent: 0,
            tags: Vec::new(),
            resource_groups: Vec::new(),
            locked: Vec::new(),
            upgrade_time: Duration::from_secs(20),
            failures: Vec::new(),
        }
    }
}

impl FleetSpec {
    /// The fleet of `serve --sandbox` when `[sandbox.fleet]` says nothing: 40 instances in
    /// cn-hangzhou and cn-shenzhen on 4.2, 4.4 and 5.0, a quarter of them sharded, tagged
    /// `env` and `team`, two locked.
    pub fn demo() -> Self {
        let strings = |list: &[&str]| list.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        Self {
            count: 40,
            seed: 1,
            regions: strings(&["cn-hangzhou", "cn-shenzhen"]),
            engine_versions: strings(&["4.2", "4.4", "5.0"]),
            sharding_percent: 25,
            tags: vec![
                ("env".to_string(), strings(&["prod", "staging"])),
                (
                    "team".to_string(),
                    strings(&["payments", "search", "identity"]),
                ),
            ],
            resource_groups: strings(&["rg-default", "rg-platform"]),
            locked: strings(&["dds-fleet007", "dds-fleet023"]),
            upgrade_time: Duration::from_secs(20),
            failures: Vec::new(),
        }
    }
}

/// One failure rule: instances whose id matches `pattern` fail their upgrades this way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRule {
    pub pattern: String,
    pub failure: Failure,
}

/// How an upgrade fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// `UpgradeDBInstanceEngineVersion` answers this Alibaba error code (HTTP 503 for
    /// `ServiceUnavailable` and `InternalError`, 400 otherwise) and nothing starts.
    Answer(String),
    /// The upgrade is accepted, and after the upgrade time the instance is `Running` on the
    /// version it had (rolled back).
    RolledBack,
    /// The upgrade is accepted, and after the upgrade time the instance is `Abnormal` on the
    /// version it had.
    Abnormal,
}

/// `[sandbox]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSandbox {
    #[serde(default)]
    fleet: RawFleet,
}

/// `[sandbox.fleet]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    count: Option<usize>,
    seed: Option<u64>,
    regions: Option<Vec<String>>,
    engine_versions: Option<Vec<String>>,
    sharding_percent: Option<u8>,
    tags: Option<BTreeMap<String, Vec<String>>>,
    resource_groups: Option<Vec<String>>,
    locked: Option<Vec<String>>,
    upgrade_time: Option<String>,
    #[serde(default)]
    failures: Vec<RawFailure>,
}

/// `[[sandbox.fleet.failures]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailure {
    instances: String,
    answer: Option<String>,
    outcome: Option<String>,
}

/// The most instances a sandbox fleet may have.
const MAX_FLEET: usize = 10_000;

pub(super) fn check(raw: RawSandbox) -> Result<SandboxSettings, ConfigError> {
    let demo = FleetSpec::demo();
    let raw = raw.fleet;
    let count = raw.count.unwrap_or(demo.count);
    if count > MAX_FLEET {
        return Err(invalid(
            "sandbox.fleet.count",
            format!("expected at most {MAX_FLEET} instances"),
        ));
    }
    let non_empty = |key: &str, list: Option<Vec<String>>, default: Vec<String>| {
        let list = list.unwrap_or(default);
        if list.is_empty() || list.iter().any(|s| s.trim().is_empty()) {
            return Err(invalid(key, "expected a non-empty list of non-empty names"));
        }
        Ok(list)
    };
    let regions = non_empty("sandbox.fleet.regions", raw.regions, demo.regions)?;
    if let Some(bad) = regions.iter().find(|r| !super::regions::is_well_formed(r)) {
        return Err(invalid(
            "sandbox.fleet.regions",
            format!("{bad:?} is not a region id like \"cn-hangzhou\""),
        ));
    }
    let engine_versions = non_empty(
        "sandbox.fleet.engine_versions",
        raw.engine_versions,
        demo.engine_versions,
    )?;
    if let Some(bad) = engine_versions
        .iter()
        .find(|v| !super::alibaba::DEFAULT_ENGINE_VERSIONS.contains(&v.as_str()))
    {
        return Err(invalid(
            "sandbox.fleet.engine_versions",
            format!(
                "{bad:?} is not one of {}",
                super::alibaba::DEFAULT_ENGINE_VERSIONS.join(", ")
            ),
        ));
    }
    let sharding_percent = raw.sharding_percent.unwrap_or(demo.sharding_percent);
    if sharding_percent > 100 {
        return Err(invalid(
            "sandbox.fleet.sharding_percent",
            "expected a percentage from 0 to 100",
        ));
    }
    let tags = match raw.tags {
        Some(tags) => {
            if let Some((key, _)) = tags
                .iter()
                .find(|(k, values)| k.is_empty() || values.is_empty())
            {
                return Err(invalid(
                    "sandbox.fleet.tags",
                    format!(
                        "tag {key:?}: expected a non-empty key with a non-empty list of values"
                    ),
                ));
            }
            tags.into_iter().collect()
        }
        None => demo.tags,
    };
    let failures = raw
        .failures
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let key = format!("sandbox.fleet.failures[{i}]");
            let failure = match (f.answer, f.outcome.as_deref()) {
                (Some(code), None) if !code.is_empty() => Failure::Answer(code),
                (None, Some("rolled_back")) => Failure::RolledBack,
                (None, Some("abnormal")) => Failure::Abnormal,
                _ => {
                    return Err(invalid(
                        &key,
                        "expected either answer = \"<Alibaba error code>\" or outcome = \"rolled_back\" | \"abnormal\"",
                    ));
                }
            };
            Ok(FailureRule {
                pattern: f.instances,
                failure,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(SandboxSettings {
        fleet: FleetSpec {
            count,
            seed: raw.seed.unwrap_or(demo.seed),
            regions,
            engine_versions,
            sharding_percent,
            tags,
            resource_groups: raw.resource_groups.unwrap_or(demo.resource_groups),
            locked: raw.locked.unwrap_or(demo.locked),
            upgrade_time: duration_or(
                "sandbox.fleet.upgrade_time",
                raw.upgrade_time,
                demo.upgrade_time,
                Duration::from_secs(HOUR),
            )?,
            failures,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<FleetSpec, ConfigError> {
        let raw: RawSandbox = toml::from_str(text).unwrap();
        check(raw).map(|s| s.fleet)
    }

    #[test]
    fn nothing_written_is_the_demo_fleet() {
        assert_eq!(load("").unwrap(), FleetSpec::demo());
        assert_eq!(FleetSpec::demo().count, 40);
    }

    #[test]
    fn reads_every_key() {
        let spec = load(
            r#"
            [fleet]
            count = 12
            seed = 9
            regions = ["cn-beijing"]
            engine_versions = ["5.0"]
            sharding_percent = 50
            resource_groups = ["rg-x"]
            locked = ["dds-fleet00*"]
            upgrade_time = "200ms"
            [fleet.tags]
            env = ["prod"]
            [[fleet.failures]]
            instances = "dds-fleet01*"
            answer = "InternalError"
            [[fleet.failures]]
            instances = "dds-fleet002"
            outcome = "rolled_back"
            "#,
        )
        .unwrap();
        assert_eq!(spec.count, 12);
        assert_eq!(spec.seed, 9);
        assert_eq!(spec.regions, ["cn-beijing"]);
        assert_eq!(spec.upgrade_time, Duration::from_millis(200));
        assert_eq!(spec.tags, [("env".to_string(), vec!["prod".to_string()])]);
        assert_eq!(
            spec.failures,
            [
                FailureRule {
                    pattern: "dds-fleet01*".into(),
                    failure: Failure::Answer("InternalError".into())
                },
                FailureRule {
                    pattern: "dds-fleet002".into(),
                    failure: Failure::RolledBack
                },
            ]
        );
    }

    #[test]
    fn mistakes_name_the_key() {
        for (text, key) in [
            ("[fleet]\ncount = 100000", "sandbox.fleet.count"),
            ("[fleet]\nregions = []", "sandbox.fleet.regions"),
            ("[fleet]\nregions = [\"Mars\"]", "sandbox.fleet.regions"),
            (
                "[fleet]\nengine_versions = [\"9.9\"]",
                "sandbox.fleet.engine_versions",
            ),
            (
                "[fleet]\nsharding_percent = 101",
                "sandbox.fleet.sharding_percent",
            ),
            (
                "[fleet]\nupgrade_time = \"0s\"",
                "sandbox.fleet.upgrade_time",
            ),
            ("[fleet.tags]\nenv = []", "sandbox.fleet.tags"),
            (
                "[[fleet.failures]]\ninstances = \"*\"\noutcome = \"exploded\"",
                "sandbox.fleet.failures[0]",
            ),
            (
                "[[fleet.failures]]\ninstances = \"*\"\nanswer = \"X\"\noutcome = \"abnormal\"",
                "sandbox.fleet.failures[0]",
            ),
        ] {
            match load(text) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
