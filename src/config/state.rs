//! `[state]`: where idempotency keys, per-instance upgrade locks and caller buckets live.

use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::value::{ConfigError, duration_or, invalid};

/// `[state]`: the store of idempotency keys, per-instance upgrade locks and caller buckets.
#[derive(Debug, Clone)]
pub struct StateConfig {
    pub store: StoreKind,
    /// `state.redis_url`, with its password: a secret.
    pub redis_url: Option<RedisUrl>,
    /// `state.redis_ca_file`: the CAs a `rediss://` Redis is verified with, instead of the
    /// system's roots.
    pub redis_ca: Option<RedisCa>,
    /// Put before every Redis key, so that several gateways can share one Redis.
    pub key_prefix: String,
    /// How long a claim lives without renewal: how long after its owner died a key waits.
    pub lease: Duration,
    /// `state.readiness_follows_store`: the engine service's health turns `NOT_SERVING` while a
    /// Redis store cannot be reached. Off by default: every replica shares the store, so an
    /// outage would take them all out of the Service, reads and validate-only calls included.
    pub readiness_follows_store: bool,
}

/// `state.store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// This process's memory: one replica.
    Memory,
    /// A Redis shared by every replica.
    Redis,
}

/// `state.redis_url`. It may carry a password, so it prints masked (`redis://:***@host:6379/0`)
/// everywhere but where the connection is opened.
#[derive(Clone)]
pub struct RedisUrl(Zeroizing<String>);

impl RedisUrl {
    /// Checks that `text` is a `redis://` or `rediss://` URL that names a host. The error never
    /// repeats the URL (it may hold a password).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let url = reqwest::Url::parse(text).map_err(|e| {
            format!("expected a URL such as redis://host:6379/0 or rediss://host:6380/0 ({e})")
        })?;
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err(format!(
                "expected the scheme redis:// or rediss:// (TLS), got {}://",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the URL names no host".to_string());
        }
        let db = url.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<u16>().is_err() {
            return Err("the path must be a database number, such as /0".to_string());
        }
        ::redis::Client::open(text)
            .map_err(|e| format!("Redis does not accept it ({:?})", e.kind()))?;
        Ok(Self(Zeroizing::new(text.to_string())))
    }

    /// Whether it is a `rediss://` (TLS) URL.
    pub fn is_tls(&self) -> bool {
        self.0
            .get(..9)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("rediss://"))
    }

    /// The URL with any user name and password replaced by `***`.
    pub fn masked(&self) -> String {
        match reqwest::Url::parse(&self.0) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                if !url.username().is_empty() {
                    let _ = url.set_username("***");
                }
                url.to_string()
            }
            Err(_) => "***".to_string(),
        }
    }

    /// The URL itself; only for opening the connection.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

/// `state.redis_ca_file`: a PEM bundle of CA certificates, read at start-up.
#[derive(Clone)]
pub struct RedisCa {
    pub path: PathBuf,
    /// The file's PEM text, holding at least one certificate.
    pub pem: Vec<u8>,
}

impl RedisCa {
    fn read(path: &str) -> Result<Self, String> {
        let path = PathBuf::from(path);
        let pem =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut certificates = 0;
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            certificate.map_err(|e| format!("{} is not valid PEM ({e})", path.display()))?;
            certificates += 1;
        }
        if certificates == 0 {
            return Err(format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
        Ok(Self { path, pem })
    }
}

impl std::fmt::Debug for RedisCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCa")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// `[state]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    store: Option<String>,
    redis_url: Option<String>,
    redis_ca_file: Option<String>,
    key_prefix: Option<String>,
    lease: Option<String>,
    readiness_follows_store: Option<bool>,
}

/// A Redis store needs a URL it can use; its password never appears in the error.
pub(super) fn check(raw: RawState) -> Result<StateConfig, ConfigError> {
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
        .map(|url| RedisUrl::parse(&url).map_err(|e| invalid("state.redis_url", e)))
        .transpose()?;
    if store == StoreKind::Redis && redis_url.is_none() {
        return Err(invalid(
            "state.redis_url",
            "required with state.store = \"redis\"",
        ));
    }
    let redis_ca = raw
        .redis_ca_file
        .filter(|path| !path.trim().is_empty())
        .map(|path| RedisCa::read(path.trim()).map_err(|e| invalid("state.redis_ca_file", e)))
        .transpose()?;
    if redis_ca.is_some() && !redis_url.as_ref().is_some_and(RedisUrl::is_tls) {
        return Err(invalid(
            "state.redis_ca_file",
            "only used with a rediss:// (TLS) state.redis_url",
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
        redis_ca,
        key_prefix,
        lease,
        readiness_follows_store: raw.readiness_follows_store.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_masked_in_debug_and_errors() {
        let url = RedisUrl::parse("redis://:hunter2secret@10.0.0.5:6379/0").unwrap();
        assert_eq!(url.masked(), "redis://:***@10.0.0.5:6379/0");
        assert!(!format!("{url:?}").contains("hunter2secret"));
        let url = RedisUrl::parse("rediss://app:hunter2secret@redis.local:6380").unwrap();
        assert!(!url.masked().contains("hunter2secret"));
        assert!(!url.masked().contains("app"));
        for bad in [
            "http://:hunter2secret@host:6379",
            "redis://:hunter2secret@host:6379/zero",
            "hunter2secret",
        ] {
            let err = RedisUrl::parse(bad).unwrap_err();
            assert!(!err.contains("hunter2secret"), "{err}");
        }
    }
}
