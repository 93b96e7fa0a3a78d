//! The one way the gateway waits between attempts: a ceiling that doubles from `first` up to
//! `max`, and a wait drawn below it (full jitter), so that replicas failing together do not
//! retry together. Alibaba calls, credential fetches, the start-up wait for credentials and the
//! Redis claim poll all use it.

use std::time::Duration;

/// Exponential backoff: the ceiling before attempt `n + 1` is `first * 2^(n-1)`, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) first: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    pub(crate) const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    /// The ceiling after the `failures`-th failure in a row (1 for the first): `first`,
    /// doubling, never above `max` (nor below `first`).
    pub(crate) fn ceiling(&self, failures: u32) -> Duration {
        let doubling = 1u32 << failures.saturating_sub(1).min(31);
        self.first
            .saturating_mul(doubling)
            .min(self.max.max(self.first))
    }

    /// A uniform draw from `[0, ceiling]` after the `failures`-th failure (full jitter).
    pub(crate) fn jittered(&self, failures: u32) -> Duration {
        jitter(self.ceiling(failures))
    }

    /// A uniform draw from `[ceiling / 2, ceiling]`: a wait that still grows with each failure
    /// but is never close to zero, for a source that must not be asked in a tight loop.
    pub(crate) fn half_jittered(&self, failures: u32) -> Duration {
        let ceiling = self.ceiling(failures);
        ceiling / 2 + jitter(ceiling / 2)
    }
}

/// A uniform draw from `[0, ceiling]`, to the millisecond (not for anything secret).
fn jitter(ceiling: Duration) -> Duration {
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..=ceiling_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

    #[test]
    fn the_ceiling_doubles_up_to_the_maximum() {
        let ceilings: Vec<u128> = (1..=7).map(|n| BACKOFF.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(BACKOFF.ceiling(u32::MAX), Duration::from_secs(5));
        // A maximum below the first wait does not shorten it.
        let odd = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(odd.ceiling(3), Duration::from_secs(5));
    }

    #[test]
    fn waits_are_spread_under_the_ceiling() {
        let draws: Vec<Duration> = (0..200).map(|_| BACKOFF.jittered(3)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(800)));
        // Spread, not one value: replicas that failed together wait differently.
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 50, "{distinct:?}");
        let halves: Vec<Duration> = (0..200).map(|_| BACKOFF.half_jittered(3)).collect();
        assert!(
            halves
                .iter()
                .all(|d| (Duration::from_millis(400)..=Duration::from_millis(800)).contains(d))
        );
    }
}
