//! Keys and upgrade locks in this process's memory: one replica.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::store::{
    Accepted, Claim, Fingerprint, InstanceLock, Key, Settlement, StateStore, StoreError,
    StoreLimits, Token,
};

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
    /// Upgrade locks: instance → holder, and the sends they saw.
    locks: HashMap<String, Lock>,
}

/// An instance's upgrade lock. It outlives its holder while a send with an unknown outcome is
/// within the settle window.
#[derive(Debug, Default)]
struct Lock {
    owner: Option<Token>,
    /// When the holder marked its send.
    sent: Option<Instant>,
    /// When an earlier holder's send with a still unknown outcome was marked.
    since: Option<Instant>,
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
            && let Some(count) = self.per_caller.get_mut(key.caller())
        {
            *count -= 1;
            if *count == 0 {
                self.per_caller.remove(key.caller());
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
                || memory.held_by(key.caller()) >= self.limits.max_keys_per_caller
            {
                memory.purge_expired(now);
            }
            if memory.entries.len() >= self.limits.max_keys {
                return Err(StoreError::Full(memory.entries.len()));
            }
            let held = memory.held_by(key.caller());
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
            *memory
                .per_caller
                .entry(key.caller().to_string())
                .or_default() += 1;
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
    ) -> Result<InstanceLock, StoreError> {
        // Holders in this process always release their lock, so there is no lapsed holder to
        // take over; a released lock may still carry an unresolved send.
        let window = self.limits.settle_window;
        let now = Instant::now();
        let mut memory = self.lock();
        let lock = memory.locks.entry(instance.to_string()).or_default();
        match &lock.owner {
            Some(holder) if holder == token => {}
            Some(_) => return Ok(InstanceLock::Busy),
            None => lock.owner = Some(token.clone()),
        }
        if lock.since.is_some_and(|since| since + window <= now) {
            lock.since = None;
        }
        Ok(InstanceLock::Held {
            unresolved_for: lock.since.map(|since| now.saturating_duration_since(since)),
        })
    }

    async fn renew_instance(&self, instance: &str, token: &Token) -> Result<bool, StoreError> {
        let memory = self.lock();
        Ok(memory
            .locks
            .get(instance)
            .is_some_and(|lock| lock.owner.as_ref() == Some(token)))
    }

    async fn mark_instance(&self, instance: &str, token: &Token) -> Result<bool, StoreError> {
        let mut memory = self.lock();
        match memory.locks.get_mut(instance) {
            Some(lock) if lock.owner.as_ref() == Some(token) => {
                lock.sent = Some(Instant::now());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn unlock_instance(
        &self,
        instance: &str,
        token: &Token,
        settlement: &Settlement,
    ) -> Result<(), StoreError> {
        let mut memory = self.lock();
        let Some(lock) = memory.locks.get_mut(instance) else {
            return Ok(());
        };
        if lock.owner.as_ref() != Some(token) {
            return Ok(());
        }
        // The holder's own send is settled: its caller heard the outcome. A lapsed earlier
        // holder's send (none in memory, where holders never lapse) stays.
        lock.owner = None;
        lock.sent = None;
        if matches!(settlement, Settlement::Accepted(_)) {
            lock.since = None;
        }
        if lock.since.is_none() {
            memory.locks.remove(instance);
        }
        Ok(())
    }

    fn lease(&self) -> Option<Duration> {
        None
    }
}
