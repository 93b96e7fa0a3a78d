//! Where shared state lives (`[state]`): idempotency keys, per-instance upgrade locks, caller
//! rate buckets and fleet rollouts ([`rollouts`]). [`store`] is the contract; [`memory`] keeps them in this process (one replica);
//! [`redis`] shares them between replicas. This module builds the store the configuration names and
//! watches whether it can be reached, for health checks. [`activity`] keeps the recent upgrades and
//! rollout actions for the console.

pub(crate) mod activity;
pub(crate) mod memory;
pub(crate) mod quota;
pub(crate) mod redis;
pub(crate) mod rollouts;
pub(crate) mod store;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, StoreKind};
use memory::MemoryStore;
use store::{StateStore, StoreLimits};

/// The store `config` names, and whether it can be reached now.
#[derive(Debug, Clone)]
pub struct State {
    pub store: Arc<dyn StateStore>,
    /// The Redis store, when there is one (health, rate limits).
    pub redis: Option<Arc<redis::RedisStore>>,
    /// Fleet rollouts' records, beside the keys.
    pub rollouts: Arc<dyn rollouts::RolloutStore>,
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
                    config.state.redis_ca.as_ref(),
                    &config.state.key_prefix,
                    limits,
                )?);
                store.check_at_start_up().await;
                Ok(Self {
                    store: Arc::clone(&store) as Arc<dyn StateStore>,
                    rollouts: Arc::new(rollouts::RedisRollouts::new(Arc::clone(&store))),
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
            rollouts: Arc::new(rollouts::MemoryRollouts::new()),
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
pub(crate) const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
