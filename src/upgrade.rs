//! One intended upgrade, carried out at most once: idempotency ▸ preflight ▸ upgrade ▸
//! reconcile.
//!
//! The work runs in its own task, so a caller that goes away (or whose deadline passes) never
//! cuts an upgrade call in half: the task finishes, and records the true outcome under the
//! request's key for the caller's retry. It never *starts* an upgrade after the caller's deadline.
//!
//! `UpgradeDBInstanceEngineVersion` is retried only when Alibaba surely did not act on it (see
//! [`retry`](crate::alibaba::retry)). When the outcome is unknown (no answer, a 5xx, an
//! unreadable success), the gateway looks at the instance instead of sending again: upgrading or
//! already on the target means accepted (RequestId unknown); anything else is UNAVAILABLE with
//! what it saw, and the key is marked unresolved so that a retry looks again first. Within
//! `idempotency.settle_window` of that send a retry only looks (Alibaba's view can lag its own
//! action); after it, the key may send again.
//!
//! One upgrade per instance is in flight at a time: the claim takes the instance's upgrade lock,
//! and a second upgrade of the instance (any key, or none) is refused at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::instrument::{Instrument as _, WithSubscriber as _};

use crate::alibaba::retry::{self, Effect, RetryPolicy};
use crate::alibaba::{AlibabaClient, CallError, InstanceAttribute, action};
use crate::error::Error;
use crate::idempotency::{Claimed, Fingerprint, Idempotency, Key, Lease, Settlement};
use crate::pb;
use crate::preflight;
use crate::validation::{SwitchMode, ValidUpgradeRequest};

/// An accepted upgrade (or a passed validation), as first answered.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub response: pb::UpgradeEngineVersionResponse,
    /// The gateway did not get Alibaba's answer but saw the upgrade under way, so the
    /// `RequestId` is unknown.
    pub reconciled: bool,
}

/// An answer and where it came from.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub accepted: Accepted,
    /// Replayed from the idempotency store: this call did nothing upstream.
    pub replayed: bool,
}

/// How upgrades are carried out.
#[derive(Debug, Clone)]
pub struct UpgradeSettings {
    /// Check the instance before upgrading (and for `validate_only`).
    pub preflight: bool,
    pub retry: RetryPolicy,
    /// How long after a send with an unknown outcome a retry with its key only looks.
    pub settle_window: Duration,
}

/// Carries out upgrades for the service.
#[derive(Debug, Clone)]
pub struct Upgrader {
    client: Arc<AlibabaClient>,
    settings: UpgradeSettings,
    idempotency: Idempotency,
}

impl Upgrader {
    pub fn new(
        client: Arc<AlibabaClient>,
        settings: UpgradeSettings,
        idempotency: Idempotency,
    ) -> Self {
        Self {
            client,
            settings,
            idempotency,
        }
    }

    /// Validates or upgrades as `request` asks, within `deadline`. `caller` scopes the request's
    /// idempotency key.
    pub async fn run(
        &self,
        request: ValidUpgradeRequest,
        caller: &str,
        deadline: Instant,
    ) -> Result<Outcome, Error> {
        let fresh = |accepted| Outcome {
            accepted,
            replayed: false,
        };
        if request.validate_only() {
            // Nothing changes, so there is nothing to deduplicate.
            return self.validate(&request, deadline).await.map(fresh);
        }
        let key = request.request_id().map(|id| Key::new(caller, id));
        let fingerprint = Fingerprint::of(&request);
        let instance = format!("{}/{}", request.region_id(), request.db_instance_id());
        let claim = self.idempotency.claim(key, &fingerprint, instance);
        match tokio::time::timeout_at(deadline, claim)
            .await
            .map_err(|_| Error::DeadlineExceeded)??
        {
            Claimed::Replay(accepted) => Ok(Outcome {
                accepted,
                replayed: true,
            }),
            Claimed::Conflict => Err(Error::RequestIdReused),
            Claimed::InstanceBusy => Err(Error::UpgradeInProgress),
            Claimed::Owner(lease) => self.spawn(request, deadline, lease).await.map(fresh),
        }
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

    /// Runs the upgrade in its own task and waits for it until `deadline`.
    async fn spawn(
        &self,
        request: ValidUpgradeRequest,
        deadline: Instant,
        lease: Lease,
    ) -> Result<Accepted, Error> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let this = self.clone();
        tokio::spawn(
            async move {
                let result = this.upgrade(&request, deadline, &lease).await;
                lease
                    .settle(match &result {
                        Ok(accepted) => Settlement::Accepted(accepted.clone()),
                        Err(
                            Error::OutcomeUnknown { .. }
                            | Error::ScheduledOutcomeUnknown { .. }
                            | Error::Settling { .. },
                        ) => Settlement::Unresolved,
                        Err(_) => Settlement::NotApplied,
                    })
                    .await;
                let _ = answer.send(result);
            }
            // The upgrade's spans belong to the call's trace, and to the call's gateway.
            .in_current_span()
            .with_current_subscriber(),
        );
        match tokio::time::timeout_at(deadline, answered).await {
            Ok(Ok(result)) => result,
            // The task ended without answering (a panic): its lease settled as unresolved.
            Ok(Err(_)) => Err(Error::OutcomeUnknown {
                cause: CallError::OutcomeUnknown("the upgrade task ended unexpectedly".into()),
                observed: None,
            }),
            Err(_) => Err(Error::DeadlineExceeded),
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
    ) -> Result<Accepted, Error> {
        let target = request.engine_version();
        let unresolved_for = lease.unresolved_for();
        let look_first = unresolved_for.is_some();
        let settling = unresolved_for.filter(|&ago| ago < self.settings.settle_window);
        let before = async {
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
        let previous = match tokio::time::timeout_at(deadline, before)
            .await
            .map_err(|_| Error::DeadlineExceeded)??
        {
            Ok(previous) => previous,
            Err(already) => return Ok(already),
        };
        // `timeout_at` lets a look that finished late through, and with nothing to look up the
        // deadline may have passed before this task ran: the send is the point of no return.
        if Instant::now() >= deadline {
            return Err(Error::DeadlineExceeded);
        }
        // Written before the request leaves: if this replica dies now, the next holder of the
        // key knows an upgrade may have been sent.
        lease.about_to_send().await?;

        let client = &self.client;
        let sent = retry::retry(
            &self.settings.retry,
            Effect::Change,
            deadline,
            action::UPGRADE_DB_INSTANCE_ENGINE_VERSION,
            || {
                client.upgrade_db_instance_engine_version(
                    request.region_id(),
                    request.db_instance_id(),
                    target,
                    request.switch_mode().map(|m| m.as_param()),
                )
            },
        )
        .await;
        match sent {
            Ok(alibaba_request_id) => Ok(accepted(request, alibaba_request_id, previous, false)),
            Err(err) if outcome_unknown(&err) => {
                self.reconcile(request, err, previous, deadline).await
            }
            Err(err) => Err(err.into()),
        }
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
        let observed: Option<InstanceAttribute> = retry::retry(
            &self.settings.retry,
            Effect::Read,
            deadline,
            action::DESCRIBE_DB_INSTANCE_ATTRIBUTE,
            || {
                self.client
                    .describe_db_instance_attribute(request.region_id(), request.db_instance_id())
            },
        )
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
            &self.client,
            &self.settings.retry,
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
            &self.client,
            &self.settings.retry,
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

/// Whether Alibaba may have acted on an upgrade call that failed this way: no answer, a server
/// error, or a success the gateway could not read.
fn outcome_unknown(err: &CallError) -> bool {
    match err {
        CallError::OutcomeUnknown(_) => true,
        CallError::Upstream(e) => e.http_status >= 500,
        CallError::Unreadable { http_status } => {
            (200..300).contains(http_status) || *http_status >= 500
        }
        CallError::Unreachable(_) | CallError::Credentials(_) | CallError::Unsupported(_) => false,
    }
}

/// Whether the upgrade waits for the maintenance window. Until then the instance stays `Running`
/// on its version whether Alibaba scheduled the upgrade or not, so no look can resolve an
/// unknown outcome, and an unresolved key is never sent again.
fn scheduled(request: &ValidUpgradeRequest) -> bool {
    request.switch_mode() == Some(SwitchMode::MaintenanceWindow)
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
