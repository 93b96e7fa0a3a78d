//! Where the Alibaba call budget ([`alibaba::quota`](crate::alibaba::quota)) is kept: in this
//! process ([`MemoryQuota`], one replica) or in Redis ([`RedisQuota`], shared by replicas). Per
//! region, two sets: the holders of places in flight, each with its lease's end, and the calls
//! started in the last second. One script takes both or neither, on Redis's clock, so replicas
//! with skewed clocks share one window; an expired lease is swept on every take, so a replica
//! that died holding places frees them within a lease.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use tokio::time::Instant;

use crate::alibaba::quota::{Grant, QuotaLimits, QuotaStore, QuotaStoreError};

/// The rate window.
const WINDOW: Duration = Duration::from_secs(1);
/// What a waiting call is told when every place is taken: places come back unannounced.
const FULL_WAIT: Duration = Duration::from_millis(20);

/// One region's budget in memory.
#[derive(Debug, Default)]
struct Region {
    /// Holder → end of its lease.
    holders: HashMap<String, Instant>,
    /// Starts in the last window, oldest first.
    starts: VecDeque<Instant>,
}

/// The budget in this process's memory.
#[derive(Debug, Default)]
pub(crate) struct MemoryQuota {
    regions: Mutex<HashMap<String, Region>>,
}

impl MemoryQuota {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn with_region<T>(&self, region: &str, f: impl FnOnce(&mut Region) -> T) -> T {
        let mut regions = self
            .regions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(regions.entry(region.to_string()).or_default())
    }
}

#[async_trait::async_trait]
impl QuotaStore for MemoryQuota {
    async fn try_acquire(
        &self,
        region: &str,
        holder: &str,
        limits: QuotaLimits,
        lease: Duration,
    ) -> Result<Grant, QuotaStoreError> {
        let now = Instant::now();
        Ok(self.with_region(region, |r| {
            r.holders.retain(|_, until| *until > now);
            while r.starts.front().is_some_and(|t| now - *t >= WINDOW) {
                r.starts.pop_front();
            }
            if r.holders.len() >= limits.max_in_flight as usize {
                return Grant::Wait(FULL_WAIT);
            }
            if r.starts.len() >= limits.calls_per_second as usize {
                let oldest = r.starts.front().copied().unwrap_or(now);
                return Grant::Wait((oldest + WINDOW).saturating_duration_since(now));
            }
            r.holders.insert(holder.to_string(), now + lease);
            r.starts.push_back(now);
            Grant::Granted
        }))
    }

    async fn renew(
        &self,
        region: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<(), QuotaStoreError> {
        self.with_region(region, |r| {
            if let Some(until) = r.holders.get_mut(holder) {
                *until = Instant::now() + lease;
            }
        });
        Ok(())
    }

    async fn release(&self, region: &str, holder: &str) -> Result<(), QuotaStoreError> {
        self.with_region(region, |r| r.holders.remove(holder));
        Ok(())
    }
}

/// Takes a place and a rate token, or says how long to wait: `0` granted, `-1` every place is
/// taken, `n > 0` the milliseconds until the oldest start leaves the window.
/// KEYS: holders (sorted by lease end), starts (sorted by start). ARGV: holder, max in flight,
/// calls per second, lease in ms.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 1000)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return -1
end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + 1000 - now)
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease * 2)
redis.call('PEXPIRE', KEYS[2], 2000)
return 0
";

/// Extends a holder's lease if it still holds its place. KEYS: holders. ARGV: holder, lease ms.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
end
return 0
";

/// The budget in Redis, shared by every replica on it.
pub(crate) struct RedisQuota {
    connection: ConnectionManager,
    prefix: String,
    take: Script,
    renew: Script,
}

impl std::fmt::Debug for RedisQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQuota")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisQuota {
    /// The budget beside `store`: its connection and key prefix.
    pub(crate) fn beside(store: &super::redis::RedisStore) -> Self {
        Self {
            connection: store.connection(),
            prefix: store.key("quota", ""),
            take: Script::new(TAKE),
            renew: Script::new(RENEW),
        }
    }

    /// The keys of `region`: both in one hash slot (the prefix's tag).
    fn keys(&self, region: &str) -> (String, String) {
        (
            super::redis::quota_holders_key(&self.prefix, region),
            format!("{}:{region}:starts", self.prefix),
        )
    }
}

fn unavailable(err: &redis::RedisError) -> QuotaStoreError {
    QuotaStoreError(err.to_string())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[async_trait::async_trait]
impl QuotaStore for RedisQuota {
    async fn try_acquire(
        &self,
        region: &str,
        holder: &str,
        limits: QuotaLimits,
        lease: Duration,
    ) -> Result<Grant, QuotaStoreError> {
        let (holders, starts) = self.keys(region);
        let mut connection = self.connection.clone();
        let answer: i64 = self
            .take
            .key(holders)
            .key(starts)
            .arg(holder)
            .arg(limits.max_in_flight)
            .arg(limits.calls_per_second)
            .arg(millis(lease))
            .invoke_async(&mut connection)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(match answer {
            0 => Grant::Granted,
            -1 => Grant::Wait(FULL_WAIT),
            ms => Grant::Wait(Duration::from_millis(u64::try_from(ms).unwrap_or(1))),
        })
    }

    async fn renew(
        &self,
        region: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<(), QuotaStoreError> {
        let (holders, _) = self.keys(region);
        let mut connection = self.connection.clone();
        self.renew
            .key(holders)
            .arg(holder)
            .arg(millis(lease))
            .invoke_async::<i64>(&mut connection)
            .await
            .map(drop)
            .map_err(|e| unavailable(&e))
    }

    async fn release(&self, region: &str, holder: &str) -> Result<(), QuotaStoreError> {
        let (holders, _) = self.keys(region);
        let mut connection = self.connection.clone();
        redis::cmd("ZREM")
            .arg(holders)
            .arg(holder)
            .query_async::<i64>(&mut connection)
            .await
            .map(drop)
            .map_err(|e| unavailable(&e))
    }

    fn beside_state_store(&self) -> bool {
        true
    }
}

/// The budget's store for `state`: beside the Redis store when there is one, else in memory.
pub(crate) fn store_for(state: &super::State) -> std::sync::Arc<dyn QuotaStore> {
    match &state.redis {
        Some(redis) => std::sync::Arc::new(RedisQuota::beside(redis)),
        None => std::sync::Arc::new(MemoryQuota::new()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::alibaba::quota::{Quota, in_background};

    const LIMITS: QuotaLimits = QuotaLimits {
        calls_per_second: 3,
        max_in_flight: 2,
    };

    #[tokio::test(start_paused = true)]
    async fn memory_keeps_both_limits_and_lets_leases_lapse() {
        let quota = MemoryQuota::new();
        let lease = Duration::from_secs(5);
        let take = |h: &'static str| quota.try_acquire("r", h, LIMITS, lease);
        assert_eq!(take("a").await.unwrap(), Grant::Granted);
        assert_eq!(take("b").await.unwrap(), Grant::Granted);
        assert_eq!(
            take("c").await.unwrap(),
            Grant::Wait(FULL_WAIT),
            "two in flight"
        );
        // Another region has its own budget.
        assert_eq!(
            quota
                .try_acquire("other", "x", LIMITS, lease)
                .await
                .unwrap(),
            Grant::Granted
        );
        quota.release("r", "a").await.unwrap();
        assert_eq!(take("c").await.unwrap(), Grant::Granted);
        quota.release("r", "c").await.unwrap();
        // Three started within the second: the fourth waits for the first to leave it.
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(
            take("d").await.unwrap(),
            Grant::Wait(Duration::from_millis(600))
        );
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(take("d").await.unwrap(), Grant::Granted);
        // "b" never gave its place back; renewed, it keeps it; then its lease lapses.
        quota.renew("r", "b", lease).await.unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        quota.release("r", "d").await.unwrap();
        assert_eq!(take("e").await.unwrap(), Grant::Granted);
        assert_eq!(take("f").await.unwrap(), Grant::Wait(FULL_WAIT), "b and e");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(take("f").await.unwrap(), Grant::Granted, "b's lease lapsed");
    }

    /// A follow-up poll that came first still gives way to a call that waits behind it.
    #[tokio::test(start_paused = true)]
    async fn background_calls_give_way_to_every_other_call() {
        let limits = QuotaLimits {
            calls_per_second: 100,
            max_in_flight: 1,
        };
        let quota = Arc::new(Quota::new(
            Arc::new(MemoryQuota::new()),
            limits,
            Duration::from_secs(5),
        ));
        let first = quota.acquire("r", None).await.unwrap();
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let background = {
            let (quota, order) = (Arc::clone(&quota), order_tx.clone());
            tokio::spawn(in_background(async move {
                let place = quota.acquire("r", None).await.unwrap();
                order.send("poll").unwrap();
                drop(place);
            }))
        };
        // The poll is in line before the send arrives.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let send = {
            let quota = Arc::clone(&quota);
            tokio::spawn(async move {
                let place = quota.acquire("r", None).await.unwrap();
                order_tx.send("send").unwrap();
                drop(place);
            })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        drop(first);
        send.await.unwrap();
        background.await.unwrap();
        assert_eq!(order.recv().await, Some("send"));
        assert_eq!(order.recv().await, Some("poll"));
    }
}
