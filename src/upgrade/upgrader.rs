//! One intended upgrade, carried out at most once: idempotency ▸ preflight ▸ upgrade ▸
//! reconcile.
//!
//! The work runs in its own task, so a caller that goes away (or whose deadline passes) never
//! cuts an upgrade call in half: the task finishes, records the true outcome under the request's
//! key for the caller's retry, and writes the audit event: whoever learns an outcome audits it.
//! Each attempt is signed first (the credential may take seconds to fetch), then passes
//! `Upgrader::point_of_no_return` immediately before it leaves: the caller's deadline has not
//! passed, and the audit trail holds a `sending` event for it.
//!
//! `UpgradeDBInstanceEngineVersion` is retried only when Alibaba surely did not act on it (see
//! [`codes`](crate::alibaba::codes)). When the outcome is unknown (no answer, a 5xx, an
//! unreadable success), the gateway looks at the instance instead of sending again: upgrading or
//! already on the target means accepted (RequestId unknown); anything else is UNAVAILABLE with
//! what it saw, and the key is marked unresolved so that a retry looks again first. Within
//! `idempotency.settle_window` of that send a retry only looks (Alibaba's view can lag its own
//! action); after it, the key may send again.
//!
//! One upgrade per instance is in flight at a time: the claim takes the instance's upgrade lock,
//! and a second upgrade of the instance (any key, or none) is refused at once.

use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;
use tracing::instrument::{Instrument as _, WithSubscriber as _};

use crate::alibaba::{Alibaba, CallError, InstanceAttribute, action};
use crate::audit::{self, Audit, AuditEvent};
use crate::pb;
use crate::state::store::{Accepted, Key, Settlement};
use crate::upgrade::error::Error;
use crate::upgrade::idempotency::{self, Claimed, Idempotency, Lease};
use crate::upgrade::preflight;
use crate::upgrade::validation::{SwitchMode, ValidUpgradeRequest};

/// An answer and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub accepted: Accepted,
    /// Replayed from the idempotency store: this call did nothing upstream.
    pub replayed: bool,
}

/// A failed request as it is logged, audited and answered.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub status: Status,
    /// What went wrong, for the log line (never sent to the caller as is).
    pub detail: String,
    pub alibaba_code: String,
    pub alibaba_request_id: String,
}

/// How upgrades are carried out.
#[derive(Debug, Clone)]
pub(crate) struct UpgradeSettings {
    /// Check the instance before upgrading (and for `validate_only`).
    pub preflight: bool,
    /// How long after a send with an unknown outcome a retry with its key only looks.
    pub settle_window: Duration,
}

/// Carries out upgrades for the service.
#[derive(Debug, Clone)]
pub(crate) struct Upgrader {
    alibaba: Alibaba,
    settings: UpgradeSettings,
    idempotency: Idempotency,
    audit: Audit,
    open: OpenUpgrades,
}

/// The upgrade tasks still running, whether or not their caller is still there: shutdown waits
/// for them, and audits those it cannot wait for as `abandoned`.
#[derive(Debug, Clone, Default)]
pub struct OpenUpgrades {
    inner: std::sync::Arc<OpenInner>,
}

#[derive(Debug, Default)]
struct OpenInner {
    tasks: std::sync::Mutex<std::collections::HashMap<u64, AuditEvent>>,
    next: std::sync::atomic::AtomicU64,
    ended: tokio::sync::Notify,
}

/// One open upgrade; ended when dropped (its task finished, or was dropped with the runtime).
struct Open {
    inner: std::sync::Arc<OpenInner>,
    id: u64,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.inner.tasks().remove(&self.id);
        self.inner.ended.notify_waiters();
    }
}

impl OpenInner {
    fn tasks(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, AuditEvent>> {
        // Plain data: a panic elsewhere leaves it usable.
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl OpenUpgrades {
    fn open(&self, event: &AuditEvent) -> Open {
        let id = self
            .inner
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.tasks().insert(id, event.clone());
        Open {
            inner: std::sync::Arc::clone(&self.inner),
            id,
        }
    }

    /// How many are running.
    pub fn len(&self) -> usize {
        self.inner.tasks().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until every open upgrade has ended, or `deadline`; then audits those still open as
    /// `abandoned` and names each in a WARN line. Returns how many were abandoned.
    pub async fn finish(&self, deadline: Instant, audit: &Audit) -> usize {
        loop {
            let ended = self.inner.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.is_empty() {
                return 0;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                break;
            }
        }
        let open: Vec<AuditEvent> = self.inner.tasks().values().cloned().collect();
        for mut event in open.iter().cloned() {
            tracing::warn!(
                db_instance_id = %event.db_instance_id,
                region_id = %event.region_id,
                caller = %event.caller,
                request_id = %event.request_id,
                "shutdown grace over with this upgrade still open: abandoned, its outcome unknown"
            );
            event.time = audit::now();
            event.outcome = "abandoned";
            event.grpc_code = "UNKNOWN";
            let _ = audit.record(event).await;
        }
        open.len()
    }
}

impl Upgrader {
    pub(crate) fn new(
        alibaba: Alibaba,
        settings: UpgradeSettings,
        idempotency: Idempotency,
        audit: Audit,
    ) -> Self {
        Self {
            alibaba,
            settings,
            idempotency,
            audit,
            open: OpenUpgrades::default(),
        }
    }

    /// The upgrade tasks still running.
    pub(crate) fn open_upgrades(&self) -> OpenUpgrades {
        self.open.clone()
    }

    /// Where upgrade attempts are recorded.
    pub(crate) fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Records upgrade attempts in `audit`.
    pub(crate) fn set_audit(&mut self, audit: Audit) {
        self.audit = audit;
    }

    /// Validates or upgrades as `request` asks, within `deadline`, and audits the outcome as
    /// `event` (whose outcome fields are filled in here). `caller` scopes the request's
    /// idempotency key.
    pub(crate) async fn run(
        &self,
        request: ValidUpgradeRequest,
        caller: &str,
        deadline: Instant,
        event: AuditEvent,
    ) -> Result<Outcome, Status> {
        if request.validate_only() {
            // Nothing changes, so there is nothing to deduplicate.
            // Boxed, like the other paths with a read to Alibaba below: a future is as large as
            // its largest path, and every call in flight or in line holds one.
            let validated = Box::pin(self.validate(&request, deadline)).await.map(fresh);
            return self.conclude(event, validated).await;
        }
        let key = request.request_id().map(|id| Key::new(caller, id));
        let fingerprint = idempotency::fingerprint(&request);
        let instance = format!("{}/{}", request.region_id(), request.db_instance_id());
        let claim = self.idempotency.claim(key, &fingerprint, instance);
        let claimed = match tokio::time::timeout_at(deadline, claim).await {
            Ok(Ok(claimed)) => claimed,
            Ok(Err(err)) => return self.conclude(event, Err(err.into())).await,
            Err(_) => return self.conclude(event, Err(Error::DeadlineExceeded)).await,
        };
        match claimed {
            Claimed::Replay(accepted) => {
                let replayed = Outcome {
                    accepted,
                    replayed: true,
                };
                self.conclude(event, Ok(replayed)).await
            }
            Claimed::Conflict => self.conclude(event, Err(Error::RequestIdReused)).await,
            Claimed::InstanceBusy => self.conclude(event, Err(Error::UpgradeInProgress)).await,
            Claimed::Owner(lease) => self.spawn(request, deadline, lease, event).await,
        }
    }

    /// Logs and audits what came of a request (on disk before the answer, see `audit`), and
    /// turns it into the answer. Called by whoever learns the outcome: for an upgrade, its task,
    /// so an upgrade that ends after its caller left is audited all the same.
    async fn conclude(
        &self,
        mut event: AuditEvent,
        result: Result<Outcome, Error>,
    ) -> Result<Outcome, Status> {
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(err) => return Err(self.refuse(event, err).await),
        };
        let answer = &outcome.accepted.response;
        tracing::debug!(
            caller = %event.caller,
            db_instance_id = %answer.db_instance_id,
            engine_version = %answer.engine_version,
            previous_engine_version = %answer.previous_engine_version,
            validate_only = answer.validate_only,
            alibaba_request_id = %answer.alibaba_request_id,
            reconciled = outcome.accepted.reconciled,
            replayed = outcome.replayed,
            "upgrade accepted"
        );
        event.time = audit::now();
        event
            .from_version
            .clone_from(&answer.previous_engine_version);
        event
            .alibaba_request_id
            .clone_from(&answer.alibaba_request_id);
        event.outcome = if answer.validate_only {
            "validated"
        } else if outcome.replayed {
            "replayed"
        } else if outcome.accepted.reconciled {
            "reconciled"
        } else {
            "accepted"
        };
        event.grpc_code = "OK";
        // A failed write cannot undo the upgrade, so the caller still hears the truth.
        let _ = self.audit.record(event).await;
        Ok(outcome)
    }

    /// A request that failed, or was refused before it reached [`run`](Self::run) (validation):
    /// logged, audited as `event`, and answered.
    pub(crate) async fn refuse(&self, event: AuditEvent, err: Error) -> Status {
        let refusal = Refusal {
            alibaba_code: err.alibaba_code().unwrap_or_default().to_string(),
            alibaba_request_id: err.alibaba_request_id().unwrap_or_default().to_string(),
            detail: err.to_string(),
            // The code logged is the one the caller gets: the status is decided once.
            status: Status::from(err),
        };
        self.record_refusal(event, refusal).await
    }

    /// A refusal decided elsewhere (the caller's policy): logged, audited as `event`, and
    /// answered with its status.
    pub(crate) async fn record_refusal(&self, mut event: AuditEvent, refusal: Refusal) -> Status {
        let Refusal {
            status,
            detail,
            alibaba_code,
            alibaba_request_id,
        } = refusal;
        event.time = audit::now();
        event.alibaba_request_id = alibaba_request_id;
        event.grpc_code = crate::telemetry::rpc::code_name(status.code());
        // A caller's invalid request is its own business (info); anything else is ours (warn).
        macro_rules! failed {
            ($level:ident) => {
                tracing::$level!(
                    caller = %event.caller,
                    db_instance_id = %event.db_instance_id,
                    engine_version = %event.to_version,
                    region_id = %event.region_id,
                    grpc_code = event.grpc_code,
                    alibaba_code = %alibaba_code,
                    error = %detail,
                    "upgrade failed"
                )
            };
        }
        if crate::telemetry::rpc::callers_mistake(status.code()) {
            failed!(info);
        } else {
            failed!(warn);
        }
        event.outcome = "failed";
        event.alibaba_code = alibaba_code;
        let _ = self.audit.record(event).await;
        status
    }

    /// `validate_only`: the preflight result is the answer.
    async fn validate(
        &self,
        request: &ValidUpgradeRequest,
        deadline: Instant,
    ) -> Result<Accepted, Error> {
        let previous = if self.settings.preflight {
            let checked = async {
                let attribute = self.describe(request, deadline).await?;
                self.check(request, &attribute, deadline).await?;
                Ok::<_, Error>(attribute.engine_version)
            };
            tokio::time::timeout_at(deadline, checked)
                .await
                .map_err(|_| Error::DeadlineExceeded)??
        } else {
            String::new()
        };
        Ok(accepted(request, String::new(), previous, false))
    }

    /// Runs the upgrade in its own task, which settles the key and audits the outcome, and
    /// waits for it until `deadline`.
    async fn spawn(
        &self,
        request: ValidUpgradeRequest,
        deadline: Instant,
        lease: Lease,
        event: AuditEvent,
    ) -> Result<Outcome, Status> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let db_instance_id = event.db_instance_id.clone();
        let this = self.clone();
        let open = self.open.open(&event);
        tokio::spawn(
            async move {
                let _open = open;
                let result = this.upgrade(&request, deadline, &lease, &event).await;
                let settlement = match &result {
                    Ok(accepted) => Settlement::Accepted(accepted.clone()),
                    Err(
                        Error::OutcomeUnknown { .. }
                        | Error::ScheduledOutcomeUnknown { .. }
                        | Error::Settling { .. },
                    ) => Settlement::Unresolved,
                    Err(_) => Settlement::NotApplied,
                };
                // Audited before the key settles, so a duplicate's replay follows it in the file.
                let concluded = this.conclude(event, result.map(fresh)).await;
                lease.settle(settlement).await;
                let _ = answer.send(concluded);
            }
            // The upgrade's spans belong to the call's trace, and to the call's gateway.
            .in_current_span()
            .with_current_subscriber(),
        );
        match tokio::time::timeout_at(deadline, answered).await {
            Ok(Ok(concluded)) => concluded,
            // The task ended without answering (a panic): its lease settled as unresolved.
            Ok(Err(_)) => Err(Status::from(Error::OutcomeUnknown {
                cause: CallError::OutcomeUnknown("the upgrade task ended unexpectedly".into()),
                observed: None,
            })),
            Err(_) => {
                tracing::info!(
                    %db_instance_id,
                    "the caller's deadline passed with the upgrade under way; its task audits the outcome"
                );
                Err(Status::from(Error::DeadlineExceeded))
            }
        }
    }

    /// Preflight, upgrade, reconcile. When an earlier attempt with this key left the outcome
    /// unknown, an upgrade already under way is this request's, and within the settle window
    /// of that attempt nothing is sent.
    async fn upgrade(
        &self,
        request: &ValidUpgradeRequest,
        deadline: Instant,
        lease: &Lease,
        event: &AuditEvent,
    ) -> Result<Accepted, Error> {
        let target = request.engine_version();
        let unresolved_for = lease.unresolved_for();
        let look_first = unresolved_for.is_some();
        let settling = unresolved_for.filter(|&ago| ago < self.settings.settle_window);
        // Another key's (or a keyless) send on this instance whose outcome is still unknown:
        // another upgrade may be under way, and this one waits until the window ends.
        let instance_settling = lease
            .instance_unresolved_for()
            .filter(|&ago| !look_first && ago < self.settings.settle_window);
        let before = async {
            if let Some(ago) = instance_settling {
                tracing::warn!(
                    db_instance_id = request.db_instance_id(),
                    ago = ?ago,
                    "an earlier upgrade of this instance may have been sent and its outcome is unknown; not sending"
                );
                return Err(Error::UpgradeInProgress);
            }
            let attribute = if self.settings.preflight || look_first {
                Some(self.describe(request, deadline).await?)
            } else {
                None
            };
            if look_first
                && let Some(attribute) = &attribute
                && preflight::shows_upgrade(attribute, target)
            {
                tracing::info!(
                    db_instance_id = request.db_instance_id(),
                    status = %attribute.status,
                    engine_version = %attribute.engine_version,
                    "an earlier attempt with this request_id upgraded the instance; not sending again"
                );
                return Ok(Err(accepted(request, String::new(), String::new(), true)));
            }
            if look_first && scheduled(request) {
                return Err(Error::ScheduledOutcomeUnknown {
                    observed: attribute,
                });
            }
            if let Some(ago) = settling {
                return Err(Error::Settling {
                    observed: attribute,
                    retry_after: (self.settings.settle_window - ago).min(SETTLING_RETRY_DELAY),
                });
            }
            if self.settings.preflight
                && let Some(attribute) = &attribute
            {
                self.check(request, attribute, deadline).await?;
            }
            Ok::<_, Error>(Ok(attribute.map(|a| a.engine_version).unwrap_or_default()))
        };
        let previous = match tokio::time::timeout_at(deadline, Box::pin(before))
            .await
            .map_err(|_| Error::DeadlineExceeded)??
        {
            Ok(previous) => previous,
            Err(already) => return Ok(already),
        };
        let sending = AuditEvent {
            from_version: previous.clone(),
            outcome: "sending",
            ..event.clone()
        };
        let client = self.alibaba.client();
        let sent = self
            .alibaba
            .change(
                deadline,
                action::UPGRADE_DB_INSTANCE_ENGINE_VERSION,
                || async {
                    let signed = client
                        .sign_upgrade(
                            request.region_id(),
                            request.db_instance_id(),
                            target,
                            request.switch_mode().map(|m| m.as_param()),
                        )
                        .await?;
                    self.point_of_no_return(&sending, deadline, lease).await?;
                    let (sent, place) = client.send_upgrade_keeping_place(signed).await;
                    // An accepted upgrade settles next: its place goes back with the settlement.
                    // Any other answer gives it back now, since a reconciliation or a retry
                    // takes places of its own.
                    if sent.is_ok()
                        && let Some(place) = place
                    {
                        lease.keep_place(place);
                    }
                    sent.map_err(Error::Call)
                },
            )
            .await;
        match sent {
            Ok(alibaba_request_id) => Ok(accepted(request, alibaba_request_id, previous, false)),
            Err(Error::Call(err)) if outcome_unknown(&err) => {
                Box::pin(self.reconcile(request, err, previous, deadline)).await
            }
            Err(err) => Err(err),
        }
    }

    /// The last step before an upgrade request leaves, once per attempt, after it is signed
    /// (fetching the credential can take seconds): the caller's deadline has not passed, and the
    /// `sending` event is on disk (fail closed: no upgrade leaves that the audit trail does not
    /// hold), and the state store records that this key's upgrade is about to be sent (so that
    /// if this replica dies now, the key's next holder knows it may have been). Nothing after
    /// this step can stop the send.
    async fn point_of_no_return(
        &self,
        sending: &AuditEvent,
        deadline: Instant,
        lease: &Lease,
    ) -> Result<(), Error> {
        if Instant::now() >= deadline {
            return Err(Error::DeadlineExceeded);
        }
        let mut event = sending.clone();
        event.time = audit::now();
        self.audit.record(event).await?;
        // The write (an fsync) may have been slow.
        if Instant::now() >= deadline {
            return Err(Error::DeadlineExceeded);
        }
        lease.about_to_send().await?;
        Ok(())
    }

    /// After an upgrade call with an unknown outcome: looks at the instance, never sends again.
    async fn reconcile(
        &self,
        request: &ValidUpgradeRequest,
        cause: CallError,
        previous: String,
        deadline: Instant,
    ) -> Result<Accepted, Error> {
        tracing::warn!(
            db_instance_id = request.db_instance_id(),
            error = %cause,
            "upgrade outcome unknown; looking at the instance"
        );
        // One look even when the caller's deadline has passed: the key's record depends on it.
        let observed: Option<InstanceAttribute> = self
            .alibaba
            .describe_db_instance_attribute(request.region_id(), request.db_instance_id(), deadline)
            .await
            .ok()
            .flatten();
        match observed {
            Some(attribute) if preflight::shows_upgrade(&attribute, request.engine_version()) => {
                Ok(accepted(request, String::new(), previous, true))
            }
            observed if scheduled(request) => Err(Error::ScheduledOutcomeUnknown { observed }),
            observed => Err(Error::OutcomeUnknown { cause, observed }),
        }
    }

    async fn describe(
        &self,
        request: &ValidUpgradeRequest,
        deadline: Instant,
    ) -> Result<InstanceAttribute, Error> {
        preflight::describe(
            &self.alibaba,
            request.region_id(),
            request.db_instance_id(),
            deadline,
        )
        .await
    }

    async fn check(
        &self,
        request: &ValidUpgradeRequest,
        attribute: &InstanceAttribute,
        deadline: Instant,
    ) -> Result<(), Error> {
        preflight::check(
            &self.alibaba,
            attribute,
            request.region_id(),
            request.engine_version(),
            deadline,
        )
        .await
    }
}

/// The longest a caller is told to wait before looking again within the settle window.
const SETTLING_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Whether Alibaba may have acted on an upgrade call that failed this way (no answer, a server
/// error, a success the gateway could not read): [`codes`](crate::alibaba::codes) decides.
fn outcome_unknown(err: &CallError) -> bool {
    crate::alibaba::codes::classify(err).outcome_unknown()
}

/// Whether the upgrade waits for the maintenance window. Until then the instance stays `Running`
/// on its version whether Alibaba scheduled the upgrade or not, so no look can resolve an
/// unknown outcome, and an unresolved key is never sent again.
fn scheduled(request: &ValidUpgradeRequest) -> bool {
    request.switch_mode() == Some(SwitchMode::MaintenanceWindow)
}

fn fresh(accepted: Accepted) -> Outcome {
    Outcome {
        accepted,
        replayed: false,
    }
}

fn accepted(
    request: &ValidUpgradeRequest,
    alibaba_request_id: String,
    previous_engine_version: String,
    reconciled: bool,
) -> Accepted {
    Accepted {
        response: pb::UpgradeEngineVersionResponse {
            alibaba_request_id,
            db_instance_id: request.db_instance_id().to_string(),
            engine_version: request.engine_version().to_string(),
            previous_engine_version,
            validate_only: request.validate_only(),
        },
        reconciled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_alibaba_may_have_acted_on_count_as_unknown() {
        let upstream = |code: &str, http_status| {
            CallError::Upstream(crate::alibaba::UpstreamError {
                http_status,
                code: code.into(),
                message: String::new(),
                request_id: None,
                host_id: None,
                recommend: None,
                retry_after: None,
            })
        };
        assert!(outcome_unknown(&CallError::OutcomeUnknown("reset".into())));
        assert!(outcome_unknown(&upstream("ServiceUnavailable", 503)));
        assert!(outcome_unknown(&upstream("InternalError", 500)));
        assert!(outcome_unknown(&CallError::Unreadable { http_status: 200 }));
        assert!(outcome_unknown(&CallError::Unreadable { http_status: 502 }));
        assert!(!outcome_unknown(&CallError::Unreadable {
            http_status: 400
        }));
        assert!(!outcome_unknown(&upstream("Throttling", 400)));
        assert!(!outcome_unknown(&upstream("IncorrectDBInstanceState", 400)));
        assert!(!outcome_unknown(&CallError::Unreachable("refused".into())));
    }
}
