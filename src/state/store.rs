//! The state store's contract: idempotency keys and their claims, settlements and limits, the
//! per-instance upgrade locks, and the [`StateStore`] trait the memory and Redis stores
//! implement.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::pb;

/// An accepted upgrade (or a passed validation), as first answered: what a key replays.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub response: pb::UpgradeEngineVersionResponse,
    /// The gateway did not get Alibaba's answer but saw the upgrade under way, so the
    /// `RequestId` is unknown.
    pub reconciled: bool,
}

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

    /// The hash of `fields`, each length-prefixed so that no two different lists hash alike.
    pub fn of_fields(fields: &[&str]) -> Self {
        let mut hash = Sha256::new();
        for field in fields {
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

/// What a store answers to [`StateStore::lock_instance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceLock {
    /// The token holds the instance's upgrade lock.
    Held {
        /// How long ago an earlier holder of the lock (under any key, or none) marked a send
        /// whose outcome is still unknown: another upgrade of the instance may be under way.
        unresolved_for: Option<Duration>,
    },
    /// Another upgrade holds it.
    Busy,
}

/// What a store answers to [`StateStore::claim_and_lock`].
#[derive(Debug, Clone)]
pub enum Hold {
    /// The token holds the key (if there is one) and the instance's upgrade lock.
    Held {
        /// As [`Claim::Owner`] says of the key.
        unresolved_for: Option<Duration>,
        /// As [`InstanceLock::Held`] says of the lock.
        instance_unresolved_for: Option<Duration>,
    },
    /// The key's request was accepted before: this is that answer. Nothing is held.
    Replay(Accepted),
    /// The key belongs to a different request. Nothing is held.
    Conflict,
    /// Another upgrade holds the instance's lock; the key, if it was claimed, is given back as
    /// [`Settlement::NotApplied`]. Nothing is held.
    InstanceBusy,
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
    /// `Lease::about_to_send` nothing can have been applied, and this counts as `NotApplied`.
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
    /// claim of the same key lapsed, or from a holder whose lease lapsed). A lock whose holder
    /// marked a send is never taken blindly: the answer says how long ago that send was.
    async fn lock_instance(
        &self,
        instance: &str,
        token: &Token,
        replaced: Option<&Token>,
    ) -> Result<InstanceLock, StoreError>;
    /// Extends `token`'s lock of `instance`. `false`: it no longer holds it.
    async fn renew_instance(&self, instance: &str, token: &Token) -> Result<bool, StoreError>;
    /// Extends `token`'s lock of `instance` and records on it that an upgrade is about to be
    /// sent, as [`mark_sending`](Self::mark_sending) does on the key. `false`: it no longer holds
    /// it.
    async fn mark_instance(&self, instance: &str, token: &Token) -> Result<bool, StoreError>;
    /// Releases `token`'s lock of `instance`, if it holds it. Its own send is settled with it
    /// (its caller heard the outcome); a lapsed earlier holder's send stays on the lock until the
    /// settle window after it ends, unless `settlement` saw an upgrade accepted.
    async fn unlock_instance(
        &self,
        instance: &str,
        token: &Token,
        settlement: &Settlement,
    ) -> Result<(), StoreError>;
    /// How long a claim or lock lives without renewal; `None` when it lives until settled.
    fn lease(&self) -> Option<Duration>;

    /// [`claim`](Self::claim) (when there is a key) and then
    /// [`lock_instance`](Self::lock_instance), taking over the lock of the holder the claim
    /// replaced; a busy lock gives the key back. A shared store does it in one round trip.
    async fn claim_and_lock(
        &self,
        key: Option<(&Key, &Fingerprint)>,
        instance: &str,
        token: &Token,
    ) -> Result<Hold, StoreError> {
        claim_then_lock(self, key, instance, token).await
    }

    /// [`mark_instance`](Self::mark_instance) and then [`mark_sending`](Self::mark_sending) on
    /// the key, if there is one. `false`: the token no longer holds one of them.
    async fn mark(
        &self,
        key: Option<&Key>,
        instance: &str,
        token: &Token,
    ) -> Result<bool, StoreError> {
        mark_then_mark(self, key, instance, token).await
    }

    /// [`renew_instance`](Self::renew_instance) and [`renew`](Self::renew) on the key, if there
    /// is one. `false`: the token no longer holds one of them.
    async fn renew_hold(
        &self,
        key: Option<&Key>,
        instance: &str,
        token: &Token,
    ) -> Result<bool, StoreError> {
        renew_then_renew(self, key, instance, token).await
    }

    /// [`settle`](Self::settle) and [`unlock_instance`](Self::unlock_instance), each when named.
    async fn release(
        &self,
        key: Option<&Key>,
        instance: Option<&str>,
        token: &Token,
        settlement: &Settlement,
    ) -> Result<(), StoreError> {
        settle_then_unlock(self, key, instance, token, settlement).await
    }

    /// [`release`](Self::release), and in the same round trip the call budget's `place` (kept
    /// beside this store, see `state::quota`) when the store can. `true`: the place was given
    /// back; `false`: it was not touched, and its holder gives it back as usual.
    async fn release_with_place(
        &self,
        key: Option<&Key>,
        instance: Option<&str>,
        token: &Token,
        settlement: &Settlement,
        place: QuotaPlace<'_>,
    ) -> Result<bool, StoreError> {
        let _ = place;
        self.release(key, instance, token, settlement)
            .await
            .map(|()| false)
    }
}

/// A place in the account's call budget, as its region and holder name it.
#[derive(Debug, Clone, Copy)]
pub struct QuotaPlace<'a> {
    pub region: &'a str,
    pub holder: &'a str,
}

/// [`StateStore::claim_and_lock`] as two steps.
pub(crate) async fn claim_then_lock<S: StateStore + ?Sized>(
    store: &S,
    key: Option<(&Key, &Fingerprint)>,
    instance: &str,
    token: &Token,
) -> Result<Hold, StoreError> {
    let (mut unresolved_for, mut replaced) = (None, None);
    if let Some((key, fingerprint)) = key {
        match store.claim(key, fingerprint, token).await? {
            Claim::Owner {
                unresolved_for: ago,
                replaced: previous,
            } => (unresolved_for, replaced) = (ago, previous),
            Claim::Replay(accepted) => return Ok(Hold::Replay(accepted)),
            Claim::Conflict => return Ok(Hold::Conflict),
        }
    }
    match store
        .lock_instance(instance, token, replaced.as_ref())
        .await?
    {
        InstanceLock::Held {
            unresolved_for: instance_unresolved_for,
        } => Ok(Hold::Held {
            unresolved_for,
            instance_unresolved_for,
        }),
        InstanceLock::Busy => {
            if let Some((key, _)) = key {
                store.settle(key, token, Settlement::NotApplied).await?;
            }
            Ok(Hold::InstanceBusy)
        }
    }
}

/// [`StateStore::mark`] as two steps: the lock first, so that a key is never marked under a
/// lock its token lost.
pub(crate) async fn mark_then_mark<S: StateStore + ?Sized>(
    store: &S,
    key: Option<&Key>,
    instance: &str,
    token: &Token,
) -> Result<bool, StoreError> {
    if !store.mark_instance(instance, token).await? {
        return Ok(false);
    }
    match key {
        Some(key) => store.mark_sending(key, token).await,
        None => Ok(true),
    }
}

/// [`StateStore::renew_hold`] as two steps, both tried whatever the first answers.
pub(crate) async fn renew_then_renew<S: StateStore + ?Sized>(
    store: &S,
    key: Option<&Key>,
    instance: &str,
    token: &Token,
) -> Result<bool, StoreError> {
    // The lock first: the key's lease then always outlives it, so that whoever takes over the
    // key finds the lock free or held by the token it replaced.
    let lock_held = store.renew_instance(instance, token).await;
    let key_held = match key {
        Some(key) => store.renew(key, token).await,
        None => Ok(true),
    };
    match (lock_held, key_held) {
        (Ok(lock), Ok(key)) => Ok(lock && key),
        (Ok(false), _) | (_, Ok(false)) => Ok(false),
        (Err(err), _) | (_, Err(err)) => Err(err),
    }
}

/// [`StateStore::release`] as two steps.
pub(crate) async fn settle_then_unlock<S: StateStore + ?Sized>(
    store: &S,
    key: Option<&Key>,
    instance: Option<&str>,
    token: &Token,
    settlement: &Settlement,
) -> Result<(), StoreError> {
    if let Some(key) = key {
        store.settle(key, token, settlement.clone()).await?;
    }
    if let Some(instance) = instance {
        store.unlock_instance(instance, token, settlement).await?;
    }
    Ok(())
}
