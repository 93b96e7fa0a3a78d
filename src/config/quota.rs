//! `[alibaba.quota]`: the account-wide budget of calls to Alibaba, per region, shared by every
//! replica through the state store.

use serde::Deserialize;

use super::value::{ConfigError, invalid};

/// `[alibaba.quota]`: how many calls to Alibaba one region may take, across all replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Calls started in any one second (a sliding window).
    pub calls_per_second: u32,
    /// Calls open (sent, not yet answered) at once.
    pub max_in_flight: u32,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            calls_per_second: 20,
            max_in_flight: 10,
        }
    }
}

/// `[alibaba.quota]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuota {
    calls_per_second: Option<u64>,
    max_in_flight: Option<u64>,
}

/// The largest value of either key: far beyond any account's Alibaba quota.
const MAX: u64 = 100_000;

pub(super) fn check(raw: RawQuota) -> Result<QuotaConfig, ConfigError> {
    let defaults = QuotaConfig::default();
    let read = |key: &str, value: Option<u64>, default: u32| -> Result<u32, ConfigError> {
        match value {
            None => Ok(default),
            Some(n) if (1..=MAX).contains(&n) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
            Some(_) => Err(invalid(key, format!("expected a number from 1 to {MAX}"))),
        }
    };
    Ok(QuotaConfig {
        calls_per_second: read(
            "alibaba.quota.calls_per_second",
            raw.calls_per_second,
            defaults.calls_per_second,
        )?,
        max_in_flight: read(
            "alibaba.quota.max_in_flight",
            raw.max_in_flight,
            defaults.max_in_flight,
        )?,
    })
}
