//! Configuration: one TOML file, every scalar key overridable from the environment
//! (`DDS_GATEWAY_<SECTION>_<KEY>`), then command-line flags. Built and checked once at start-up;
//! a wrong or missing value is an error that names the key and what is expected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

/// A caller's sustained calls per second when `rate_per_second` is not set.
pub const DEFAULT_CALLER_RATE: f64 = 5.0;
/// A caller's burst when `burst` is not set.
pub const DEFAULT_CALLER_BURST: u32 = 10;

/// Seconds in a minute, an hour, a day: the bounds of duration keys.
const MINUTE: u64 = 60;
const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

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
    /// Where idempotency keys, upgrade locks and caller buckets live.
    pub state: StateConfig,
    pub callers: Vec<CallerConfig>,
    pub credentials: CredentialsConfig,
    /// Traces, metrics and logs (issue 4).
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// The audit trail (issue 4).
    pub audit: crate::telemetry::AuditConfig,
    /// The file this came from, re-read when the callers are reloaded.
    pub file: Option<PathBuf>,
}

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

/// `[state]`: the store of idempotency keys, per-instance upgrade locks and caller buckets.
#[derive(Debug, Clone)]
pub struct StateConfig {
    pub store: StoreKind,
    /// `state.redis_url`, with its password: a secret.
    pub redis_url: Option<crate::state::RedisUrl>,
    /// Put before every Redis key, so that several gateways can share one Redis.
    pub key_prefix: String,
    /// How long a claim lives without renewal: how long after its owner died a key waits.
    pub lease: Duration,
}

/// `state.store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// This process's memory: one replica.
    Memory,
    /// A Redis shared by every replica.
    Redis,
}

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

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Largest request message accepted; larger ones are refused before decoding.
    pub max_request_bytes: usize,
    /// Upper bound on one RPC, whatever deadline the caller sets.
    pub request_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight calls.
    pub shutdown_grace: Duration,
    /// Calls served at once; more are shed with UNAVAILABLE at once, never queued.
    pub max_in_flight: usize,
    /// Calls one caller may have in flight at once (default: half of `max_in_flight`, at least 1).
    pub max_in_flight_per_caller: usize,
    /// Connections open at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// How long a new connection may take to send the HTTP/2 preface before it is closed.
    pub preface_timeout: Duration,
    /// TLS for the listener: certificate chain and key (PEM); mTLS when `client_ca` is set.
    pub tls: Option<TlsConfig>,
    /// How often the config file is checked for changed `[[callers]]`.
    pub reload_interval: Duration,
    /// A second file of `[[callers]]` (e.g. a mounted Kubernetes Secret), added to the config
    /// file's callers and reloaded like them.
    pub callers_file: Option<PathBuf>,
    /// After this long a connection is asked to go away (HTTP/2 GOAWAY): its calls in flight
    /// finish and the client reconnects, so clients spread over new replicas. `None`: never.
    pub max_connection_age: Option<Duration>,
    /// How long calls in flight may go on after `max_connection_age`; then the connection is
    /// closed.
    pub max_connection_age_grace: Duration,
    /// At shutdown, how long the gateway keeps serving (health already `NOT_SERVING`) before it
    /// stops accepting connections, so that balancers and health-checking clients move away.
    pub shutdown_delay: Duration,
}

/// `server.tls_cert`, `server.tls_key`, `server.client_ca`: PEM files.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates signed by this CA identify callers by subject CN or SAN.
    pub client_ca: Option<PathBuf>,
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

/// Which source of Alibaba Cloud credentials the gateway uses (`credentials.provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// The official chain: environment, OIDC role, CLI profile, credentials file, ECS RAM role,
    /// credentials URI; the first that answers is kept.
    Default,
    Environment,
    OidcRoleArn,
    CliProfile,
    Profile,
    RamRoleArn,
    EcsRamRole,
    CredentialsUri,
}

impl ProviderKind {
    const NAMES: &[(&str, ProviderKind)] = &[
        ("default", ProviderKind::Default),
        ("environment", ProviderKind::Environment),
        ("oidc_role_arn", ProviderKind::OidcRoleArn),
        ("cli_profile", ProviderKind::CliProfile),
        ("profile", ProviderKind::Profile),
        ("ram_role_arn", ProviderKind::RamRoleArn),
        ("ecs_ram_role", ProviderKind::EcsRamRole),
        ("credentials_uri", ProviderKind::CredentialsUri),
    ];
}

/// `[credentials]`: where the gateway's own Alibaba Cloud credentials come from. Unset keys fall
/// back to the official `ALIBABA_CLOUD_*` variables, then to the official defaults.
#[derive(Debug, Clone)]
pub struct CredentialsConfig {
    pub provider: ProviderKind,
    /// Profile name in the credentials file or CLI config (`ALIBABA_CLOUD_PROFILE`).
    pub profile: Option<String>,
    /// The INI credentials file (`ALIBABA_CLOUD_CREDENTIALS_FILE`).
    pub credentials_file: Option<PathBuf>,
    /// The Aliyun CLI config (`ALIBABA_CLOUD_CONFIG_FILE`).
    pub cli_config_file: Option<PathBuf>,
    /// For `ram_role_arn`, and for `oidc_role_arn` (`ALIBABA_CLOUD_ROLE_ARN`).
    pub role_arn: Option<String>,
    pub role_session_name: Option<String>,
    pub oidc_provider_arn: Option<String>,
    pub oidc_token_file: Option<PathBuf>,
    /// The ECS RAM role (`ALIBABA_CLOUD_ECS_METADATA`); discovered when unset.
    pub ecs_role_name: Option<String>,
    pub imdsv1_disabled: Option<bool>,
    /// May carry a token in its query, hence a secret.
    pub credentials_uri: Option<crate::credentials::Secret>,
    pub sts_endpoint: Option<reqwest::Url>,
    pub imds_endpoint: Option<reqwest::Url>,
    /// How long assumed-role sessions last (STS `DurationSeconds`, 15 min to 12 h).
    pub session_duration: Duration,
    /// How long before expiry temporary credentials are refreshed.
    pub refresh_ahead: Duration,
    /// How often credential files are checked for changes.
    pub file_poll_interval: Duration,
}

/// A `[[callers]]` entry: who may call (a bearer token's SHA-256, or a client certificate naming
/// `name`) and what it may do (deny by default; see [`crate::policy`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    pub name: String,
    /// Lowercase hex SHA-256 of the bearer token; absent for a caller known only by certificate.
    #[serde(default)]
    pub token_sha256: Option<String>,
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub instances: Vec<String>,
    #[serde(default)]
    pub engine_versions: Option<Vec<String>>,
    /// The caller may only send `validate_only` requests.
    #[serde(default)]
    pub validate_only: bool,
    /// A verified client certificate naming the caller identifies it (mTLS). Off by default:
    /// a certificate never names a caller that did not opt in.
    #[serde(default)]
    pub mtls: bool,
    #[serde(default)]
    pub rate_per_second: Option<f64>,
    #[serde(default)]
    pub burst: Option<u32>,
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
    state: RawState,
    #[serde(default)]
    callers: Vec<CallerConfig>,
    #[serde(default)]
    credentials: RawCredentials,
    #[serde(default)]
    telemetry: crate::telemetry::config::RawTelemetry,
    #[serde(default)]
    audit: crate::telemetry::config::RawAudit,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    provider: Option<String>,
    profile: Option<String>,
    credentials_file: Option<String>,
    cli_config_file: Option<String>,
    role_arn: Option<String>,
    role_session_name: Option<String>,
    oidc_provider_arn: Option<String>,
    oidc_token_file: Option<String>,
    ecs_role_name: Option<String>,
    imdsv1_disabled: Option<bool>,
    credentials_uri: Option<String>,
    sts_endpoint: Option<String>,
    imds_endpoint: Option<String>,
    session_duration: Option<String>,
    refresh_ahead: Option<String>,
    file_poll_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdempotency {
    retention: Option<String>,
    max_keys: Option<usize>,
    max_keys_per_caller: Option<usize>,
    settle_window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    store: Option<String>,
    redis_url: Option<String>,
    key_prefix: Option<String>,
    lease: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    poll_interval: Option<String>,
    max_duration: Option<String>,
    max_active: Option<usize>,
    max_active_per_caller: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    max_request_bytes: Option<usize>,
    request_timeout: Option<String>,
    shutdown_grace: Option<String>,
    max_in_flight: Option<usize>,
    max_in_flight_per_caller: Option<usize>,
    max_connections: Option<usize>,
    preface_timeout: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    client_ca: Option<String>,
    reload_interval: Option<String>,
    callers_file: Option<String>,
    max_connection_age: Option<String>,
    max_connection_age_grace: Option<String>,
    shutdown_delay: Option<String>,
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
        let mut config = Self::from_toml(&text, &origin, env, overrides)?;
        config.file = file.map(Path::to_path_buf);
        Ok(config)
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
        // Telemetry reads the standard OTEL_* variables too, so it takes `env` itself.
        let telemetry = std::mem::take(&mut raw.telemetry).check(&env)?;
        let audit = std::mem::take(&mut raw.audit).check(&env);
        Ok(Self {
            telemetry,
            audit,
            ..Self::check(raw)?
        })
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
        let max_in_flight = raw.server.max_in_flight.unwrap_or(64);
        if !(1..=100_000).contains(&max_in_flight) {
            return Err(invalid(
                "server.max_in_flight",
                "expected a number of calls between 1 and 100000",
            ));
        }
        let max_in_flight_per_caller = share(
            "server.max_in_flight_per_caller",
            raw.server.max_in_flight_per_caller,
            max_in_flight,
            "server.max_in_flight",
        )?;
        let max_connections = raw.server.max_connections.unwrap_or(1024);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(invalid(
                "server.max_connections",
                "expected a number of connections between 1 and 1000000",
            ));
        }
        let server = ServerConfig {
            listen,
            max_request_bytes,
            request_timeout: duration(
                "server.request_timeout",
                raw.server.request_timeout,
                60,
                HOUR,
            )?,
            shutdown_grace: duration("server.shutdown_grace", raw.server.shutdown_grace, 30, HOUR)?,
            max_in_flight,
            max_in_flight_per_caller,
            max_connections,
            preface_timeout: duration(
                "server.preface_timeout",
                raw.server.preface_timeout,
                10,
                5 * MINUTE,
            )?,
            tls: tls(
                raw.server.tls_cert,
                raw.server.tls_key,
                raw.server.client_ca,
            )?,
            reload_interval: duration(
                "server.reload_interval",
                raw.server.reload_interval,
                5,
                DAY,
            )?,
            callers_file: raw
                .server
                .callers_file
                .filter(|p| !p.trim().is_empty())
                .map(PathBuf::from),
            max_connection_age: raw
                .server
                .max_connection_age
                .map(|age| duration("server.max_connection_age", Some(age), 0, DAY))
                .transpose()?,
            max_connection_age_grace: duration(
                "server.max_connection_age_grace",
                raw.server.max_connection_age_grace,
                60,
                HOUR,
            )?,
            shutdown_delay: match raw.server.shutdown_delay {
                // Zero is the default, and a valid choice: stop accepting at once.
                Some(delay)
                    if humantime::parse_duration(delay.trim()).is_ok_and(|d| d.is_zero()) =>
                {
                    Duration::ZERO
                }
                delay => duration("server.shutdown_delay", delay, 0, HOUR)?,
            },
        };
        let mut callers = raw.callers;
        if let Some(path) = &server.callers_file {
            callers.extend(read_callers_file(path)?);
        }

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
            connect_timeout: duration(
                "alibaba.connect_timeout",
                raw.alibaba.connect_timeout,
                5,
                5 * MINUTE,
            )?,
            read_timeout: duration(
                "alibaba.read_timeout",
                raw.alibaba.read_timeout,
                10,
                10 * MINUTE,
            )?,
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
        // A fair share by default: the configured callers split the store evenly.
        let max_keys_per_caller = raw
            .idempotency
            .max_keys_per_caller
            .unwrap_or(max_keys / callers.len().max(1));
        if !(1..=max_keys).contains(&max_keys_per_caller) {
            return Err(invalid(
                "idempotency.max_keys_per_caller",
                format!(
                    "expected a number of keys between 1 and idempotency.max_keys ({max_keys})"
                ),
            ));
        }
        let idempotency = IdempotencyConfig {
            retention: duration_or(
                "idempotency.retention",
                raw.idempotency.retention,
                Duration::from_secs(DAY),
                Duration::from_secs(30 * DAY),
            )?,
            max_keys,
            max_keys_per_caller,
            settle_window: duration_or(
                "idempotency.settle_window",
                raw.idempotency.settle_window,
                Duration::from_secs(120),
                Duration::from_secs(DAY),
            )?,
        };
        let state = check_state(raw.state)?;
        let max_active = raw.watch.max_active.unwrap_or(64);
        if !(1..=100_000).contains(&max_active) {
            return Err(invalid(
                "watch.max_active",
                "expected a number of watches between 1 and 100000",
            ));
        }
        let max_active_per_caller = share(
            "watch.max_active_per_caller",
            raw.watch.max_active_per_caller,
            max_active,
            "watch.max_active",
        )?;
        let watch = WatchConfig {
            poll_interval: duration_or(
                "watch.poll_interval",
                raw.watch.poll_interval,
                Duration::from_secs(5),
                Duration::from_secs(HOUR),
            )?,
            max_duration: duration_or(
                "watch.max_duration",
                raw.watch.max_duration,
                Duration::from_secs(HOUR),
                Duration::from_secs(DAY),
            )?,
            max_active,
            max_active_per_caller,
        };
        let client_certs = server.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        check_callers(&callers, &alibaba.engine_versions, client_certs)?;
        Ok(Self {
            server,
            alibaba,
            idempotency,
            watch,
            state,
            callers,
            credentials: check_credentials(raw.credentials)?,
            telemetry: crate::telemetry::TelemetryConfig::default(),
            audit: crate::telemetry::AuditConfig::default(),
            file: None,
        })
    }
}

/// One caller's share of a global limit: at most the limit, by default half of it (at least 1),
/// so that one caller cannot hold every place.
fn share(
    key: &str,
    value: Option<usize>,
    limit: usize,
    limit_key: &str,
) -> Result<usize, ConfigError> {
    let share = value.unwrap_or((limit / 2).max(1));
    if !(1..=limit).contains(&share) {
        return Err(invalid(
            key,
            format!("expected a number between 1 and {limit_key} ({limit})"),
        ));
    }
    Ok(share)
}

/// `server.callers_file`: a TOML file of `[[callers]]` tables and nothing else.
fn read_callers_file(path: &Path) -> Result<Vec<CallerConfig>, ConfigError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct CallersFile {
        #[serde(default)]
        callers: Vec<CallerConfig>,
    }
    let key = "server.callers_file";
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let file: CallersFile = toml::from_str(&text).map_err(|e| {
        invalid(
            key,
            format!(
                "{}: {}{} (only [[callers]] tables belong here)",
                path.display(),
                e.message(),
                span_hint(&text, e.span())
            ),
        )
    })?;
    Ok(file.callers)
}

fn check_credentials(raw: RawCredentials) -> Result<CredentialsConfig, ConfigError> {
    let provider = match raw.provider.as_deref().map(str::trim) {
        None | Some("") => ProviderKind::Default,
        Some(name) => ProviderKind::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, kind)| *kind)
            .ok_or_else(|| {
                let names: Vec<&str> = ProviderKind::NAMES.iter().map(|(n, _)| *n).collect();
                invalid(
                    "credentials.provider",
                    format!("expected one of {}, got {name:?}", names.join(", ")),
                )
            })?,
    };
    let text = |v: Option<String>| v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let path = |v: Option<String>| text(v).map(PathBuf::from);
    let url = |key: &str, v: Option<String>| {
        text(v)
            .map(|v| {
                let url = reqwest::Url::parse(&v)
                    .map_err(|e| invalid(key, format!("expected an http or https URL ({e})")))?;
                if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
                    return Err(invalid(key, "expected an http or https URL with a host"));
                }
                Ok(url)
            })
            .transpose()
    };
    let session_duration = duration(
        "credentials.session_duration",
        raw.session_duration,
        HOUR,
        12 * HOUR,
    )?;
    if !(Duration::from_secs(900)..=Duration::from_secs(12 * 3600)).contains(&session_duration) {
        return Err(invalid(
            "credentials.session_duration",
            "expected between 15m and 12h (STS DurationSeconds)",
        ));
    }
    Ok(CredentialsConfig {
        provider,
        profile: text(raw.profile),
        credentials_file: path(raw.credentials_file),
        cli_config_file: path(raw.cli_config_file),
        role_arn: text(raw.role_arn),
        role_session_name: text(raw.role_session_name),
        oidc_provider_arn: text(raw.oidc_provider_arn),
        oidc_token_file: path(raw.oidc_token_file),
        ecs_role_name: text(raw.ecs_role_name),
        imdsv1_disabled: raw.imdsv1_disabled,
        credentials_uri: text(raw.credentials_uri).map(crate::credentials::Secret::new),
        sts_endpoint: url("credentials.sts_endpoint", raw.sts_endpoint)?,
        imds_endpoint: url("credentials.imds_endpoint", raw.imds_endpoint)?,
        session_duration,
        refresh_ahead: duration(
            "credentials.refresh_ahead",
            raw.refresh_ahead,
            300,
            12 * HOUR,
        )?,
        file_poll_interval: duration(
            "credentials.file_poll_interval",
            raw.file_poll_interval,
            5,
            DAY,
        )?,
    })
}

// ---- [[callers]] and TLS (issue 5) ----

fn tls(
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
) -> Result<Option<TlsConfig>, ConfigError> {
    let path = |v: Option<String>| v.filter(|v| !v.trim().is_empty()).map(PathBuf::from);
    match (path(cert), path(key), path(client_ca)) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), client_ca) => Ok(Some(TlsConfig {
            cert,
            key,
            client_ca,
        })),
        (_, _, Some(_)) => Err(invalid(
            "server.client_ca",
            "client certificates need TLS: set server.tls_cert and server.tls_key too",
        )),
        (Some(_), None, None) => Err(invalid(
            "server.tls_key",
            "set together with server.tls_cert",
        )),
        (None, Some(_), None) => Err(invalid(
            "server.tls_cert",
            "set together with server.tls_key",
        )),
    }
}

/// Each caller is well-formed, distinct, and has a way to authenticate.
fn check_callers(
    callers: &[CallerConfig],
    engine_versions: &[String],
    client_certs: bool,
) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    let mut tokens = std::collections::HashSet::new();
    for (i, caller) in callers.iter().enumerate() {
        let key = |k: &str| format!("callers[{i}].{k}");
        let name = caller.name.trim();
        if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
            return Err(invalid(
                &key("name"),
                "expected a non-empty name of at most 256 characters",
            ));
        }
        if !names.insert(name) {
            return Err(invalid(&key("name"), format!("{name:?} names two callers")));
        }
        match &caller.token_sha256 {
            Some(hash) => {
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(
                        &key("token_sha256"),
                        "expected 64 hex digits, as printed by `dds-gateway hash-token`",
                    ));
                }
                if !tokens.insert(hash.to_ascii_lowercase()) {
                    return Err(invalid(
                        &key("token_sha256"),
                        "the same token is given to two callers",
                    ));
                }
            }
            None if !caller.mtls => {
                return Err(invalid(
                    &key("token_sha256"),
                    "required unless the caller authenticates with a client certificate (mtls = true)",
                ));
            }
            None => {}
        }
        if caller.mtls && !client_certs {
            return Err(invalid(
                &key("mtls"),
                "client certificates need server.client_ca (and TLS)",
            ));
        }
        if let Some(bad) = caller.regions.iter().find(|r| {
            r.is_empty()
                || !r
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        }) {
            return Err(invalid(
                &key("regions"),
                format!("expected region ids such as \"cn-hangzhou\", got {bad:?}"),
            ));
        }
        // Instance ids are lowercase letters, digits and `-`: a pattern with anything else
        // (an uppercase letter, a space) could never match, which silently denies everything.
        if let Some(bad) = caller.instances.iter().find(|p| {
            p.is_empty()
                || !p.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'*' | b'?')
                })
        }) {
            return Err(invalid(
                &key("instances"),
                format!(
                    "expected patterns of lowercase letters, digits, '-', '*' and '?' such as \"dds-bp1*\" (instance ids are lowercase), got {bad:?}"
                ),
            ));
        }
        if let Some(bad) = caller
            .engine_versions
            .iter()
            .flatten()
            .find(|v| !engine_versions.contains(v))
        {
            return Err(invalid(
                &key("engine_versions"),
                format!("{bad:?} is not one of alibaba.engine_versions"),
            ));
        }
        if caller
            .rate_per_second
            .is_some_and(|r| !(r.is_finite() && r > 0.0))
        {
            return Err(invalid(
                &key("rate_per_second"),
                "expected a number of calls per second greater than zero",
            ));
        }
        if caller.burst == Some(0) {
            return Err(invalid(&key("burst"), "expected at least 1"));
        }
    }
    Ok(())
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

/// `[state]`: a Redis store needs a URL it can use; its password never appears in the error.
fn check_state(raw: RawState) -> Result<StateConfig, ConfigError> {
    let store = match raw.store.as_deref().map(str::trim) {
        None | Some("memory") => StoreKind::Memory,
        Some("redis") => StoreKind::Redis,
        Some(other) => {
            return Err(invalid(
                "state.store",
                format!("expected \"memory\" or \"redis\", got {other:?}"),
            ));
        }
    };
    let redis_url = raw
        .redis_url
        .map(|url| crate::state::RedisUrl::parse(&url).map_err(|e| invalid("state.redis_url", e)))
        .transpose()?;
    if store == StoreKind::Redis && redis_url.is_none() {
        return Err(invalid(
            "state.redis_url",
            "required with state.store = \"redis\"",
        ));
    }
    let key_prefix = raw.key_prefix.unwrap_or_else(|| "dds-gateway:".to_string());
    if key_prefix.len() > 64
        || key_prefix.contains(['{', '}'])
        || key_prefix.chars().any(char::is_control)
    {
        return Err(invalid(
            "state.key_prefix",
            "expected at most 64 characters, without braces (they make Redis Cluster hash tags) or control characters",
        ));
    }
    let lease = duration_or(
        "state.lease",
        raw.lease,
        Duration::from_secs(30),
        Duration::from_secs(3600),
    )?;
    if lease < Duration::from_secs(1) {
        return Err(invalid("state.lease", "expected at least 1s"));
    }
    Ok(StateConfig {
        store,
        redis_url,
        key_prefix,
        lease,
    })
}

fn duration(
    key: &str,
    value: Option<String>,
    default_secs: u64,
    max_secs: u64,
) -> Result<Duration, ConfigError> {
    duration_or(
        key,
        value,
        Duration::from_secs(default_secs),
        Duration::from_secs(max_secs),
    )
}

/// A duration key's value: its default when unset, else greater than zero and at most `max`.
/// Every duration key has a bound, so that no deadline or timer computed from one can overflow.
fn duration_or(
    key: &str,
    value: Option<String>,
    default: Duration,
    max: Duration,
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
    if parsed > max {
        return Err(invalid(
            key,
            format!(
                "expected at most {}, got {value:?}",
                humantime::format_duration(max)
            ),
        ));
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
    set(&mut raw.server.tls_cert, "SERVER_TLS_CERT");
    set(&mut raw.server.tls_key, "SERVER_TLS_KEY");
    set(&mut raw.server.client_ca, "SERVER_CLIENT_CA");
    set(&mut raw.server.reload_interval, "SERVER_RELOAD_INTERVAL");
    set(&mut raw.server.callers_file, "SERVER_CALLERS_FILE");
    set(
        &mut raw.server.max_connection_age,
        "SERVER_MAX_CONNECTION_AGE",
    );
    set(
        &mut raw.server.max_connection_age_grace,
        "SERVER_MAX_CONNECTION_AGE_GRACE",
    );
    set(&mut raw.server.shutdown_delay, "SERVER_SHUTDOWN_DELAY");
    set(&mut raw.server.preface_timeout, "SERVER_PREFACE_TIMEOUT");
    // An unparsable number becomes 0, which the range checks report with the key's name.
    let number = |key: &str| var(key).map(|v| v.trim().parse().unwrap_or(0));
    for (slot, key) in [
        (&mut raw.server.max_in_flight, "SERVER_MAX_IN_FLIGHT"),
        (
            &mut raw.server.max_in_flight_per_caller,
            "SERVER_MAX_IN_FLIGHT_PER_CALLER",
        ),
        (&mut raw.server.max_connections, "SERVER_MAX_CONNECTIONS"),
        (
            &mut raw.watch.max_active_per_caller,
            "WATCH_MAX_ACTIVE_PER_CALLER",
        ),
    ] {
        if let Some(n) = number(key) {
            *slot = Some(n);
        }
    }
    set(&mut raw.alibaba.region_id, "ALIBABA_REGION_ID");
    set(&mut raw.alibaba.endpoint, "ALIBABA_ENDPOINT");
    set(
        &mut raw.alibaba.signature_version,
        "ALIBABA_SIGNATURE_VERSION",
    );
    set(&mut raw.alibaba.connect_timeout, "ALIBABA_CONNECT_TIMEOUT");
    set(&mut raw.alibaba.read_timeout, "ALIBABA_READ_TIMEOUT");
    let c = &mut raw.credentials;
    for (slot, key) in [
        (&mut c.provider, "CREDENTIALS_PROVIDER"),
        (&mut c.profile, "CREDENTIALS_PROFILE"),
        (&mut c.credentials_file, "CREDENTIALS_CREDENTIALS_FILE"),
        (&mut c.cli_config_file, "CREDENTIALS_CLI_CONFIG_FILE"),
        (&mut c.role_arn, "CREDENTIALS_ROLE_ARN"),
        (&mut c.role_session_name, "CREDENTIALS_ROLE_SESSION_NAME"),
        (&mut c.oidc_provider_arn, "CREDENTIALS_OIDC_PROVIDER_ARN"),
        (&mut c.oidc_token_file, "CREDENTIALS_OIDC_TOKEN_FILE"),
        (&mut c.ecs_role_name, "CREDENTIALS_ECS_ROLE_NAME"),
        (&mut c.credentials_uri, "CREDENTIALS_CREDENTIALS_URI"),
        (&mut c.sts_endpoint, "CREDENTIALS_STS_ENDPOINT"),
        (&mut c.imds_endpoint, "CREDENTIALS_IMDS_ENDPOINT"),
        (&mut c.session_duration, "CREDENTIALS_SESSION_DURATION"),
        (&mut c.refresh_ahead, "CREDENTIALS_REFRESH_AHEAD"),
        (&mut c.file_poll_interval, "CREDENTIALS_FILE_POLL_INTERVAL"),
    ] {
        set(slot, key);
    }
    if let Some(v) = var("CREDENTIALS_IMDSV1_DISABLED") {
        c.imdsv1_disabled = Some(v.trim().eq_ignore_ascii_case("true"));
    }
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
    set(
        &mut raw.idempotency.settle_window,
        "IDEMPOTENCY_SETTLE_WINDOW",
    );
    if let Some(v) = var("IDEMPOTENCY_MAX_KEYS_PER_CALLER") {
        raw.idempotency.max_keys_per_caller = Some(v.trim().parse().unwrap_or(0));
    }
    set(&mut raw.state.store, "STATE_STORE");
    set(&mut raw.state.redis_url, "STATE_REDIS_URL");
    set(&mut raw.state.key_prefix, "STATE_KEY_PREFIX");
    set(&mut raw.state.lease, "STATE_LEASE");
    set(&mut raw.watch.poll_interval, "WATCH_POLL_INTERVAL");
    set(&mut raw.watch.max_duration, "WATCH_MAX_DURATION");
    if let Some(v) = var("WATCH_MAX_ACTIVE") {
        // An unparsable number becomes 0, which the range check reports with the key's name.
        raw.watch.max_active = Some(v.trim().parse().unwrap_or(0));
    }
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
            token_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
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
            (
                "[[callers]]\nname = \"a\"\ntoken_sha256 = \"00\"",
                &[],
                "callers[0].token_sha256",
            ),
            ("[[callers]]\nname = \"a\"", &[], "callers[0].token_sha256"),
            (
                concat!(
                    "[[callers]]\nname = \"a\"\ntoken_sha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\n",
                    "[[callers]]\nname = \"a\"\ntoken_sha256 = \"ca7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\n",
                ),
                &[],
                "callers[1].name",
            ),
            (
                "[[callers]]\nname = \"a\"\ntoken_sha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\nengine_versions = [\"9.9\"]",
                &[],
                "callers[0].engine_versions",
            ),
            (
                "[[callers]]\nname = \"a\"\ntoken_sha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\ninstances = [\"dds-BP1*\"]",
                &[],
                "callers[0].instances",
            ),
            (
                "[[callers]]\nname = \"a\"\ntoken_sha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\nburst = 0",
                &[],
                "callers[0].burst",
            ),
            (
                "[[callers]]\nname = \"a\"\ntoken_sha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\nrate = 1",
                &[],
                "rate",
            ),
            ("[server]\nclient_ca = \"ca.pem\"", &[], "server.client_ca"),
            ("[server]\ntls_cert = \"c.pem\"", &[], "server.tls_key"),
            (
                "",
                &[("DDS_GATEWAY_SERVER_MAX_IN_FLIGHT", "0")],
                "server.max_in_flight",
            ),
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
            max_active = 7
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
        assert_eq!(config.watch.max_active, 7);
        assert_eq!(load("", &[]).unwrap().watch.max_active, 64);
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
            ("[watch]\nmax_active = 0", &[][..], "watch.max_active"),
            (
                "",
                &[("DDS_GATEWAY_WATCH_MAX_ACTIVE", "lots")][..],
                "watch.max_active",
            ),
        ] {
            let message = load(text, env).unwrap_err().to_string();
            assert!(message.contains(key), "{text:?}: {message}");
        }
    }

    /// Every duration key, with a value just over its bound: each is refused, naming the key,
    /// from the file and from its environment variable alike.
    #[test]
    fn every_duration_key_has_an_upper_bound() {
        let keys = [
            ("server", "request_timeout", "1h 1s"),
            ("server", "shutdown_grace", "1h 1s"),
            ("server", "reload_interval", "1day 1s"),
            ("server", "preface_timeout", "5m 1s"),
            ("server", "max_connection_age", "1day 1s"),
            ("server", "max_connection_age_grace", "1h 1s"),
            ("server", "shutdown_delay", "1h 1s"),
            ("alibaba", "connect_timeout", "5m 1s"),
            ("alibaba", "read_timeout", "10m 1s"),
            ("alibaba", "retry_base_delay", "1m 1s"),
            ("alibaba", "retry_max_delay", "10m 1s"),
            ("idempotency", "retention", "30days 1s"),
            ("idempotency", "settle_window", "1day 1s"),
            ("state", "lease", "1h 1s"),
            ("watch", "poll_interval", "1h 1s"),
            ("watch", "max_duration", "1day 1s"),
            ("credentials", "session_duration", "12h 1s"),
            ("credentials", "refresh_ahead", "12h 1s"),
            ("credentials", "file_poll_interval", "1day 1s"),
        ];
        for (section, key, over) in keys {
            let name = format!("{section}.{key}");
            let variable = format!("DDS_GATEWAY_{section}_{key}").to_uppercase();
            for value in [over, "300000000000y"] {
                let from_file = load(&format!("[{section}]\n{key} = \"{value}\""), &[]);
                let from_env = load("", &[(variable.as_str(), value)]);
                for result in [from_file, from_env] {
                    match result {
                        Err(ConfigError::Invalid { key: got, message }) => {
                            assert_eq!(got, name, "{value}: {message}");
                        }
                        other => panic!("{name} = {value:?} accepted: {other:?}"),
                    }
                }
            }
        }
        // At the bound is fine.
        let config = load("[server]\nrequest_timeout = \"1h\"", &[]).unwrap();
        assert_eq!(config.server.request_timeout, Duration::from_secs(3600));
    }

    #[test]
    fn connection_and_per_caller_limits_from_file_and_environment() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.server.max_connections, 1024);
        assert_eq!(config.server.preface_timeout, Duration::from_secs(10));
        assert_eq!(config.server.max_in_flight_per_caller, 32);
        assert_eq!(config.watch.max_active_per_caller, 32);
        let config = load(
            "[server]\nmax_in_flight = 1\n[watch]\nmax_active = 10\nmax_active_per_caller = 10",
            &[],
        )
        .unwrap();
        assert_eq!(config.server.max_in_flight_per_caller, 1);
        assert_eq!(config.watch.max_active_per_caller, 10);
        let config = load(
            "",
            &[
                ("DDS_GATEWAY_SERVER_MAX_CONNECTIONS", "7"),
                ("DDS_GATEWAY_SERVER_PREFACE_TIMEOUT", "250ms"),
                ("DDS_GATEWAY_SERVER_MAX_IN_FLIGHT_PER_CALLER", "3"),
                ("DDS_GATEWAY_WATCH_MAX_ACTIVE_PER_CALLER", "2"),
            ],
        )
        .unwrap();
        assert_eq!(config.server.max_connections, 7);
        assert_eq!(config.server.preface_timeout, Duration::from_millis(250));
        assert_eq!(config.server.max_in_flight_per_caller, 3);
        assert_eq!(config.watch.max_active_per_caller, 2);
        for (text, env, key) in [
            (
                "[server]\nmax_connections = 0",
                &[][..],
                "server.max_connections",
            ),
            (
                "",
                &[("DDS_GATEWAY_SERVER_MAX_CONNECTIONS", "many")][..],
                "server.max_connections",
            ),
            (
                "[server]\nmax_in_flight = 4\nmax_in_flight_per_caller = 5",
                &[][..],
                "server.max_in_flight_per_caller",
            ),
            (
                "",
                &[("DDS_GATEWAY_SERVER_MAX_IN_FLIGHT_PER_CALLER", "none")][..],
                "server.max_in_flight_per_caller",
            ),
            (
                "[watch]\nmax_active_per_caller = 0",
                &[][..],
                "watch.max_active_per_caller",
            ),
            (
                "",
                &[("DDS_GATEWAY_WATCH_MAX_ACTIVE_PER_CALLER", "65")][..],
                "watch.max_active_per_caller",
            ),
        ] {
            match load(text, env) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text} {env:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_certificate_caller_must_opt_in_and_needs_client_certificates() {
        let tls = "[server]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nclient_ca = \"ca.pem\"\n";
        let config = load(&format!("{tls}[[callers]]\nname = \"a\"\nmtls = true"), &[]).unwrap();
        assert!(config.callers[0].mtls);
        for (text, key) in [
            (
                format!("{tls}[[callers]]\nname = \"a\""),
                "callers[0].token_sha256",
            ),
            (
                "[[callers]]\nname = \"a\"\nmtls = true".to_string(),
                "callers[0].mtls",
            ),
        ] {
            match load(&text, &[]) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn state_and_settle_window_come_from_the_file_or_the_environment() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.state.store, StoreKind::Memory);
        assert_eq!(config.state.lease, Duration::from_secs(30));
        assert_eq!(config.idempotency.settle_window, Duration::from_secs(120));
        assert_eq!(config.idempotency.max_keys_per_caller, 100_000);
        let config = load(
            "[state]\nstore = \"redis\"\nredis_url = \"redis://:hunter2secret@10.0.0.5:6379/0\"",
            &[
                ("DDS_GATEWAY_STATE_LEASE", "5s"),
                ("DDS_GATEWAY_STATE_KEY_PREFIX", "gw1:"),
                ("DDS_GATEWAY_IDEMPOTENCY_SETTLE_WINDOW", "5m"),
                ("DDS_GATEWAY_IDEMPOTENCY_MAX_KEYS_PER_CALLER", "10"),
            ],
        )
        .unwrap();
        assert_eq!(config.state.store, StoreKind::Redis);
        assert_eq!(config.state.lease, Duration::from_secs(5));
        assert_eq!(config.state.key_prefix, "gw1:");
        assert_eq!(config.idempotency.settle_window, Duration::from_secs(300));
        assert_eq!(config.idempotency.max_keys_per_caller, 10);
        assert!(!format!("{config:?}").contains("hunter2secret"));
        for (text, env, key) in [
            ("[state]\nstore = \"etcd\"", &[][..], "state.store"),
            ("[state]\nstore = \"redis\"", &[][..], "state.redis_url"),
            (
                "",
                &[("DDS_GATEWAY_STATE_REDIS_URL", "http://:hunter2secret@host")][..],
                "state.redis_url",
            ),
            (
                "",
                &[("DDS_GATEWAY_STATE_KEY_PREFIX", "{x}")][..],
                "state.key_prefix",
            ),
            (
                "",
                &[("DDS_GATEWAY_STATE_LEASE", "soon")][..],
                "state.lease",
            ),
            (
                "",
                &[("DDS_GATEWAY_IDEMPOTENCY_SETTLE_WINDOW", "0s")][..],
                "idempotency.settle_window",
            ),
            (
                "",
                &[("DDS_GATEWAY_IDEMPOTENCY_MAX_KEYS_PER_CALLER", "0")][..],
                "idempotency.max_keys_per_caller",
            ),
        ] {
            let message = load(text, env).unwrap_err().to_string();
            assert!(message.contains(key), "{text:?}: {message}");
            assert!(!message.contains("hunter2secret"), "{message}");
        }
    }

    #[test]
    fn reads_the_rollout_keys_from_file_and_environment() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.server.max_connection_age, None);
        assert_eq!(
            config.server.max_connection_age_grace,
            Duration::from_secs(60)
        );
        assert_eq!(config.server.shutdown_delay, Duration::ZERO);
        let config = load(
            "[server]\nmax_connection_age = \"5m\"\nmax_connection_age_grace = \"30s\"\nshutdown_delay = \"3s\"",
            &[("DDS_GATEWAY_SERVER_MAX_CONNECTION_AGE_GRACE", "2m")],
        )
        .unwrap();
        assert_eq!(
            config.server.max_connection_age,
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            config.server.max_connection_age_grace,
            Duration::from_secs(120)
        );
        assert_eq!(config.server.shutdown_delay, Duration::from_secs(3));
        let config = load(
            "",
            &[
                ("DDS_GATEWAY_SERVER_MAX_CONNECTION_AGE", "10m"),
                ("DDS_GATEWAY_SERVER_SHUTDOWN_DELAY", "0s"),
            ],
        )
        .unwrap();
        assert_eq!(
            config.server.max_connection_age,
            Some(Duration::from_secs(600))
        );
        assert_eq!(config.server.shutdown_delay, Duration::ZERO);
        for (env, key) in [
            (
                "DDS_GATEWAY_SERVER_MAX_CONNECTION_AGE",
                "server.max_connection_age",
            ),
            (
                "DDS_GATEWAY_SERVER_MAX_CONNECTION_AGE_GRACE",
                "server.max_connection_age_grace",
            ),
            ("DDS_GATEWAY_SERVER_SHUTDOWN_DELAY", "server.shutdown_delay"),
        ] {
            let message = load("", &[(env, "soonish")]).unwrap_err().to_string();
            assert!(message.starts_with(key), "{env}: {message}");
        }
        let message = load("[server]\nmax_connection_age = \"0s\"", &[])
            .unwrap_err()
            .to_string();
        assert!(message.contains("server.max_connection_age"), "{message}");
    }

    #[test]
    fn callers_file_adds_callers_and_errors_name_it() {
        let dir = std::env::temp_dir().join(format!("dds-gateway-callers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("callers.toml");
        std::fs::write(
            &file,
            "[[callers]]\nname = \"from-secret\"\ntoken_sha256 = \"ca7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\n",
        )
        .unwrap();
        let main = "[[callers]]\nname = \"inline\"\ntoken_sha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\n";
        let path = file.to_str().unwrap();
        let config = load(main, &[("DDS_GATEWAY_SERVER_CALLERS_FILE", path)]).unwrap();
        let names: Vec<&str> = config.callers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["inline", "from-secret"]);
        assert_eq!(config.server.callers_file.as_deref(), Some(file.as_path()));
        let config = load(&format!("[server]\ncallers_file = {path:?}\n"), &[]).unwrap();
        assert_eq!(config.callers.len(), 1);

        // The same token twice across the two files is refused like within one.
        let same = main.replace("inline", "again").replace("ba78", "ca78");
        let message = load(&same, &[("DDS_GATEWAY_SERVER_CALLERS_FILE", path)])
            .unwrap_err()
            .to_string();
        assert!(message.contains("token_sha256"), "{message}");

        std::fs::write(&file, "[server]\nlisten = \"0.0.0.0:1\"\n").unwrap();
        let message = load("", &[("DDS_GATEWAY_SERVER_CALLERS_FILE", path)])
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("server.callers_file"), "{message}");
        let missing = dir.join("missing.toml");
        let message = load(
            "",
            &[("DDS_GATEWAY_SERVER_CALLERS_FILE", missing.to_str().unwrap())],
        )
        .unwrap_err()
        .to_string();
        assert!(message.starts_with("server.callers_file"), "{message}");
        std::fs::remove_dir_all(&dir).unwrap();
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
