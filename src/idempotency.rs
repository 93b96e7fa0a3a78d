//! Idempotency by `request_id` (AIP-155). Alibaba's `UpgradeDBInstanceEngineVersion` takes no
//! client token, so this is the only thing that stops a retried or duplicated call from upgrading
//! twice.
//!
//! A key is (caller, `request_id`); a [`Fingerprint`] is a hash of the normalised request. The
//! first request with a key becomes its owner and does the work; duplicates with the same
//! fingerprint wait for it and get its answer; a different request with the key is a conflict.
//! Only an accepted upgrade is kept as the answer. Every failure either proves that nothing was
//! upgraded (the key is forgotten; the next request with it simply tries again) or left the
//! outcome unknown: then the key is marked *unresolved* since its send, and its next owner looks
//! at the instance before anything else. An owner also holds its instance's upgrade lock, so
//! that one upgrade per instance is in flight at a time, whatever its key.
//!
//! [`StateStore`] is the storage seam; [`MemoryStore`] keeps keys in this process only, and
//! [`RedisStore`](crate::state::redis::RedisStore) shares them between replicas.

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

    pub fn caller(&self) -> &str {
        &self.caller
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
    /// Lower-case hex, for stores that keep text.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

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

/// A claim's owner token: random, so that a stale owner (its lease lapsed, another took over)
/// can never settle or mark the key it no longer holds.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

impl Token {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A token read back from a store.
    pub fn from_stored(text: &str) -> Self {
        Self(text.to_string())
    }
}

impl Default for Token {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({}…)", &self.0[..8.min(self.0.len())])
    }
}

/// What a store answers to a claim.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The caller's token now holds the key and must settle it.
    Owner {
        /// How long ago an earlier holder sent an upgrade whose outcome is still unknown.
        unresolved_for: Option<Duration>,
        /// The holder whose lease ran out and who was replaced: its instance lock, too, is
        /// taken over.
        replaced: Option<Token>,
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
    /// It failed and surely upgraded nothing: the key is forgotten (unless an earlier attempt's
    /// outcome is still unknown), and the next request with it tries again.
    NotApplied,
    /// It failed and the upgrade may or may not have been applied. Without a send marked by
    /// [`Lease::about_to_send`] nothing can have been applied, and this counts as `NotApplied`.
    Unresolved,
}

/// Why the store could not take a key.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the idempotency store is full ({0} keys)")]
    Full(usize),
    #[error("the caller holds its share of the idempotency store ({0} keys)")]
    CallerFull(usize),
    #[error("the state store is unavailable: {0}")]
    Unavailable(String),
    /// The claim lapsed (its lease ran out while the store could not be reached) and another
    /// holder may have the key: nothing may be sent under it.
    #[error("the claim on the idempotency key lapsed")]
    Lapsed,
}

/// The bounds every store keeps.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// How long a settled key is kept.
    pub retention: Duration,
    /// Keys held at once (memory store).
    pub max_keys: usize,
    /// Keys one caller may hold at once.
    pub max_keys_per_caller: usize,
    /// How long after a send with an unknown outcome its key only looks; an unresolved key is
    /// kept at least this long, so that it never expires into a re-send inside the window.
    pub settle_window: Duration,
    /// A claim's life without renewal (Redis; in memory the owner settles when it is dropped).
    pub lease: Duration,
}

impl StoreLimits {
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            retention: config.idempotency.retention,
            max_keys: config.idempotency.max_keys,
            max_keys_per_caller: config.idempotency.max_keys_per_caller,
            settle_window: config.idempotency.settle_window,
            lease: config.state.lease,
        }
    }

    /// How long an unresolved key is kept after it settles.
    pub fn unresolved_retention(&self) -> Duration {
        self.retention.max(self.settle_window)
    }
}

/// Where keys and per-instance upgrade locks live.
///
/// `claim` must be atomic: of concurrent claims with one key, exactly one becomes the owner, and
/// the others wait while it holds the key. Every change after a claim is compare-and-set on the
/// owner's [`Token`]. A store whose claims can lapse ([`lease`](Self::lease)) gets them renewed
/// by the owner while it works.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug + 'static {
    /// Claims `key` for `token`, waiting while a live holder has it.
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        token: &Token,
    ) -> Result<Claim, StoreError>;
    /// Records that `token` is about to send the upgrade. `false`: it no longer holds the key.
    async fn mark_sending(&self, key: &Key, token: &Token) -> Result<bool, StoreError>;
    /// Extends `token`'s lease on `key`. `false`: it no longer holds it.
    async fn renew(&self, key: &Key, token: &Token) -> Result<bool, StoreError>;
    /// Ends `token`'s hold on `key`; does nothing when another token holds it.
    async fn settle(
        &self,
        key: &Key,
        token: &Token,
        settlement: Settlement,
    ) -> Result<(), StoreError>;
    /// Takes the upgrade lock of `instance` for `token` (also from `replaced`, a holder whose
    /// claim of the same key lapsed). `false`: another upgrade holds it.
    async fn lock_instance(
        &self,
        instance: &str,
        token: &Token,
        replaced: Option<&Token>,
    ) -> Result<bool, StoreError>;
    /// Extends `token`'s lock of `instance`. `false`: it no longer holds it.
    async fn renew_instance(&self, instance: &str, token: &Token) -> Result<bool, StoreError>;
    /// Releases `token`'s lock of `instance`, if it holds it.
    async fn unlock_instance(&self, instance: &str, token: &Token) -> Result<(), StoreError>;
    /// How long a claim or lock lives without renewal; `None` when it lives until settled.
    fn lease(&self) -> Option<Duration>;
}

/// The store behind a handle that turns ownership into a [`Lease`].
#[derive(Debug, Clone)]
pub struct Idempotency {
    store: Arc<dyn StateStore>,
}

/// The result of [`Idempotency::claim`].
#[derive(Debug)]
pub enum Claimed {
    Owner(Lease),
    Replay(Accepted),
    Conflict,
    /// Another upgrade of the instance is in flight.
    InstanceBusy,
}

impl Idempotency {
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        Self { store }
    }

    /// Claims `key` (when the request has one) and then the upgrade lock of `instance`.
    /// Cancel-safe: dropped at any point, whatever it took is given back.
    pub async fn claim(
        &self,
        key: Option<Key>,
        fingerprint: &Fingerprint,
        instance: String,
    ) -> Result<Claimed, StoreError> {
        let token = Token::new();
        let mut lease = Lease {
            store: Arc::clone(&self.store),
            key: None,
            instance: None,
            token,
            unresolved_for: None,
            settled: false,
            renewal: None,
        };
        let mut replaced = None;
        if let Some(key) = key {
            match self.store.claim(&key, fingerprint, &lease.token).await? {
                Claim::Owner {
                    unresolved_for,
                    replaced: previous,
                } => {
                    lease.unresolved_for = unresolved_for;
                    lease.key = Some(key);
                    replaced = previous;
                }
                Claim::Replay(accepted) => return Ok(Claimed::Replay(accepted)),
                Claim::Conflict => return Ok(Claimed::Conflict),
            }
        }
        if !self
            .store
            .lock_instance(&instance, &lease.token, replaced.as_ref())
            .await?
        {
            // Dropped, the lease gives the key back as not applied: nothing was sent.
            return Ok(Claimed::InstanceBusy);
        }
        lease.instance = Some(instance);
        lease.renewal = self.store.lease().map(|period| lease.spawn_renewal(period));
        Ok(Claimed::Owner(lease))
    }
}

/// Ownership of a key (if the request has one) and of its instance's upgrade lock. Settle it;
/// dropped unsettled (a panic, a cancelled task), it settles as [`Settlement::Unresolved`], the
/// only safe assumption once a send was marked.
#[derive(Debug)]
pub struct Lease {
    store: Arc<dyn StateStore>,
    key: Option<Key>,
    instance: Option<String>,
    token: Token,
    unresolved_for: Option<Duration>,
    settled: bool,
    renewal: Option<tokio::task::AbortHandle>,
}

impl Lease {
    /// Whether an earlier holder left the outcome unknown: look at the instance first.
    pub fn previous_unresolved(&self) -> bool {
        self.unresolved_for.is_some()
    }

    /// How long ago an earlier holder sent an upgrade whose outcome is still unknown.
    pub fn unresolved_for(&self) -> Option<Duration> {
        self.unresolved_for
    }

    /// Records in the store that the upgrade is about to be sent, and checks that this lease
    /// still holds its key and lock. Call it last before the request leaves: an error means
    /// nothing may be sent.
    pub async fn about_to_send(&self) -> Result<(), StoreError> {
        if let Some(instance) = &self.instance
            && !self.store.renew_instance(instance, &self.token).await?
        {
            return Err(StoreError::Lapsed);
        }
        if let Some(key) = &self.key
            && !self.store.mark_sending(key, &self.token).await?
        {
            return Err(StoreError::Lapsed);
        }
        Ok(())
    }

    /// Ends the hold on the key and the lock. A store that cannot be reached lets the key's
    /// lease run out instead (the mark tells the next holder what may have happened).
    pub async fn settle(mut self, settlement: Settlement) {
        self.settled = true;
        self.stop_renewal();
        release(
            Arc::clone(&self.store),
            self.key.take(),
            self.instance.take(),
            self.token.clone(),
            settlement,
        )
        .await;
    }

    fn stop_renewal(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }

    /// Renews the key and the lock every third of the lease until stopped.
    fn spawn_renewal(&self, lease: Duration) -> tokio::task::AbortHandle {
        let store = Arc::clone(&self.store);
        let key = self.key.clone();
        let instance = self.instance.clone();
        let token = self.token.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                // The lock first: the key's lease then always outlives it, so that whoever
                // takes over the key finds the lock free or held by the token it replaced.
                let lock_held = match &instance {
                    Some(instance) => store.renew_instance(instance, &token).await,
                    None => Ok(true),
                };
                let key_held = match &key {
                    Some(key) => store.renew(key, &token).await,
                    None => Ok(true),
                };
                match (key_held, lock_held) {
                    (Ok(true), Ok(true)) => {}
                    (Ok(false), _) | (_, Ok(false)) => {
                        tracing::warn!(
                            "an upgrade's claim lapsed while it ran; another replica may hold its key or instance now"
                        );
                        return;
                    }
                    (Err(err), _) | (_, Err(err)) => {
                        tracing::warn!(error = %err, "cannot renew an upgrade's claim; retrying");
                    }
                }
            }
        });
        task.abort_handle()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.stop_renewal();
        let (key, instance) = (self.key.take(), self.instance.take());
        if key.is_none() && instance.is_none() {
            return;
        }
        let release = release(
            Arc::clone(&self.store),
            key,
            instance,
            self.token.clone(),
            Settlement::Unresolved,
        );
        // Without a runtime (shutting down) a shared store's lease runs out instead.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(release);
        }
    }
}

/// Settles the key and releases the lock, logging what the store refused.
async fn release(
    store: Arc<dyn StateStore>,
    key: Option<Key>,
    instance: Option<String>,
    token: Token,
    settlement: Settlement,
) {
    if let Some(key) = &key
        && let Err(err) = store.settle(key, &token, settlement).await
    {
        tracing::warn!(error = %err, "cannot settle an idempotency key; it is released when its lease runs out");
    }
    if let Some(instance) = &instance
        && let Err(err) = store.unlock_instance(instance, &token).await
    {
        tracing::warn!(error = %err, "cannot release an instance's upgrade lock; it is released when its lease runs out");
    }
}

/// Keys in this process's memory, kept for `retention` after they settle (unresolved ones at
/// least `settle_window`), at most `max_keys` and `max_keys_per_caller`. Claims never lapse:
/// the owner is in this process, and settles when it is dropped.
#[derive(Debug)]
pub struct MemoryStore {
    limits: StoreLimits,
    inner: Mutex<Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    entries: HashMap<Key, Entry>,
    /// Keys held per caller.
    per_caller: HashMap<String, usize>,
    /// Upgrade locks: instance → holder.
    locks: HashMap<String, Token>,
}

#[derive(Debug)]
struct Entry {
    fingerprint: Fingerprint,
    owner: Option<Owner>,
    accepted: Option<Accepted>,
    /// When the last send with a still unknown outcome was marked.
    unresolved_since: Option<Instant>,
    /// `None` while owned: a key is never forgotten under its owner.
    expires_at: Option<Instant>,
}

#[derive(Debug)]
struct Owner {
    token: Token,
    /// Waiters subscribe; dropping the owner drops the sender, which wakes them.
    _done: watch::Sender<()>,
    sent_at: Option<Instant>,
}

impl Owner {
    fn new(token: &Token) -> Self {
        Self {
            token: token.clone(),
            _done: watch::Sender::new(()),
            sent_at: None,
        }
    }
}

impl Memory {
    fn remove(&mut self, key: &Key) {
        if self.entries.remove(key).is_some()
            && let Some(count) = self.per_caller.get_mut(&key.caller)
        {
            *count -= 1;
            if *count == 0 {
                self.per_caller.remove(&key.caller);
            }
        }
    }

    fn purge_expired(&mut self, now: Instant) {
        let expired: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires_at.is_some_and(|at| at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.remove(&key);
        }
    }

    fn held_by(&self, caller: &str) -> usize {
        self.per_caller.get(caller).copied().unwrap_or(0)
    }
}

impl MemoryStore {
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            limits,
            inner: Mutex::new(Memory::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Memory> {
        // Entries are plain data; a panic elsewhere leaves them usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The claim's answer now, or a receiver that fires when the key's holder settles.
    fn try_claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        token: &Token,
    ) -> Result<Result<Claim, watch::Receiver<()>>, StoreError> {
        let mut memory = self.lock();
        let now = Instant::now();
        if memory
            .entries
            .get(key)
            .is_some_and(|e| e.expires_at.is_some_and(|at| at <= now))
        {
            memory.remove(key);
        }
        let Some(entry) = memory.entries.get_mut(key) else {
            if memory.entries.len() >= self.limits.max_keys
                || memory.held_by(&key.caller) >= self.limits.max_keys_per_caller
            {
                memory.purge_expired(now);
            }
            if memory.entries.len() >= self.limits.max_keys {
                return Err(StoreError::Full(memory.entries.len()));
            }
            let held = memory.held_by(&key.caller);
            if held >= self.limits.max_keys_per_caller {
                return Err(StoreError::CallerFull(held));
            }
            memory.entries.insert(
                key.clone(),
                Entry {
                    fingerprint: *fingerprint,
                    owner: Some(Owner::new(token)),
                    accepted: None,
                    unresolved_since: None,
                    expires_at: None,
                },
            );
            *memory.per_caller.entry(key.caller.clone()).or_default() += 1;
            return Ok(Ok(Claim::Owner {
                unresolved_for: None,
                replaced: None,
            }));
        };
        if entry.fingerprint != *fingerprint {
            return Ok(Ok(Claim::Conflict));
        }
        if let Some(accepted) = &entry.accepted {
            return Ok(Ok(Claim::Replay(accepted.clone())));
        }
        if let Some(owner) = &entry.owner {
            return Ok(Err(owner._done.subscribe()));
        }
        entry.owner = Some(Owner::new(token));
        entry.expires_at = None;
        Ok(Ok(Claim::Owner {
            unresolved_for: entry.unresolved_since.map(|since| now - since),
            replaced: None,
        }))
    }

    /// The entry `token` holds.
    fn owned<'a>(memory: &'a mut Memory, key: &Key, token: &Token) -> Option<&'a mut Entry> {
        memory
            .entries
            .get_mut(key)
            .filter(|e| e.owner.as_ref().is_some_and(|o| o.token == *token))
    }
}

#[async_trait::async_trait]
impl StateStore for MemoryStore {
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        token: &Token,
    ) -> Result<Claim, StoreError> {
        loop {
            match self.try_claim(key, fingerprint, token)? {
                Ok(claim) => return Ok(claim),
                // Settling drops the owner and so the sender: `changed` then returns.
                Err(mut settled) => {
                    let _ = settled.changed().await;
                }
            }
        }
    }

    async fn mark_sending(&self, key: &Key, token: &Token) -> Result<bool, StoreError> {
        let mut memory = self.lock();
        Ok(match Self::owned(&mut memory, key, token) {
            Some(entry) => {
                if let Some(owner) = &mut entry.owner {
                    owner.sent_at = Some(Instant::now());
                }
                true
            }
            None => false,
        })
    }

    async fn renew(&self, key: &Key, token: &Token) -> Result<bool, StoreError> {
        Ok(Self::owned(&mut self.lock(), key, token).is_some())
    }

    async fn settle(
        &self,
        key: &Key,
        token: &Token,
        settlement: Settlement,
    ) -> Result<(), StoreError> {
        let mut memory = self.lock();
        let Some(entry) = Self::owned(&mut memory, key, token) else {
            return Ok(());
        };
        let sent_at = entry.owner.take().and_then(|o| o.sent_at);
        let now = Instant::now();
        match settlement {
            Settlement::Accepted(accepted) => {
                entry.accepted = Some(accepted);
                entry.unresolved_since = None;
                entry.expires_at = Some(crate::deadline::later(now, self.limits.retention));
            }
            Settlement::Unresolved if sent_at.is_some() => {
                entry.unresolved_since = sent_at;
                entry.expires_at = Some(crate::deadline::later(
                    now,
                    self.limits.unresolved_retention(),
                ));
            }
            // An earlier unknown outcome stays unknown until an owner sees the upgrade.
            Settlement::NotApplied | Settlement::Unresolved => {
                if entry.unresolved_since.is_some() {
                    entry.expires_at = Some(crate::deadline::later(
                        now,
                        self.limits.unresolved_retention(),
                    ));
                } else {
                    // Provably nothing happened: nothing to remember.
                    memory.remove(key);
                }
            }
        }
        Ok(())
    }

    async fn lock_instance(
        &self,
        instance: &str,
        token: &Token,
        _replaced: Option<&Token>,
    ) -> Result<bool, StoreError> {
        // Holders in this process always release their lock, so there is nothing to take over.
        let mut memory = self.lock();
        match memory.locks.get(instance) {
            Some(holder) => Ok(holder == token),
            None => {
                memory.locks.insert(instance.to_string(), token.clone());
                Ok(true)
            }
        }
    }

    async fn renew_instance(&self, instance: &str, token: &Token) -> Result<bool, StoreError> {
        Ok(self.lock().locks.get(instance) == Some(token))
    }

    async fn unlock_instance(&self, instance: &str, token: &Token) -> Result<(), StoreError> {
        let mut memory = self.lock();
        if memory.locks.get(instance) == Some(token) {
            memory.locks.remove(instance);
        }
        Ok(())
    }

    fn lease(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn limits(max_keys: usize, per_caller: usize) -> StoreLimits {
        StoreLimits {
            retention: Duration::from_secs(3600),
            max_keys,
            max_keys_per_caller: per_caller,
            settle_window: Duration::from_secs(120),
            lease: Duration::from_secs(30),
        }
    }

    fn store(max_keys: usize) -> Idempotency {
        Idempotency::new(Arc::new(MemoryStore::new(limits(max_keys, max_keys))))
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

    /// A claim of `k` on an instance of its own, so that locks stay out of the way.
    async fn claim(store: &Idempotency, k: Key, f: u8) -> Result<Claimed, StoreError> {
        let instance = format!("cn-hangzhou/dds-{}", k.request_id().simple());
        store.claim(Some(k), &fingerprint(f), instance).await
    }

    async fn owner(store: &Idempotency, k: Key, f: u8) -> Lease {
        match claim(store, k, f).await.unwrap() {
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
            claim(&store, key(1), 2).await.unwrap(),
            Claimed::Conflict
        ));
        lease.settle(Settlement::Accepted(accepted("R1"))).await;
        match claim(&store, key(1), 1).await.unwrap() {
            Claimed::Replay(a) => assert_eq!(a.response.alibaba_request_id, "R1"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            claim(&store, key(1), 2).await.unwrap(),
            Claimed::Conflict
        ));
        // Another caller's identical key is a different key.
        let other_caller = Key::new("billing", uuid::Uuid::from_u128(1));
        assert!(matches!(
            claim(&store, other_caller, 2).await.unwrap(),
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
                tokio::spawn(async move { claim(&store, key(7), 1).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()), "they wait");
        lease.settle(Settlement::Accepted(accepted("R7"))).await;
        for waiter in waiters {
            match waiter.await.unwrap().unwrap() {
                Claimed::Replay(a) => assert_eq!(a.response.alibaba_request_id, "R7"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_that_did_nothing_are_forgotten_and_unknown_outcomes_are_remembered() {
        let store = store(10);
        // Surely nothing upgraded: the key is forgotten, even its request.
        owner(&store, key(2), 1)
            .await
            .settle(Settlement::NotApplied)
            .await;
        let lease = owner(&store, key(2), 9).await;
        assert!(!lease.previous_unresolved());
        // Unknown, but nothing was marked as sent: nothing can have happened.
        lease.settle(Settlement::Unresolved).await;
        let lease = owner(&store, key(2), 1).await;
        assert!(!lease.previous_unresolved());
        // Marked as sent, then dropped without settling: unknown since the mark.
        lease.about_to_send().await.unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(lease);
        tokio::time::advance(Duration::from_secs(27)).await;
        let lease = owner(&store, key(2), 1).await;
        assert_eq!(lease.unresolved_for(), Some(Duration::from_secs(30)));
        // Still unknown, since the same send, after later failures that prove nothing about it.
        lease.settle(Settlement::NotApplied).await;
        let lease = owner(&store, key(2), 1).await;
        lease.settle(Settlement::Unresolved).await;
        let lease = owner(&store, key(2), 1).await;
        assert_eq!(lease.unresolved_for(), Some(Duration::from_secs(30)));
        lease.settle(Settlement::Accepted(accepted("R2"))).await;
        assert!(matches!(
            claim(&store, key(2), 1).await.unwrap(),
            Claimed::Replay(_)
        ));
        // A waiter also wakes when the owner is dropped, and then owns the key itself.
        let lease = owner(&store, key(3), 1).await;
        lease.about_to_send().await.unwrap();
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { claim(&store, key(3), 1).await }
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
            .settle(Settlement::Accepted(accepted("R1")))
            .await;
        let _in_flight = owner(&store, key(2), 1).await;
        assert!(matches!(
            claim(&store, key(3), 1).await,
            Err(StoreError::Full(2))
        ));
        tokio::time::advance(Duration::from_secs(3601)).await;
        // Key 1 is forgotten (so it can be reused for anything); key 2 is in flight and kept.
        let _reused = owner(&store, key(1), 9).await;
        assert!(matches!(
            claim(&store, key(2), 2).await.unwrap(),
            Claimed::Conflict
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_noisy_caller_is_refused_at_its_share_before_the_others() {
        let store = Idempotency::new(Arc::new(MemoryStore::new(limits(4, 2))));
        let noisy = |n| Key::new("noisy", uuid::Uuid::from_u128(n));
        for n in 0..2 {
            owner(&store, noisy(n), 1)
                .await
                .settle(Settlement::Accepted(accepted("R")))
                .await;
        }
        assert!(matches!(
            claim(&store, noisy(2), 1).await,
            Err(StoreError::CallerFull(2))
        ));
        // The others still have their share.
        let _quiet = owner(&store, Key::new("quiet", uuid::Uuid::from_u128(0)), 1).await;
        // Failures that did nothing do not count against the share.
        for n in 10..20 {
            let _ = claim(&store, Key::new("quiet", uuid::Uuid::from_u128(n)), 1).await;
        }
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert!(matches!(
            claim(&store, noisy(2), 1).await.unwrap(),
            Claimed::Owner(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn unresolved_keys_outlive_a_short_retention_until_the_settle_window_ends() {
        let store = Idempotency::new(Arc::new(MemoryStore::new(StoreLimits {
            retention: Duration::from_secs(10),
            ..limits(10, 10)
        })));
        let lease = owner(&store, key(4), 1).await;
        lease.about_to_send().await.unwrap();
        lease.settle(Settlement::Unresolved).await;
        tokio::time::advance(Duration::from_secs(119)).await;
        let lease = owner(&store, key(4), 1).await;
        assert_eq!(lease.unresolved_for(), Some(Duration::from_secs(119)));
    }

    #[tokio::test(start_paused = true)]
    async fn one_upgrade_per_instance_is_in_flight_whatever_its_key() {
        let store = store(10);
        let instance = || "cn-hangzhou/dds-one".to_string();
        let first = match store
            .claim(Some(key(1)), &fingerprint(1), instance())
            .await
            .unwrap()
        {
            Claimed::Owner(lease) => lease,
            other => panic!("{other:?}"),
        };
        // Another key, or none: refused at once.
        assert!(matches!(
            store
                .claim(Some(key(2)), &fingerprint(1), instance())
                .await
                .unwrap(),
            Claimed::InstanceBusy
        ));
        assert!(matches!(
            store
                .claim(None, &fingerprint(1), instance())
                .await
                .unwrap(),
            Claimed::InstanceBusy
        ));
        // A duplicate of the holder's key waits for its answer instead.
        let duplicate = tokio::spawn({
            let store = store.clone();
            async move { store.claim(Some(key(1)), &fingerprint(1), instance()).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!duplicate.is_finished());
        first.settle(Settlement::Accepted(accepted("R1"))).await;
        assert!(matches!(
            duplicate.await.unwrap().unwrap(),
            Claimed::Replay(_)
        ));
        // The refused key was not kept, and the lock is free again.
        match store
            .claim(Some(key(2)), &fingerprint(7), instance())
            .await
            .unwrap()
        {
            Claimed::Owner(lease) => assert!(!lease.previous_unresolved()),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_owner_token_settles_or_marks_a_key() {
        let store = MemoryStore::new(limits(10, 10));
        let (owner, stale) = (Token::new(), Token::new());
        assert!(matches!(
            store.claim(&key(5), &fingerprint(1), &owner).await.unwrap(),
            Claim::Owner { .. }
        ));
        assert!(!store.mark_sending(&key(5), &stale).await.unwrap());
        store
            .settle(&key(5), &stale, Settlement::Accepted(accepted("stale")))
            .await
            .unwrap();
        assert!(store.mark_sending(&key(5), &owner).await.unwrap());
        store
            .settle(&key(5), &owner, Settlement::Accepted(accepted("R5")))
            .await
            .unwrap();
        match store.claim(&key(5), &fingerprint(1), &stale).await.unwrap() {
            Claim::Replay(a) => assert_eq!(a.response.alibaba_request_id, "R5"),
            other => panic!("{other:?}"),
        }
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
