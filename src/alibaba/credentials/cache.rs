//! Caching and refreshing of temporary credentials (STS, ECS RAM role, credentials URI).
//!
//! A [`Refreshing`] provider asks its source once, keeps the answer, and refreshes it in the
//! background a few minutes before it expires. Calls never wait for a refresh while the cached
//! credential is still good; concurrent calls that find nothing usable wait for one fetch, not
//! one each.
//!
//! A failed fetch starts an episode: the source is asked again after a delay that doubles up to
//! a minute (calls that find nothing usable meanwhile fail at once with the cause), the first
//! failure is logged as a warning and the rest at debug level, and the first success ends it. A
//! source that hands out a credential that is expired or about to expire counts as failing, as
//! does one that hands out again the credential Alibaba Cloud just rejected as expired
//! ([`CredentialsProvider::rejected_as_expired`]): otherwise each would be asked in a loop.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::instrument::WithSubscriber as _;

use super::credential::{Credential, CredentialsError, CredentialsProvider};
use crate::backoff::Backoff;
use crate::deadline::later;
use crate::telemetry::Metrics;

/// A credential is treated as expired this long before its `Expiration`: a request signed just
/// before expiry must still arrive in time.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// A fetched credential must stay usable at least this long (after the margin); one that does
/// not is stale, and counts as a failed fetch. Nor is a good one refreshed sooner than this after
/// it was fetched: a source of short-lived credentials is asked at most once a second.
const MIN_USEFUL_LIFE: Duration = Duration::from_secs(1);
/// The largest wait between failed fetches.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A source of temporary credentials, asked each time a refresh is due.
#[async_trait::async_trait]
pub trait Fetch: Send + Sync + fmt::Debug + 'static {
    /// The provider's name for logs and errors, e.g. `ram_role_arn`.
    fn name(&self) -> &'static str;

    /// A fresh credential from the source.
    async fn fetch(&self) -> Result<Credential, CredentialsError>;
}

/// When to refresh and how hard to retry.
#[derive(Debug, Clone, Copy)]
pub struct RefreshPolicy {
    /// Refresh this long before a credential expires.
    pub refresh_ahead: Duration,
    /// The wait after a first failed fetch (at most this, at least half of it); it doubles
    /// with each failure after it, up to a minute. Calls that find nothing usable meanwhile fail
    /// at once instead of asking again.
    pub retry_after_failure: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            refresh_ahead: Duration::from_secs(5 * 60),
            retry_after_failure: Duration::from_secs(5),
        }
    }
}

impl RefreshPolicy {
    /// The wait after the `failures`-th failed fetch in a row (1 for the first): the doubling
    /// ceiling, less up to half of it, so that replicas whose source failed together do not ask
    /// it again together.
    fn backoff(&self, failures: u32) -> Duration {
        Backoff::new(self.retry_after_failure, MAX_BACKOFF).half_jittered(failures)
    }
}

/// A cached, self-refreshing credential source.
pub struct Refreshing<F: Fetch> {
    shared: Arc<Shared<F>>,
}

struct Shared<F> {
    fetch: F,
    policy: RefreshPolicy,
    /// Counts every fetch by outcome, whichever level it is logged at.
    metrics: Metrics,
    state: Mutex<State>,
    /// Held while fetching, so that one fetch serves every waiting call.
    single_flight: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    /// The current episode of failed fetches.
    failing: Option<Failing>,
    /// The credential Alibaba Cloud last rejected as expired, until a different one is fetched.
    rejected: Option<Credential>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

struct Cached {
    credential: Credential,
    /// `None` for credentials that do not expire.
    valid_until: Option<Instant>,
    refresh_at: Option<Instant>,
}

#[derive(Clone)]
struct Failing {
    cause: String,
    failures: u32,
    /// No fetch before this.
    retry_at: Instant,
}

/// Who asked the source: a call that found nothing usable, or the background refresher.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Asker {
    Call,
    Refresher,
}

impl<F: Fetch> Refreshing<F> {
    pub fn new(fetch: F, policy: RefreshPolicy, metrics: Metrics) -> Self {
        Self {
            shared: Arc::new(Shared {
                fetch,
                policy,
                metrics,
                state: Mutex::new(State::default()),
                single_flight: tokio::sync::Mutex::new(()),
            }),
        }
    }
}

/// The same credential: same AccessKey ID and security token.
fn same(a: &Credential, b: &Credential) -> bool {
    a.access_key_id() == b.access_key_id() && a.security_token() == b.security_token()
}

impl<F> Shared<F> {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain data; a panic elsewhere cannot leave it half-written.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn usable(&self, now: Instant) -> Option<Credential> {
        let state = self.state();
        let cached = state.cached.as_ref()?;
        match cached.valid_until {
            Some(until) if now >= until => None,
            _ => Some(cached.credential.clone()),
        }
    }

    /// How long `credential` may be used from `now`: its time to expiry less the margin.
    fn useful_life(credential: &Credential) -> Option<Duration> {
        credential.expiration().map(|at| {
            at.duration_since(SystemTime::now())
                .unwrap_or_default()
                .saturating_sub(EXPIRY_MARGIN)
        })
    }

    /// Why a credential the source handed out must not be used, if it must not.
    fn stale(&self, credential: &Credential) -> Option<String> {
        if self
            .state()
            .rejected
            .as_ref()
            .is_some_and(|rejected| same(rejected, credential))
        {
            return Some(
                "the source handed out again the credential Alibaba Cloud rejected as expired"
                    .to_string(),
            );
        }
        let life = Self::useful_life(credential)?;
        (life < MIN_USEFUL_LIFE).then(|| {
            format!(
                "the source handed out a credential that expires at {} (in less than {}s)",
                credential
                    .expiration()
                    .map(|at| humantime::format_rfc3339_seconds(at).to_string())
                    .unwrap_or_default(),
                (EXPIRY_MARGIN + MIN_USEFUL_LIFE).as_secs()
            )
        })
    }

    /// Caches a good credential; returns how many fetches had failed in a row before it.
    fn store(&self, credential: Credential) -> Option<u32> {
        let now = Instant::now();
        let valid_until = Self::useful_life(&credential).map(|left| later(now, left));
        let refresh_at = valid_until.map(|until| {
            let lifetime = until - now;
            // Short-lived credentials are refreshed half-way through instead.
            later(
                now,
                lifetime
                    .checked_sub(self.policy.refresh_ahead)
                    .filter(|early| *early >= lifetime / 2)
                    .unwrap_or(lifetime / 2)
                    .max(MIN_USEFUL_LIFE),
            )
        });
        let mut state = self.state();
        state.cached = Some(Cached {
            credential,
            valid_until,
            refresh_at,
        });
        state.rejected = None;
        state.failing.take().map(|f| f.failures)
    }

    /// Records a failed fetch; returns whether it starts an episode, and the wait before the next.
    fn fail(&self, cause: String) -> (bool, Duration) {
        let mut state = self.state();
        let failures = state.failing.as_ref().map_or(0, |f| f.failures) + 1;
        let wait = self.policy.backoff(failures);
        state.failing = Some(Failing {
            cause,
            failures,
            retry_at: later(Instant::now(), wait),
        });
        (failures == 1, wait)
    }

    /// When the source is to be asked next: after a failure's wait, else at the refresh point
    /// (`None`: never, the credential does not expire).
    fn next_fetch(&self) -> Option<Instant> {
        let state = self.state();
        match &state.failing {
            Some(failing) => Some(failing.retry_at),
            None => state.cached.as_ref()?.refresh_at,
        }
    }
}

impl<F: Fetch> Shared<F> {
    /// Why nothing usable is cached, for the caller's error.
    fn unavailable(&self, cause: &str) -> CredentialsError {
        let expired = self
            .state()
            .cached
            .as_ref()
            .and_then(|c| c.credential.expiration())
            .map(|at| {
                format!(
                    "the cached credential expired at {} and ",
                    humantime::format_rfc3339_seconds(at)
                )
            })
            .unwrap_or_default();
        CredentialsError::Unavailable {
            provider: self.fetch.name(),
            reason: format!("{expired}fetching a new one failed: {cause}"),
        }
    }

    /// Asks the source once (the caller holds `single_flight`), caches a good answer, counts
    /// the outcome, and logs: each success, and the first failure of an episode (later ones at
    /// debug level).
    async fn fetch_once(&self, asker: Asker) -> Result<Credential, String> {
        let provider = self.fetch.name();
        let fetched = match self.fetch.fetch().await {
            Ok(credential) => match self.stale(&credential) {
                Some(stale) => Err(stale),
                None => Ok(credential),
            },
            Err(err) => Err(err.to_string()),
        };
        self.metrics.credential_fetched(fetched.is_ok());
        match fetched {
            Ok(credential) => {
                if let Some(failures) = self.store(credential.clone()) {
                    tracing::info!(provider, failures, "credential source answers again");
                }
                // Absent for a credential that does not expire (never "None").
                let expiration = credential
                    .expiration()
                    .map(|at| tracing::field::display(humantime::format_rfc3339_seconds(at)));
                match asker {
                    Asker::Call => {
                        tracing::info!(provider, expiration, "credential fetched");
                    }
                    Asker::Refresher => {
                        tracing::info!(provider, expiration, "credential refreshed");
                    }
                }
                Ok(credential)
            }
            Err(cause) => {
                let (first, retry_in) = self.fail(cause.clone());
                let serving = self.usable(Instant::now()).is_some();
                match (asker, first) {
                    (Asker::Call, true) => {
                        tracing::warn!(provider, error = %cause, ?retry_in, "credential fetch failed");
                    }
                    (Asker::Call, false) => {
                        tracing::debug!(provider, error = %cause, ?retry_in, "credential fetch failed");
                    }
                    (Asker::Refresher, true) => {
                        tracing::warn!(provider, error = %cause, ?retry_in, still_serving_cached = serving, "credential refresh failed");
                    }
                    (Asker::Refresher, false) => {
                        tracing::debug!(provider, error = %cause, ?retry_in, still_serving_cached = serving, "credential refresh failed");
                    }
                }
                Err(cause)
            }
        }
    }
}

#[async_trait::async_trait]
impl<F: Fetch> CredentialsProvider for Refreshing<F> {
    fn name(&self) -> &'static str {
        self.shared.fetch.name()
    }

    async fn credential(&self) -> Result<Credential, CredentialsError> {
        let shared = &self.shared;
        if let Some(credential) = shared.usable(Instant::now()) {
            return Ok(credential);
        }
        let _flight = shared.single_flight.lock().await;
        let now = Instant::now();
        // Another call may have fetched while this one waited.
        if let Some(credential) = shared.usable(now) {
            return Ok(credential);
        }
        // Bound first: the guard must be gone before `unavailable` locks the state again.
        let failing = shared.state().failing.clone();
        if let Some(failing) = failing
            && now < failing.retry_at
        {
            return Err(shared.unavailable(&failing.cause));
        }
        match shared.fetch_once(Asker::Call).await {
            Ok(credential) => {
                self.start_refresher();
                Ok(credential)
            }
            Err(cause) => Err(shared.unavailable(&cause)),
        }
    }

    fn rejected_as_expired(&self, credential: &Credential) {
        let mut state = self.shared.state();
        let Some(cached) = state.cached.as_mut() else {
            return;
        };
        if !same(&cached.credential, credential) || cached.valid_until.is_none() {
            return;
        }
        // The next call fetches a new one (or fails at once if the source is in a failing
        // episode): Alibaba's clock, not ours, decides when a token has expired.
        let now = Instant::now();
        cached.valid_until = Some(now);
        cached.refresh_at = Some(now);
        state.rejected = Some(credential.clone());
        tracing::warn!(
            provider = self.shared.fetch.name(),
            "alibaba cloud rejected the credential as expired; fetching a new one"
        );
    }
}

impl<F: Fetch> Refreshing<F> {
    /// Starts the background refresher once, for credentials that expire.
    fn start_refresher(&self) {
        let mut state = self.shared.state();
        let expires = state
            .cached
            .as_ref()
            .is_some_and(|c| c.refresh_at.is_some());
        if state.refresher.is_none() && expires {
            // The task holds only a weak reference: dropping the provider ends it. It logs to the
            // subscriber of the call that started it (the gateway's telemetry), not the global one.
            let task = refresh_in_background(Arc::downgrade(&self.shared));
            state.refresher = Some(tokio::spawn(task.with_current_subscriber()));
        }
    }
}

/// Refreshes ahead of expiry until the provider is dropped; failures back off and are retried
/// while the cached credential keeps serving.
async fn refresh_in_background<F: Fetch>(shared: Weak<Shared<F>>) {
    loop {
        let Some(at) = shared.upgrade().and_then(|s| s.next_fetch()) else {
            return;
        };
        tokio::time::sleep_until(at).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let _flight = shared.single_flight.lock().await;
        if shared.next_fetch().is_some_and(|at| at > Instant::now()) {
            continue; // a call fetched meanwhile
        }
        // The outcome is cached or recorded, and logged, by `fetch_once`.
        let _ = shared.fetch_once(Asker::Refresher).await;
    }
}

impl<F: Fetch> Drop for Refreshing<F> {
    fn drop(&mut self) {
        if let Some(task) = self.shared.state().refresher.take() {
            task.abort();
        }
    }
}

impl<F: Fetch> fmt::Debug for Refreshing<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refreshing")
            .field("fetch", &self.shared.fetch)
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A source that answers from a script and counts how often it was asked.
    #[derive(Debug, Default)]
    struct Script {
        answers: Mutex<VecDeque<Result<Duration, &'static str>>>,
        fetched: AtomicUsize,
        gate: Option<Arc<tokio::sync::Semaphore>>,
    }

    impl Script {
        fn push(&self, answer: Result<Duration, &'static str>) {
            self.answers.lock().unwrap().push_back(answer);
        }
    }

    #[async_trait::async_trait]
    impl Fetch for Arc<Script> {
        fn name(&self) -> &'static str {
            "script"
        }

        async fn fetch(&self) -> Result<Credential, CredentialsError> {
            if let Some(gate) = &self.gate {
                let _permit = gate.acquire().await.unwrap();
            }
            let n = self.fetched.fetch_add(1, Ordering::SeqCst) + 1;
            let answer = self.answers.lock().unwrap().pop_front();
            match answer.unwrap_or(Err("script ran out")) {
                Ok(lifetime) => Ok(Credential::new(
                    format!("STS.key{n}"),
                    Secret::new("secret"),
                    Some(Secret::new("token")),
                    Some(SystemTime::now() + lifetime),
                    "script",
                )),
                Err(reason) => Err(CredentialsError::Unavailable {
                    provider: "script",
                    reason: reason.to_string(),
                }),
            }
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// Lets spawned tasks run until `done` holds (paused time: no wall clock involved).
    async fn settle(done: impl Fn() -> bool) {
        for _ in 0..1000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("condition not reached");
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_in_the_background_before_expiry() {
        let script = Arc::new(Script::default());
        script.push(Ok(HOUR));
        script.push(Ok(HOUR));
        let provider = Refreshing::new(
            Arc::clone(&script),
            RefreshPolicy::default(),
            Metrics::default(),
        );

        let first = provider.credential().await.unwrap();
        assert_eq!(first.access_key_id(), "STS.key1");
        // Just before the refresh point nothing happens...
        tokio::time::advance(HOUR - EXPIRY_MARGIN - Duration::from_secs(5 * 60 + 1)).await;
        settle(|| true).await;
        assert_eq!(script.fetched.load(Ordering::SeqCst), 1);
        assert_eq!(
            provider.credential().await.unwrap().access_key_id(),
            "STS.key1"
        );
        // ...and just after it the background task fetches, without any call asking.
        tokio::time::advance(Duration::from_secs(2)).await;
        settle(|| script.fetched.load(Ordering::SeqCst) == 2).await;
        settle(|| {
            provider
                .shared
                .usable(Instant::now())
                .is_some_and(|c| c.access_key_id() == "STS.key2")
        })
        .await;
        assert_eq!(
            provider.credential().await.unwrap().access_key_id(),
            "STS.key2"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_calls_share_one_fetch() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let script = Arc::new(Script {
            gate: Some(Arc::clone(&gate)),
            ..Script::default()
        });
        script.push(Ok(HOUR));
        script.push(Ok(HOUR));
        let provider = Arc::new(Refreshing::new(
            Arc::clone(&script),
            RefreshPolicy::default(),
            Metrics::default(),
        ));
        let calls: Vec<_> = (0..32)
            .map(|_| {
                let provider = Arc::clone(&provider);
                tokio::spawn(async move { provider.credential().await })
            })
            .collect();
        // Let every call reach the provider: one fetches (held at the gate), the rest wait.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(100);
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap().access_key_id(), "STS.key1");
        }
        assert_eq!(script.fetched.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_serving_until_expiry_then_fails_clearly() {
        let script = Arc::new(Script::default());
        script.push(Ok(Duration::from_secs(15 * 60)));
        for _ in 0..100 {
            script.push(Err("sts.example answered NoPermission"));
        }
        let provider = Refreshing::new(
            Arc::clone(&script),
            RefreshPolicy::default(),
            Metrics::default(),
        );
        assert_eq!(
            provider.credential().await.unwrap().access_key_id(),
            "STS.key1"
        );

        // Past the refresh point: the background refresh fails, calls keep the cached one.
        tokio::time::advance(Duration::from_secs(10 * 60)).await;
        settle(|| script.fetched.load(Ordering::SeqCst) >= 2).await;
        assert_eq!(
            provider.credential().await.unwrap().access_key_id(),
            "STS.key1"
        );
        let background = script.fetched.load(Ordering::SeqCst);

        // Past expiry: a call asks once more and fails with the cause and the expiry.
        tokio::time::advance(Duration::from_secs(5 * 60)).await;
        settle(|| true).await;
        let before = script.fetched.load(Ordering::SeqCst);
        assert!(before >= background);
        let err = provider.credential().await.unwrap_err().to_string();
        assert!(err.contains("expired at"), "{err}");
        assert!(err.contains("NoPermission"), "{err}");
        // Calls right after fail at once, without asking the source again.
        let asked = script.fetched.load(Ordering::SeqCst);
        assert!(provider.credential().await.is_err());
        assert_eq!(script.fetched.load(Ordering::SeqCst), asked);
    }

    #[tokio::test(start_paused = true)]
    async fn recovers_when_the_source_answers_again_and_counts_each_fetch() {
        let telemetry = crate::telemetry::Telemetry::quiet();
        let script = Arc::new(Script::default());
        script.push(Err("metadata service unreachable"));
        script.push(Err("metadata service unreachable"));
        script.push(Ok(HOUR));
        let provider = Refreshing::new(
            Arc::clone(&script),
            RefreshPolicy::default(),
            telemetry.metrics().clone(),
        );
        // Past each wait whatever its jitter: the ceiling is the longest it can be.
        let policy = RefreshPolicy::default();
        let longest =
            |failures| Backoff::new(policy.retry_after_failure, MAX_BACKOFF).ceiling(failures);
        assert!(provider.credential().await.is_err());
        tokio::time::advance(longest(1)).await;
        assert!(provider.credential().await.is_err());
        tokio::time::advance(longest(2)).await;
        assert_eq!(
            provider.credential().await.unwrap().access_key_id(),
            "STS.key3"
        );
        // Every fetch counts, also the second failure, which is logged at debug level only.
        let text = telemetry.prometheus_text();
        let counted = |outcome: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("dds_gateway_credentials_refreshes_total{")
                        && l.contains(&format!("outcome=\"{outcome}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_string)
        };
        assert_eq!(counted("error").as_deref(), Some("2"), "{text}");
        assert_eq!(counted("ok").as_deref(), Some("1"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_credential_rejected_as_expired_is_replaced_at_the_next_call() {
        let script = Arc::new(Script::default());
        for _ in 0..3 {
            script.push(Ok(HOUR));
        }
        let provider = Refreshing::new(
            Arc::clone(&script),
            RefreshPolicy::default(),
            Metrics::default(),
        );
        let first = provider.credential().await.unwrap();
        assert_eq!(first.access_key_id(), "STS.key1");
        provider.rejected_as_expired(&first);
        let second = provider.credential().await.unwrap();
        assert_eq!(second.access_key_id(), "STS.key2");
        // A late rejection of the credential already replaced changes nothing.
        provider.rejected_as_expired(&first);
        assert_eq!(
            provider.credential().await.unwrap().access_key_id(),
            "STS.key2"
        );
        assert_eq!(script.fetched.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_that_hands_back_the_rejected_credential_is_failing() {
        let script = Arc::new(Script::default());
        script.push(Ok(HOUR));
        let provider = Refreshing::new(
            Arc::clone(&script),
            RefreshPolicy::default(),
            Metrics::default(),
        );
        let first = provider.credential().await.unwrap();
        // The same credential as the source would hand it out again.
        let again = Credential::new(
            first.access_key_id(),
            Secret::new("secret"),
            Some(Secret::new("token")),
            Some(SystemTime::now() + HOUR),
            "script",
        );
        provider.rejected_as_expired(&first);
        assert!(provider.shared.stale(&again).is_some());
        let other = Credential::new(
            "STS.other",
            Secret::new("secret"),
            Some(Secret::new("token")),
            Some(SystemTime::now() + HOUR),
            "script",
        );
        assert!(provider.shared.stale(&other).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn short_lived_credentials_refresh_half_way() {
        let script = Arc::new(Script::default());
        script.push(Ok(Duration::from_secs(4 * 60) + EXPIRY_MARGIN));
        script.push(Ok(HOUR));
        let provider = Refreshing::new(
            Arc::clone(&script),
            RefreshPolicy::default(),
            Metrics::default(),
        );
        provider.credential().await.unwrap();
        tokio::time::advance(Duration::from_secs(2 * 60 + 1)).await;
        settle(|| script.fetched.load(Ordering::SeqCst) == 2).await;
    }
}
