//! The environment overlay: one table of every scalar key and the kind of its value. A variable
//! `DDS_GATEWAY_<SECTION>_<KEY>` is parsed by its key's kind into a TOML value and put into the
//! file's document before the one deserialisation, so that file and environment values meet the
//! same typed checks. A value that does not parse is refused, naming the key and the variable.

use super::value::{ConfigError, invalid};

/// Prefix of the environment variables that override file keys.
pub const ENV_PREFIX: &str = "DDS_GATEWAY_";

/// How a variable's text becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Taken as it is (names, paths, URLs, addresses, enumerations).
    Text,
    /// A whole number, zero or more.
    Integer,
    /// `true` or `false` (also `1` or `0`), in any case.
    Bool,
    /// A duration such as `10s` or `500ms`, checked with the key's bounds like the file's.
    Duration,
    /// Comma-separated; blanks between commas are dropped.
    List,
}

/// Every key that can come from the environment: `(section, key, kind)`.
pub const KEYS: &[(&str, &str, Kind)] = &[
    ("server", "listen", Kind::Text),
    ("server", "max_request_bytes", Kind::Integer),
    ("server", "request_timeout", Kind::Duration),
    ("server", "shutdown_grace", Kind::Duration),
    ("server", "max_in_flight", Kind::Integer),
    ("server", "max_in_flight_per_caller", Kind::Integer),
    ("server", "max_connections", Kind::Integer),
    ("server", "preface_timeout", Kind::Duration),
    ("server", "tls_cert", Kind::Text),
    ("server", "tls_key", Kind::Text),
    ("server", "client_ca", Kind::Text),
    ("server", "reload_interval", Kind::Duration),
    ("server", "callers_file", Kind::Text),
    ("server", "max_connection_age", Kind::Duration),
    ("server", "max_connection_age_grace", Kind::Duration),
    ("server", "shutdown_delay", Kind::Duration),
    ("alibaba", "region_id", Kind::Text),
    ("alibaba", "endpoint", Kind::Text),
    ("alibaba", "signature_version", Kind::Text),
    ("alibaba", "engine_versions", Kind::List),
    ("alibaba", "connect_timeout", Kind::Duration),
    ("alibaba", "read_timeout", Kind::Duration),
    ("alibaba", "preflight", Kind::Bool),
    ("alibaba", "max_attempts", Kind::Integer),
    ("alibaba", "retry_base_delay", Kind::Duration),
    ("alibaba", "retry_max_delay", Kind::Duration),
    ("idempotency", "retention", Kind::Duration),
    ("idempotency", "max_keys", Kind::Integer),
    ("idempotency", "max_keys_per_caller", Kind::Integer),
    ("idempotency", "settle_window", Kind::Duration),
    ("state", "store", Kind::Text),
    ("state", "redis_url", Kind::Text),
    ("state", "redis_ca_file", Kind::Text),
    ("state", "key_prefix", Kind::Text),
    ("state", "lease", Kind::Duration),
    ("state", "readiness_follows_store", Kind::Bool),
    ("watch", "poll_interval", Kind::Duration),
    ("watch", "max_duration", Kind::Duration),
    ("watch", "max_active", Kind::Integer),
    ("watch", "max_active_per_caller", Kind::Integer),
    ("credentials", "provider", Kind::Text),
    ("credentials", "profile", Kind::Text),
    ("credentials", "credentials_file", Kind::Text),
    ("credentials", "cli_config_file", Kind::Text),
    ("credentials", "role_arn", Kind::Text),
    ("credentials", "role_session_name", Kind::Text),
    ("credentials", "oidc_provider_arn", Kind::Text),
    ("credentials", "oidc_token_file", Kind::Text),
    ("credentials", "ecs_role_name", Kind::Text),
    ("credentials", "imdsv1_disabled", Kind::Bool),
    ("credentials", "credentials_uri", Kind::Text),
    ("credentials", "sts_endpoint", Kind::Text),
    ("credentials", "imds_endpoint", Kind::Text),
    ("credentials", "session_duration", Kind::Duration),
    ("credentials", "refresh_ahead", Kind::Duration),
    ("credentials", "file_poll_interval", Kind::Duration),
    ("telemetry", "service_name", Kind::Text),
    ("telemetry", "otlp_endpoint", Kind::Text),
    ("telemetry", "otlp_protocol", Kind::Text),
    ("telemetry", "traces_exporter", Kind::Text),
    ("telemetry", "metrics_exporter", Kind::Text),
    ("telemetry", "metrics_interval", Kind::Duration),
    ("telemetry", "admin_listen", Kind::Text),
    ("telemetry", "log_format", Kind::Text),
    ("audit", "file", Kind::Text),
];

/// The variable of a key: `DDS_GATEWAY_SERVER_MAX_IN_FLIGHT` for `server.max_in_flight`.
pub fn variable(section: &str, key: &str) -> String {
    format!("{ENV_PREFIX}{section}_{key}").to_ascii_uppercase()
}

/// A key set from the environment, so that a later error about it can name its variable.
#[derive(Debug)]
pub(super) struct FromEnv {
    pub(super) key: String,
    pub(super) variable: String,
}

/// Puts every set, non-empty variable of [`KEYS`] into `document`, over the file's value.
pub(super) fn overlay(
    document: &mut toml::Table,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<FromEnv>, ConfigError> {
    let mut set = Vec::new();
    for &(section, key, kind) in KEYS {
        let variable = variable(section, key);
        let Some(text) = env(&variable).filter(|v| !v.is_empty()) else {
            continue;
        };
        let name = format!("{section}.{key}");
        let value = parse(kind, &text).map_err(|expected| {
            invalid(&name, format!("{expected} in {variable}, got {text:?}"))
        })?;
        let table = document
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(table) = table else {
            return Err(invalid(section, "expected a table"));
        };
        table.insert(key.to_string(), value);
        set.push(FromEnv {
            key: name,
            variable,
        });
    }
    Ok(set)
}

/// The TOML value of a variable's text, or what was expected.
fn parse(kind: Kind, text: &str) -> Result<toml::Value, &'static str> {
    let trimmed = text.trim();
    match kind {
        Kind::Text | Kind::Duration => Ok(toml::Value::String(text.to_string())),
        Kind::Integer => trimmed
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(toml::Value::Integer)
            .ok_or("expected a whole number"),
        Kind::Bool => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(toml::Value::Boolean(true)),
            "false" | "0" => Ok(toml::Value::Boolean(false)),
            _ => Err("expected true or false"),
        },
        Kind::List => Ok(toml::Value::Array(
            trimmed
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        )),
    }
}
