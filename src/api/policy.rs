//! Per-caller policy, deny by default: which regions, instances (glob patterns) and target
//! versions a caller may use, and whether it may only validate. Checked after validation and
//! before any call to Alibaba Cloud; a denial names the rule, never another caller's rules.

use crate::alibaba::inventory::glob_match;
use crate::config::CallerConfig;
use crate::upgrade::validation::{InstanceRef, ValidUpgradeRequest};

/// The rule that refused a request, as it appears in `ErrorInfo.metadata["rule"]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Regions,
    Instances,
    EngineVersions,
    ValidateOnly,
    Rollouts,
}

impl Rule {
    /// The `[[callers]]` key that holds the rule.
    pub fn key(self) -> &'static str {
        match self {
            Self::Regions => "regions",
            Self::Instances => "instances",
            Self::EngineVersions => "engine_versions",
            Self::ValidateOnly => "validate_only",
            Self::Rollouts => "rollouts",
        }
    }
}

/// A request the caller's policy does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("caller {caller:?} may not {what} (rule: {})", .rule.key())]
pub struct Denied {
    /// The caller's own name (never another caller's).
    pub caller: String,
    pub rule: Rule,
    /// What was refused, in the caller's terms, e.g. `use region "cn-shenzhen"`.
    pub what: String,
}

impl Denied {
    fn new(caller: &str, rule: Rule, what: String) -> Self {
        Self {
            caller: caller.to_string(),
            rule,
            what,
        }
    }
}

/// One caller's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    regions: Vec<String>,
    instances: Vec<String>,
    /// `None`: every version the gateway accepts.
    engine_versions: Option<Vec<String>>,
    validate_only: bool,
    rollouts: bool,
}

impl Policy {
    pub fn new(config: &CallerConfig) -> Self {
        Self {
            regions: config.regions.clone(),
            instances: config.instances.clone(),
            engine_versions: config.engine_versions.clone(),
            validate_only: config.validate_only,
            rollouts: config.rollouts,
        }
    }

    /// The regions the caller may use.
    pub(crate) fn regions(&self) -> &[String] {
        &self.regions
    }

    /// The instance id patterns (glob) the caller may use.
    pub(crate) fn instances(&self) -> &[String] {
        &self.instances
    }

    /// The target versions the caller may ask for; `None`: every configured one.
    pub(crate) fn engine_versions(&self) -> Option<&[String]> {
        self.engine_versions.as_deref()
    }

    /// Whether the caller may only validate.
    pub(crate) fn validate_only(&self) -> bool {
        self.validate_only
    }

    /// Whether the caller may plan, start and control fleet rollouts (`rollouts = true`).
    pub(crate) fn rollouts(&self) -> bool {
        self.rollouts
    }

    /// Allows the request, or names the first rule that refuses it.
    pub fn check(&self, caller: &str, request: &ValidUpgradeRequest) -> Result<(), Denied> {
        let deny = |rule, what| Err(Denied::new(caller, rule, what));
        if self.validate_only && !request.validate_only() {
            return deny(
                Rule::ValidateOnly,
                "upgrade (it may only send validate_only requests)".to_string(),
            );
        }
        self.check_place(
            caller,
            request.region_id(),
            request.db_instance_id(),
            "upgrade",
        )?;
        if let Some(versions) = &self.engine_versions
            && !versions.iter().any(|v| v == request.engine_version())
        {
            return deny(
                Rule::EngineVersions,
                format!("upgrade to engine version {:?}", request.engine_version()),
            );
        }
        Ok(())
    }

    /// For reads (`GetEngineVersion`, `WatchUpgrade`): a caller may look at the instances it may
    /// upgrade, in the regions it may use, and no others.
    pub fn check_read(&self, caller: &str, instance: &InstanceRef) -> Result<(), Denied> {
        self.check_place(
            caller,
            &instance.region_id,
            &instance.db_instance_id,
            "read",
        )
    }

    /// For fleet rollouts: planning, starting and controlling one needs `rollouts = true`, and
    /// the target must be one of the caller's versions.
    pub fn check_rollouts(&self, caller: &str, target: Option<&str>) -> Result<(), Denied> {
        if !self.rollouts {
            return Err(Denied::new(
                caller,
                Rule::Rollouts,
                "plan, start or control fleet rollouts (it needs rollouts = true)".to_string(),
            ));
        }
        if let (Some(versions), Some(target)) = (&self.engine_versions, target)
            && !versions.iter().any(|v| v == target)
        {
            return Err(Denied::new(
                caller,
                Rule::EngineVersions,
                format!("upgrade to engine version {target:?}"),
            ));
        }
        Ok(())
    }

    /// Whether the caller may upgrade `db_instance_id` in `region_id` (a rollout's plan
    /// excludes the instances it may not).
    pub fn check_instance(
        &self,
        caller: &str,
        region_id: &str,
        db_instance_id: &str,
    ) -> Result<(), Denied> {
        self.check_place(caller, region_id, db_instance_id, "upgrade")
    }

    /// For listings: the regions to list. None named: every region the caller may use; a
    /// named region it may not use is refused, as a read of it would be.
    pub fn list_regions(&self, caller: &str, requested: &[String]) -> Result<Vec<String>, Denied> {
        if requested.is_empty() {
            return Ok(self.regions.clone());
        }
        match requested.iter().find(|r| !self.regions.contains(r)) {
            Some(region) => Err(Denied::new(
                caller,
                Rule::Regions,
                format!("use region {region:?}"),
            )),
            None => Ok(requested.to_vec()),
        }
    }

    /// Whether a listing shows the caller an instance: one it may read, in a region it may use.
    pub fn may_list(&self, region_id: &str, db_instance_id: &str) -> bool {
        self.check_place("", region_id, db_instance_id, "read")
            .is_ok()
    }

    fn check_place(
        &self,
        caller: &str,
        region_id: &str,
        db_instance_id: &str,
        verb: &str,
    ) -> Result<(), Denied> {
        let deny = |rule, what| Err(Denied::new(caller, rule, what));
        if !self.regions.iter().any(|r| r == region_id) {
            return deny(Rule::Regions, format!("use region {region_id:?}"));
        }
        if !self
            .instances
            .iter()
            .any(|pattern| glob_match(pattern, db_instance_id))
        {
            return deny(
                Rule::Instances,
                format!("{verb} instance {db_instance_id:?}"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};
    use crate::pb;
    use crate::upgrade::validation::Validator;

    fn policy(toml: &str) -> Policy {
        let config = Config::from_toml(toml, "t", |_| None, &Overrides::default()).unwrap();
        Policy::new(&config.callers[0])
    }

    fn valid(
        instance: &str,
        version: &str,
        region: &str,
        validate_only: bool,
    ) -> ValidUpgradeRequest {
        let config = Config::from_toml("", "t", |_| None, &Overrides::default()).unwrap();
        Validator::new(&config)
            .validate(pb::UpgradeEngineVersionRequest {
                db_instance_id: instance.into(),
                engine_version: version.into(),
                region_id: region.into(),
                validate_only,
                ..Default::default()
            })
            .unwrap()
    }

    const CALLER: &str = r#"
        [[callers]]
        name = "billing"
        token_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        regions = ["cn-hangzhou"]
        instances = ["dds-bp1*"]
        engine_versions = ["5.0"]
    "#;

    #[test]
    fn allows_only_what_every_rule_allows() {
        let p = policy(CALLER);
        assert_eq!(
            p.check("billing", &valid("dds-bp1x", "5.0", "", false)),
            Ok(())
        );
        let rule = |r: ValidUpgradeRequest| p.check("billing", &r).unwrap_err().rule;
        assert_eq!(
            rule(valid("dds-bp1x", "5.0", "cn-shenzhen", false)),
            Rule::Regions
        );
        assert_eq!(rule(valid("dds-bp2x", "5.0", "", false)), Rule::Instances);
        assert_eq!(
            rule(valid("dds-bp1x", "6.0", "", false)),
            Rule::EngineVersions
        );
    }

    #[test]
    fn absent_lists_deny_and_absent_versions_allow_all() {
        let p = policy(
            "[[callers]]\nname = \"x\"\ntoken_sha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\n",
        );
        let denied = p.check("x", &valid("dds-a", "5.0", "", false)).unwrap_err();
        assert_eq!(denied.rule, Rule::Regions);
        let p = policy(
            "[[callers]]\nname = \"x\"\ntoken_sha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\nregions = [\"cn-hangzhou\"]\ninstances = [\"*\"]\n",
        );
        assert_eq!(p.check("x", &valid("dds-a", "8.0", "", false)), Ok(()));
    }

    #[test]
    fn a_validate_only_caller_may_only_validate() {
        let p = policy(&format!("{CALLER}validate_only = true\n"));
        assert_eq!(
            p.check("billing", &valid("dds-bp1x", "5.0", "", true)),
            Ok(())
        );
        let denied = p
            .check("billing", &valid("dds-bp1x", "5.0", "", false))
            .unwrap_err();
        assert_eq!(denied.rule, Rule::ValidateOnly);
        assert!(denied.to_string().contains("validate_only"), "{denied}");
    }
}
