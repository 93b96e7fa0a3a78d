//! The environment overlay: one table of every scalar key and the kind of its value. A variable
//! `DDS_GATEWAY_<SECTION>_<KEY>` is parsed by its key's kind into a TOML value and put into the
//! file's document before the one deserialisation, so that file and environment values meet the
//! same typed checks. A value that does not parse is refused, naming the key and the variable.

use super::value::{ConfigError, invalid};

/// Prefix of the environment variables that override file keys.
pub(crate) const ENV_PREFIX: &str = "DDS_GATEWAY_";

/// How a variable's text becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
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

/// Every key that can come from the environment: `(section, key, kind)`. A section of a
/// section is named with a dot (`alibaba.quota`), its variables with `_`
/// (`DDS_GATEWAY_ALIBABA_QUOTA_MAX_IN_FLIGHT`).
pub(crate) const KEYS: &[(&str, &str, Kind)] = &[
    ("server", "listen", Kind::Text),
    ("server", "max_request_bytes", Kind::Integer),
    ("server", "request_timeout", Kind::Duration),
    ("server", "shutdown_grace", Kind::Duration),
    ("server", "max_in_flight", Kind::Integer),
    ("server", "max_in_flight_per_caller", Kind::Integer),
    ("server", "max_connections", Kind::Integer),
    ("server", "preface_timeout", Kind::Duration),
    ("server", "idle_timeout", Kind::Duration),
    ("server", "tls_cert", Kind::Text),
    ("server", "tls_key", Kind::Text),
    ("server", "client_ca", Kind::Text),
    ("server", "reload_interval", Kind::Duration),
    ("server", "callers_file", Kind::Text),
    ("server", "max_connection_age", Kind::Duration),
    ("server", "max_connection_age_grace", Kind::Duration),
    ("server", "shutdown_delay", Kind::Duration),
    ("server", "console", Kind::Bool),
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
    ("alibaba.quota", "calls_per_second", Kind::Integer),
    ("alibaba.quota", "max_in_flight", Kind::Integer),
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
    ("credentials", "startup_timeout", Kind::Duration),
    ("telemetry", "service_name", Kind::Text),
    ("telemetry", "otlp_endpoint", Kind::Text),
    ("telemetry", "otlp_protocol", Kind::Text),
    ("telemetry", "traces_exporter", Kind::Text),
    ("telemetry", "metrics_exporter", Kind::Text),
    ("telemetry", "metrics_interval", Kind::Duration),
    ("telemetry", "admin_listen", Kind::Text),
    ("telemetry", "log_format", Kind::Text),
    ("audit", "file", Kind::Text),
    ("sandbox.fleet", "count", Kind::Integer),
    ("sandbox.fleet", "seed", Kind::Integer),
    ("sandbox.fleet", "regions", Kind::List),
    ("sandbox.fleet", "engine_versions", Kind::List),
    ("sandbox.fleet", "sharding_percent", Kind::Integer),
    ("sandbox.fleet", "resource_groups", Kind::List),
    ("sandbox.fleet", "locked", Kind::List),
    ("sandbox.fleet", "upgrade_time", Kind::Duration),
];

#[cfg(test)]
/// Keys that hold tables or arrays of tables rather than values, so no variable sets them:
/// `(section, key)`. Sections of sections are in [`KEYS`] themselves.
pub(crate) const TABLES: &[(&str, &str)] = &[
    ("alibaba", "quota"),
    ("sandbox", "fleet"),
    ("sandbox.fleet", "tags"),
    ("sandbox.fleet", "failures"),
];

/// The variable of a key: `DDS_GATEWAY_SERVER_MAX_IN_FLIGHT` for `server.max_in_flight`.
pub(crate) fn variable(section: &str, key: &str) -> String {
    format!("{ENV_PREFIX}{section}_{key}")
        .replace('.', "_")
        .to_ascii_uppercase()
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
        let mut table = &mut *document;
        for part in section.split('.') {
            let entry = table
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(inner) = entry else {
                return Err(invalid(section, "expected a table"));
            };
            table = inner;
        }
        table.insert(key.to_string(), value);
        set.push(FromEnv {
            key: name,
            variable,
        });
    }
    Ok(set)
}

/// `DDS_GATEWAY_*` variables that are no configuration key: the config file and the client's
/// token, and the project's test and image scripts, which pass their own through.
const OTHER_VARIABLES: &[&str] = &[
    "DDS_GATEWAY_CONFIG",
    "DDS_GATEWAY_TOKEN",
    "DDS_GATEWAY_BIN",
    "DDS_GATEWAY_SIGN_BIN",
    "DDS_GATEWAY_IMAGE_CACHE",
];

/// Refuses a `DDS_GATEWAY_*` variable in `names` that the gateway does not know, as a misspelt
/// key in the file is refused: a typo would otherwise leave the default in force unnoticed.
pub(crate) fn check_variable_names<I, S>(names: I) -> Result<(), ConfigError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let known: Vec<String> = KEYS
        .iter()
        .map(|&(section, key, _)| variable(section, key))
        .chain(OTHER_VARIABLES.iter().map(|v| (*v).to_string()))
        .collect();
    for name in names {
        let name = name.as_ref();
        if !name.starts_with(ENV_PREFIX) || known.iter().any(|k| k == name) {
            continue;
        }
        let nearest = known
            .iter()
            .map(|k| (edit_distance(k, name), k))
            .min()
            .filter(|(distance, _)| *distance <= 3)
            .map(|(_, k)| k.clone());
        return Err(ConfigError::UnknownVariable {
            variable: name.to_string(),
            nearest,
        });
    }
    Ok(())
}

/// Levenshtein distance, for the "did you mean" of an unknown variable.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_foreign_variables_pass() {
        let names = [
            "DDS_GATEWAY_SERVER_LISTEN",
            "DDS_GATEWAY_TOKEN",
            "DDS_GATEWAY_CONFIG",
            "PATH",
            "ALIBABA_CLOUD_ACCESS_KEY_ID",
        ];
        check_variable_names(names).unwrap();
    }

    #[test]
    fn a_misspelt_variable_is_refused_naming_it_and_the_nearest_key() {
        let err = check_variable_names(["HOME", "DDS_GATEWAY_SERVER_LISTNE"]).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("DDS_GATEWAY_SERVER_LISTNE"), "{shown}");
        assert!(
            shown.contains("did you mean DDS_GATEWAY_SERVER_LISTEN"),
            "{shown}"
        );
        // Far from every known name: named, without a guess.
        let shown = check_variable_names(["DDS_GATEWAY_FROBNICATE"])
            .unwrap_err()
            .to_string();
        assert!(
            shown.contains("DDS_GATEWAY_FROBNICATE") && !shown.contains("did you mean"),
            "{shown}"
        );
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
