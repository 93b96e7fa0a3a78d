//! The simulated Dds API: a few demo instances and an optional generated fleet
//! ([`FleetSpec`]) (`Running` → `EngineVersionUpgrading` → `Running` on the new version), the
//! actions the gateway calls answered in Alibaba's shapes and error codes (`DescribeDBInstances`
//! with its filters and pages among them), and a status view that can lag behind an accepted
//! upgrade.
//!
//! Fleet instances follow Alibaba's upgrade path (one major version at a time, no upgrade while
//! locked); the demo instances keep offering every later version, as the README's examples use.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::response::Response;
use serde_json::json;
use tokio::time::Instant;

use super::answer::{error, json_response, new_request_id};
use super::fleet::{DEFAULT_RESOURCE_GROUP, Failure, FleetSpec, failure_of, generate};
use crate::alibaba::{API_VERSION, action};
use crate::upgrade::instance::version_key;

/// Engine versions the simulated Dds offers, oldest first.
const OFFERED_VERSIONS: &[&str] = &["3.4", "4.0", "4.2", "4.4", "5.0", "6.0", "7.0", "8.0"];

/// The most `Tag.N` pairs `DescribeDBInstances` takes.
const MAX_TAGS: usize = 20;

/// A simulated instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub db_instance_id: String,
    pub region_id: String,
    pub status: String,
    pub engine_version: String,
    /// `replicate` or `sharding`.
    pub db_instance_type: String,
    pub zone_id: String,
    /// `Unlock`, or e.g. `ManualLock` (an upgrade is refused with `IncorrectDBInstanceLockMode`).
    pub lock_mode: String,
    pub resource_group_id: String,
    /// `(key, value)` pairs.
    pub tags: Vec<(String, String)>,
}

/// An upgrade under way: the target version, when it is over, and how it ends.
#[derive(Debug)]
struct Upgrade {
    target: String,
    done_at: Instant,
    failure: Option<Failure>,
}

/// An instance with what is being done to it and the rules it follows.
#[derive(Debug)]
struct Entry {
    instance: Instance,
    upgrade: Option<Upgrade>,
    upgrade_time: Duration,
    /// Offers only the next major version (Alibaba's rule); the demo instances offer every
    /// later one.
    one_major_at_a_time: bool,
}

/// The simulated instances and what has been done to them.
#[derive(Debug)]
pub(super) struct Dds {
    instances: BTreeMap<String, Entry>,
    fleet: FleetSpec,
    /// Instance ids of the upgrades started, in order.
    started: Vec<String>,
    /// How long `DescribeDBInstanceAttribute` keeps showing an instance as it was before an
    /// accepted upgrade.
    status_lag: Duration,
    /// What it shows until then, by instance id.
    stale: HashMap<String, (Instance, Instant)>,
}

impl Dds {
    /// The demo instances and the fleet `fleet` describes, all settled, no lag.
    pub(super) fn new(upgrade_duration: Duration, fleet: FleetSpec) -> Self {
        let demo = demo_instances().into_iter().map(|instance| Entry {
            instance,
            upgrade: None,
            upgrade_time: upgrade_duration,
            one_major_at_a_time: false,
        });
        let generated = generate(&fleet).into_iter().map(|g| Entry {
            instance: Instance {
                zone_id: format!("{}-b", g.region_id),
                db_instance_id: g.id,
                region_id: g.region_id,
                status: "Running".to_string(),
                engine_version: g.engine_version,
                db_instance_type: g.instance_type.to_string(),
                lock_mode: g.lock_mode.to_string(),
                resource_group_id: g.resource_group_id,
                tags: g.tags,
            },
            upgrade: None,
            upgrade_time: fleet.upgrade_time,
            one_major_at_a_time: true,
        });
        Self {
            instances: demo
                .chain(generated)
                .map(|e| (e.instance.db_instance_id.clone(), e))
                .collect(),
            fleet,
            started: Vec::new(),
            status_lag: Duration::ZERO,
            stale: HashMap::new(),
        }
    }

    /// An instance as it is now.
    pub(super) fn instance(&mut self, id: &str) -> Option<Instance> {
        self.settle(id).cloned()
    }

    /// Every instance as it is now, by id.
    pub(super) fn instances(&mut self) -> Vec<Instance> {
        let ids: Vec<String> = self.instances.keys().cloned().collect();
        ids.iter()
            .filter_map(|id| self.settle(id).cloned())
            .collect()
    }

    /// How many upgrades of `id` were started.
    pub(super) fn upgrades_started(&self, id: &str) -> usize {
        self.started.iter().filter(|s| *s == id).count()
    }

    /// Sets an instance's `LockMode` (e.g. `ManualLock`, `Unlock`); false if there is no such
    /// instance.
    pub(super) fn set_lock_mode(&mut self, id: &str, lock_mode: &str) -> bool {
        match self.instances.get_mut(id) {
            Some(entry) => {
                entry.instance.lock_mode = lock_mode.to_string();
                true
            }
            None => false,
        }
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
        let Entry {
            instance, upgrade, ..
        } = self.instances.get_mut(id)?;
        if let Some(Upgrade {
            target,
            done_at,
            failure,
        }) = upgrade
            && Instant::now() >= *done_at
        {
            match failure {
                None | Some(Failure::Answer(_)) => {
                    instance.engine_version = std::mem::take(target);
                    instance.status = "Running".to_string();
                }
                Some(Failure::RolledBack) => instance.status = "Running".to_string(),
                Some(Failure::Abnormal) => instance.status = "Abnormal".to_string(),
            }
            *upgrade = None;
        }
        Some(instance)
    }

    /// What `DescribeDBInstanceAttribute` and `DescribeDBInstances` show of an instance now:
    /// as it was before an accepted upgrade while the status lags.
    fn shown(&self, instance: &Instance) -> Instance {
        match self.stale.get(&instance.db_instance_id) {
            Some((before, until)) if Instant::now() < *until => before.clone(),
            _ => instance.clone(),
        }
    }

    /// Whether instances live in `region`.
    fn known_region(&self, region: &str) -> bool {
        self.instances
            .values()
            .any(|e| e.instance.region_id == region)
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
                action::DESCRIBE_DB_INSTANCES,
            ]
            .contains(&action)
        {
            return error(
                404,
                "InvalidApi.NotFound",
                "Specified api is not found, please check your url and method.",
            );
        }
        if action == action::DESCRIBE_DB_INSTANCES {
            return self.describe_db_instances(params);
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
        if let Some(region) = region
            && !self.known_region(region)
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
        let one_major = self
            .instances
            .get(id)
            .is_some_and(|e| e.one_major_at_a_time);
        let later: Vec<&str> = OFFERED_VERSIONS
            .iter()
            .copied()
            .filter(|v| version_key(v) > version_key(&instance.engine_version))
            .take(if one_major { 1 } else { OFFERED_VERSIONS.len() })
            .collect();

        let shown = self.shown(&instance);
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
                        "DBInstanceType": instance.db_instance_type,
                        "RegionId": instance.region_id,
                        "ZoneId": instance.zone_id,
                        "LockMode": instance.lock_mode,
                        "ResourceGroupId": instance.resource_group_id,
                        "StorageEngine": "WiredTiger",
                        "Tags": tags_json(&instance.tags),
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

    /// `DescribeDBInstances`: the instances of one region and type that match every filter
    /// given, one page of them, sorted by id.
    fn describe_db_instances(&mut self, params: &BTreeMap<String, String>) -> Response {
        let invalid = |name: &str| {
            error(
                400,
                "InvalidParameter",
                &format!("Specified parameter {name} is not valid."),
            )
        };
        let get = |name: &str| params.get(name).map(String::as_str);
        let Some(region) = get("RegionId").filter(|r| !r.is_empty()) else {
            return error(
                400,
                "MissingRegionId",
                "RegionId is mandatory for this action.",
            );
        };
        if !self.known_region(region) && !crate::config::regions::is_known(region) {
            return error(
                404,
                "InvalidRegion.NotFound",
                "The RegionId provided does not exist in our records.",
            );
        }
        let instance_type = get("DBInstanceType").unwrap_or("replicate");
        if !["replicate", "sharding", "serverless"].contains(&instance_type) {
            return invalid("DBInstanceType");
        }
        let page_number = match get("PageNumber").map(str::parse::<usize>) {
            None => 1,
            Some(Ok(n)) if n >= 1 => n,
            Some(_) => return invalid("PageNumber"),
        };
        let page_size = match get("PageSize").map(str::parse::<usize>) {
            None => 30,
            Some(Ok(n)) if [30, 50, 100].contains(&n) => n,
            Some(_) => return invalid("PageSize"),
        };
        let mut wanted_tags = Vec::new();
        for (name, key) in params {
            let Some(n) = name
                .strip_prefix("Tag.")
                .and_then(|rest| rest.strip_suffix(".Key"))
            else {
                continue;
            };
            match n.parse::<usize>() {
                Ok(n) if (1..=MAX_TAGS).contains(&n) => {
                    wanted_tags.push((key.clone(), params.get(&format!("Tag.{n}.Value")).cloned()));
                }
                _ => return invalid(name),
            }
        }
        let filters = [
            ("EngineVersion", get("EngineVersion")),
            ("DBInstanceStatus", get("DBInstanceStatus")),
            ("DBInstanceId", get("DBInstanceId")),
            ("ResourceGroupId", get("ResourceGroupId")),
        ];
        let matching: Vec<Instance> = self
            .instances()
            .into_iter()
            .map(|i| self.shown(&i))
            .filter(|i| i.region_id == region && i.db_instance_type == instance_type)
            .filter(|i| {
                filters.iter().all(|(name, wanted)| {
                    let have = match *name {
                        "EngineVersion" => &i.engine_version,
                        "DBInstanceStatus" => &i.status,
                        "DBInstanceId" => &i.db_instance_id,
                        _ => &i.resource_group_id,
                    };
                    wanted.is_none_or(|w| w.is_empty() || w == have)
                })
            })
            .filter(|i| {
                wanted_tags.iter().all(|(key, value)| {
                    i.tags
                        .iter()
                        .any(|(k, v)| k == key && value.as_ref().is_none_or(|w| w == v))
                })
            })
            .collect();
        let page: Vec<serde_json::Value> = matching
            .iter()
            .skip((page_number - 1).saturating_mul(page_size))
            .take(page_size)
            .map(|i| {
                json!({
                    "DBInstanceId": i.db_instance_id,
                    "DBInstanceDescription": "",
                    "Engine": "MongoDB",
                    "EngineVersion": i.engine_version,
                    "DBInstanceStatus": i.status,
                    "DBInstanceType": i.db_instance_type,
                    "RegionId": i.region_id,
                    "ZoneId": i.zone_id,
                    "LockMode": i.lock_mode,
                    "ResourceGroupId": i.resource_group_id,
                    "ChargeType": "PostPaid",
                    "Tags": tags_json(&i.tags),
                })
            })
            .collect();
        json_response(
            200,
            &json!({
                "RequestId": new_request_id(),
                "TotalCount": matching.len(),
                "PageNumber": page_number,
                "PageSize": page_size,
                "DBInstances": { "DBInstance": page },
            }),
        )
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
        let id = &instance.db_instance_id;
        let failure = failure_of(&self.fleet, id).cloned();
        if let Some(Failure::Answer(code)) = &failure {
            let status = if matches!(code.as_str(), "ServiceUnavailable" | "InternalError") {
                503
            } else {
                400
            };
            return error(status, code, "injected by the sandbox fleet");
        }
        if instance.lock_mode != "Unlock" {
            return error(
                400,
                "IncorrectDBInstanceLockMode",
                "Current DB instance lock mode does not support this operation.",
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
            if version_key(target) > version_key(&instance.engine_version) {
                // Later, but more than one major version away.
                return error(
                    400,
                    "InvalidEngineVersion",
                    "The target engineVersion is not offered for this instance: upgrade one major version at a time.",
                );
            }
            return error(
                400,
                "EngineVersion.ERROR",
                "Target engineVersion must be greater than the current one.",
            );
        }
        if !self.status_lag.is_zero() {
            let until = Instant::now() + self.status_lag;
            self.stale.insert(id.clone(), (instance.clone(), until));
        }
        // The maintenance window is not simulated: both switch modes start at once.
        if let Some(entry) = self.instances.get_mut(id) {
            entry.instance.status = "EngineVersionUpgrading".to_string();
            entry.upgrade = Some(Upgrade {
                target: target.to_string(),
                done_at: Instant::now() + entry.upgrade_time,
                failure,
            });
        }
        self.started.push(id.clone());
        json_response(200, &json!({ "RequestId": new_request_id() }))
    }
}

/// `Tags.Tag[]` as Alibaba writes it.
fn tags_json(tags: &[(String, String)]) -> serde_json::Value {
    json!({ "Tag": tags.iter().map(|(k, v)| json!({ "Key": k, "Value": v })).collect::<Vec<_>>() })
}

fn demo_instances() -> Vec<Instance> {
    let instance = |id: &str, region: &str, status: &str, version: &str| Instance {
        db_instance_id: id.to_string(),
        region_id: region.to_string(),
        status: status.to_string(),
        engine_version: version.to_string(),
        db_instance_type: "replicate".to_string(),
        zone_id: format!("{region}-b"),
        lock_mode: "Unlock".to_string(),
        resource_group_id: DEFAULT_RESOURCE_GROUP.to_string(),
        tags: Vec::new(),
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
