//! The account-wide budget of calls to Alibaba (`[alibaba.quota]`), per region: at most
//! `max_in_flight` calls open and `calls_per_second` started in any one second, across every
//! replica. Alibaba throttles per account (`Throttling.User`), so one fleet campaign must not
//! take the whole account's share. Every call takes a place and a rate token before it is signed
//! and gives the place back when its answer is in; a caller waits in line (first come, first
//! served on this replica) within its deadline. One whose deadline passes in line gets
//! DEADLINE_EXCEEDED; one the budget's rate cannot serve before its deadline gets
//! RESOURCE_EXHAUSTED with `RetryInfo` at once. Either way nothing was sent.
//!
//! The budget is kept by a [`QuotaStore`] (in memory for one replica, in Redis for several:
//! `state::quota`), whose places are leases that their holder renews, so a replica that dies
//! holding places frees them within one lease. If the store cannot be reached, each replica
//! keeps to its own `max_in_flight` and logs it: calls to Alibaba are not stopped by a store
//! outage. On this replica, at most `max_in_flight` calls per region ask the store at all, so
//! callers waiting in line cost neither a connection to Alibaba nor a round trip to the store.
//!
//! Follow-up polls of instances (the shared poller's reads, [`in_background`]) give way: on
//! this replica, a background call waits while any other call of its region waits for a place,
//! so polling many instances under way never crowds out the looks and sends that move an
//! upgrade or a rollout on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

tokio::task_local! {
    /// The deadline of the call being made on this task, set by the [`Alibaba`] facade around
    /// its attempts, so that a place is waited for no longer than the caller waits.
    ///
    /// [`Alibaba`]: super::Alibaba
    static DEADLINE: Instant;
}

tokio::task_local! {
    /// Set around calls that give way to every other call ([`in_background`]).
    static BACKGROUND: ();
}

/// Runs `work` with its calls in the background: each waits for a place only while no other
/// call of its region waits on this replica. A plain function, so that the future is `work`'s
/// own size, not twice it (see `trace::attempt`).
pub(crate) fn in_background<F: std::future::Future>(
    work: F,
) -> impl std::future::Future<Output = F::Output> {
    BACKGROUND.scope((), work)
}

fn is_background() -> bool {
    BACKGROUND.try_with(|()| ()).is_ok()
}

/// Runs `work` with `deadline` as the deadline of the calls it makes. A plain function, so that
/// the future is `work`'s own size, not twice it (see `trace::attempt`).
pub(crate) fn with_deadline<F: std::future::Future>(
    deadline: Instant,
    work: F,
) -> impl std::future::Future<Output = F::Output> {
    DEADLINE.scope(deadline, work)
}

/// The deadline of the calls made on this task, if the facade set one.
pub(crate) fn deadline() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// What the budget is: per region, across replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    pub calls_per_second: u32,
    pub max_in_flight: u32,
}

impl From<crate::config::QuotaConfig> for QuotaLimits {
    fn from(config: crate::config::QuotaConfig) -> Self {
        Self {
            calls_per_second: config.calls_per_second,
            max_in_flight: config.max_in_flight,
        }
    }
}

/// What the store says to one attempt to take a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The place and a rate token are the holder's until it releases them (the place until its
    /// lease ends unless renewed).
    Granted,
    /// Not now: try again after this long (when the oldest call of the last second leaves the
    /// window, or a little later when every place is taken).
    Wait(Duration),
}

/// The store could not be asked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("quota store unavailable: {0}")]
pub struct QuotaStoreError(pub String);

/// Where the budget is kept: shared by the replicas that use one store.
#[async_trait::async_trait]
pub trait QuotaStore: Send + Sync + std::fmt::Debug {
    /// Takes a place in flight and a rate token for `region` as `holder`, leased for `lease`,
    /// if `limits` allow both now.
    async fn try_acquire(
        &self,
        region: &str,
        holder: &str,
        limits: QuotaLimits,
        lease: Duration,
    ) -> Result<Grant, QuotaStoreError>;

    /// Extends `holder`'s lease on its place.
    async fn renew(
        &self,
        region: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<(), QuotaStoreError>;

    /// Gives `holder`'s place back.
    async fn release(&self, region: &str, holder: &str) -> Result<(), QuotaStoreError>;

    /// Whether the places are kept beside the state store (the same Redis, its key prefix), so
    /// that the state store may give one back in a script of its own
    /// ([`StateStore::release_with_place`](crate::state::store::StateStore::release_with_place)).
    fn beside_state_store(&self) -> bool {
        false
    }
}

/// The longest a waiting call sleeps before asking the store again when every place is taken
/// (a place comes back when a call ends, which the store cannot announce).
const POLL: Duration = Duration::from_millis(20);

/// No call may be refused its turn forever: without a caller's deadline, a call waits this long.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// Why a call did not get its place; nothing was sent either way.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NoPlace {
    /// The caller's deadline passed while the call waited in this replica's line.
    #[error("the caller's deadline passed while the call waited for a place")]
    DeadlinePassed,
    /// The account's budget has no place before the deadline.
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
}

/// The account's budget has no place before the deadline.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the account's budget of calls to Alibaba in {region} is spent until after the deadline")]
pub struct Exhausted {
    pub region: String,
    /// When a place would likely be free.
    pub retry_after: Duration,
}

/// The budget, as this replica takes from it.
#[derive(Debug)]
pub struct Quota {
    store: Arc<dyn QuotaStore>,
    limits: QuotaLimits,
    lease: Duration,
    /// Per region: this replica's line, at most `max_in_flight` calls past it.
    local: Mutex<HashMap<String, Arc<Line>>>,
}

/// A region's line on this replica.
#[derive(Debug)]
struct Line {
    places: Arc<Semaphore>,
    /// Calls (not in the background) waiting for a place now: background calls wait for none.
    waiting: tokio::sync::watch::Sender<usize>,
}

/// Counts a call among those waiting until dropped.
struct Waiting<'a>(&'a tokio::sync::watch::Sender<usize>);

impl<'a> Waiting<'a> {
    fn new(waiting: &'a tokio::sync::watch::Sender<usize>) -> Self {
        waiting.send_modify(|n| *n += 1);
        Self(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Quota {
    pub fn new(store: Arc<dyn QuotaStore>, limits: QuotaLimits, lease: Duration) -> Self {
        Self {
            store,
            limits,
            lease,
            local: Mutex::new(HashMap::new()),
        }
    }

    fn line(&self, region: &str) -> Arc<Line> {
        let mut local = self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(local.entry(region.to_string()).or_insert_with(|| {
            Arc::new(Line {
                places: Arc::new(Semaphore::new(
                    usize::try_from(self.limits.max_in_flight).unwrap_or(usize::MAX),
                )),
                waiting: tokio::sync::watch::Sender::new(0),
            })
        }))
    }

    /// Waits for a place and a rate token in `region` until the caller's `deadline` (none: a
    /// minute). A caller whose deadline passes in this replica's line is told so
    /// ([`NoPlace::DeadlinePassed`]); one that the budget's rate cannot serve in time is told
    /// when to come back ([`NoPlace::Exhausted`]).
    pub async fn acquire(
        self: &Arc<Self>,
        region: &str,
        caller_deadline: Option<Instant>,
    ) -> Result<Place, NoPlace> {
        let deadline = caller_deadline.unwrap_or_else(|| Instant::now() + DEFAULT_WAIT);
        let exhausted = |retry_after: Duration| Exhausted {
            region: region.to_string(),
            retry_after: retry_after.max(Duration::from_millis(100)),
        };
        let line = self.line(region);
        let background = is_background();
        let _waiting = (!background).then(|| Waiting::new(&line.waiting));
        // A caller's deadline passing in this replica's line gets the deadline answer; a
        // background read (no caller waiting on it) hears that the budget was busy.
        let passed_in_line = || -> NoPlace {
            if caller_deadline.is_some() && !background {
                NoPlace::DeadlinePassed
            } else {
                exhausted(POLL).into()
            }
        };
        let holder = uuid::Uuid::new_v4().to_string();
        let mut local = None;
        loop {
            let place = match local.take() {
                Some(place) => place,
                None => tokio::time::timeout_at(deadline, Arc::clone(&line.places).acquire_owned())
                    .await
                    .map_err(|_| passed_in_line())?
                    .map_err(|_| exhausted(POLL))?,
            };
            if background && *line.waiting.borrow() > 0 {
                // Give way, and give the place in line back: the others may be waiting for it.
                drop(place);
                let mut waiting = line.waiting.subscribe();
                tokio::time::timeout_at(deadline, waiting.wait_for(|n| *n == 0))
                    .await
                    .map_err(|_| passed_in_line())?
                    .map_err(|_| exhausted(POLL))?;
                continue;
            }
            match self
                .store
                .try_acquire(region, &holder, self.limits, self.lease)
                .await
            {
                Ok(Grant::Granted) => {
                    return Ok(Place::held(Arc::clone(self), region, holder, place));
                }
                Ok(Grant::Wait(wait)) => {
                    local = Some(place);
                    let wait = wait.max(Duration::from_millis(1));
                    if crate::deadline::later(Instant::now(), wait) > deadline {
                        return Err(exhausted(wait).into());
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(err) => {
                    // The store is out: this replica's own line still bounds its calls.
                    tracing::warn!(error = %err, region, "alibaba quota: the store cannot be reached; keeping to this replica's max_in_flight only");
                    return Ok(Place::local_only(place));
                }
            }
        }
    }
}

/// A place in a region's budget, given back when dropped.
#[derive(Debug)]
pub struct Place {
    shared: Option<Shared>,
    /// This replica's place in line, given back after the store's place.
    local: Option<OwnedSemaphorePermit>,
}

#[derive(Debug)]
struct Shared {
    quota: Arc<Quota>,
    region: String,
    holder: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl Place {
    fn held(quota: Arc<Quota>, region: &str, holder: String, local: OwnedSemaphorePermit) -> Self {
        // Renews the lease while the call lasts, so a slow answer does not lose its place and
        // a dead replica's place lapses.
        let renewal = {
            let (quota, region, holder) = (Arc::clone(&quota), region.to_string(), holder.clone());
            tokio::spawn(async move {
                let every = quota.lease / 3;
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(err) = quota.store.renew(&region, &holder, quota.lease).await {
                        tracing::debug!(error = %err, "alibaba quota: lease not renewed");
                    }
                }
            })
        };
        Self {
            shared: Some(Shared {
                quota,
                region: region.to_string(),
                holder,
                renewal,
            }),
            local: Some(local),
        }
    }

    fn local_only(local: OwnedSemaphorePermit) -> Self {
        Self {
            shared: None,
            local: Some(local),
        }
    }

    /// The call's answer is in: its place in this replica's line goes to the next caller at
    /// once, whoever gives the shared place back and whenever.
    pub(crate) fn answered(&mut self) {
        self.local = None;
    }

    /// The region and holder of the shared place, when the state store can give it back with a
    /// step of its own (the budget is kept beside it).
    pub(crate) fn beside_state_store(&self) -> Option<(&str, &str)> {
        self.shared
            .as_ref()
            .filter(|shared| shared.quota.store.beside_state_store())
            .map(|shared| (shared.region.as_str(), shared.holder.as_str()))
    }

    /// The state store gave the shared place back: nothing is left to give back on drop.
    pub(crate) fn given_back(mut self) {
        if let Some(shared) = self.shared.take() {
            shared.renewal.abort();
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.renewal.abort();
            let local = self.local.take();
            // Given back in the background: a drop cannot wait. Should it fail, the lease ends.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _local = local;
                    if let Err(err) = shared
                        .quota
                        .store
                        .release(&shared.region, &shared.holder)
                        .await
                    {
                        tracing::debug!(error = %err, "alibaba quota: place not given back; its lease will end");
                    }
                });
            }
        }
    }
}
