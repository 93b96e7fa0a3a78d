//! `[alibaba]`: the default region, the endpoint, signatures, timeouts and retries of the
//! Alibaba Cloud client. Plain values: the client builds its own types from them.

use std::time::Duration;

use serde::Deserialize;

use super::regions;
use super::value::{ConfigError, MINUTE, duration, duration_or, invalid};

/// Engine versions accepted when `alibaba.engine_versions` is not set.
pub(crate) const DEFAULT_ENGINE_VERSIONS: &[&str] =
    &["3.4", "4.0", "4.2", "4.4", "5.0", "6.0", "7.0", "8.0"];
/// The default region when nothing says otherwise.
pub(crate) const DEFAULT_REGION: &str = "cn-hangzhou";

/// Which Alibaba Cloud signature the gateway sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureVersion {
    /// HMAC-SHA1, `SignatureVersion=1.0` (what Alibaba calls V2).
    V2,
    /// ACS3-HMAC-SHA256 (V3).
    V3,
}

#[derive(Debug, Clone)]
pub struct AlibabaConfig {
    /// The region used when a request names none.
    pub region_id: String,
    /// Overrides the endpoint table for every region (private endpoint, test double).
    pub endpoint: Option<reqwest::Url>,
    pub signature_version: SignatureVersion,
    /// The engine versions a request may ask for.
    pub engine_versions: Vec<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Check the instance (`Describe*`) before upgrading and for `validate_only`.
    pub preflight: bool,
    /// Retries of Alibaba calls (`max_attempts`, `retry_base_delay`, `retry_max_delay`).
    pub retry: RetryConfig,
    /// The account-wide budget of calls, per region (`[alibaba.quota]`).
    pub quota: super::quota::QuotaConfig,
}

/// How often and how patiently Alibaba calls are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts in all, the first included; 1 means never retry.
    pub max_attempts: u32,
    /// The backoff ceiling of the first retry; it doubles for each later one.
    pub base_delay: Duration,
    /// The largest backoff ceiling.
    pub max_delay: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(20),
        }
    }
}

/// `[alibaba]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlibaba {
    region_id: Option<String>,
    endpoint: Option<String>,
    signature_version: Option<String>,
    engine_versions: Option<Vec<String>>,
    connect_timeout: Option<String>,
    read_timeout: Option<String>,
    preflight: Option<bool>,
    max_attempts: Option<u64>,
    retry_base_delay: Option<String>,
    retry_max_delay: Option<String>,
    #[serde(default)]
    quota: super::quota::RawQuota,
}

pub(super) fn check(raw: RawAlibaba) -> Result<AlibabaConfig, ConfigError> {
    let endpoint = raw
        .endpoint
        .filter(|e| !e.trim().is_empty())
        .map(|e| parse_endpoint(&e))
        .transpose()?;
    let region_id = raw.region_id.unwrap_or_else(|| DEFAULT_REGION.to_string());
    if let Err(problem) = regions::check_region(&region_id, endpoint.is_some()) {
        return Err(invalid("alibaba.region_id", problem));
    }
    let signature_version = match raw.signature_version.as_deref() {
        None | Some("v2") => SignatureVersion::V2,
        Some("v3") => SignatureVersion::V3,
        Some(other) => {
            return Err(invalid(
                "alibaba.signature_version",
                format!("expected \"v2\" or \"v3\", got {other:?}"),
            ));
        }
    };
    let engine_versions = raw.engine_versions.unwrap_or_else(|| {
        DEFAULT_ENGINE_VERSIONS
            .iter()
            .map(ToString::to_string)
            .collect()
    });
    if engine_versions.is_empty() {
        return Err(invalid(
            "alibaba.engine_versions",
            "expected at least one version",
        ));
    }
    if let Some(bad) = engine_versions.iter().find(|v| !is_version(v)) {
        return Err(invalid(
            "alibaba.engine_versions",
            format!("expected versions such as \"4.4\", got {bad:?}"),
        ));
    }
    Ok(AlibabaConfig {
        region_id,
        endpoint,
        signature_version,
        engine_versions,
        connect_timeout: duration(
            "alibaba.connect_timeout",
            raw.connect_timeout,
            5,
            5 * MINUTE,
        )?,
        read_timeout: duration("alibaba.read_timeout", raw.read_timeout, 10, 10 * MINUTE)?,
        preflight: raw.preflight.unwrap_or(true),
        retry: retry(raw.max_attempts, raw.retry_base_delay, raw.retry_max_delay)?,
        quota: super::quota::check(raw.quota)?,
    })
}

fn retry(
    max_attempts: Option<u64>,
    base_delay: Option<String>,
    max_delay: Option<String>,
) -> Result<RetryConfig, ConfigError> {
    let defaults = RetryConfig::default();
    let max_attempts = match max_attempts {
        None => defaults.max_attempts,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| (1..=10).contains(n))
            .ok_or_else(|| {
                invalid(
                    "alibaba.max_attempts",
                    "expected a number of attempts between 1 (never retry) and 10",
                )
            })?,
    };
    Ok(RetryConfig {
        max_attempts,
        base_delay: duration_or(
            "alibaba.retry_base_delay",
            base_delay,
            defaults.base_delay,
            Duration::from_secs(MINUTE),
        )?,
        max_delay: duration_or(
            "alibaba.retry_max_delay",
            max_delay,
            defaults.max_delay,
            Duration::from_secs(10 * MINUTE),
        )?,
    })
}

/// `major.minor` with digits only, e.g. `4.4`.
fn is_version(v: &str) -> bool {
    let mut parts = v.split('.');
    let digits = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

fn parse_endpoint(value: &str) -> Result<reqwest::Url, ConfigError> {
    let url = reqwest::Url::parse(value.trim()).map_err(|e| {
        invalid(
            "alibaba.endpoint",
            format!("expected a URL such as https://mongodb.aliyuncs.com ({e})"),
        )
    })?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(invalid(
            "alibaba.endpoint",
            "expected an http or https URL with a host",
        ));
    }
    if url.query().is_some() || url.path() != "/" || !url.username().is_empty() {
        return Err(invalid(
            "alibaba.endpoint",
            "expected only scheme, host and port (no path, query or user)",
        ));
    }
    Ok(url)
}
