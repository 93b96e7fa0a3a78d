//! Caching and refreshing of temporary credentials (STS, ECS RAM role, credentials URI).
//!
//! A [`Refreshing`] provider asks its source once, keeps the answer, and refreshes it in the
//! background a few minutes before it expires. Calls never wait for a refresh while the cached
//! credential is still good; concurrent calls that find nothing usable wait for one fetch, not
//! one each. A failed refresh is retried with backoff while the cached credential keeps serving
//! until it expires; after that calls fail with a reason an operator can act on.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::instrument::WithSubscriber as _;

use super::{Credential, CredentialsError, CredentialsProvider};

/// A credential is treated as expired this long before its `Expiration`: a request signed just
/// before expiry must still arrive in time.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// First and largest wait between failed background refreshes.
const MIN_BACKOFF: Duration = Duration::from_secs(5);
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
    /// After a failed fetch with nothing usable cached, calls fail at once for this long instead
    /// of each asking the source again.
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

/// A cached, self-refreshing credential source.
pub struct Refreshing<F: Fetch> {
    shared: Arc<Shared<F>>,
}

struct Shared<F> {
    fetch: F,
    policy: RefreshPolicy,
    state: Mutex<State>,
    /// Held while fetching, so that one fetch serves every waiting call.
    single_flight: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    /// The last failed fetch with nothing usable cached: when, and why.
    failure: Option<(Instant, String)>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

struct Cached {
    credential: Credential,
    /// `None` for credentials that do not expire.
    valid_until: Option<Instant>,
    refresh_at: Option<Instant>,
}

impl<F: Fetch> Refreshing<F> {
    pub fn new(fetch: F, policy: RefreshPolicy) -> Self {
        Self {
            shared: Arc::new(Shared {
                fetch,
                policy,
                state: Mutex::new(State::default()),
                single_flight: tokio::sync::Mutex::new(()),
            }),
        }
    }
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

    fn store(&self, credential: Credential) {
        let now = Instant::now();
        let expiration = credential.expiration();
        let valid_until = expiration.map(|at| {
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .saturating_sub(EXPIRY_MARGIN);
            now + left
        });
        let refresh_at = valid_until.map(|until| {
            let lifetime = until - now;
            // Short-lived credentials are refreshed half-way through instead.
            now + lifetime
                .checked_sub(self.policy.refresh_ahead)
                .filter(|early| *early >= lifetime / 2)
                .unwrap_or(lifetime / 2)
        });
        let mut state = self.state();
        state.cached = Some(Cached {
            credential,
            valid_until,
            refresh_at,
        });
        state.failure = None;
    }

    fn refresh_at(&self) -> Option<Instant> {
        self.state().cached.as_ref()?.refresh_at
    }

    fn postpone(&self, until: Instant) {
        if let Some(cached) = self.state().cached.as_mut() {
            cached.refresh_at = Some(until);
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
        let failure = shared.state().failure.clone();
        if let Some((at, cause)) = failure
            && now < at + shared.policy.retry_after_failure
        {
            return Err(shared.unavailable(&cause));
        }
        match shared.fetch.fetch().await {
            Ok(credential) => {
                shared.store(credential.clone());
                tracing::info!(provider = shared.fetch.name(), expiration = ?credential.expiration().map(humantime::format_rfc3339_seconds), "credential fetched");
                self.start_refresher();
                Ok(credential)
            }
            Err(err) => {
                let cause = err.to_string();
                tracing::warn!(provider = shared.fetch.name(), error = %cause, "credential fetch failed");
                shared.state().failure = Some((Instant::now(), cause.clone()));
                Err(shared.unavailable(&cause))
            }
        }
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
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(at) = shared.upgrade().and_then(|s| s.refresh_at()) else {
            return;
        };
        tokio::time::sleep_until(at).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let _flight = shared.single_flight.lock().await;
        if shared.refresh_at().is_some_and(|at| at > Instant::now()) {
            continue; // a call refreshed it meanwhile
        }
        match shared.fetch.fetch().await {
            Ok(credential) => {
                tracing::info!(
                    provider = shared.fetch.name(),
                    expiration = ?credential.expiration().map(humantime::format_rfc3339_seconds),
                    "credential refreshed"
                );
                shared.store(credential);
                backoff = MIN_BACKOFF;
            }
            Err(err) => {
                let still_valid = shared.usable(Instant::now()).is_some();
                tracing::warn!(
                    provider = shared.fetch.name(),
                    error = %err,
                    retry_in = ?backoff,
                    still_serving_cached = still_valid,
                    "credential refresh failed"
                );
                shared.postpone(Instant::now() + backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
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
    use crate::credentials::Secret;
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
        let provider = Refreshing::new(Arc::clone(&script), RefreshPolicy::default());

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
        let provider = Refreshing::new(Arc::clone(&script), RefreshPolicy::default());
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
    async fn recovers_when_the_source_answers_again() {
        let script = Arc::new(Script::default());
        script.push(Err("metadata service unreachable"));
        script.push(Ok(HOUR));
        let provider = Refreshing::new(Arc::clone(&script), RefreshPolicy::default());
        assert!(provider.credential().await.is_err());
        tokio::time::advance(RefreshPolicy::default().retry_after_failure).await;
        assert_eq!(
            provider.credential().await.unwrap().access_key_id(),
            "STS.key2"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn short_lived_credentials_refresh_half_way() {
        let script = Arc::new(Script::default());
        script.push(Ok(Duration::from_secs(4 * 60) + EXPIRY_MARGIN));
        script.push(Ok(HOUR));
        let provider = Refreshing::new(Arc::clone(&script), RefreshPolicy::default());
        provider.credential().await.unwrap();
        tokio::time::advance(Duration::from_secs(2 * 60 + 1)).await;
        settle(|| script.fetched.load(Ordering::SeqCst) == 2).await;
    }
}
