//! `[idempotency]`: how long `request_id` keys are kept, and how many at most.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, DAY, duration_or, invalid};

/// `[idempotency]`: how long `request_id` keys are kept, and how many at most.
#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    pub retention: Duration,
    pub max_keys: usize,
}

/// `[idempotency]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdempotency {
    retention: Option<String>,
    max_keys: Option<usize>,
}

pub(super) fn check(raw: RawIdempotency) -> Result<IdempotencyConfig, ConfigError> {
    let max_keys = raw.max_keys.unwrap_or(100_000);
    if !(1..=100_000_000).contains(&max_keys) {
        return Err(invalid(
            "idempotency.max_keys",
            "expected a number of keys between 1 and 100000000",
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
    })
}
