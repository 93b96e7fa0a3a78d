//! The `dds.gateway.v1.RolloutService` implementation: the caller's permission (`rollouts =
//! true` to plan, start and control; the read policy, for each of a rollout's instances, to
//! read), then the [`rollout`](crate::rollout) stage's work.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

use crate::api::auth::Caller;
use crate::api::error::Error;
use crate::api::gate::Admitted;
use crate::deadline;
use crate::pb;
use crate::rollout::Rollouts;
use crate::rollout::control::Action;
use crate::upgrade::validation::InstanceRef;

/// The gateway's rollout service.
#[derive(Debug, Clone)]
pub(crate) struct RolloutService {
    rollouts: Rollouts,
    /// `watch.max_duration`: the longest a watch lasts without a caller deadline.
    watch_limit: std::time::Duration,
}

impl RolloutService {
    pub(crate) fn new(rollouts: Rollouts, watch_limit: std::time::Duration) -> Self {
        Self {
            rollouts,
            watch_limit,
        }
    }
}

fn admitted<T>(request: &Request<T>) -> Option<Arc<Caller>> {
    request
        .extensions()
        .get::<Admitted>()
        .map(|a| Arc::clone(&a.0))
}

fn name(caller: Option<&Caller>) -> &str {
    caller.map_or("", Caller::name)
}

/// Planning, starting and controlling need `rollouts = true` (and the target among the
/// caller's versions); an open gateway (loopback, no callers) allows them.
fn may_control(caller: Option<&Caller>, target: Option<&str>) -> Result<(), Status> {
    match caller {
        Some(caller) => caller
            .policy()
            .check_rollouts(caller.name(), target)
            .map_err(|denied| Status::from(Error::from(denied))),
        None => Ok(()),
    }
}

/// A rollout is readable by a caller whose read policy allows every one of its instances.
pub(crate) fn may_read(caller: Option<&Caller>, rollout: &pb::Rollout) -> Result<(), Status> {
    let Some(caller) = caller else {
        return Ok(());
    };
    for instance in &rollout.instances {
        let place = InstanceRef {
            db_instance_id: instance.db_instance_id.clone(),
            region_id: instance.region_id.clone(),
        };
        caller
            .policy()
            .check_read(caller.name(), &place)
            .map_err(|denied| Status::from(Error::from(denied)))?;
    }
    Ok(())
}

/// The caller's policy as a plan applies it: instances it may not upgrade are excluded.
fn policy_check(
    caller: Option<Arc<Caller>>,
) -> impl Fn(&str, &str) -> Option<String> + Send + Sync {
    move |region_id: &str, db_instance_id: &str| {
        let caller = caller.as_ref()?;
        caller
            .policy()
            .check_instance(caller.name(), region_id, db_instance_id)
            .err()
            .map(|denied| {
                format!(
                    "the caller's policy does not allow it (rule: {})",
                    denied.rule.key()
                )
            })
    }
}

impl RolloutService {
    async fn control<T>(
        &self,
        request: &Request<T>,
        id: &str,
        action: Action,
        instance: Option<&str>,
        comment: &str,
    ) -> Result<Response<pb::Rollout>, Status> {
        let caller = admitted(request);
        let (_, rollout) = self.rollouts.get(id).await.map_err(Status::from)?;
        may_read(caller.as_deref(), &rollout)?;
        may_control(caller.as_deref(), None)?;
        let rollout = self
            .rollouts
            .control(id, action, instance, name(caller.as_deref()), comment)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(rollout))
    }
}

type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Rollout, Status>> + Send>>;

#[tonic::async_trait]
impl pb::rollout_service_server::RolloutService for RolloutService {
    async fn plan_rollout(
        &self,
        request: Request<pb::PlanRolloutRequest>,
    ) -> Result<Response<pb::RolloutPlan>, Status> {
        let caller = admitted(&request);
        let message = request.into_inner();
        may_control(caller.as_deref(), Some(&message.target_engine_version))?;
        let check = policy_check(caller);
        let plan = self
            .rollouts
            .plan(
                &message.selector.unwrap_or_default(),
                &message.target_engine_version,
                &check,
            )
            .await
            .map_err(Status::from)?;
        Ok(Response::new(plan))
    }

    async fn start_rollout(
        &self,
        request: Request<pb::StartRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let caller = admitted(&request);
        let message = request.into_inner();
        may_control(caller.as_deref(), Some(&message.target_engine_version))?;
        let who = name(caller.as_deref()).to_string();
        let check = policy_check(caller);
        let rollout = self
            .rollouts
            .start(message, &who, &check)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(rollout))
    }

    async fn get_rollout(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let caller = admitted(&request);
        let (_, rollout) = self
            .rollouts
            .get(&request.get_ref().rollout_id)
            .await
            .map_err(Status::from)?;
        may_read(caller.as_deref(), &rollout)?;
        Ok(Response::new(rollout))
    }

    async fn list_rollouts(
        &self,
        request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        let caller = admitted(&request);
        let state = request.get_ref().state();
        let rollouts = self
            .rollouts
            .list()
            .await
            .map_err(Status::from)?
            .into_iter()
            .filter(|r| state == pb::RolloutState::Unspecified || r.state() == state)
            .filter(|r| may_read(caller.as_deref(), r).is_ok())
            .collect();
        Ok(Response::new(pb::ListRolloutsResponse { rollouts }))
    }

    type WatchRolloutStream = WatchStream;

    async fn watch_rollout(
        &self,
        request: Request<pb::WatchRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        let deadline = deadline::effective(request.extensions().get(), self.watch_limit);
        let caller = admitted(&request);
        let id = request.into_inner().rollout_id;
        let (_, rollout) = self.rollouts.get(&id).await.map_err(Status::from)?;
        may_read(caller.as_deref(), &rollout)?;
        let changes = self.rollouts.watch(id, deadline);
        let stream = tokio_stream::wrappers::ReceiverStream::new(changes)
            .map(|change| change.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn pause_rollout(
        &self,
        request: Request<pb::RolloutControlRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let m = request.get_ref().clone();
        self.control(&request, &m.rollout_id, Action::Pause, None, &m.comment)
            .await
    }

    async fn resume_rollout(
        &self,
        request: Request<pb::RolloutControlRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let m = request.get_ref().clone();
        self.control(&request, &m.rollout_id, Action::Resume, None, &m.comment)
            .await
    }

    async fn cancel_rollout(
        &self,
        request: Request<pb::RolloutControlRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let m = request.get_ref().clone();
        self.control(&request, &m.rollout_id, Action::Cancel, None, &m.comment)
            .await
    }

    async fn approve_rollout(
        &self,
        request: Request<pb::RolloutControlRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let m = request.get_ref().clone();
        self.control(&request, &m.rollout_id, Action::Approve, None, &m.comment)
            .await
    }

    async fn retry_rollout_instance(
        &self,
        request: Request<pb::RolloutInstanceRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let m = request.get_ref().clone();
        self.control(
            &request,
            &m.rollout_id,
            Action::Retry,
            Some(&m.db_instance_id),
            &m.comment,
        )
        .await
    }

    async fn skip_rollout_instance(
        &self,
        request: Request<pb::RolloutInstanceRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let m = request.get_ref().clone();
        self.control(
            &request,
            &m.rollout_id,
            Action::Skip,
            Some(&m.db_instance_id),
            &m.comment,
        )
        .await
    }
}
