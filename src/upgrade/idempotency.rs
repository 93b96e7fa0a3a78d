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
//! [`StateStore`] is the storage seam; [`MemoryStore`](crate::state::memory::MemoryStore) keeps keys in this process only, and
//! [`RedisStore`](crate::state::redis::RedisStore) shares them between replicas.

use std::sync::Arc;
use std::time::Duration;

use crate::alibaba::quota::Place;
use crate::state::store::{
    Accepted, Fingerprint, Hold, Key, QuotaPlace, Settlement, StateStore, StoreError, Token,
};
use crate::upgrade::validation::ValidUpgradeRequest;

/// The request's fingerprint: a hash of the normalised request, the same in every replica.
pub fn fingerprint(request: &ValidUpgradeRequest) -> Fingerprint {
    Fingerprint::of_fields(&[
        "upgrade/v1",
        request.db_instance_id(),
        request.engine_version(),
        request.region_id(),
        request.switch_mode().map_or("", |m| m.as_param()),
    ])
}

/// The store behind a handle that turns ownership into a [`Lease`].
#[derive(Debug, Clone)]
pub(crate) struct Idempotency {
    store: Arc<dyn StateStore>,
}

/// The result of [`Idempotency::claim`].
#[derive(Debug)]
pub(crate) enum Claimed {
    Owner(Lease),
    Replay(Accepted),
    Conflict,
    /// Another upgrade of the instance is in flight.
    InstanceBusy,
}

impl Idempotency {
    pub(crate) fn new(store: Arc<dyn StateStore>) -> Self {
        Self { store }
    }

    /// Claims `key` (when the request has one) and then the upgrade lock of `instance`.
    /// Cancel-safe: dropped at any point, whatever it took is given back. So is what a store
    /// operation whose answer was lost (a timeout) may still take once Redis runs it late: the
    /// lease holds the key and the instance before each operation is sent, and releases them
    /// with its token when dropped.
    pub(crate) async fn claim(
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
            instance_unresolved_for: None,
            settled: false,
            renewal: None,
            place: std::sync::Mutex::new(None),
        };
        // Held before the store is asked, so that a lost answer is given back too.
        lease.key.clone_from(&key);
        lease.instance = Some(instance.clone());
        let hold = self
            .store
            .claim_and_lock(
                key.as_ref().map(|k| (k, fingerprint)),
                &instance,
                &lease.token,
            )
            .await?;
        let nothing_held = |lease: &mut Lease| {
            lease.key = None;
            lease.instance = None;
        };
        match hold {
            Hold::Held {
                unresolved_for,
                instance_unresolved_for,
            } => {
                lease.unresolved_for = unresolved_for;
                lease.instance_unresolved_for = instance_unresolved_for;
            }
            Hold::Replay(accepted) => {
                nothing_held(&mut lease);
                return Ok(Claimed::Replay(accepted));
            }
            Hold::Conflict => {
                nothing_held(&mut lease);
                return Ok(Claimed::Conflict);
            }
            // The store gave the key back as not applied: nothing was sent.
            Hold::InstanceBusy => {
                nothing_held(&mut lease);
                return Ok(Claimed::InstanceBusy);
            }
        }
        lease.renewal = self.store.lease().map(|period| lease.spawn_renewal(period));
        Ok(Claimed::Owner(lease))
    }
}

/// Ownership of a key (if the request has one) and of its instance's upgrade lock. Settle it;
/// dropped unsettled (a panic, a cancelled task), it settles as [`Settlement::Unresolved`], the
/// only safe assumption once a send was marked.
#[derive(Debug)]
pub(crate) struct Lease {
    store: Arc<dyn StateStore>,
    key: Option<Key>,
    instance: Option<String>,
    token: Token,
    unresolved_for: Option<Duration>,
    instance_unresolved_for: Option<Duration>,
    settled: bool,
    renewal: Option<tokio::task::AbortHandle>,
    /// The upgrade call's place in the account's budget, answered and given back with the
    /// settlement (one round trip for both where the store can), or when dropped.
    place: std::sync::Mutex<Option<Place>>,
}

impl Lease {
    #[cfg(test)]
    /// Whether an earlier holder left the outcome unknown: look at the instance first.
    pub(crate) fn previous_unresolved(&self) -> bool {
        self.unresolved_for.is_some()
    }

    /// How long ago an earlier holder sent an upgrade whose outcome is still unknown.
    pub(crate) fn unresolved_for(&self) -> Option<Duration> {
        self.unresolved_for
    }

    /// How long ago an earlier holder of the instance's lock (under another key, or none)
    /// sent an upgrade whose outcome is still unknown.
    pub(crate) fn instance_unresolved_for(&self) -> Option<Duration> {
        self.instance_unresolved_for
    }

    /// Records in the store that the upgrade is about to be sent, and checks that this lease
    /// still holds its key and lock. Call it last before the request leaves: an error means
    /// nothing may be sent.
    pub(crate) async fn about_to_send(&self) -> Result<(), StoreError> {
        let Some(instance) = &self.instance else {
            return Err(StoreError::Lapsed);
        };
        if self
            .store
            .mark(self.key.as_ref(), instance, &self.token)
            .await?
        {
            Ok(())
        } else {
            Err(StoreError::Lapsed)
        }
    }

    /// Keeps the answered upgrade call's `place` until the settlement, which gives it back, when
    /// the store may do so in its settle script (a key to settle, the budget beside the store);
    /// otherwise it goes back now, as any call's does.
    pub(crate) fn keep_place(&self, place: Place) {
        if self.key.is_none() || place.beside_state_store().is_none() {
            return;
        }
        let earlier = self
            .place
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(place);
        // Given back on its own (dropped) if an earlier attempt left one.
        drop(earlier);
    }

    /// Ends the hold on the key and the lock, giving back the call's place with them where the
    /// store can. A store that cannot be reached lets the key's lease run out instead (the mark
    /// tells the next holder what may have happened); the place is then given back on its own.
    pub(crate) async fn settle(mut self, settlement: Settlement) {
        self.settled = true;
        self.stop_renewal();
        let place = self
            .place
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let given_back = release(
            Arc::clone(&self.store),
            self.key.take(),
            self.instance.take(),
            self.token.clone(),
            settlement,
            place.as_ref().and_then(Place::beside_state_store),
        )
        .await;
        if let Some(place) = place {
            if given_back {
                place.given_back();
            } else {
                drop(place);
            }
        }
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
            // Always set once the claim holds anything to renew.
            let Some(instance) = instance else { return };
            let mut tick = tokio::time::interval(lease / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match store.renew_hold(key.as_ref(), &instance, &token).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(
                            "an upgrade's claim lapsed while it ran; another replica may hold its key or instance now"
                        );
                        return;
                    }
                    Err(err) => {
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
            None,
        );
        // Without a runtime (shutting down) a shared store's lease runs out instead.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(release);
        }
    }
}

/// Settles the key and releases the lock (and gives `place` back with them where the store
/// can: `true`), logging what the store refused. A store that cannot be reached is asked again a
/// few times: the hold may have been taken by an operation whose answer was lost, and is
/// otherwise only freed when its lease runs out.
async fn release(
    store: Arc<dyn StateStore>,
    key: Option<Key>,
    instance: Option<String>,
    token: Token,
    settlement: Settlement,
    place: Option<(&str, &str)>,
) -> bool {
    let released = again(|| async {
        match place {
            Some((region, holder)) => {
                store
                    .release_with_place(
                        key.as_ref(),
                        instance.as_deref(),
                        &token,
                        &settlement,
                        QuotaPlace { region, holder },
                    )
                    .await
            }
            None => store
                .release(key.as_ref(), instance.as_deref(), &token, &settlement)
                .await
                .map(|()| false),
        }
    })
    .await;
    match released {
        Ok(given_back) => given_back,
        Err(err) => {
            tracing::warn!(error = %err, "cannot settle an idempotency key or release an instance's upgrade lock; they are released when their lease runs out");
            false
        }
    }
}

/// Attempts at giving back a hold while the store cannot be reached, and the pause between them.
const RELEASE_ATTEMPTS: u32 = 4;
const RELEASE_PAUSE: Duration = Duration::from_millis(500);

/// `operation`, again while the store is unavailable, a few times.
async fn again<T, F, Fut>(mut operation: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match operation().await {
            Err(StoreError::Unavailable(_)) if attempt < RELEASE_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(RELEASE_PAUSE).await;
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use crate::state::memory::MemoryStore;
    use crate::state::store::{Claim, StoreLimits};

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
        Fingerprint::of_fields(&[&n.to_string()])
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
        let validator = crate::upgrade::validation::Validator::new(&config);
        let base = pb::UpgradeEngineVersionRequest {
            db_instance_id: "dds-a1".into(),
            engine_version: "4.4".into(),
            request_id: uuid::Uuid::from_u128(1).to_string(),
            ..Default::default()
        };
        let of = |r: pb::UpgradeEngineVersionRequest| {
            super::fingerprint(&validator.validate(r).unwrap())
        };
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
