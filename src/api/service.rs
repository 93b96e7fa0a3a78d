//! The `dds.gateway.v1.EngineVersionService` implementation: validate, then carry out the
//! upgrade (idempotency, preflight, upgrade, reconcile: [`upgrade`](crate::upgrade::upgrader)) or read the
//! instance's status ([`status`](crate::upgrade::status)) within the caller's deadline, and answer with
//! the result or the mapped error.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::alibaba::{Alibaba, AlibabaClient};
use crate::api::auth::Caller;
use crate::api::error::Error;
use crate::audit::{self, Audit, AuditEvent};
use crate::config::Config;
use crate::deadline;
use crate::pb;
use crate::state::activity::Activity;
use crate::state::memory::MemoryStore;
use crate::state::store::{StateStore, StoreLimits};
use crate::telemetry;
use crate::upgrade::error::Error as UpgradeError;
use crate::upgrade::idempotency::Idempotency;
use crate::upgrade::status::{StatusReader, WatchStream};
use crate::upgrade::upgrader::{Outcome, Refusal, UpgradeSettings, Upgrader};
use crate::upgrade::validation::Validator;

/// The fully qualified service name, as health checks and reflection know it.
pub const SERVICE_NAME: &str = "dds.gateway.v1.EngineVersionService";

/// Response metadata set when the gateway saw the upgrade under way instead of getting Alibaba's
/// answer, so `alibaba_request_id` is empty: `dds-gateway-upgrade: reconciled`.
pub const RECONCILED_HEADER: &str = "dds-gateway-upgrade";
/// Response metadata set when the answer is a replay of an earlier call with the same
/// `request_id`: `dds-gateway-idempotent-replay: true`.
pub const REPLAYED_HEADER: &str = "dds-gateway-idempotent-replay";

/// The idempotency scope of calls without an authenticated caller (loopback, no `[[callers]]`).
const ANONYMOUS_CALLER: &str = "";

/// The gateway's gRPC service.
#[derive(Debug, Clone)]
pub struct EngineVersionService {
    validator: Validator,
    upgrader: Upgrader,
    status: StatusReader,
    /// Alibaba's calls, for listings.
    alibaba: Alibaba,
    request_timeout: Duration,
    watch_limit: Duration,
    /// The region of requests that name none, for the audit trail.
    default_region: String,
    /// The configured engine versions, oldest first.
    engine_versions: Vec<String>,
    /// The recent upgrades and rollout actions (`ListActivity`).
    activity: Activity,
    /// The rollouts, so that a rollout's activity shows only to callers who may read it.
    rollouts: Option<Arc<dyn crate::state::rollouts::RolloutStore>>,
}

impl EngineVersionService {
    /// A service with the default settings of every configuration key not given here.
    #[expect(
        clippy::expect_used,
        reason = "the empty configuration is the defaults, valid by construction (a config test loads it)"
    )]
    pub fn new(
        validator: Validator,
        client: Arc<AlibabaClient>,
        request_timeout: Duration,
    ) -> Self {
        let mut config = crate::config::Config::from_toml(
            "",
            "defaults",
            |_| None,
            &crate::config::Overrides::default(),
        )
        .expect("the default configuration is valid");
        config.server.request_timeout = request_timeout;
        Self::with_validator(validator, &config, client, None)
    }

    /// The service `config` describes; `store` replaces the in-memory state store.
    pub fn from_config(
        config: &Config,
        client: Arc<AlibabaClient>,
        store: Option<Arc<dyn StateStore>>,
    ) -> Self {
        Self::with_validator(Validator::new(config), config, client, store)
    }

    fn with_validator(
        validator: Validator,
        config: &Config,
        client: Arc<AlibabaClient>,
        store: Option<Arc<dyn StateStore>>,
    ) -> Self {
        let store =
            store.unwrap_or_else(|| Arc::new(MemoryStore::new(StoreLimits::from_config(config))));
        let settings = UpgradeSettings {
            preflight: config.alibaba.preflight,
            settle_window: config.idempotency.settle_window,
        };
        let alibaba = Alibaba::new(client, config.alibaba.retry.into());
        Self {
            validator,
            upgrader: Upgrader::new(
                alibaba.clone(),
                settings,
                Idempotency::new(store),
                Audit::log_only(),
            ),
            status: StatusReader::new(alibaba.clone(), &config.watch),
            alibaba,
            request_timeout: config.server.request_timeout,
            watch_limit: config.watch.max_duration,
            default_region: config.alibaba.region_id.clone(),
            engine_versions: config.alibaba.engine_versions.clone(),
            activity: Activity::memory(),
            rollouts: None,
        }
    }

    /// The Alibaba facade and the shared polls of instances of this service, for the rollout
    /// engine to call Alibaba through the same account budget and follow instances through the
    /// same polls as `WatchUpgrade`.
    pub(crate) fn shared_reads(&self) -> (Alibaba, crate::upgrade::poller::Poller) {
        (self.alibaba.clone(), self.status.poller().clone())
    }

    /// Serves `ListActivity` from `activity` (the audit's [`Recent`](crate::audit::Recent) list).
    pub fn with_activity(mut self, activity: Activity) -> Self {
        self.activity = activity;
        self
    }

    /// Shows a rollout's activity only to callers who may read the rollout in `rollouts`.
    pub(crate) fn with_rollouts(
        mut self,
        rollouts: Arc<dyn crate::state::rollouts::RolloutStore>,
    ) -> Self {
        self.rollouts = Some(rollouts);
        self
    }

    /// Whether `caller` may read rollout `id` (every one of its instances); a rollout that
    /// cannot be read from the store is not shown.
    async fn may_read_rollout(&self, caller: Option<&Caller>, id: &str) -> bool {
        let Some(caller) = caller else {
            return true;
        };
        let Some(store) = &self.rollouts else {
            return false;
        };
        let Ok(Some(versioned)) = store.get(id).await else {
            return false;
        };
        <pb::Rollout as prost::Message>::decode(versioned.record.as_slice())
            .is_ok_and(|rollout| super::rollouts::may_read(Some(caller), &rollout).is_ok())
    }

    /// Records upgrade attempts in `audit` instead of the logs only.
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.upgrader.set_audit(audit);
        self
    }

    /// The upgrade tasks still running, and where they are audited: shutdown waits for them.
    pub fn open_upgrades(&self) -> (crate::upgrade::upgrader::OpenUpgrades, Audit) {
        (self.upgrader.open_upgrades(), self.upgrader.audit().clone())
    }

    /// Status reads, for tests and metrics (e.g. how many watches are running).
    pub fn status_reader(&self) -> &StatusReader {
        &self.status
    }

    /// Validates and authorises the request, then carries it out; every outcome is audited as
    /// `event`, by the upgrade's task when there is one.
    async fn upgrade(
        &self,
        request: pb::UpgradeEngineVersionRequest,
        deadline: Instant,
        caller: Option<&Caller>,
        event: AuditEvent,
    ) -> Result<Outcome, Status> {
        let request =
            match tracing::info_span!("validate").in_scope(|| self.validator.validate(request)) {
                Ok(request) => request,
                Err(invalid) => return Err(self.upgrader.refuse(event, invalid.into()).await),
            };
        // The gate admitted the caller; its policy decides before anything reaches Alibaba.
        if let Some(caller) = caller
            && let Err(denied) = tracing::info_span!("authorise", enduser.id = caller.name())
                .in_scope(|| caller.policy().check(caller.name(), &request))
        {
            let refusal = Refusal {
                detail: denied.to_string(),
                status: Status::from(Error::from(denied)),
                alibaba_code: String::new(),
                alibaba_request_id: String::new(),
            };
            return Err(self.upgrader.record_refusal(event, refusal).await);
        }
        let scope = caller.map_or(ANONYMOUS_CALLER, Caller::name);
        self.upgrader.run(request, scope, deadline, event).await
    }
}

#[tonic::async_trait]
impl pb::engine_version_service_server::EngineVersionService for EngineVersionService {
    async fn upgrade_engine_version(
        &self,
        request: Request<pb::UpgradeEngineVersionRequest>,
    ) -> Result<Response<pb::UpgradeEngineVersionResponse>, Status> {
        let deadline = deadline::effective(request.extensions().get(), self.request_timeout);
        let caller = admitted(&request);
        let message = request.into_inner();
        let event = AuditEvent {
            time: audit::now(),
            kind: if message.validate_only {
                "validate_only"
            } else {
                "upgrade"
            },
            caller: caller.as_ref().map_or("", |c| c.name()).to_string(),
            db_instance_id: short(&message.db_instance_id).to_string(),
            region_id: if message.region_id.is_empty() {
                self.default_region.clone()
            } else {
                short(&message.region_id).to_string()
            },
            from_version: String::new(),
            to_version: short(&message.engine_version).to_string(),
            outcome: "failed",
            grpc_code: "OK",
            alibaba_request_id: String::new(),
            alibaba_code: String::new(),
            request_id: short(&message.request_id).to_string(),
            trace_id: telemetry::current_trace_id(),
            rollout_id: String::new(),
            comment: String::new(),
        };
        let Outcome { accepted, replayed } = self
            .upgrade(message, deadline, caller.as_deref(), event)
            .await?;
        let mut response = Response::new(accepted.response);
        if accepted.reconciled {
            response.metadata_mut().insert(
                RECONCILED_HEADER,
                tonic::metadata::MetadataValue::from_static("reconciled"),
            );
        }
        if replayed {
            response.metadata_mut().insert(
                REPLAYED_HEADER,
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        Ok(response)
    }

    async fn get_engine_version(
        &self,
        request: Request<pb::GetEngineVersionRequest>,
    ) -> Result<Response<pb::GetEngineVersionResponse>, Status> {
        let deadline = deadline::effective(request.extensions().get(), self.request_timeout);
        let message = request.get_ref();
        let instance =
            self.readable(&request, &message.db_instance_id, &message.region_id, None)?;
        let message = request.into_inner();
        match self.status.get(&instance, deadline).await {
            Ok(answer) => Ok(Response::new(answer)),
            Err(err) => Err(logged("get engine version", &message.db_instance_id, err)),
        }
    }

    type WatchUpgradeStream = WatchStream;

    async fn watch_upgrade(
        &self,
        request: Request<pb::WatchUpgradeRequest>,
    ) -> Result<Response<Self::WatchUpgradeStream>, Status> {
        let deadline = deadline::effective(request.extensions().get(), self.watch_limit);
        let connection_end = request
            .extensions()
            .get::<deadline::ConnectionEnd>()
            .map(|end| end.0);
        let message = request.get_ref();
        let instance = self.readable(
            &request,
            &message.db_instance_id,
            &message.region_id,
            Some(&message.engine_version),
        )?;
        let caller = admitted(&request);
        let message = request.into_inner();
        let stream = self
            .status
            .watch(
                instance,
                message.engine_version,
                deadline,
                connection_end,
                caller.as_deref().map(Caller::name),
            )
            .ok_or_else(|| Status::from(Error::WatchLimitReached))?;
        Ok(Response::new(stream))
    }

    async fn get_caller(
        &self,
        request: Request<pb::GetCallerRequest>,
    ) -> Result<Response<pb::GetCallerResponse>, Status> {
        let Some(caller) = admitted(&request) else {
            // No `[[callers]]`: everything the gateway accepts, on loopback.
            return Ok(Response::new(pb::GetCallerResponse {
                name: String::new(),
                authenticated: false,
                may_upgrade: true,
                region_ids: Vec::new(),
                instance_patterns: Vec::new(),
                engine_versions: self.engine_versions.clone(),
                may_roll_out: true,
            }));
        };
        let policy = caller.policy();
        Ok(Response::new(pb::GetCallerResponse {
            name: caller.name().to_string(),
            authenticated: true,
            may_upgrade: !policy.validate_only(),
            may_roll_out: policy.rollouts() && !policy.validate_only(),
            region_ids: policy.regions().to_vec(),
            instance_patterns: policy.instances().to_vec(),
            engine_versions: match policy.engine_versions() {
                Some(allowed) => self
                    .engine_versions
                    .iter()
                    .filter(|v| allowed.contains(v))
                    .cloned()
                    .collect(),
                None => self.engine_versions.clone(),
            },
        }))
    }

    async fn list_engine_versions(
        &self,
        _request: Request<pb::ListEngineVersionsRequest>,
    ) -> Result<Response<pb::ListEngineVersionsResponse>, Status> {
        Ok(Response::new(pb::ListEngineVersionsResponse {
            engine_versions: crate::upgrade::lifecycle::describe(
                &self.engine_versions,
                std::time::SystemTime::now(),
            ),
        }))
    }

    async fn list_activity(
        &self,
        request: Request<pb::ListActivityRequest>,
    ) -> Result<Response<pb::ListActivityResponse>, Status> {
        const MAX_PAGE: usize = 100;
        let caller = admitted(&request);
        let page_size = match request.get_ref().page_size {
            n if n < 0 => {
                let violation = crate::upgrade::validation::FieldViolation {
                    field: "page_size",
                    description: format!("must be zero (the default) or more, got {n}"),
                };
                return Err(Status::from(UpgradeError::from(
                    crate::upgrade::validation::ValidationError {
                        violations: vec![violation],
                    },
                )));
            }
            0 => MAX_PAGE,
            n => usize::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE),
        };
        let recent = self.activity.recent().await.map_err(|err| {
            tracing::warn!(error = %err, "recent activity cannot be read");
            Status::from(UpgradeError::from(err))
        })?;
        // A rollout's own actions name no instance: they show to those who may read it.
        let mut readable_rollouts = std::collections::HashMap::new();
        let mut activities = Vec::new();
        for entry in recent {
            if activities.len() == page_size {
                break;
            }
            if !may_see(caller.as_deref(), &entry) {
                continue;
            }
            if entry.db_instance_id.is_empty() && !entry.rollout_id.is_empty() {
                let readable = match readable_rollouts.get(&entry.rollout_id) {
                    Some(readable) => *readable,
                    None => {
                        let readable = self
                            .may_read_rollout(caller.as_deref(), &entry.rollout_id)
                            .await;
                        readable_rollouts.insert(entry.rollout_id.clone(), readable);
                        readable
                    }
                };
                if !readable {
                    continue;
                }
            }
            activities.push(entry);
        }
        Ok(Response::new(pb::ListActivityResponse { activities }))
    }

    async fn list_instances(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let deadline = deadline::effective(request.extensions().get(), self.request_timeout);
        let caller = admitted(&request);
        let mut filter = self
            .validator
            .validate_list(request.into_inner())
            .map_err(|e| Status::from(UpgradeError::from(e)))?;
        // The caller's policy bounds the regions asked for, then the instances shown.
        filter.region_ids = match caller.as_deref() {
            Some(caller) => caller
                .policy()
                .list_regions(caller.name(), &filter.region_ids)
                .map_err(|denied| Status::from(Error::from(denied)))?,
            None if filter.region_ids.is_empty() => {
                vec![self.validator.default_region().to_string()]
            }
            None => filter.region_ids,
        };
        let mut instances = crate::upgrade::inventory::list(&self.alibaba, &filter, deadline)
            .await
            .map_err(|err| logged("list instances", "", err))?;
        if let Some(caller) = caller.as_deref() {
            instances.retain(|i| caller.policy().may_list(&i.region_id, &i.db_instance_id));
        }
        Ok(Response::new(pb::ListInstancesResponse {
            instances: instances
                .into_iter()
                .map(crate::upgrade::inventory::to_pb)
                .collect(),
        }))
    }
}

/// Whether `caller` may see `entry`: an instance's entry when it may read the instance, a
/// rollout's when it may use the rollout's region (or the entry names none).
fn may_see(caller: Option<&Caller>, entry: &pb::Activity) -> bool {
    let Some(caller) = caller else {
        return true;
    };
    let policy = caller.policy();
    if entry.db_instance_id.is_empty() {
        return entry.region_id.is_empty() || policy.regions().contains(&entry.region_id);
    }
    policy
        .check_read(
            caller.name(),
            &crate::upgrade::validation::InstanceRef {
                db_instance_id: entry.db_instance_id.clone(),
                region_id: entry.region_id.clone(),
            },
        )
        .is_ok()
}

impl EngineVersionService {
    /// The instance a read (`GetEngineVersion`, `WatchUpgrade`) names, validated and allowed by
    /// the admitted caller's policy.
    fn readable<T>(
        &self,
        request: &Request<T>,
        db_instance_id: &str,
        region_id: &str,
        target: Option<&str>,
    ) -> Result<crate::upgrade::validation::InstanceRef, Status> {
        let caller = admitted(request);
        let instance = self
            .validator
            .validate_instance(db_instance_id, region_id, target)
            .map_err(|e| Status::from(UpgradeError::from(e)))?;
        authorise_read(caller.as_deref(), &instance)?;
        Ok(instance)
    }
}

/// The caller the gate admitted, if callers are configured.
fn admitted<T>(request: &Request<T>) -> Option<std::sync::Arc<Caller>> {
    request
        .extensions()
        .get::<crate::api::gate::Admitted>()
        .map(|a| std::sync::Arc::clone(&a.0))
}

/// A caller's policy also bounds what it may read.
fn authorise_read(
    caller: Option<&Caller>,
    instance: &crate::upgrade::validation::InstanceRef,
) -> Result<(), Status> {
    match caller {
        Some(caller) => caller
            .policy()
            .check_read(caller.name(), instance)
            .map_err(|denied| Status::from(Error::from(denied))),
        None => Ok(()),
    }
}

/// Logs a failed status read with the code the caller gets, and returns that status.
fn logged(what: &str, db_instance_id: &str, err: UpgradeError) -> Status {
    let alibaba_code = err.alibaba_code().unwrap_or_default().to_string();
    let detail = err.to_string();
    let status = Status::from(err);
    // A caller's invalid request is its own business (info); anything else is ours (warn).
    macro_rules! failed {
        ($level:ident) => {
            tracing::$level!(
                db_instance_id = %short(db_instance_id),
                grpc_code = crate::telemetry::rpc::code_name(status.code()),
                alibaba_code = %alibaba_code,
                error = %detail,
                "{what} failed"
            )
        };
    }
    if crate::telemetry::rpc::callers_mistake(status.code()) {
        failed!(info);
    } else {
        failed!(warn);
    }
    status
}

/// A caller-supplied value cut for a log line.
fn short(value: &str) -> &str {
    match value.char_indices().nth(80) {
        Some((i, _)) => &value[..i],
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_cuts_on_a_char_boundary() {
        let long = "中".repeat(100);
        assert_eq!(short(&long).chars().count(), 80);
        assert_eq!(short("abc"), "abc");
    }
}
