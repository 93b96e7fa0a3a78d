//! Retries of Alibaba Cloud calls that cannot double-apply. Each attempt is signed anew (new
//! `SignatureNonce` and `Timestamp`) by [`AlibabaClient::sign`](super::AlibabaClient::sign). Delays are exponential with full jitter, or exactly what
//! Alibaba asked for in `x-acs-retry-after`, and no retry starts that could not finish before
//! the caller's deadline.
//!
//! What may be retried depends on what the call does ([`Effect`]): a read is retried on any
//! transient failure; `UpgradeDBInstanceEngineVersion`, which has no client token, only when
//! Alibaba surely did not act on it (throttled, or the connection was refused before the request
//! was sent). Anything else about an upgrade is for the caller of [`retry`] to reconcile.
//! [`codes`] decides which failure is which.
//!
//! One more attempt is made at once, whatever the effect and beyond `max_attempts`, when
//! Alibaba rejected the security token as expired ([`credential_expired`]): an authentication
//! failure means Alibaba did not act, and the client has dropped the credential, so the attempt
//! is signed with a fresh one.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::codes::{self, credential_expired};
use super::response::{CallError, UpstreamError};
use crate::backoff::Backoff;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means never retry.
    pub max_attempts: u32,
    /// The backoff ceiling of the first retry; it doubles for each later one.
    pub base_delay: Duration,
    /// The largest backoff ceiling (an `x-acs-retry-after` is honoured even when longer).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        crate::config::RetryConfig::default().into()
    }
}

impl From<crate::config::RetryConfig> for RetryPolicy {
    fn from(config: crate::config::RetryConfig) -> Self {
        Self {
            max_attempts: config.max_attempts,
            base_delay: config.base_delay,
            max_delay: config.max_delay,
        }
    }
}

impl RetryPolicy {
    /// The full-jitter backoff before retry number `retry` (1 for the first retry): a uniform
    /// draw from `[0, min(max_delay, base_delay * 2^(retry-1))]`.
    pub fn backoff(&self, retry: u32) -> Duration {
        self.schedule().jittered(retry)
    }

    fn schedule(&self) -> Backoff {
        Backoff::new(self.base_delay, self.max_delay)
    }
}

/// What a call does, which decides what may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Reads (`Describe*`): retried on any transient failure.
    Read,
    /// Changes something and carries no client token: retried only when Alibaba surely did not
    /// act on the failed attempt.
    Change,
}

fn may_retry(effect: Effect, err: &CallError) -> bool {
    let class = codes::classify(err);
    match effect {
        Effect::Read => class.retry_read,
        // Only when Alibaba surely did not act is a change sent again.
        Effect::Change => class.surely_not_applied(),
    }
}

/// How an attempt failed: an Alibaba call's failure, or something else (e.g. the gateway
/// decided not to send), which is never retried.
pub trait AttemptError: std::fmt::Display {
    fn call_error(&self) -> Option<&CallError>;
}

impl AttemptError for CallError {
    fn call_error(&self) -> Option<&CallError> {
        Some(self)
    }
}

/// Runs `attempt` until it succeeds, fails in a way [`Effect`] says not to retry, has been tried
/// `policy.max_attempts` times, or the next delay would end after `deadline`; then returns the
/// last failure.
pub(crate) async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    effect: Effect,
    deadline: Instant,
    action: &'static str,
    mut attempt: F,
) -> Result<T, E>
where
    E: AttemptError,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempts = 1;
    // Whether the one attempt with a fresh credential was made.
    let mut refreshed = false;
    loop {
        let err = match crate::alibaba::trace::attempt(attempts, attempt()).await {
            Ok(answer) => return Ok(answer),
            Err(err) => err,
        };
        let Some(failed) = err.call_error() else {
            return Err(err);
        };
        if !refreshed && credential_expired(failed) && Instant::now() < deadline {
            refreshed = true;
            tracing::info!(
                action,
                attempt = attempts,
                "retrying alibaba cloud call with a fresh credential: the security token expired"
            );
            attempts += 1;
            continue;
        }
        if attempts >= policy.max_attempts + u32::from(refreshed) || !may_retry(effect, failed) {
            return Err(err);
        }
        let delay = match failed {
            CallError::Upstream(UpstreamError {
                retry_after: Some(after),
                ..
            }) => *after,
            _ => policy.backoff(attempts),
        };
        if crate::deadline::later(Instant::now(), delay) >= deadline {
            tracing::info!(
                action,
                attempts,
                delay_ms = delay.as_millis() as u64,
                "not retrying: the caller's deadline would pass first"
            );
            return Err(err);
        }
        tracing::info!(
            action,
            attempt = attempts,
            delay_ms = delay.as_millis() as u64,
            error = %err,
            "retrying alibaba cloud call"
        );
        tokio::time::sleep(delay).await;
        attempts += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alibaba::codes::SECURITY_TOKEN_EXPIRED;
    use crate::alibaba::response::UpstreamError;
    use std::sync::Mutex;

    fn upstream(code: &str, http_status: u16, retry_after: Option<Duration>) -> CallError {
        CallError::Upstream(UpstreamError {
            http_status,
            code: code.to_string(),
            message: String::new(),
            request_id: None,
            host_id: None,
            recommend: None,
            retry_after,
        })
    }

    /// Runs `retry` over scripted failures (then success), returning the result and the instants
    /// of each attempt relative to the start.
    async fn run(
        policy: RetryPolicy,
        effect: Effect,
        deadline: Duration,
        failures: Vec<CallError>,
    ) -> (Result<&'static str, CallError>, Vec<Duration>) {
        let start = Instant::now();
        let script = Mutex::new(failures.into_iter());
        let seen = Mutex::new(Vec::new());
        let result = retry(&policy, effect, start + deadline, "Test", || {
            seen.lock().unwrap().push(start.elapsed());
            let next = script.lock().unwrap().next();
            async move { next.map_or(Ok("ok"), Err) }
        })
        .await;
        (result, seen.into_inner().unwrap())
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        for (retry, ceiling) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let ceiling = Duration::from_millis(ceiling);
            assert_eq!(policy.schedule().ceiling(retry), ceiling, "{retry}");
            let draws: Vec<Duration> = (0..100).map(|_| policy.backoff(retry)).collect();
            assert!(draws.iter().all(|d| *d <= ceiling), "{retry}: {draws:?}");
            // Jitter: the draws spread below the ceiling instead of repeating one value.
            assert!(draws.iter().any(|d| *d != draws[0]), "{retry}: {draws:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reads_retry_transient_failures_and_honour_retry_after() {
        let (result, at) = run(
            RetryPolicy::default(),
            Effect::Read,
            Duration::from_secs(60),
            vec![
                upstream("Throttling.User", 400, Some(Duration::from_millis(1500))),
                CallError::OutcomeUnknown("reset".into()),
            ],
        )
        .await;
        assert_eq!(result.unwrap(), "ok");
        assert_eq!(at.len(), 3);
        assert_eq!(
            at[1],
            Duration::from_millis(1500),
            "x-acs-retry-after, exactly"
        );
        assert!(
            at[2] - at[1] <= Duration::from_millis(400),
            "jittered backoff"
        );

        let (result, at) = run(
            RetryPolicy::default(),
            Effect::Read,
            Duration::from_secs(60),
            vec![
                upstream("ServiceUnavailable", 503, None),
                upstream("InternalError", 500, None),
            ],
        )
        .await;
        assert_eq!((result.unwrap(), at.len()), ("ok", 3));

        // Answered UNAVAILABLE with RetryInfo to callers, so worth a retry of a read too.
        let (result, at) = run(
            RetryPolicy::default(),
            Effect::Read,
            Duration::from_secs(60),
            vec![upstream("Operation.Blocking", 400, None)],
        )
        .await;
        assert_eq!((result.unwrap(), at.len()), ("ok", 2));
    }

    #[tokio::test(start_paused = true)]
    async fn changes_retry_only_when_alibaba_surely_did_not_act() {
        for failure in [
            upstream("Throttling", 400, Some(Duration::from_millis(10))),
            CallError::Unreachable("refused".into()),
        ] {
            let (result, at) = run(
                RetryPolicy::default(),
                Effect::Change,
                Duration::from_secs(60),
                vec![failure],
            )
            .await;
            assert_eq!((result.unwrap(), at.len()), ("ok", 2));
        }
        for failure in [
            CallError::OutcomeUnknown("timeout after sending".into()),
            // A throttling code on a server error is still a server error: it may have acted.
            upstream("Throttling", 503, Some(Duration::from_millis(10))),
            upstream("Throttling.User", 500, None),
            upstream("ServiceUnavailable", 503, None),
            upstream("InternalError", 500, None),
            CallError::Unreadable { http_status: 200 },
            upstream("IncorrectDBInstanceState", 400, None),
            upstream("Operation.Blocking", 400, None),
        ] {
            let (result, at) = run(
                RetryPolicy::default(),
                Effect::Change,
                Duration::from_secs(60),
                vec![failure],
            )
            .await;
            assert!(result.is_err());
            assert_eq!(at.len(), 1, "never sent twice on a guess");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_security_token_is_retried_once_at_once_even_for_a_change() {
        let expired = || upstream(SECURITY_TOKEN_EXPIRED, 400, None);
        for effect in [Effect::Change, Effect::Read] {
            let never_retry = RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            };
            let (result, at) = run(
                never_retry,
                effect,
                Duration::from_secs(60),
                vec![expired()],
            )
            .await;
            assert_eq!(result.unwrap(), "ok");
            assert_eq!(at, [Duration::ZERO, Duration::ZERO], "at once");
            // Only once: a second rejection is the answer.
            let (result, at) = run(
                RetryPolicy::default(),
                effect,
                Duration::from_secs(60),
                vec![expired(), expired()],
            )
            .await;
            assert!(
                matches!(result, Err(CallError::Upstream(ref e)) if e.code == SECURITY_TOKEN_EXPIRED)
            );
            assert_eq!(at.len(), 2);
        }
        // The same code on a server error is not an authentication refusal.
        let (result, at) = run(
            RetryPolicy::default(),
            Effect::Change,
            Duration::from_secs(60),
            vec![upstream(SECURITY_TOKEN_EXPIRED, 500, None)],
        )
        .await;
        assert!(result.is_err());
        assert_eq!(at.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_max_attempts_and_before_the_deadline() {
        let throttled = || upstream("Throttling", 400, Some(Duration::from_secs(2)));
        let (result, at) = run(
            RetryPolicy::default(),
            Effect::Change,
            Duration::from_secs(60),
            vec![throttled(), throttled(), throttled(), throttled()],
        )
        .await;
        assert!(matches!(result, Err(CallError::Upstream(ref e)) if e.code == "Throttling"));
        assert_eq!(at.len(), 3, "max_attempts");

        let (result, at) = run(
            RetryPolicy::default(),
            Effect::Change,
            Duration::from_secs(3),
            vec![throttled(), throttled(), throttled()],
        )
        .await;
        assert!(result.is_err());
        assert_eq!(
            at,
            [Duration::ZERO, Duration::from_secs(2)],
            "a third try would end after the deadline"
        );

        let (result, at) = run(
            RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            Effect::Read,
            Duration::from_secs(60),
            vec![CallError::Unreachable("refused".into())],
        )
        .await;
        assert_eq!((result.is_err(), at.len()), (true, 1));
    }
}
