//! `[[callers]]`: who may call and what each caller may do, checked at start-up and at reload.

use std::path::Path;

use serde::Deserialize;

use super::value::{ConfigError, invalid, span_hint};

/// A caller's sustained calls per second when `rate_per_second` is not set.
pub(crate) const DEFAULT_CALLER_RATE: f64 = 5.0;
/// A caller's burst when `burst` is not set.
pub(crate) const DEFAULT_CALLER_BURST: u32 = 10;

/// A `[[callers]]` entry: who may call (a bearer token's SHA-256, or a client certificate naming
/// `name`) and what it may do (deny by default; the policy module enforces it).
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
    /// The caller may plan, start and control fleet rollouts (off by default: a rollout is a
    /// fleet-wide act; reading one follows the read policy).
    #[serde(default)]
    pub rollouts: bool,
    /// A verified client certificate naming the caller identifies it (mTLS). Off by default:
    /// a certificate never names a caller that did not opt in.
    #[serde(default)]
    pub mtls: bool,
    #[serde(default)]
    pub rate_per_second: Option<f64>,
    #[serde(default)]
    pub burst: Option<u32>,
}

/// Each caller is well-formed, distinct, and has a way to authenticate.
pub(super) fn check(
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

/// `server.callers_file`: a TOML file of `[[callers]]` tables and nothing else.
pub(super) fn read_file(path: &Path) -> Result<Vec<CallerConfig>, ConfigError> {
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
