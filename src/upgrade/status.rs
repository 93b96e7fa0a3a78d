//! Upgrade status for callers: `GetEngineVersion` (the instance's version, state and offered
//! targets) and `WatchUpgrade` (a stream of state changes until the instance is `Running` on the
//! target or past it, the caller's deadline passes, or the caller goes away). Both read through
//! `DescribeDBInstanceAttribute` / `DescribeAvailableEngineVersion`, retried as reads.

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::instrument::{Instrument as _, WithSubscriber as _};

use crate::alibaba::Alibaba;
use crate::config::WatchConfig;
use crate::limits::InFlight;
use crate::pb;
use crate::upgrade::error::Error;
use crate::upgrade::instance::{self, PreflightFailure};
use crate::upgrade::poller::Poller;
use crate::upgrade::preflight;
use crate::upgrade::validation::InstanceRef;

/// The stream `WatchUpgrade` answers with.
pub(crate) type WatchStream = ReceiverStream<Result<pb::WatchUpgradeResponse, Status>>;

/// Reads instance status for callers.
#[derive(Debug, Clone)]
pub struct StatusReader {
    alibaba: Alibaba,
    /// The polls of the instances watched, shared by their watchers (and the rollout engine).
    poller: Poller,
    /// A place per running watch (`watch.max_active`), held by its polling task.
    watches: InFlight,
}

impl StatusReader {
    pub fn new(alibaba: Alibaba, watch: &WatchConfig) -> Self {
        Self {
            poller: Poller::new(alibaba.clone(), watch.poll_interval),
            alibaba,
            watches: InFlight::new(watch.max_active, watch.max_active_per_caller),
        }
    }

    /// Watches running now (each holds a task that follows its instance's shared poll).
    pub fn active_watches(&self) -> usize {
        self.watches.in_use()
    }

    /// The polls watches follow, to share with other followers of instances.
    pub fn poller(&self) -> &Poller {
        &self.poller
    }

    /// `GetEngineVersion`.
    pub async fn get(
        &self,
        instance: &InstanceRef,
        deadline: Instant,
    ) -> Result<pb::GetEngineVersionResponse, Error> {
        let read = async {
            let attribute = preflight::describe(
                &self.alibaba,
                &instance.region_id,
                &instance.db_instance_id,
                deadline,
            )
            .await?;
            let offered = preflight::offered_versions(
                &self.alibaba,
                &instance.region_id,
                &instance.db_instance_id,
                deadline,
            )
            .await?;
            Ok(pb::GetEngineVersionResponse {
                db_instance_id: attribute.db_instance_id,
                region_id: instance.region_id.clone(),
                engine_version: attribute.engine_version,
                status: attribute.status,
                available_engine_versions: offered.versions,
            })
        };
        tokio::time::timeout_at(deadline, read)
            .await
            .map_err(|_| Error::DeadlineExceeded)?
    }

    /// `WatchUpgrade`: a task follows the instance's shared poll (one read every
    /// `poll_interval` whatever the number of watchers) and sends each change; a watcher that
    /// joins a running poll starts from its latest look.
    /// It stops when the instance is `Running` on `target` (last message `done`), `Running` on a
    /// later version (ending the stream with ENGINE_VERSION_NOT_LATER), at `deadline` (ending it
    /// with DEADLINE_EXCEEDED), on a failed read (ending it with that error), or as soon as the
    /// caller drops the stream. At `connection_end` (before `deadline`) it ends with
    /// UNAVAILABLE / CONNECTION_AGED, for the caller to resume on a new connection. `None` at once
    /// when `watch.max_active` watches are running, or `caller` runs
    /// `watch.max_active_per_caller` of them.
    pub fn watch(
        &self,
        instance: InstanceRef,
        target: String,
        deadline: Instant,
        connection_end: Option<Instant>,
        caller: Option<&str>,
    ) -> Option<WatchStream> {
        let place = match self.watches.try_enter(caller) {
            Ok(place) => place,
            Err(full) => {
                if full == crate::limits::Full::Caller {
                    tracing::warn!(
                        caller = caller.unwrap_or_default(),
                        "the caller runs its whole share of the watches (watch.max_active_per_caller)"
                    );
                }
                return None;
            }
        };
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            // Given back when the task ends, however it ends.
            let _place = place;
            tokio::select! {
                () = this.follow(&tx, &instance, &target, deadline, connection_end) => {}
                () = tx.closed() => {
                    tracing::debug!(db_instance_id = %instance.db_instance_id, "watch ended: the caller went away");
                }
            }
        }
        // The polls' spans belong to the call's trace, and to the call's gateway.
        .in_current_span()
        .with_current_subscriber());
        Some(ReceiverStream::new(rx))
    }

    /// Follows the shared poll of `instance` for one watcher, sending each change it sees.
    async fn follow(
        &self,
        tx: &mpsc::Sender<Result<pb::WatchUpgradeResponse, Status>>,
        instance: &InstanceRef,
        target: &str,
        deadline: Instant,
        connection_end: Option<Instant>,
    ) {
        // Where this stream stops: the watch's deadline, or its connection's end if sooner.
        let aged = connection_end.filter(|end| *end < deadline);
        let stop = aged.unwrap_or(deadline);
        let mut looks = self
            .poller
            .follow(&instance.region_id, &instance.db_instance_id);
        let mut last: Option<(String, String)> = None;
        loop {
            let look = looks.borrow_and_update().clone();
            if let Some(look) = look {
                let attribute = match look {
                    Ok(attribute) => attribute,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let running = attribute.status == instance::RUNNING;
                let done = running && attribute.engine_version == target;
                // Past the target it will never run the target: say so rather than poll on
                // until the deadline (an hour by default).
                let passed = (running
                    && instance::version_key(&attribute.engine_version)
                        > instance::version_key(target))
                .then(|| PreflightFailure::NotLater {
                    attribute: attribute.clone(),
                    target: target.to_string(),
                });
                let seen = (attribute.status.clone(), attribute.engine_version.clone());
                if last.as_ref() != Some(&seen) {
                    let message = pb::WatchUpgradeResponse {
                        db_instance_id: attribute.db_instance_id,
                        status: attribute.status,
                        engine_version: attribute.engine_version,
                        target_engine_version: target.to_string(),
                        done,
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                    last = Some(seen);
                }
                if let Some(passed) = passed {
                    let _ = tx.send(Err(Error::from(passed).into())).await;
                    return;
                }
                if done {
                    return;
                }
            }
            tokio::select! {
                changed = looks.changed() => {
                    if changed.is_err() {
                        // The poll ends only after a failed read, which was its last value
                        // and was handled above: this is a poll task that died.
                        let _ = tx.send(Err(Status::internal("the instance's poll ended"))).await;
                        return;
                    }
                }
                () = tokio::time::sleep_until(stop) => break,
            }
        }
        let end = match aged {
            Some(_) => Error::ConnectionAged,
            None => Error::WatchDeadlineExceeded,
        };
        let _ = tx.send(Err(end.into())).await;
    }
}
