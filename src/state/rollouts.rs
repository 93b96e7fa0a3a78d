//! Fleet rollouts' durable records: each rollout as an opaque record with a version, its
//! driver's lease, the instances it holds (an instance is in one unfinished rollout at a time),
//! and the plans callers previewed (so that a start whose plan no longer matches can say what
//! changed).
//!
//! Every change is a compare-and-set on the record's version; a driver's change also on its
//! lease token (fencing): a replica whose lease ran out and was taken over can change nothing.
//! [`MemoryRollouts`] keeps them in this process; [`RedisRollouts`] in the Redis of the state
//! store, one Lua script per change, every key under one hash tag (one slot).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use tokio::time::Instant;

use crate::state::redis::RedisStore;
use crate::state::store::{StoreError, Token};

/// A record and the version a compare-and-set names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub version: i64,
    pub record: Vec<u8>,
}

/// What [`RolloutStore::create`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // `Created::Created` reads as the answer it is.
pub enum Created {
    Created,
    /// `instance` is held by the unfinished rollout `rollout_id`.
    Busy {
        instance: String,
        rollout_id: String,
    },
    /// A rollout with this id exists.
    Exists,
}

/// Where rollouts live.
#[async_trait::async_trait]
pub trait RolloutStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a new rollout (version 1) and takes its `instances`, all or none.
    async fn create(
        &self,
        id: &str,
        record: &[u8],
        instances: &[String],
    ) -> Result<Created, StoreError>;
    async fn get(&self, id: &str) -> Result<Option<Versioned>, StoreError>;
    /// Every rollout, newest first.
    async fn list(&self) -> Result<Vec<Versioned>, StoreError>;
    /// Replaces the record when it is still at `version` and, with `fence`, when that token
    /// holds the lease. `None`: it was not (re-read and decide again, or stop driving).
    async fn update(
        &self,
        id: &str,
        version: i64,
        fence: Option<&Token>,
        record: &[u8],
    ) -> Result<Option<i64>, StoreError>;
    /// Takes the rollout's lease for `lease` when it is free or ran out, or renews it when
    /// `token` holds it. `false`: another holder has it.
    async fn acquire(&self, id: &str, token: &Token, lease: Duration) -> Result<bool, StoreError>;
    /// Gives the lease up, if `token` holds it.
    async fn release(&self, id: &str, token: &Token) -> Result<(), StoreError>;
    /// Lets the rollout's instances go (it ended): other rollouts may take them.
    async fn free_instances(&self, id: &str, instances: &[String]) -> Result<(), StoreError>;
    /// Keeps a previewed plan for `keep`.
    async fn save_plan(&self, hash: &str, plan: &[u8], keep: Duration) -> Result<(), StoreError>;
    async fn load_plan(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError>;
}

/// Rollouts in this process (one replica).
#[derive(Debug, Default)]
pub(crate) struct MemoryRollouts {
    inner: Mutex<Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    /// id → (creation order, record).
    records: HashMap<String, (u64, Versioned)>,
    created: u64,
    leases: HashMap<String, (Token, Instant)>,
    instances: HashMap<String, String>,
    plans: HashMap<String, (Vec<u8>, Instant)>,
}

impl MemoryRollouts {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Memory> {
        // A panic while holding the lock leaves whole records only: each change is one insert.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl RolloutStore for MemoryRollouts {
    async fn create(
        &self,
        id: &str,
        record: &[u8],
        instances: &[String],
    ) -> Result<Created, StoreError> {
        let mut memory = self.lock();
        if memory.records.contains_key(id) {
            return Ok(Created::Exists);
        }
        for instance in instances {
            if let Some(holder) = memory.instances.get(instance)
                && holder != id
            {
                return Ok(Created::Busy {
                    instance: instance.clone(),
                    rollout_id: holder.clone(),
                });
            }
        }
        for instance in instances {
            memory.instances.insert(instance.clone(), id.to_string());
        }
        memory.created += 1;
        let order = memory.created;
        memory.records.insert(
            id.to_string(),
            (
                order,
                Versioned {
                    version: 1,
                    record: record.to_vec(),
                },
            ),
        );
        Ok(Created::Created)
    }

    async fn get(&self, id: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self.lock().records.get(id).map(|(_, v)| v.clone()))
    }

    async fn list(&self) -> Result<Vec<Versioned>, StoreError> {
        let memory = self.lock();
        let mut all: Vec<_> = memory.records.values().cloned().collect();
        all.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        Ok(all.into_iter().map(|(_, v)| v).collect())
    }

    async fn update(
        &self,
        id: &str,
        version: i64,
        fence: Option<&Token>,
        record: &[u8],
    ) -> Result<Option<i64>, StoreError> {
        let mut memory = self.lock();
        if let Some(token) = fence {
            let held = memory
                .leases
                .get(id)
                .is_some_and(|(holder, until)| holder == token && *until > Instant::now());
            if !held {
                return Ok(None);
            }
        }
        let Some((_, current)) = memory.records.get_mut(id) else {
            return Ok(None);
        };
        if current.version != version {
            return Ok(None);
        }
        current.version += 1;
        current.record = record.to_vec();
        Ok(Some(current.version))
    }

    async fn acquire(&self, id: &str, token: &Token, lease: Duration) -> Result<bool, StoreError> {
        let mut memory = self.lock();
        let now = Instant::now();
        let free = match memory.leases.get(id) {
            Some((holder, until)) => holder == token || *until <= now,
            None => true,
        };
        if free {
            memory
                .leases
                .insert(id.to_string(), (token.clone(), now + lease));
        }
        Ok(free)
    }

    async fn release(&self, id: &str, token: &Token) -> Result<(), StoreError> {
        let mut memory = self.lock();
        if memory
            .leases
            .get(id)
            .is_some_and(|(holder, _)| holder == token)
        {
            memory.leases.remove(id);
        }
        Ok(())
    }

    async fn free_instances(&self, id: &str, instances: &[String]) -> Result<(), StoreError> {
        let mut memory = self.lock();
        for instance in instances {
            if memory.instances.get(instance).is_some_and(|h| h == id) {
                memory.instances.remove(instance);
            }
        }
        Ok(())
    }

    async fn save_plan(&self, hash: &str, plan: &[u8], keep: Duration) -> Result<(), StoreError> {
        let mut memory = self.lock();
        let now = Instant::now();
        memory.plans.retain(|_, (_, until)| *until > now);
        memory
            .plans
            .insert(hash.to_string(), (plan.to_vec(), now + keep));
        Ok(())
    }

    async fn load_plan(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let memory = self.lock();
        Ok(memory
            .plans
            .get(hash)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(plan, _)| plan.clone()))
    }
}

/// The slot every rollout key shares.
const TAG: &str = "rollouts";

/// KEYS: record, index, instance keys... ARGV: id, record.
const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
for i = 3, #KEYS do
  local holder = redis.call('GET', KEYS[i])
  if holder and holder ~= ARGV[1] then return {'busy', tostring(i - 2), holder} end
end
for i = 3, #KEYS do redis.call('SET', KEYS[i], ARGV[1]) end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'version', 1)
redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
return {'created'}
";

/// KEYS: record, lease. ARGV: version, fencing token ('' for none), record.
const UPDATE: &str = r"
local v = redis.call('HGET', KEYS[1], 'version')
if not v or v ~= ARGV[1] then return -1 end
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then return -2 end
local n = tonumber(v) + 1
redis.call('HSET', KEYS[1], 'record', ARGV[3], 'version', n)
return n
";

/// KEYS: lease. ARGV: token, lease ms.
const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if not holder or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// KEYS: lease. ARGV: token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

/// KEYS: instance keys. ARGV: id.
const FREE: &str = r"
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 1
";

/// Rollouts in the state store's Redis, shared by every replica.
pub(crate) struct RedisRollouts {
    connection: ConnectionManager,
    store: Arc<RedisStore>,
    create: Script,
    update: Script,
    acquire: Script,
    release: Script,
    free: Script,
}

impl std::fmt::Debug for RedisRollouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRollouts")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

fn unavailable(err: &redis::RedisError) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl RedisRollouts {
    /// Rollouts beside `store`'s keys, on its connection.
    pub(crate) fn new(store: Arc<RedisStore>) -> Self {
        Self {
            connection: store.connection(),
            store,
            create: Script::new(CREATE),
            update: Script::new(UPDATE),
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
            free: Script::new(FREE),
        }
    }

    fn record_key(&self, id: &str) -> String {
        self.store.key(TAG, &format!(":r:{id}"))
    }
    fn lease_key(&self, id: &str) -> String {
        self.store.key(TAG, &format!(":lease:{id}"))
    }
    fn index_key(&self) -> String {
        self.store.key(TAG, ":index")
    }
    fn instance_key(&self, instance: &str) -> String {
        self.store.key(TAG, &format!(":i:{instance}"))
    }
    fn plan_key(&self, hash: &str) -> String {
        self.store.key(TAG, &format!(":plan:{hash}"))
    }
}

#[async_trait::async_trait]
impl RolloutStore for RedisRollouts {
    async fn create(
        &self,
        id: &str,
        record: &[u8],
        instances: &[String],
    ) -> Result<Created, StoreError> {
        let mut invocation = self.create.prepare_invoke();
        invocation.key(self.record_key(id)).key(self.index_key());
        for instance in instances {
            invocation.key(self.instance_key(instance));
        }
        invocation.arg(id).arg(record);
        let answer: Vec<String> = invocation
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        let malformed = || StoreError::Unavailable("malformed answer to a rollout create".into());
        match answer.first().map(String::as_str) {
            Some("created") => Ok(Created::Created),
            Some("exists") => Ok(Created::Exists),
            Some("busy") => {
                let index: usize = answer
                    .get(1)
                    .and_then(|i| i.parse().ok())
                    .ok_or_else(malformed)?;
                Ok(Created::Busy {
                    instance: instances
                        .get(index.wrapping_sub(1))
                        .cloned()
                        .ok_or_else(malformed)?,
                    rollout_id: answer.get(2).cloned().ok_or_else(malformed)?,
                })
            }
            _ => Err(malformed()),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Versioned>, StoreError> {
        let (record, version): (Option<Vec<u8>>, Option<i64>) = redis::cmd("HMGET")
            .arg(self.record_key(id))
            .arg("record")
            .arg("version")
            .query_async(&mut self.connection.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(record
            .zip(version)
            .map(|(record, version)| Versioned { version, record }))
    }

    async fn list(&self) -> Result<Vec<Versioned>, StoreError> {
        let ids: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(self.index_key())
            .arg(0)
            .arg(-1)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        let mut all = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(found) = self.get(&id).await? {
                all.push(found);
            }
        }
        Ok(all)
    }

    async fn update(
        &self,
        id: &str,
        version: i64,
        fence: Option<&Token>,
        record: &[u8],
    ) -> Result<Option<i64>, StoreError> {
        let answer: i64 = self
            .update
            .key(self.record_key(id))
            .key(self.lease_key(id))
            .arg(version)
            .arg(fence.map_or("", Token::as_str))
            .arg(record)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        Ok((answer > 0).then_some(answer))
    }

    async fn acquire(&self, id: &str, token: &Token, lease: Duration) -> Result<bool, StoreError> {
        let held: i64 = self
            .acquire
            .key(self.lease_key(id))
            .arg(token.as_str())
            .arg(millis(lease).max(1))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(held == 1)
    }

    async fn release(&self, id: &str, token: &Token) -> Result<(), StoreError> {
        let _: i64 = self
            .release
            .key(self.lease_key(id))
            .arg(token.as_str())
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(())
    }

    async fn free_instances(&self, id: &str, instances: &[String]) -> Result<(), StoreError> {
        if instances.is_empty() {
            return Ok(());
        }
        let mut invocation = self.free.prepare_invoke();
        for instance in instances {
            invocation.key(self.instance_key(instance));
        }
        invocation.arg(id);
        let _: i64 = invocation
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(())
    }

    async fn save_plan(&self, hash: &str, plan: &[u8], keep: Duration) -> Result<(), StoreError> {
        redis::cmd("SET")
            .arg(self.plan_key(hash))
            .arg(plan)
            .arg("PX")
            .arg(millis(keep).max(1))
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(|e| unavailable(&e))
    }

    async fn load_plan(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        redis::cmd("GET")
            .arg(self.plan_key(hash))
            .query_async(&mut self.connection.clone())
            .await
            .map_err(|e| unavailable(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_driver_that_lost_its_lease_changes_nothing() {
        let store = MemoryRollouts::new();
        assert_eq!(
            store.create("r1", b"a", &["i1".into()]).await.unwrap(),
            Created::Created
        );
        let (old, new) = (Token::new(), Token::new());
        assert!(store.acquire("r1", &old, Duration::ZERO).await.unwrap());
        // The old driver's lease ran out: another takes it, and the old one's writes fail.
        assert!(
            store
                .acquire("r1", &new, Duration::from_secs(30))
                .await
                .unwrap()
        );
        assert_eq!(
            store.update("r1", 1, Some(&old), b"old").await.unwrap(),
            None
        );
        assert!(
            !store
                .acquire("r1", &old, Duration::from_secs(30))
                .await
                .unwrap()
        );
        assert_eq!(
            store.update("r1", 1, Some(&new), b"new").await.unwrap(),
            Some(2)
        );
        // A stale version fails too, fenced or not.
        assert_eq!(store.update("r1", 1, None, b"x").await.unwrap(), None);
        assert_eq!(store.get("r1").await.unwrap().unwrap().record, b"new");
    }

    #[tokio::test]
    async fn an_instance_is_in_one_unfinished_rollout_at_a_time() {
        let store = MemoryRollouts::new();
        store
            .create("r1", b"a", &["i1".into(), "i2".into()])
            .await
            .unwrap();
        assert_eq!(
            store
                .create("r2", b"b", &["i3".into(), "i2".into()])
                .await
                .unwrap(),
            Created::Busy {
                instance: "i2".into(),
                rollout_id: "r1".into()
            }
        );
        // All or none: i3 was not taken.
        store
            .free_instances("r1", &["i1".into(), "i2".into()])
            .await
            .unwrap();
        assert_eq!(
            store
                .create("r2", b"b", &["i3".into(), "i2".into()])
                .await
                .unwrap(),
            Created::Created
        );
        let ids: Vec<_> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.record)
            .collect();
        assert_eq!(ids, vec![b"b".to_vec(), b"a".to_vec()]);
    }
}
