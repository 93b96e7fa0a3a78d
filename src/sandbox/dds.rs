//! The simulated Dds API: a few demo instances (`Running` → `EngineVersionUpgrading` → `Running`
//! on the new version), the three actions the gateway calls answered in Alibaba's shapes and error
//! codes, and a status view that can lag behind an accepted upgrade.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::response::Response;
use serde_json::json;
use tokio::time::Instant;

use super::answer::{error, json_response, new_request_id};
use crate::alibaba::{API_VERSION, action};
use crate::upgrade::instance::version_key;

/// Engine versions the simulated Dds offers, oldest first.
const OFFERED_VERSIONS: &[&str] = &["3.4", "4.0", "4.2", "4.4", "5.0", "6.0", "7.0", "8.0"];

/// A simulated instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub db_instance_id: String,
    pub region_id: String,
    pub status: String,
    pub engine_version: String,
}

/// An upgrade under way: the target version, and when the instance runs it.
#[derive(Debug)]
struct Upgrade {
    target: String,
    done_at: Instant,
}

/// The simulated instances and what has been done to them.
#[derive(Debug)]
pub(super) struct Dds {
    /// How long an upgrade keeps an instance in `EngineVersionUpgrading`.
    upgrade_duration: Duration,
    instances: BTreeMap<String, (Instance, Option<Upgrade>)>,
    /// Instance ids of the upgrades started, in order.
    started: Vec<String>,
    /// How long `DescribeDBInstanceAttribute` keeps showing an instance as it was before an
    /// accepted upgrade.
    status_lag: Duration,
    /// What it shows until then, by instance id.
    stale: HashMap<String, (Instance, Instant)>,
}

impl Dds {
    /// The demo instances, all settled, no lag.
    pub(super) fn new(upgrade_duration: Duration) -> Self {
        Self {
            upgrade_duration,
            instances: demo_instances()
                .into_iter()
                .map(|i| (i.db_instance_id.clone(), (i, None)))
                .collect(),
            started: Vec::new(),
            status_lag: Duration::ZERO,
            stale: HashMap::new(),
        }
    }

    /// An instance as it is now.
    pub(super) fn instance(&mut self, id: &str) -> Option<Instance> {
        self.settle(id).cloned()
    }

    /// How many upgrades of `id` were started.
    pub(super) fn upgrades_started(&self, id: &str) -> usize {
        self.started.iter().filter(|s| *s == id).count()
    }

    /// Shows instances as they were before an accepted upgrade for `lag` after it;
    /// `Duration::ZERO` ends every lag at once.
    pub(super) fn lag_status(&mut self, lag: Duration) {
        self.status_lag = lag;
        if lag.is_zero() {
            self.stale.clear();
        }
    }

    /// Applies a finished upgrade and returns the instance.
    fn settle(&mut self, id: &str) -> Option<&Instance> {
        let (instance, upgrade) = self.instances.get_mut(id)?;
        if let Some(Upgrade { target, done_at }) = upgrade
            && Instant::now() >= *done_at
        {
            instance.engine_version = std::mem::take(target);
            instance.status = "Running".to_string();
            *upgrade = None;
        }
        Some(instance)
    }

    /// Answers a verified request for `action` of API version `version`.
    pub(super) fn answer(
        &mut self,
        action: &str,
        version: &str,
        params: &BTreeMap<String, String>,
    ) -> Response {
        let get = |name: &str| params.get(name).map(String::as_str).unwrap_or_default();
        if version != API_VERSION
            || ![
                action::UPGRADE_DB_INSTANCE_ENGINE_VERSION,
                action::DESCRIBE_DB_INSTANCE_ATTRIBUTE,
                action::DESCRIBE_AVAILABLE_ENGINE_VERSION,
            ]
            .contains(&action)
        {
            return error(
                404,
                "InvalidApi.NotFound",
                "Specified api is not found, please check your url and method.",
            );
        }
        let id = get("DBInstanceId");
        if id.is_empty() {
            return error(
                400,
                "MissingDBInstanceId",
                "DBInstanceId is mandatory for this action.",
            );
        }
        let region = params.get("RegionId");
        let known_region = |r: &str| self.instances.values().any(|(i, _)| i.region_id == r);
        if let Some(region) = region
            && !known_region(region)
        {
            return error(
                404,
                "InvalidRegion.NotFound",
                "The RegionId provided does not exist in our records.",
            );
        }
        let Some(instance) = self
            .settle(id)
            .filter(|i| region.is_none_or(|r| *r == i.region_id))
            .cloned()
        else {
            return error(
                404,
                "InvalidInstanceId.NotFound",
                "The InstanceId provided does not exist in our records.",
            );
        };
        if instance.db_instance_id == "dds-sandboxforbidden" {
            return error(
                403,
                "Forbidden.RAM",
                "User not authorized to operate on the specified resource, or this API doesn't support RAM.",
            );
        }
        let later: Vec<&str> = OFFERED_VERSIONS
            .iter()
            .copied()
            .filter(|v| version_key(v) > version_key(&instance.engine_version))
            .collect();

        let shown = match self.stale.get(id) {
            Some((before, until)) if Instant::now() < *until => before.clone(),
            _ => instance.clone(),
        };
        match action {
            action::DESCRIBE_DB_INSTANCE_ATTRIBUTE => json_response(
                200,
                &json!({
                    "RequestId": new_request_id(),
                    "DBInstances": { "DBInstance": [ {
                        "DBInstanceId": shown.db_instance_id,
                        "DBInstanceStatus": shown.status,
                        "EngineVersion": shown.engine_version,
                        "Engine": "MongoDB",
                        "DBInstanceType": "replicate",
                        "RegionId": instance.region_id,
                        "ZoneId": format!("{}-b", instance.region_id),
                        "LockMode": "Unlock",
                        "StorageEngine": "WiredTiger",
                    } ] }
                }),
            ),
            action::DESCRIBE_AVAILABLE_ENGINE_VERSION => json_response(
                200,
                &json!({ "RequestId": new_request_id(), "EngineVersions": { "EngineVersion": later } }),
            ),
            _ => self.upgrade(&instance, &later, params),
        }
    }

    /// Answers `UpgradeDBInstanceEngineVersion` for `instance`, which may move to `later`
    /// versions, and starts the upgrade if Alibaba would.
    fn upgrade(
        &mut self,
        instance: &Instance,
        later: &[&str],
        params: &BTreeMap<String, String>,
    ) -> Response {
        let target = params
            .get("EngineVersion")
            .map(String::as_str)
            .unwrap_or_default();
        if target.is_empty() {
            return error(
                400,
                "MissingEngineVersion",
                "EngineVersion is mandatory for this action.",
            );
        }
        if !OFFERED_VERSIONS.contains(&target) {
            return error(
                400,
                "InvalidEngineVersion",
                "Specified parameter EngineVersion is not valid.",
            );
        }
        if !matches!(
            params.get("SwitchMode").map(String::as_str),
            None | Some("0" | "1")
        ) {
            return error(
                400,
                "InvalidParameter",
                "Specified parameter SwitchMode is not valid.",
            );
        }
        if instance.status != "Running" {
            return error(
                400,
                "IncorrectDBInstanceState",
                "Current DB instance state does not support this operation.",
            );
        }
        if !later.contains(&target) {
            return error(
                400,
                "EngineVersion.ERROR",
                "Target engineVersion must be greater than the current one.",
            );
        }
        let id = &instance.db_instance_id;
        if !self.status_lag.is_zero() {
            let until = Instant::now() + self.status_lag;
            self.stale.insert(id.clone(), (instance.clone(), until));
        }
        // The maintenance window is not simulated: both switch modes start at once.
        if let Some((instance, upgrade)) = self.instances.get_mut(id) {
            instance.status = "EngineVersionUpgrading".to_string();
            *upgrade = Some(Upgrade {
                target: target.to_string(),
                done_at: Instant::now() + self.upgrade_duration,
            });
        }
        self.started.push(id.clone());
        json_response(200, &json!({ "RequestId": new_request_id() }))
    }
}

fn demo_instances() -> Vec<Instance> {
    let instance = |id: &str, region: &str, status: &str, version: &str| Instance {
        db_instance_id: id.to_string(),
        region_id: region.to_string(),
        status: status.to_string(),
        engine_version: version.to_string(),
    };
    vec![
        instance("dds-sandbox01", "cn-hangzhou", "Running", "4.2"),
        instance("dds-sandbox02", "cn-hangzhou", "Running", "4.4"),
        instance("dds-sandbox03", "cn-hangzhou", "Running", "5.0"),
        instance("dds-sandboxsz", "cn-shenzhen", "Running", "6.0"),
        instance("dds-sandboxbusy", "cn-hangzhou", "Rebooting", "4.4"),
        instance("dds-sandboxforbidden", "cn-hangzhou", "Running", "4.4"),
    ]
}
