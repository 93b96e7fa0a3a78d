//! `[idempotency]`: how long `request_id` keys are kept, and how many at most.

use std::time::Duration;

use serde::Deserialize;

use super::value::{ConfigError, DAY, duration_or, invalid};

/// `[idempotency]`: how long `request_id` keys are kept, and how many at most.
#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    pub retention: Duration,
    pub max_keys: usize,
    /// Keys one caller may hold at once, so that a noisy caller is refused before the others.
    pub max_keys_per_caller: usize,
    /// How long after an upgrade call with an unknown outcome a retry with its key only looks
    /// at the instance, because Alibaba's view of it may still lag its own action.
    pub settle_window: Duration,
}

/// `[idempotency]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdempotency {
    retention: Option<String>,
    max_keys: Option<usize>,
    max_keys_per_caller: Option<usize>,
    settle_window: Option<String>,
}

/// `callers`: how many callers are configured, who split the store evenly by default.
pub(super) fn check(raw: RawIdempotency, callers: usize) -> Result<IdempotencyConfig, ConfigError> {
    let max_keys = raw.max_keys.unwrap_or(100_000);
    if !(1..=100_000_000).contains(&max_keys) {
        return Err(invalid(
            "idempotency.max_keys",
            "expected a number of keys between 1 and 100000000",
        ));
    }
    // A fair share by default: the configured callers split the store evenly.
    let max_keys_per_caller = raw.max_keys_per_caller.unwrap_or(max_keys / callers.max(1));
    if !(1..=max_keys).contains(&max_keys_per_caller) {
        return Err(invalid(
            "idempotency.max_keys_per_caller",
            format!("expected a number of keys between 1 and idempotency.max_keys ({max_keys})"),
        ));
    }
    Ok(IdempotencyConfig {
        retention: duration_or(
            "idempotency.retention",
            raw.retention,
            Duration::from_secs(DAY),
            Duration::from_secs(30 * DAY),
        )?,
        max_keys,
        max_keys_per_caller,
        settle_window: duration_or(
            "idempotency.settle_window",
            raw.settle_window,
            Duration::from_secs(120),
            Duration::from_secs(DAY),
        )?,
    })
}

/// Refuses timings that cannot keep the guarantee with claims of `lease` (`state.lease`): a
/// send's settle window must outlast a lease, so that a lapsed holder's send is still looked
/// at, and a key must be kept through a lease and the settle window after it.
pub(super) fn check_timings(
    idempotency: &IdempotencyConfig,
    lease: Duration,
) -> Result<(), ConfigError> {
    if idempotency.settle_window < lease {
        return Err(invalid(
            "idempotency.settle_window",
            format!(
                "{} is shorter than state.lease ({}): a send whose holder lapsed would be forgotten before anyone could look at it",
                humantime::format_duration(idempotency.settle_window),
                humantime::format_duration(lease),
            ),
        ));
    }
    let needed = lease + idempotency.settle_window;
    if idempotency.retention < needed {
        return Err(invalid(
            "idempotency.retention",
            format!(
                "{} is shorter than state.lease + idempotency.settle_window ({}): a key could be forgotten while its outcome is unknown",
                humantime::format_duration(idempotency.retention),
                humantime::format_duration(needed),
            ),
        ));
    }
    Ok(())
}
