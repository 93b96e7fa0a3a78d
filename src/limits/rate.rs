//! Callers' rates: a token bucket per authenticated caller (keyed by who the caller is, never by
//! its peer address). With a shared state store the rates are kept there ([`SharedRates`]), so
//! that a caller's burst is shared by every replica; [`Rates`] falls back to this process's
//! buckets while the store cannot be reached, because refusing every call would turn a store
//! outage into a gateway outage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::metrics::Counter;
use tokio::time::Instant;

/// A caller's rate: `rate_per_second` tokens refill continuously up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// A token bucket. Pure: the time is passed in, so tests need no clock.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate.burst),
            updated: now,
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / rate.per_second;
            // Round up to whole milliseconds so a retry after the hint finds a token.
            Err(Duration::from_millis((wait * 1000.0).ceil() as u64))
        }
    }
}

/// A bucket shared between the callers tables before and after a reload, so that reloading the
/// configuration does not hand every caller a fresh burst.
#[derive(Debug, Clone)]
pub struct SharedBucket(Arc<Mutex<TokenBucket>>);

impl SharedBucket {
    pub fn new(rate: Rate) -> Self {
        Self(Arc::new(Mutex::new(TokenBucket::new(rate, Instant::now()))))
    }

    pub fn take(&self, rate: Rate) -> Result<(), Duration> {
        // A panic while holding this lock cannot leave the bucket half-updated in a harmful way.
        let mut bucket = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        bucket.take(rate, Instant::now())
    }
}

/// Callers' rates kept outside this process.
#[async_trait::async_trait]
pub trait SharedRates: Send + Sync + std::fmt::Debug + 'static {
    /// Takes one call from `caller`'s shared bucket: `Ok(Ok(()))` taken, `Ok(Err(wait))` over
    /// its rate, `Err` when the store cannot be reached.
    async fn take(&self, caller: &str, rate: Rate) -> Result<Result<(), Duration>, String>;
}

/// Where callers' calls are taken from: the shared buckets when there are any and they can be
/// reached, else this process's.
#[derive(Debug, Clone, Default)]
pub struct Rates {
    shared: Option<Arc<dyn SharedRates>>,
    /// Whether the last shared take failed: the outage is logged once, when it starts.
    degraded: Arc<AtomicBool>,
    /// Adds one for each call limited locally because the shared buckets could not be reached.
    fallbacks: Option<Counter<u64>>,
}

impl Rates {
    /// This process's buckets only.
    pub fn local() -> Self {
        Self::default()
    }

    pub fn shared(shared: Arc<dyn SharedRates>) -> Self {
        Self {
            shared: Some(shared),
            degraded: Arc::default(),
            fallbacks: None,
        }
    }

    /// Adds one to `fallbacks` for each call limited locally while the shared buckets cannot be
    /// reached.
    pub fn counting_fallbacks(mut self, fallbacks: Counter<u64>) -> Self {
        self.fallbacks = Some(fallbacks);
        self
    }

    /// Takes one call of `caller` (whose own bucket in this process is `local`).
    pub async fn take(
        &self,
        caller: &str,
        rate: Rate,
        local: &SharedBucket,
    ) -> Result<(), Duration> {
        let Some(shared) = &self.shared else {
            return local.take(rate);
        };
        match shared.take(caller, rate).await {
            Ok(taken) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("shared caller rate limits can be reached again");
                }
                taken
            }
            Err(err) => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %err, "cannot reach the shared caller rate limits; each replica limits callers on its own until it can");
                }
                if let Some(fallbacks) = &self.fallbacks {
                    fallbacks.add(1, &[]);
                }
                local.take(rate)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_refills_at_the_rate() {
        let rate = Rate {
            per_second: 2.0,
            burst: 3,
        };
        let start = Instant::now();
        let mut bucket = TokenBucket::new(rate, start);
        for _ in 0..3 {
            assert_eq!(bucket.take(rate, start), Ok(()));
        }
        assert_eq!(bucket.take(rate, start), Err(Duration::from_millis(500)));
        // A quarter second later, half a token has come back.
        let later = start + Duration::from_millis(250);
        assert_eq!(bucket.take(rate, later), Err(Duration::from_millis(250)));
        assert_eq!(
            bucket.take(rate, start + Duration::from_millis(500)),
            Ok(())
        );
        // Never more than the burst, however long the caller was quiet.
        let much_later = start + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(bucket.take(rate, much_later), Ok(()));
        }
        assert!(bucket.take(rate, much_later).is_err());
    }
}
