//! Configuration: one TOML file, every scalar key overridable from the environment
//! (`DDS_GATEWAY_<SECTION>_<KEY>`, see [`env`](mod@env)), then command-line flags. Built and checked once
//! at start-up; a wrong or missing value is an error that names the key and what is expected.
//!
//! A leaf: plain values only. The runtime modules build their own types from these. One file per
//! section; [`value`] reads values the same way for all of them, [`env`](mod@env) is the table of
//! environment variables, [`regions`] the region table.

pub(crate) mod alibaba;
pub(crate) mod callers;
pub(crate) mod credentials;
pub(crate) mod env;
pub(crate) mod idempotency;
pub(crate) mod quota;
pub(crate) mod regions;
pub(crate) mod sandbox;
pub(crate) mod server;
pub(crate) mod state;
pub(crate) mod telemetry;
pub(crate) mod value;
pub(crate) mod watch;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub(crate) use alibaba::{AlibabaConfig, RetryConfig, SignatureVersion};
pub(crate) use callers::{CallerConfig, DEFAULT_CALLER_BURST, DEFAULT_CALLER_RATE};
pub(crate) use credentials::{CredentialsConfig, ProviderKind};
pub(crate) use idempotency::IdempotencyConfig;
pub(crate) use quota::QuotaConfig;
pub(crate) use server::{ServerConfig, TlsConfig};
pub(crate) use state::{RedisCa, RedisUrl, StateConfig, StoreKind};
pub(crate) use telemetry::{AuditConfig, TelemetryConfig};
pub(crate) use value::ConfigError;
pub(crate) use watch::WatchConfig;

use value::span_hint;

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
    /// Traces, metrics and logs.
    pub telemetry: TelemetryConfig,
    /// The audit trail.
    pub audit: AuditConfig,
    /// What `serve --sandbox` simulates (`[sandbox.fleet]`).
    pub sandbox: sandbox::SandboxSettings,
    /// The file this came from, re-read when the callers are reloaded.
    pub file: Option<PathBuf>,
}

/// The file as written: every key optional, so environment and defaults can fill in.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: server::RawServer,
    #[serde(default)]
    alibaba: alibaba::RawAlibaba,
    #[serde(default)]
    idempotency: idempotency::RawIdempotency,
    #[serde(default)]
    watch: watch::RawWatch,
    #[serde(default)]
    state: state::RawState,
    #[serde(default)]
    callers: Vec<CallerConfig>,
    #[serde(default)]
    credentials: credentials::RawCredentials,
    #[serde(default)]
    telemetry: telemetry::RawTelemetry,
    #[serde(default)]
    audit: telemetry::RawAudit,
    #[serde(default)]
    sandbox: sandbox::RawSandbox,
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
        let parse_error = |e: toml::de::Error| file_error(text, origin, e);
        // The file alone first, so that its mistakes point at a line.
        toml::from_str::<RawConfig>(text).map_err(parse_error)?;
        let mut document: toml::Table = toml::from_str(text).map_err(parse_error)?;
        let from_env = env::overlay(&mut document, &env)?;
        let mut raw: RawConfig =
            toml::Value::Table(document)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: "(environment)".to_string(),
                    message: e.message().to_string(),
                })?;
        if let Some(listen) = &overrides.listen {
            raw.server.listen = Some(listen.clone());
        }
        Self::check(raw, &env).map_err(|e| name_the_variable(e, &from_env))
    }

    fn check(raw: RawConfig, env: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let server = server::check(raw.server)?;
        let alibaba = alibaba::check(raw.alibaba)?;
        let mut callers = raw.callers;
        if let Some(path) = &server.callers_file {
            callers.extend(callers::read_file(path)?);
        }
        let client_certs = server.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        callers::check(&callers, &alibaba.engine_versions, client_certs)?;
        let idempotency = idempotency::check(raw.idempotency, callers.len())?;
        let state = state::check(raw.state)?;
        idempotency::check_timings(&idempotency, state.lease)?;
        Ok(Self {
            idempotency,
            server,
            alibaba,
            watch: watch::check(raw.watch)?,
            state,
            callers,
            credentials: credentials::check(raw.credentials)?,
            // Telemetry reads the standard OTEL_* variables too, so it takes `env` itself.
            telemetry: raw.telemetry.check(env)?,
            audit: raw.audit.check(),
            sandbox: sandbox::check(raw.sandbox)?,
            file: None,
        })
    }
}

/// An error about a key whose value came from the environment names the variable too.
fn name_the_variable(error: ConfigError, from_env: &[env::FromEnv]) -> ConfigError {
    match error {
        ConfigError::Invalid { key, message } => match from_env.iter().find(|set| set.key == key) {
            Some(set) => ConfigError::Invalid {
                message: format!("{message} (from {})", set.variable),
                key,
            },
            None => ConfigError::Invalid { key, message },
        },
        other => other,
    }
}

/// A mistake in the file: what is wrong, the key when the value is at fault, and the line.
fn file_error(text: &str, origin: &str, mut error: toml::de::Error) -> ConfigError {
    let message = error.message().to_string() + &span_hint(text, error.span());
    // Without the input, the error's text ends with the path of the key at fault.
    error.set_input(None);
    let shown = error.to_string();
    let key = shown
        .lines()
        .find_map(|line| line.strip_prefix("in `")?.strip_suffix('`'));
    ConfigError::Parse {
        path: origin.to_string(),
        message: match key {
            Some(key) => format!("{key}: {message}"),
            None => message,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::server::DEFAULT_LISTEN;
    use std::collections::{BTreeSet, HashMap};

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
    fn sections_of_sections_come_from_the_environment_too() {
        let config = load(
            "[alibaba.quota]\ncalls_per_second = 5\n",
            &[
                ("DDS_GATEWAY_ALIBABA_QUOTA_MAX_IN_FLIGHT", "3"),
                ("DDS_GATEWAY_SANDBOX_FLEET_COUNT", "7"),
                (
                    "DDS_GATEWAY_SANDBOX_FLEET_REGIONS",
                    "cn-beijing, cn-shanghai",
                ),
            ],
        )
        .unwrap();
        assert_eq!(config.alibaba.quota.calls_per_second, 5);
        assert_eq!(config.alibaba.quota.max_in_flight, 3);
        assert_eq!(config.sandbox.fleet.count, 7);
        assert_eq!(config.sandbox.fleet.regions, ["cn-beijing", "cn-shanghai"]);
        let defaults = load("", &[]).unwrap();
        assert_eq!(
            (
                defaults.alibaba.quota.calls_per_second,
                defaults.alibaba.quota.max_in_flight
            ),
            (20, 10)
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
            ("server", "idle_timeout", "1day 1s"),
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
            ("credentials", "startup_timeout", "1h 1s"),
            ("telemetry", "metrics_interval", "1day 1s"),
            ("sandbox.fleet", "upgrade_time", "1h 1s"),
        ];
        // Every duration key of the environment table is here.
        let listed: BTreeSet<(&str, &str)> = keys.iter().map(|(s, k, _)| (*s, *k)).collect();
        let durations: BTreeSet<(&str, &str)> = env::KEYS
            .iter()
            .filter(|(_, _, kind)| *kind == env::Kind::Duration)
            .map(|(s, k, _)| (*s, *k))
            .collect();
        assert_eq!(listed, durations);
        for (section, key, over) in keys {
            let name = format!("{section}.{key}");
            let variable = env::variable(section, key);
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
        assert_eq!(config.server.idle_timeout, Duration::from_secs(60));
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
    fn timings_that_cannot_keep_the_guarantee_are_refused_with_the_reason() {
        for (text, key, reason) in [
            (
                "[state]\nlease = \"5m\"\n[idempotency]\nsettle_window = \"2m\"",
                "idempotency.settle_window",
                "shorter than state.lease",
            ),
            (
                "[idempotency]\nretention = \"2m\"\nsettle_window = \"2m\"",
                "idempotency.retention",
                "shorter than state.lease + idempotency.settle_window (2m 30s)",
            ),
            (
                "[server]\nmax_connection_age_grace = \"30s\"",
                "server.max_connection_age_grace",
                "only used with server.max_connection_age",
            ),
        ] {
            match load(text, &[]) {
                Err(ConfigError::Invalid { key: got, message }) => {
                    assert_eq!(got, key, "{text}");
                    assert!(message.contains(reason), "{message}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // At the bounds, it holds.
        load(
            "[state]\nlease = \"30s\"\n[idempotency]\nretention = \"150s\"\nsettle_window = \"120s\"",
            &[],
        )
        .unwrap();
    }

    #[test]
    fn state_and_settle_window_come_from_the_file_or_the_environment() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.state.store, StoreKind::Memory);
        assert_eq!(config.state.lease, Duration::from_secs(30));
        assert!(!config.state.readiness_follows_store);
        let opted = load("[state]\nreadiness_follows_store = true", &[]).unwrap();
        assert!(opted.state.readiness_follows_store);
        let opted = load("", &[("DDS_GATEWAY_STATE_READINESS_FOLLOWS_STORE", "true")]).unwrap();
        assert!(opted.state.readiness_follows_store);
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
                &[("DDS_GATEWAY_STATE_READINESS_FOLLOWS_STORE", "sometimes")][..],
                "state.readiness_follows_store",
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
    fn redis_ca_file_is_read_at_start_up_and_only_with_rediss() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        let good = dir.join("ca.pem");
        std::fs::write(&good, &ca).unwrap();
        let empty = dir.join("key-only.pem");
        std::fs::write(&empty, key.serialize_pem()).unwrap();
        let missing = dir.join("missing.pem");
        let (good, empty, missing) = (
            good.to_str().unwrap(),
            empty.to_str().unwrap(),
            missing.to_str().unwrap(),
        );
        let tls = (
            "DDS_GATEWAY_STATE_REDIS_URL",
            "rediss://:hunter2secret@redis.local:6380/0",
        );
        let plain = (
            "DDS_GATEWAY_STATE_REDIS_URL",
            "redis://:hunter2secret@10.0.0.5:6379/0",
        );
        let with = |path| ("DDS_GATEWAY_STATE_REDIS_CA_FILE", path);

        let config = load("[state]\nstore = \"redis\"", &[tls, with(good)]).unwrap();
        let read = config.state.redis_ca.as_ref().unwrap();
        assert_eq!(read.pem, ca.as_bytes());
        assert!(!format!("{config:?}").contains("BEGIN CERTIFICATE"));
        assert!(load("", &[tls]).unwrap().state.redis_ca.is_none());
        for (env, says) in [
            (&[tls, with(missing)][..], "cannot read"),
            (&[tls, with(empty)][..], "holds no PEM certificate"),
            (&[plain, with(good)][..], "rediss://"),
            (&[with(good)][..], "rediss://"),
        ] {
            let message = load("", env).unwrap_err().to_string();
            assert!(
                message.contains("state.redis_ca_file"),
                "{env:?}: {message}"
            );
            assert!(message.contains(says), "{env:?}: {message}");
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
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
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

    /// The keys a section's struct accepts, as serde lists them when refusing an unknown one.
    fn accepted_keys(section: &str) -> BTreeSet<String> {
        let probe = format!("[{section}]\nno_such_key = 1\n");
        let Err(e) = toml::from_str::<RawConfig>(&probe) else {
            panic!("[{section}] accepted an unknown key");
        };
        let message = e.message();
        let list = message
            .split_once("expected one of ")
            .or_else(|| message.split_once("expected "))
            .map(|(_, list)| list)
            .unwrap_or_else(|| panic!("[{section}]: {message}"));
        // serde writes "`a`", "`a` or `b`", "one of `a`, `b`, `c`".
        list.split(", ")
            .flat_map(|k| k.split(" or "))
            .map(|k| k.trim_matches('`').to_string())
            .collect()
    }

    fn table_keys(section: &str) -> BTreeSet<String> {
        env::KEYS
            .iter()
            .filter(|(s, _, _)| *s == section)
            .map(|(_, k, _)| k.to_string())
            .collect()
    }

    /// Every key of every section (all but `[[callers]]`) is in the environment table, and
    /// nothing else is: the keys are those the structs accept, and the table's kinds are the
    /// types the structs expect (a document of one value per table key deserialises).
    #[test]
    fn every_config_key_has_its_environment_variable() {
        let sections: BTreeSet<&str> = env::KEYS.iter().map(|(s, _, _)| *s).collect();
        let mut all = accepted_keys("no_such_section");
        all.remove("callers");
        let top: BTreeSet<String> = sections
            .iter()
            .filter_map(|s| s.split('.').next())
            .map(ToString::to_string)
            .collect();
        assert_eq!(all, top);
        for section in &sections {
            let mut keys = table_keys(section);
            keys.extend(
                env::TABLES
                    .iter()
                    .filter(|(s, _)| s == section)
                    .map(|(_, k)| k.to_string()),
            );
            assert_eq!(accepted_keys(section), keys, "[{section}]");
        }
        let mut document = toml::Table::new();
        for (section, key, kind) in env::KEYS {
            let value = match kind {
                env::Kind::Text => toml::Value::String("x".into()),
                env::Kind::Integer => toml::Value::Integer(1),
                env::Kind::Bool => toml::Value::Boolean(true),
                env::Kind::Duration => toml::Value::String("1s".into()),
                env::Kind::List => toml::Value::Array(vec![toml::Value::String("x".into())]),
            };
            let mut table = &mut document;
            for part in section.split('.') {
                let toml::Value::Table(inner) = table
                    .entry(part)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                else {
                    unreachable!()
                };
                table = inner;
            }
            table.insert(key.to_string(), value);
        }
        let _: RawConfig = toml::Value::Table(document).try_into().unwrap();
        // Variables are DDS_GATEWAY_<SECTION>_<KEY>.
        assert_eq!(
            env::variable("server", "max_in_flight"),
            "DDS_GATEWAY_SERVER_MAX_IN_FLIGHT"
        );
    }

    /// The keys shown in a document's ```toml blocks: `section.key` (inline tables as keys).
    fn keys_shown(document: &str) -> BTreeSet<String> {
        let mut shown = BTreeSet::new();
        let mut section = None;
        let mut in_toml = false;
        for line in document.lines() {
            let line = line.trim();
            if line.starts_with("```") {
                in_toml = line == "```toml";
                section = None;
                continue;
            }
            if !in_toml {
                continue;
            }
            if line.starts_with("[[") {
                section = None;
            } else if let Some(name) = line.strip_prefix('[') {
                section = name.split(']').next().map(ToString::to_string);
            } else if let (Some(section), Some((key, _))) = (&section, line.split_once(" = ")) {
                shown.insert(format!("{section}.{}", key.trim()));
            }
        }
        shown
    }

    /// The keys of the table, and the inline tables (`tags = { … }`), which show as keys too.
    fn documented_keys() -> (BTreeSet<String>, BTreeSet<String>) {
        let table = env::KEYS
            .iter()
            .map(|(s, k, _)| format!("{s}.{k}"))
            .collect();
        let inline = env::TABLES
            .iter()
            .map(|(s, k)| format!("{s}.{k}"))
            .collect();
        (table, inline)
    }

    /// The configuration reference (docs/configuration.md) shows exactly the keys of the table.
    #[test]
    fn the_docs_show_every_key() {
        let shown = keys_shown(include_str!("../../docs/configuration.md"));
        let (table, inline) = documented_keys();
        let extra: Vec<&String> = shown
            .difference(&table)
            .filter(|k| !inline.contains(*k))
            .collect();
        assert!(extra.is_empty(), "keys the table lacks: {extra:?}");
        let missing: Vec<&String> = table.difference(&shown).collect();
        assert!(
            missing.is_empty(),
            "keys docs/configuration.md lacks: {missing:?}"
        );
    }

    /// The README's own examples use only keys that exist.
    #[test]
    fn the_readme_shows_only_real_keys() {
        let shown = keys_shown(include_str!("../../README.md"));
        assert!(!shown.is_empty(), "the README shows no configuration");
        let (table, inline) = documented_keys();
        let extra: Vec<&String> = shown
            .difference(&table)
            .filter(|k| !inline.contains(*k))
            .collect();
        assert!(extra.is_empty(), "README keys the table lacks: {extra:?}");
    }

    /// A bad value is refused naming its key, from the file and from the environment (which
    /// names the variable too): unparsable numbers, bad booleans, bad durations, out of range.
    #[test]
    fn bad_values_name_the_key_from_file_and_environment() {
        for (section, key, value, file_value) in [
            ("server", "max_in_flight", "lots", "\"lots\""),
            ("server", "max_in_flight", "-1", "-1"),
            ("server", "max_in_flight", "0", "0"),
            ("server", "max_request_bytes", "1.5", "1.5"),
            ("alibaba", "max_attempts", "99999999999", "99999999999"),
            ("watch", "max_active", "", "\"\""),
            ("idempotency", "max_keys", "many", "\"many\""),
            ("alibaba", "preflight", "maybe", "\"maybe\""),
            ("credentials", "imdsv1_disabled", "yes", "\"yes\""),
            ("server", "request_timeout", "soon", "\"soon\""),
            ("watch", "poll_interval", "0s", "\"0s\""),
            ("credentials", "session_duration", "1m", "\"1m\""),
            ("telemetry", "metrics_interval", "1day 1s", "\"1day 1s\""),
            ("alibaba", "engine_versions", "latest", "[\"latest\"]"),
            ("alibaba", "signature_version", "v9", "\"v9\""),
            ("alibaba.quota", "max_in_flight", "0", "0"),
            ("alibaba.quota", "calls_per_second", "100001", "100001"),
            ("sandbox.fleet", "count", "lots", "\"lots\""),
        ] {
            let name = format!("{section}.{key}");
            let variable = env::variable(section, key);
            let file = load(&format!("[{section}]\n{key} = {file_value}\n"), &[]);
            let message = file.unwrap_err().to_string();
            assert!(
                message.contains(&name),
                "file {name} = {file_value}: {message}"
            );
            if value.is_empty() {
                continue; // an empty variable is unset
            }
            match load("", &[(variable.as_str(), value)]) {
                Err(ConfigError::Invalid { key: got, message }) => {
                    assert_eq!(got, name, "{variable}={value}: {message}");
                    assert!(message.contains(&variable), "{variable}={value}: {message}");
                }
                other => panic!("{variable}={value}: {other:?}"),
            }
        }
    }

    /// Every kind parses from the environment as from the file.
    #[test]
    fn environment_values_parse_by_kind() {
        let config = load(
            "[alibaba]\npreflight = true\n[credentials]\nimdsv1_disabled = false\n",
            &[
                ("DDS_GATEWAY_ALIBABA_PREFLIGHT", "FALSE"),
                ("DDS_GATEWAY_CREDENTIALS_IMDSV1_DISABLED", "1"),
                ("DDS_GATEWAY_SERVER_MAX_IN_FLIGHT", " 12 "),
                ("DDS_GATEWAY_WATCH_MAX_DURATION", "90s"),
                ("DDS_GATEWAY_ALIBABA_ENGINE_VERSIONS", "5.0,,6.0 "),
                ("DDS_GATEWAY_AUDIT_FILE", "audit.jsonl"),
                ("DDS_GATEWAY_TELEMETRY_LOG_FORMAT", "text"),
                ("DDS_GATEWAY_SERVER_LISTEN", ""),
            ],
        )
        .unwrap();
        assert!(!config.alibaba.preflight);
        assert_eq!(config.credentials.imdsv1_disabled, Some(true));
        assert_eq!(config.server.max_in_flight, 12);
        assert_eq!(config.watch.max_duration, Duration::from_secs(90));
        assert_eq!(config.alibaba.engine_versions, ["5.0", "6.0"]);
        assert_eq!(config.audit.file, Some(PathBuf::from("audit.jsonl")));
        assert_eq!(config.telemetry.log_format, telemetry::LogFormat::Text);
        assert_eq!(config.server.listen.to_string(), DEFAULT_LISTEN);
        // The command line wins over both.
        let config = Config::from_toml(
            "[server]\nlisten = \"127.0.0.1:1\"",
            "test.toml",
            |k| (k == "DDS_GATEWAY_SERVER_LISTEN").then(|| "127.0.0.1:2".to_string()),
            &Overrides {
                listen: Some("127.0.0.1:3".into()),
            },
        )
        .unwrap();
        assert_eq!(config.server.listen.port(), 3);
        // The standard OTEL_* variables still win over DDS_GATEWAY_TELEMETRY_*.
        let config = load(
            "",
            &[
                ("DDS_GATEWAY_TELEMETRY_SERVICE_NAME", "ours"),
                ("OTEL_SERVICE_NAME", "standard"),
            ],
        )
        .unwrap();
        assert_eq!(config.telemetry.service_name, "standard");
        match load("", &[("DDS_GATEWAY_TELEMETRY_METRICS_INTERVAL", "1day 1s")]) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "telemetry.metrics_interval"),
            other => panic!("{other:?}"),
        }
    }
}
