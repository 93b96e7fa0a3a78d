//! Configuration: one TOML file, every scalar key overridable from the environment
//! (`DDS_GATEWAY_<SECTION>_<KEY>`), then command-line flags. Built and checked once at start-up;
//! a wrong or missing value is an error that names the key and what is expected.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::alibaba::endpoint;

/// Engine versions accepted when `alibaba.engine_versions` is not set.
pub const DEFAULT_ENGINE_VERSIONS: &[&str] =
    &["3.4", "4.0", "4.2", "4.4", "5.0", "6.0", "7.0", "8.0"];
/// Where the gateway listens when nothing says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// The default region when nothing says otherwise.
pub const DEFAULT_REGION: &str = "cn-hangzhou";

/// Prefix of the environment variables that override file keys.
pub const ENV_PREFIX: &str = "DDS_GATEWAY_";

/// A configuration problem, naming the key (or variable) and what is expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Which Alibaba Cloud signature the gateway sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureVersion {
    /// HMAC-SHA1, `SignatureVersion=1.0` (what Alibaba calls V2).
    V2,
    /// ACS3-HMAC-SHA256 (V3).
    V3,
}

/// The whole, checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub alibaba: AlibabaConfig,
    pub idempotency: IdempotencyConfig,
    pub watch: WatchConfig,
    pub callers: Vec<CallerConfig>,
}

/// `[idempotency]`: how long `request_id` keys are kept, and how many at most.
#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    pub retention: Duration,
    pub max_keys: usize,
}

/// `[watch]`: `WatchUpgrade` polling.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// How often a watch reads the instance.
    pub poll_interval: Duration,
    /// Upper bound on one watch, whatever deadline the caller sets.
    pub max_duration: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Largest request message accepted; larger ones are refused before decoding.
    pub max_request_bytes: usize,
    /// Upper bound on one RPC, whatever deadline the caller sets.
    pub request_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight calls.
    pub shutdown_grace: Duration,
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
    pub retry: crate::alibaba::retry::RetryPolicy,
}

/// A `[[callers]]` entry (authentication and policy arrive with the callers issue).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    pub name: String,
    pub token_sha256: String,
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub instances: Vec<String>,
    #[serde(default)]
    pub engine_versions: Option<Vec<String>>,
}

/// The file as written: every key optional, so environment and defaults can fill in.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    alibaba: RawAlibaba,
    #[serde(default)]
    idempotency: RawIdempotency,
    #[serde(default)]
    watch: RawWatch,
    #[serde(default)]
    callers: Vec<CallerConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdempotency {
    retention: Option<String>,
    max_keys: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    poll_interval: Option<String>,
    max_duration: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    max_request_bytes: Option<usize>,
    request_timeout: Option<String>,
    shutdown_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlibaba {
    region_id: Option<String>,
    endpoint: Option<String>,
    signature_version: Option<String>,
    engine_versions: Option<Vec<String>>,
    connect_timeout: Option<String>,
    read_timeout: Option<String>,
    preflight: Option<bool>,
    max_attempts: Option<u32>,
    retry_base_delay: Option<String>,
    retry_max_delay: Option<String>,
}

/// Values from the command line, which win over file and environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
}

impl Config {
    /// Reads the optional file, applies `DDS_GATEWAY_*` variables from `env`, then `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        let origin = file.map_or_else(|| "(none)".to_string(), |p| p.display().to_string());
        Self::from_toml(&text, &origin, env, overrides)
    }

    /// Like [`Config::load`] with the file's text given.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.message().to_string() + &span_hint(text, e.span()),
        })?;
        apply_env(&mut raw, &env)?;
        if let Some(listen) = &overrides.listen {
            raw.server.listen = Some(listen.clone());
        }
        Self::check(raw)
    }

    fn check(raw: RawConfig) -> Result<Self, ConfigError> {
        let listen = raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!("expected an IP address and port such as {DEFAULT_LISTEN}, got {listen:?}"),
            )
        })?;
        let max_request_bytes = raw.server.max_request_bytes.unwrap_or(64 * 1024);
        if !(1024..=4 * 1024 * 1024).contains(&max_request_bytes) {
            return Err(invalid(
                "server.max_request_bytes",
                "expected a size between 1024 and 4194304 bytes",
            ));
        }
        let server = ServerConfig {
            listen,
            max_request_bytes,
            request_timeout: duration("server.request_timeout", raw.server.request_timeout, 60)?,
            shutdown_grace: duration("server.shutdown_grace", raw.server.shutdown_grace, 30)?,
        };

        let endpoint = raw
            .alibaba
            .endpoint
            .filter(|e| !e.trim().is_empty())
            .map(|e| parse_endpoint(&e))
            .transpose()?;
        let region_id = raw
            .alibaba
            .region_id
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        if let Err(problem) = endpoint::check_region(&region_id, endpoint.is_some()) {
            return Err(invalid("alibaba.region_id", problem));
        }
        let signature_version = match raw.alibaba.signature_version.as_deref() {
            None | Some("v2") => SignatureVersion::V2,
            Some("v3") => SignatureVersion::V3,
            Some(other) => {
                return Err(invalid(
                    "alibaba.signature_version",
                    format!("expected \"v2\" or \"v3\", got {other:?}"),
                ));
            }
        };
        let engine_versions = raw.alibaba.engine_versions.unwrap_or_else(|| {
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
        let alibaba = AlibabaConfig {
            region_id,
            endpoint,
            signature_version,
            engine_versions,
            connect_timeout: duration("alibaba.connect_timeout", raw.alibaba.connect_timeout, 5)?,
            read_timeout: duration("alibaba.read_timeout", raw.alibaba.read_timeout, 10)?,
            preflight: raw.alibaba.preflight.unwrap_or(true),
            retry: retry_policy(
                raw.alibaba.max_attempts,
                raw.alibaba.retry_base_delay,
                raw.alibaba.retry_max_delay,
            )?,
        };
        let max_keys = raw.idempotency.max_keys.unwrap_or(100_000);
        if !(1..=100_000_000).contains(&max_keys) {
            return Err(invalid(
                "idempotency.max_keys",
                "expected a number of keys between 1 and 100000000",
            ));
        }
        let idempotency = IdempotencyConfig {
            retention: duration_or(
                "idempotency.retention",
                raw.idempotency.retention,
                Duration::from_secs(24 * 3600),
            )?,
            max_keys,
        };
        let watch = WatchConfig {
            poll_interval: duration_or(
                "watch.poll_interval",
                raw.watch.poll_interval,
                Duration::from_secs(5),
            )?,
            max_duration: duration_or(
                "watch.max_duration",
                raw.watch.max_duration,
                Duration::from_secs(3600),
            )?,
        };
        Ok(Self {
            server,
            alibaba,
            idempotency,
            watch,
            callers: raw.callers,
        })
    }
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

fn retry_policy(
    max_attempts: Option<u32>,
    base_delay: Option<String>,
    max_delay: Option<String>,
) -> Result<crate::alibaba::retry::RetryPolicy, ConfigError> {
    let defaults = crate::alibaba::retry::RetryPolicy::default();
    let max_attempts = max_attempts.unwrap_or(defaults.max_attempts);
    if !(1..=10).contains(&max_attempts) {
        return Err(invalid(
            "alibaba.max_attempts",
            "expected a number of attempts between 1 (never retry) and 10",
        ));
    }
    Ok(crate::alibaba::retry::RetryPolicy {
        max_attempts,
        base_delay: duration_or("alibaba.retry_base_delay", base_delay, defaults.base_delay)?,
        max_delay: duration_or("alibaba.retry_max_delay", max_delay, defaults.max_delay)?,
    })
}

fn duration(key: &str, value: Option<String>, default_secs: u64) -> Result<Duration, ConfigError> {
    duration_or(key, value, Duration::from_secs(default_secs))
}

fn duration_or(
    key: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let parsed = humantime::parse_duration(value.trim()).map_err(|_| {
        invalid(
            key,
            format!("expected a duration such as \"10s\" or \"500ms\", got {value:?}"),
        )
    })?;
    if parsed.is_zero() {
        return Err(invalid(key, "expected a duration greater than zero"));
    }
    Ok(parsed)
}

/// Environment variables override file values: `DDS_GATEWAY_SERVER_LISTEN`,
/// `DDS_GATEWAY_ALIBABA_REGION_ID`, ...; lists are comma-separated.
fn apply_env(
    raw: &mut RawConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let var = |key: &str| env(&format!("{ENV_PREFIX}{key}")).filter(|v| !v.is_empty());
    let set = |slot: &mut Option<String>, key: &str| {
        if let Some(v) = var(key) {
            *slot = Some(v);
        }
    };
    set(&mut raw.server.listen, "SERVER_LISTEN");
    set(&mut raw.server.request_timeout, "SERVER_REQUEST_TIMEOUT");
    set(&mut raw.server.shutdown_grace, "SERVER_SHUTDOWN_GRACE");
    set(&mut raw.alibaba.region_id, "ALIBABA_REGION_ID");
    set(&mut raw.alibaba.endpoint, "ALIBABA_ENDPOINT");
    set(
        &mut raw.alibaba.signature_version,
        "ALIBABA_SIGNATURE_VERSION",
    );
    set(&mut raw.alibaba.connect_timeout, "ALIBABA_CONNECT_TIMEOUT");
    set(&mut raw.alibaba.read_timeout, "ALIBABA_READ_TIMEOUT");
    if let Some(v) = var("SERVER_MAX_REQUEST_BYTES") {
        // An unparsable number becomes 0, which the range check reports with the key's name.
        raw.server.max_request_bytes = Some(v.trim().parse().unwrap_or(0));
    }
    if let Some(v) = var("ALIBABA_ENGINE_VERSIONS") {
        raw.alibaba.engine_versions = Some(
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        );
    }
    set(
        &mut raw.alibaba.retry_base_delay,
        "ALIBABA_RETRY_BASE_DELAY",
    );
    set(&mut raw.alibaba.retry_max_delay, "ALIBABA_RETRY_MAX_DELAY");
    set(&mut raw.idempotency.retention, "IDEMPOTENCY_RETENTION");
    set(&mut raw.watch.poll_interval, "WATCH_POLL_INTERVAL");
    set(&mut raw.watch.max_duration, "WATCH_MAX_DURATION");
    if let Some(v) = var("ALIBABA_MAX_ATTEMPTS") {
        raw.alibaba.max_attempts = Some(v.trim().parse().unwrap_or(0));
    }
    if let Some(v) = var("IDEMPOTENCY_MAX_KEYS") {
        raw.idempotency.max_keys = Some(v.trim().parse().unwrap_or(0));
    }
    if let Some(v) = var("ALIBABA_PREFLIGHT") {
        raw.alibaba.preflight = Some(match v.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            other => {
                return Err(invalid(
                    "alibaba.preflight",
                    format!(
                        "expected true or false in {ENV_PREFIX}ALIBABA_PREFLIGHT, got {other:?}"
                    ),
                ));
            }
        });
    }
    Ok(())
}

/// ` (line N)` for a TOML error span, so the message points into the file.
fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| {
        let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
        format!(" (line {line})")
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_toml(
            text,
            "test.toml",
            |k| env.get(k).cloned(),
            &Overrides::default(),
        )
    }

    #[test]
    fn defaults_need_no_file() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.alibaba.region_id, "cn-hangzhou");
        assert_eq!(config.alibaba.signature_version, SignatureVersion::V2);
        assert_eq!(config.alibaba.engine_versions.len(), 8);
        assert!(config.alibaba.endpoint.is_none());
    }

    #[test]
    fn reads_the_contract_keys() {
        let config = load(
            r#"
            [server]
            listen = "0.0.0.0:6000"
            [alibaba]
            region_id = "cn-shenzhen"
            endpoint = "https://mongodb.example.internal"
            signature_version = "v3"
            [[callers]]
            name = "billing-service"
            token_sha256 = "00"
            regions = ["cn-hangzhou"]
            instances = ["dds-bp1*"]
            engine_versions = ["4.4", "5.0"]
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(config.server.listen.port(), 6000);
        assert_eq!(config.alibaba.region_id, "cn-shenzhen");
        assert_eq!(config.alibaba.signature_version, SignatureVersion::V3);
        assert_eq!(config.callers[0].name, "billing-service");
        assert_eq!(
            config.alibaba.endpoint.unwrap().as_str(),
            "https://mongodb.example.internal/"
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = load(
            "[alibaba]\nregion_id = \"cn-shenzhen\"\n",
            &[
                ("DDS_GATEWAY_ALIBABA_REGION_ID", "cn-beijing"),
                ("DDS_GATEWAY_ALIBABA_ENGINE_VERSIONS", "5.0, 6.0"),
                ("DDS_GATEWAY_SERVER_LISTEN", "127.0.0.1:7000"),
            ],
        )
        .unwrap();
        assert_eq!(config.alibaba.region_id, "cn-beijing");
        assert_eq!(config.alibaba.engine_versions, ["5.0", "6.0"]);
        assert_eq!(config.server.listen.port(), 7000);
    }

    #[test]
    fn errors_name_the_key_and_the_expectation() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            ("[server]\nlisten = \"nowhere\"", &[], "server.listen"),
            (
                "[alibaba]\nsignature_version = \"v9\"",
                &[],
                "alibaba.signature_version",
            ),
            (
                "[alibaba]\nregion_id = \"mars-1\"",
                &[],
                "alibaba.region_id",
            ),
            ("[alibaba]\nendpoint = \"ftp://x\"", &[], "alibaba.endpoint"),
            (
                "[alibaba]\nendpoint = \"https://x/path?q\"",
                &[],
                "alibaba.endpoint",
            ),
            (
                "[alibaba]\nread_timeout = \"soon\"",
                &[],
                "alibaba.read_timeout",
            ),
            (
                "[alibaba]\nengine_versions = [\"latest\"]",
                &[],
                "alibaba.engine_versions",
            ),
            (
                "",
                &[("DDS_GATEWAY_SERVER_MAX_REQUEST_BYTES", "lots")],
                "server.max_request_bytes",
            ),
            ("[alibaba]\nregoin_id = \"cn-hangzhou\"", &[], "regoin_id"),
            ("[server]\nlisten = 5", &[], "line 2"),
        ];
        for (text, env, expected) in cases {
            let message = load(text, env).unwrap_err().to_string();
            assert!(message.contains(expected), "{text:?}: {message}");
        }
    }

    #[test]
    fn reads_the_safe_upgrade_keys_from_file_and_environment() {
        let config = load("", &[]).unwrap();
        assert!(config.alibaba.preflight);
        assert_eq!(config.alibaba.retry.max_attempts, 3);
        assert_eq!(config.idempotency.retention, Duration::from_secs(86400));
        assert_eq!(config.watch.poll_interval, Duration::from_secs(5));
        let config = load(
            r#"
            [alibaba]
            preflight = false
            max_attempts = 5
            retry_base_delay = "50ms"
            retry_max_delay = "2s"
            [idempotency]
            retention = "1h"
            max_keys = 10
            [watch]
            poll_interval = "1s"
            max_duration = "10m"
            "#,
            &[
                ("DDS_GATEWAY_ALIBABA_PREFLIGHT", "true"),
                ("DDS_GATEWAY_IDEMPOTENCY_RETENTION", "2h"),
                ("DDS_GATEWAY_ALIBABA_MAX_ATTEMPTS", "1"),
            ],
        )
        .unwrap();
        assert!(config.alibaba.preflight);
        assert_eq!(config.alibaba.retry.max_attempts, 1);
        assert_eq!(config.alibaba.retry.base_delay, Duration::from_millis(50));
        assert_eq!(config.alibaba.retry.max_delay, Duration::from_secs(2));
        assert_eq!(config.idempotency.retention, Duration::from_secs(7200));
        assert_eq!(config.idempotency.max_keys, 10);
        assert_eq!(config.watch.max_duration, Duration::from_secs(600));
        for (text, env, key) in [
            (
                "[alibaba]\nmax_attempts = 0",
                &[][..],
                "alibaba.max_attempts",
            ),
            (
                "",
                &[("DDS_GATEWAY_ALIBABA_PREFLIGHT", "maybe")][..],
                "alibaba.preflight",
            ),
            (
                "[idempotency]\nretention = \"forever\"",
                &[][..],
                "idempotency.retention",
            ),
            (
                "",
                &[("DDS_GATEWAY_IDEMPOTENCY_MAX_KEYS", "many")][..],
                "idempotency.max_keys",
            ),
            (
                "[watch]\npoll_interval = \"0s\"",
                &[][..],
                "watch.poll_interval",
            ),
        ] {
            let message = load(text, env).unwrap_err().to_string();
            assert!(message.contains(key), "{text:?}: {message}");
        }
    }

    #[test]
    fn an_explicit_endpoint_allows_any_well_formed_region() {
        let config = load(
            "[alibaba]\nregion_id = \"xx-private-1\"\nendpoint = \"http://127.0.0.1:9\"",
            &[],
        )
        .unwrap();
        assert_eq!(config.alibaba.region_id, "xx-private-1");
    }
}
