//! How a value is read: errors that name the key, durations with bounds, per-caller shares.

use std::time::Duration;

/// Seconds in a minute, an hour, a day: the bounds of duration keys.
pub(crate) const MINUTE: u64 = 60;
pub(crate) const HOUR: u64 = 3600;
pub(crate) const DAY: u64 = 24 * HOUR;

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
    #[error("unknown environment variable {variable}{}", nearest.as_ref().map(|n| format!(" (did you mean {n}?)")).unwrap_or_default())]
    UnknownVariable {
        variable: String,
        nearest: Option<String>,
    },
}

pub(crate) fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// One caller's share of a global limit: at most the limit, by default half of it (at least 1),
/// so that one caller cannot hold every place.
pub(crate) fn share(
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

pub(crate) fn duration(
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
pub(crate) fn duration_or(
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

/// ` (line N)` for a TOML error span, so the message points into the file.
pub(crate) fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| {
        let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
        format!(" (line {line})")
    })
    .unwrap_or_default()
}
