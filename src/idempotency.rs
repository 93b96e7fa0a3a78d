//! Idempotency by `request_id` (AIP-155). Alibaba's `UpgradeDBInstanceEngineVersion` takes no
//! client token, so this is the only thing that stops a retried or duplicated call from upgrading
//! twice.
//!
//! A key is (caller, `request_id`); a [`Fingerprint`] is a hash of the normalised request. The
//! first request with a key becomes its owner and does the work; duplicates with the same
//! fingerprint wait for it and get its answer; a different request with the key is a conflict.
//! Only an accepted upgrade is kept as the answer. Every failure either proves that nothing was
//! upgraded (the next request with the key simply tries again) or left the outcome unknown: then
//! the key is marked *unresolved*, and its next owner looks at the instance before anything else.
//!
//! [`IdempotencyStore`] is the storage seam; [`MemoryStore`] keeps keys in this process only, so
//! the guarantee holds for one replica until a shared store exists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::upgrade::Accepted;
use crate::validation::ValidUpgradeRequest;

/// Who asked, and their idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    caller: String,
    request_id: uuid::Uuid,
}

impl Key {
    /// `caller` names the authenticated caller ("" while callers are anonymous), so that two
    /// callers can never collide on a key.
    pub fn new(caller: &str, request_id: uuid::Uuid) -> Self {
        Self {
            caller: caller.to_string(),
            request_id,
        }
    }

    pub fn request_id(&self) -> uuid::Uuid {
        self.request_id
    }
}

/// SHA-256 of a normalised request (instance, target, region after defaulting, switch mode).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl Fingerprint {
    pub fn of(request: &ValidUpgradeRequest) -> Self {
        let mut hash = Sha256::new();
        // Length-prefixed fields: no two different requests can produce the same input.
        for field in [
            "upgrade/v1",
            request.db_instance_id(),
            request.engine_version(),
            request.region_id(),
            request.switch_mode().map_or("", |m| m.as_param()),
        ] {
            hash.update((field.len() as u64).to_be_bytes());
            hash.update(field.as_bytes());
        }
        Self(hash.finalize().into())
    }
}

/// What a store answers to a claim.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The caller now holds the key and must settle it.
    Owner {
        /// The previous holder ended without knowing whether the upgrade was applied.
        previous_unresolved: bool,
    },
    /// The key's request was accepted before: this is that answer.
    Replay(Accepted),
    /// The key belongs to a different request.
    Conflict,
}

/// How a holder's request ended.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// The upgrade was accepted (or found under way): the key's answer from now on.
    Accepted(Accepted),
    /// It failed and surely upgraded nothing; the next request with the key tries again.
    NotApplied,
    /// It failed and the upgrade may or may not have been applied.
    Unresolved,
}

/// Why the store could not take a key.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the idempotency store is full ({0} keys)")]
    Full(usize),
    #[error("the idempotency store is unavailable: {0}")]
    Unavailable(String),
}

/// Where keys live. An implementation must make [`claim`](Self::claim) atomic: of concurrent
/// claims with one key, exactly one becomes the owner, and the others wait until it settles.
/// `claim` must also be cancel-safe: the caller drops it at its deadline, so a claim dropped
/// before it returns must not leave the key owned (nothing would ever settle it).
#[async_trait::async_trait]
pub trait IdempotencyStore: Send + Sync + std::fmt::Debug + 'static {
    /// Claims `key` for a request with `fingerprint`, waiting while another holder has it.
    async fn claim(&self, key: &Key, fingerprint: &Fingerprint) -> Result<Claim, StoreError>;
    /// Ends the current holder's claim. Synchronous so that a dropped [`Lease`] can call it.
    fn settle(&self, key: &Key, settlement: Settlement);
}

/// The store behind a handle that turns ownership into a [`Lease`].
#[derive(Debug, Clone)]
pub struct Idempotency {
    store: Arc<dyn IdempotencyStore>,
}

/// The result of [`Idempotency::claim`].
#[derive(Debug)]
pub enum Claimed {
    Owner(Lease),
    Replay(Accepted),
    Conflict,
}

impl Idempotency {
    pub fn new(store: Arc<dyn IdempotencyStore>) -> Self {
        Self { store }
    }

    pub async fn claim(&self, key: Key, fingerprint: &Fingerprint) -> Result<Claimed, StoreError> {
        Ok(match self.store.claim(&key, fingerprint).await? {
            Claim::Owner {
                previous_unresolved,
            } => Claimed::Owner(Lease {
                store: Arc::clone(&self.store),
                key,
                previous_unresolved,
                settled: false,
            }),
            Claim::Replay(accepted) => Claimed::Replay(accepted),
            Claim::Conflict => Claimed::Conflict,
        })
    }
}

/// Ownership of a key. Settle it; dropped unsettled (a panic, a cancelled task), it settles as
/// [`Settlement::Unresolved`], the only safe assumption.
#[derive(Debug)]
pub struct Lease {
    store: Arc<dyn IdempotencyStore>,
    key: Key,
    previous_unresolved: bool,
    settled: bool,
}

impl Lease {
    /// Whether the previous holder left the outcome unknown: look at the instance first.
    pub fn previous_unresolved(&self) -> bool {
        self.previous_unresolved
    }

    pub fn settle(mut self, settlement: Settlement) {
        self.settled = true;
        self.store.settle(&self.key, settlement);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.settled {
            self.store.settle(&self.key, Settlement::Unresolved);
        }
    }
}

/// Keys in this process's memory, kept for `retention` after they settle, at most `max_keys`.
#[derive(Debug)]
pub struct MemoryStore {
    retention: Duration,
    max_keys: usize,
    entries: Mutex<HashMap<Key, Entry>>,
}

#[derive(Debug)]
struct Entry {
    fingerprint: Fingerprint,
    state: State,
    /// `None` while in flight: a key is never forgotten under its owner.
    expires_at: Option<Instant>,
}

#[derive(Debug)]
enum State {
    /// Waiters subscribe; replacing the state drops the sender, which wakes them.
    InFlight {
        done: watch::Sender<()>,
        unresolved_before: bool,
    },
    Settled {
        accepted: Option<Accepted>,
        unresolved: bool,
    },
}

impl MemoryStore {
    pub fn new(retention: Duration, max_keys: usize) -> Self {
        Self {
            retention,
            max_keys,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        // Entries are plain data; a panic elsewhere leaves them usable.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The claim's answer now, or a receiver that fires when the key's holder settles.
    fn try_claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
    ) -> Result<Result<Claim, watch::Receiver<()>>, StoreError> {
        let mut entries = self.lock();
        let now = Instant::now();
        let expired = |e: &Entry| e.expires_at.is_some_and(|at| at <= now);
        if entries.get(key).is_some_and(expired) {
            entries.remove(key);
        }
        let in_flight = || State::InFlight {
            done: watch::Sender::new(()),
            unresolved_before: false,
        };
        let Some(entry) = entries.get_mut(key) else {
            if entries.len() >= self.max_keys {
                entries.retain(|_, e| !expired(e));
                if entries.len() >= self.max_keys {
                    return Err(StoreError::Full(entries.len()));
                }
            }
            entries.insert(
                key.clone(),
                Entry {
                    fingerprint: *fingerprint,
                    state: in_flight(),
                    expires_at: None,
                },
            );
            return Ok(Ok(Claim::Owner {
                previous_unresolved: false,
            }));
        };
        if entry.fingerprint != *fingerprint {
            return Ok(Ok(Claim::Conflict));
        }
        match &entry.state {
            State::InFlight { done, .. } => Ok(Err(done.subscribe())),
            State::Settled {
                accepted: Some(accepted),
                ..
            } => Ok(Ok(Claim::Replay(accepted.clone()))),
            State::Settled {
                accepted: None,
                unresolved,
            } => {
                let previous_unresolved = *unresolved;
                entry.state = State::InFlight {
                    done: watch::Sender::new(()),
                    unresolved_before: previous_unresolved,
                };
                entry.expires_at = None;
                Ok(Ok(Claim::Owner {
                    previous_unresolved,
                }))
            }
        }
    }
}

#[async_trait::async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(&self, key: &Key, fingerprint: &Fingerprint) -> Result<Claim, StoreError> {
        loop {
            match self.try_claim(key, fingerprint)? {
                Ok(claim) => return Ok(claim),
                // Settling replaces the state and so drops the sender: `changed` then returns.
                Err(mut settled) => {
                    let _ = settled.changed().await;
                }
            }
        }
    }

    fn settle(&self, key: &Key, settlement: Settlement) {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(key) else {
            return;
        };
        let unresolved_before = match entry.state {
            State::InFlight {
                unresolved_before, ..
            } => unresolved_before,
            State::Settled { .. } => return,
        };
        entry.state = match settlement {
            Settlement::Accepted(accepted) => State::Settled {
                accepted: Some(accepted),
                unresolved: false,
            },
            // An earlier unknown outcome stays unknown until an owner sees the upgrade.
            Settlement::NotApplied => State::Settled {
                accepted: None,
                unresolved: unresolved_before,
            },
            Settlement::Unresolved => State::Settled {
                accepted: None,
                unresolved: true,
            },
        };
        entry.expires_at = Some(crate::deadline::later(Instant::now(), self.retention));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn store(max_keys: usize) -> Idempotency {
        Idempotency::new(Arc::new(MemoryStore::new(
            Duration::from_secs(3600),
            max_keys,
        )))
    }

    fn key(n: u128) -> Key {
        Key::new("", uuid::Uuid::from_u128(n))
    }

    fn fingerprint(n: u8) -> Fingerprint {
        Fingerprint([n; 32])
    }

    fn accepted(request_id: &str) -> Accepted {
        Accepted {
            response: pb::UpgradeEngineVersionResponse {
                alibaba_request_id: request_id.to_string(),
                ..Default::default()
            },
            reconciled: false,
        }
    }

    async fn owner(store: &Idempotency, k: Key, f: u8) -> Lease {
        match store.claim(k, &fingerprint(f)).await.unwrap() {
            Claimed::Owner(lease) => lease,
            other => panic!("expected ownership, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_answer_is_replayed_and_a_different_request_conflicts() {
        let store = store(10);
        let lease = owner(&store, key(1), 1).await;
        assert!(!lease.previous_unresolved());
        assert!(matches!(
            store.claim(key(1), &fingerprint(2)).await.unwrap(),
            Claimed::Conflict
        ));
        lease.settle(Settlement::Accepted(accepted("R1")));
        match store.claim(key(1), &fingerprint(1)).await.unwrap() {
            Claimed::Replay(a) => assert_eq!(a.response.alibaba_request_id, "R1"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.claim(key(1), &fingerprint(2)).await.unwrap(),
            Claimed::Conflict
        ));
        // Another caller's identical key is a different key.
        let other_caller = Key::new("billing", uuid::Uuid::from_u128(1));
        assert!(matches!(
            store.claim(other_caller, &fingerprint(2)).await.unwrap(),
            Claimed::Owner(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_duplicates_wait_for_the_owner() {
        let store = store(10);
        let lease = owner(&store, key(7), 1).await;
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.claim(key(7), &fingerprint(1)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()), "they wait");
        lease.settle(Settlement::Accepted(accepted("R7")));
        for waiter in waiters {
            match waiter.await.unwrap().unwrap() {
                Claimed::Replay(a) => assert_eq!(a.response.alibaba_request_id, "R7"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_not_answers_and_unknown_outcomes_are_remembered() {
        let store = store(10);
        // Surely nothing upgraded: the next holder starts afresh.
        owner(&store, key(2), 1)
            .await
            .settle(Settlement::NotApplied);
        let lease = owner(&store, key(2), 1).await;
        assert!(!lease.previous_unresolved());
        // Dropped without settling: unknown.
        drop(lease);
        let lease = owner(&store, key(2), 1).await;
        assert!(lease.previous_unresolved());
        // Still unknown after a later failure that proves nothing about the first attempt.
        lease.settle(Settlement::NotApplied);
        let lease = owner(&store, key(2), 1).await;
        assert!(lease.previous_unresolved());
        lease.settle(Settlement::Accepted(accepted("R2")));
        assert!(matches!(
            store.claim(key(2), &fingerprint(1)).await.unwrap(),
            Claimed::Replay(_)
        ));
        // A waiter also wakes when the owner is dropped, and then owns the key itself.
        let lease = owner(&store, key(3), 1).await;
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.claim(key(3), &fingerprint(1)).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(lease);
        match waiter.await.unwrap().unwrap() {
            Claimed::Owner(lease) => assert!(lease.previous_unresolved()),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keys_expire_after_retention_and_the_store_is_bounded() {
        let store = store(2);
        owner(&store, key(1), 1)
            .await
            .settle(Settlement::Accepted(accepted("R1")));
        let _in_flight = owner(&store, key(2), 1).await;
        assert!(matches!(
            store.claim(key(3), &fingerprint(1)).await,
            Err(StoreError::Full(2))
        ));
        tokio::time::advance(Duration::from_secs(3601)).await;
        // Key 1 is forgotten (so it can be reused for anything); key 2 is in flight and kept.
        let _reused = owner(&store, key(1), 9).await;
        assert!(matches!(
            store.claim(key(2), &fingerprint(2)).await.unwrap(),
            Claimed::Conflict
        ));
    }

    #[test]
    fn fingerprints_differ_for_every_field() {
        use crate::config::{Config, Overrides};
        let config = Config::from_toml("", "t", |_| None, &Overrides::default()).unwrap();
        let validator = crate::validation::Validator::new(&config);
        let base = pb::UpgradeEngineVersionRequest {
            db_instance_id: "dds-a1".into(),
            engine_version: "4.4".into(),
            request_id: uuid::Uuid::from_u128(1).to_string(),
            ..Default::default()
        };
        let of =
            |r: pb::UpgradeEngineVersionRequest| Fingerprint::of(&validator.validate(r).unwrap());
        let same = of(base.clone());
        // The default region written out is the same request; the key itself is not hashed.
        let explicit_region = pb::UpgradeEngineVersionRequest {
            region_id: "cn-hangzhou".into(),
            request_id: uuid::Uuid::from_u128(2).to_string(),
            ..base.clone()
        };
        assert_eq!(of(explicit_region), same);
        for different in [
            pb::UpgradeEngineVersionRequest {
                db_instance_id: "dds-a2".into(),
                ..base.clone()
            },
            pb::UpgradeEngineVersionRequest {
                engine_version: "5.0".into(),
                ..base.clone()
            },
            pb::UpgradeEngineVersionRequest {
                region_id: "cn-shenzhen".into(),
                ..base.clone()
            },
            pb::UpgradeEngineVersionRequest {
                switch_mode: pb::SwitchMode::MaintenanceWindow as i32,
                ..base
            },
        ] {
            assert_ne!(of(different), same);
        }
    }
}
