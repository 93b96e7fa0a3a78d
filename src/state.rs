//! Where shared state lives (`[state]`): idempotency keys, per-instance upgrade locks and caller
//! rate buckets. `memory` keeps them in this process (one replica); `redis` shares them between
//! replicas ([`redis::RedisStore`]). This module builds the store the configuration names and
//! watches whether it can be reached, for health checks.

pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::config::{Config, StoreKind};
use crate::idempotency::{MemoryStore, StateStore, StoreLimits};

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

/// The store `config` names, and whether it can be reached now.
#[derive(Debug, Clone)]
pub struct State {
    pub store: Arc<dyn StateStore>,
    /// The Redis store, when there is one (health, rate limits).
    pub redis: Option<Arc<redis::RedisStore>>,
}

impl State {
    /// Opens the configured store. A Redis that cannot be reached yet is not an error: upgrades
    /// are refused (`STATE_STORE_UNAVAILABLE`) until it can.
    pub async fn open(config: &Config) -> Result<Self, String> {
        let limits = StoreLimits::from_config(config);
        match (config.state.store, &config.state.redis_url) {
            (StoreKind::Redis, Some(url)) => {
                let store = Arc::new(redis::RedisStore::open(
                    url,
                    &config.state.key_prefix,
                    limits,
                )?);
                store.check_at_start_up().await;
                Ok(Self {
                    store: Arc::clone(&store) as Arc<dyn StateStore>,
                    redis: Some(store),
                })
            }
            _ => Ok(Self::memory(limits)),
        }
    }

    /// This process's memory only.
    pub fn memory(limits: StoreLimits) -> Self {
        Self {
            store: Arc::new(MemoryStore::new(limits)),
            redis: None,
        }
    }

    /// Whether the store answers now (always, in memory).
    pub async fn reachable(&self) -> bool {
        match &self.redis {
            Some(redis) => redis.ping().await.is_ok(),
            None => true,
        }
    }
}

/// How often the health of the store is checked.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

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
