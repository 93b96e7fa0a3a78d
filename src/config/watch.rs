//! `[watch]`: `WatchUpgrade` polling and its limits.

use std::time::Duration;

use serde::Deserialize;

use super::value::{ConfigError, DAY, HOUR, duration_or, invalid, share};

/// `[watch]`: `WatchUpgrade` polling.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// How often a watch reads the instance.
    pub poll_interval: Duration,
    /// Upper bound on one watch, whatever deadline the caller sets.
    pub max_duration: Duration,
    /// Watches running at once. Watches are long and poll Alibaba all along, so they have this
    /// limit of their own instead of holding `server.max_in_flight` places.
    pub max_active: usize,
    /// Watches one caller may run at once (default: half of `max_active`, at least 1).
    pub max_active_per_caller: usize,
}

/// `[watch]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatch {
    poll_interval: Option<String>,
    max_duration: Option<String>,
    max_active: Option<usize>,
    max_active_per_caller: Option<usize>,
}

pub(super) fn check(raw: RawWatch) -> Result<WatchConfig, ConfigError> {
    let max_active = raw.max_active.unwrap_or(64);
    if !(1..=100_000).contains(&max_active) {
        return Err(invalid(
            "watch.max_active",
            "expected a number of watches between 1 and 100000",
        ));
    }
    let max_active_per_caller = share(
        "watch.max_active_per_caller",
        raw.max_active_per_caller,
        max_active,
        "watch.max_active",
    )?;
    Ok(WatchConfig {
        poll_interval: duration_or(
            "watch.poll_interval",
            raw.poll_interval,
            Duration::from_secs(5),
            Duration::from_secs(HOUR),
        )?,
        max_duration: duration_or(
            "watch.max_duration",
            raw.max_duration,
            Duration::from_secs(HOUR),
            Duration::from_secs(DAY),
        )?,
        max_active,
        max_active_per_caller,
    })
}
