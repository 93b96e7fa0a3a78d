//! Callers' rates, by the generic cell rate algorithm (GCRA) per authenticated caller (keyed by
//! who the caller is, never by its peer address): the same algorithm, with the same parameters,
//! as the Redis store's script, so that a limit means the same on one replica or many. With a
//! shared state store the rates are kept there ([`SharedRates`]), so that a caller's burst is
//! shared by every replica; [`Rates`] falls back to this process's while the store cannot be
//! reached, because refusing every call would turn a store outage into a gateway outage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::metrics::Counter;
use tokio::time::Instant;

/// A caller's rate: one call every `1 / per_second` seconds, with up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// One caller's GCRA state: the theoretical arrival time of its next call. A call is admitted
/// when that time is at most `burst - 1` intervals ahead of now, and moves it one interval on.
/// Pure: the time is passed in, so tests need no clock. The Redis store's `TAKE_CALL` script is
/// the same computation, on Redis's clock.
#[derive(Debug, Clone)]
pub(crate) struct Gcra {
    tat: Instant,
}

impl Gcra {
    /// A caller not seen before: its whole burst is available.
    pub(crate) fn new(now: Instant) -> Self {
        Self { tat: now }
    }

    /// Admits one call, or says how long until one would be admitted (whole milliseconds,
    /// rounded up, at least one, as the script answers).
    pub(crate) fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        let interval = Duration::from_secs_f64(1.0 / rate.per_second);
        let tat = self.tat.max(now);
        let ahead = tat - now;
        let tolerance = interval.saturating_mul(rate.burst.saturating_sub(1));
        if ahead > tolerance {
            let wait = ahead - tolerance;
            let millis = u64::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u64::MAX);
            return Err(Duration::from_millis(millis.max(1)));
        }
        self.tat = crate::deadline::later(tat, interval);
        Ok(())
    }
}

/// A caller's rate state shared between the callers tables before and after a reload, so that
/// reloading the configuration does not hand every caller a fresh burst.
#[derive(Debug, Clone)]
pub struct SharedBucket(Arc<Mutex<Gcra>>);

impl SharedBucket {
    pub fn new(_rate: Rate) -> Self {
        Self(Arc::new(Mutex::new(Gcra::new(Instant::now()))))
    }

    pub fn take(&self, rate: Rate) -> Result<(), Duration> {
        // A panic while holding this lock cannot leave the state half-updated in a harmful way.
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
    fn gcra_allows_a_burst_then_one_call_per_interval() {
        let rate = Rate {
            per_second: 2.0,
            burst: 3,
        };
        let start = Instant::now();
        let mut gcra = Gcra::new(start);
        for _ in 0..3 {
            assert_eq!(gcra.take(rate, start), Ok(()));
        }
        assert_eq!(gcra.take(rate, start), Err(Duration::from_millis(500)));
        // A quarter second later, the next call is a quarter second away.
        let later = start + Duration::from_millis(250);
        assert_eq!(gcra.take(rate, later), Err(Duration::from_millis(250)));
        assert_eq!(gcra.take(rate, start + Duration::from_millis(500)), Ok(()));
        // Never more than the burst, however long the caller was quiet.
        let much_later = start + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(gcra.take(rate, much_later), Ok(()));
        }
        assert!(gcra.take(rate, much_later).is_err());
    }

    #[test]
    fn a_wait_is_rounded_up_to_a_whole_millisecond() {
        let rate = Rate {
            per_second: 3.0,
            burst: 1,
        };
        let start = Instant::now();
        let mut gcra = Gcra::new(start);
        assert_eq!(gcra.take(rate, start), Ok(()));
        // 333.33 ms to go: a retry after 334 ms is admitted, after 333 ms it is not.
        assert_eq!(gcra.take(rate, start), Err(Duration::from_millis(334)));
        assert!(gcra.take(rate, start + Duration::from_millis(333)).is_err());
        assert_eq!(gcra.take(rate, start + Duration::from_millis(334)), Ok(()));
    }
}
