//! The state store's contract (`StateStore`), one body per promise, held to the memory store
//! (under paused tokio time) and to the Redis store on a real `redis-server` alike. Time-based
//! promises wait on the store's own clock: tokio's paused clock in memory, short leases on Redis.
//! Callers' rates (`SharedRates`) are held to the process's own GCRA the same way.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis::RedisServer;
use dds_gateway::pb;
use dds_gateway::testing::state::memory::MemoryStore;
use dds_gateway::testing::state::redis::RedisStore;
use dds_gateway::testing::state::store::{
    Accepted, Claim, Fingerprint, InstanceLock, Key, Settlement, StateStore, StoreError,
    StoreLimits, Token,
};

const LEASE: Duration = Duration::from_millis(300);
const SETTLE_WINDOW: Duration = Duration::from_millis(1500);

fn limits() -> StoreLimits {
    StoreLimits {
        retention: Duration::from_secs(3600),
        max_keys: 1000,
        max_keys_per_caller: 3,
        settle_window: SETTLE_WINDOW,
        lease: LEASE,
    }
}

fn memory() -> Arc<dyn StateStore> {
    Arc::new(MemoryStore::new(limits()))
}

async fn redis(server: &RedisServer) -> Arc<dyn StateStore> {
    Arc::new(
        RedisStore::open(
            &dds_gateway::testing::config::RedisUrl::parse(&server.url()).unwrap(),
            None,
            "contract:",
            limits(),
        )
        .unwrap(),
    )
}

/// Each promise, run against both stores.
macro_rules! contract {
    ($($promise:ident),* $(,)?) => {
        mod on_memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $promise() {
                    super::$promise(super::memory()).await;
                }
            )*
        }
        mod on_redis {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $promise() {
                    let server = super::RedisServer::start().await;
                    super::$promise(super::redis(&server).await).await;
                }
            )*
        }
    };
}

contract!(
    a_key_has_one_owner_duplicates_wait_and_replay_its_answer,
    a_different_request_with_the_key_conflicts,
    a_failure_that_did_nothing_forgets_the_key,
    a_marked_send_with_an_unknown_outcome_is_remembered,
    only_the_owners_token_renews_marks_or_settles,
    a_caller_is_held_to_its_share_of_keys,
    one_holder_per_instance_lock,
    a_send_on_an_instance_lock_outlives_its_holder_for_the_settle_window,
    a_lapsed_claim_is_replaced_and_its_send_mark_makes_the_key_unresolved,
);

fn key(n: u128) -> Key {
    Key::new("billing", uuid::Uuid::from_u128(n))
}

fn fingerprint(n: u8) -> Fingerprint {
    Fingerprint::of_fields(&["contract", &n.to_string()])
}

fn accepted(request_id: &str) -> Settlement {
    Settlement::Accepted(Accepted {
        response: pb::UpgradeEngineVersionResponse {
            alibaba_request_id: request_id.into(),
            ..Default::default()
        },
        reconciled: false,
    })
}

/// Claims `key` and expects ownership: how long ago an unresolved send was, and whom it replaced.
async fn own(
    store: &dyn StateStore,
    key: &Key,
    f: u8,
    token: &Token,
) -> (Option<Duration>, Option<Token>) {
    match store.claim(key, &fingerprint(f), token).await.unwrap() {
        Claim::Owner {
            unresolved_for,
            replaced,
        } => (unresolved_for, replaced),
        other => panic!("expected ownership, got {other:?}"),
    }
}

fn held(lock: InstanceLock) -> Option<Option<Duration>> {
    match lock {
        InstanceLock::Held { unresolved_for } => Some(unresolved_for),
        InstanceLock::Busy => None,
    }
}

async fn a_key_has_one_owner_duplicates_wait_and_replay_its_answer(store: Arc<dyn StateStore>) {
    let owner = Token::new();
    assert_eq!(own(&*store, &key(1), 1, &owner).await, (None, None));
    let duplicate = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.claim(&key(1), &fingerprint(1), &Token::new()).await }
    });
    // The owner works (and renews) for a while: the duplicate waits.
    for _ in 0..5 {
        assert!(store.renew(&key(1), &owner).await.unwrap());
        tokio::time::sleep(LEASE / 3).await;
    }
    assert!(!duplicate.is_finished(), "a duplicate waits for the owner");
    store.settle(&key(1), &owner, accepted("R1")).await.unwrap();
    match duplicate.await.unwrap().unwrap() {
        Claim::Replay(a) => assert_eq!(a.response.alibaba_request_id, "R1"),
        other => panic!("{other:?}"),
    }
}

async fn a_different_request_with_the_key_conflicts(store: Arc<dyn StateStore>) {
    let owner = Token::new();
    own(&*store, &key(2), 1, &owner).await;
    assert!(matches!(
        store
            .claim(&key(2), &fingerprint(2), &Token::new())
            .await
            .unwrap(),
        Claim::Conflict
    ));
    store.settle(&key(2), &owner, accepted("R2")).await.unwrap();
    assert!(matches!(
        store
            .claim(&key(2), &fingerprint(2), &Token::new())
            .await
            .unwrap(),
        Claim::Conflict
    ));
    // Another caller's identical request id is another key.
    let other = Key::new("payroll", uuid::Uuid::from_u128(2));
    own(&*store, &other, 2, &Token::new()).await;
}

async fn a_failure_that_did_nothing_forgets_the_key(store: Arc<dyn StateStore>) {
    let owner = Token::new();
    own(&*store, &key(3), 1, &owner).await;
    store
        .settle(&key(3), &owner, Settlement::NotApplied)
        .await
        .unwrap();
    // Forgotten, request and all: another request may use the key.
    let next = Token::new();
    assert_eq!(own(&*store, &key(3), 2, &next).await, (None, None));
    // Unresolved without a send mark: nothing can have been sent.
    store
        .settle(&key(3), &next, Settlement::Unresolved)
        .await
        .unwrap();
    assert_eq!(own(&*store, &key(3), 1, &Token::new()).await, (None, None));
}

async fn a_marked_send_with_an_unknown_outcome_is_remembered(store: Arc<dyn StateStore>) {
    let owner = Token::new();
    own(&*store, &key(4), 1, &owner).await;
    assert!(store.mark_sending(&key(4), &owner).await.unwrap());
    store
        .settle(&key(4), &owner, Settlement::Unresolved)
        .await
        .unwrap();
    let next = Token::new();
    let (unresolved, _) = own(&*store, &key(4), 1, &next).await;
    assert!(unresolved.is_some(), "the next owner looks first");
    // A later failure that sent nothing leaves it unresolved, since the same send.
    store
        .settle(&key(4), &next, Settlement::NotApplied)
        .await
        .unwrap();
    let last = Token::new();
    let (again, _) = own(&*store, &key(4), 1, &last).await;
    assert!(
        again.is_some() && again >= unresolved,
        "{again:?} {unresolved:?}"
    );
    // Seen accepted: the answer from now on.
    store.settle(&key(4), &last, accepted("R4")).await.unwrap();
    assert!(matches!(
        store
            .claim(&key(4), &fingerprint(1), &Token::new())
            .await
            .unwrap(),
        Claim::Replay(_)
    ));
}

async fn only_the_owners_token_renews_marks_or_settles(store: Arc<dyn StateStore>) {
    let (owner, stranger) = (Token::new(), Token::new());
    own(&*store, &key(5), 1, &owner).await;
    assert!(!store.renew(&key(5), &stranger).await.unwrap());
    assert!(!store.mark_sending(&key(5), &stranger).await.unwrap());
    store
        .settle(&key(5), &stranger, accepted("stale"))
        .await
        .unwrap();
    assert!(store.renew(&key(5), &owner).await.unwrap());
    assert!(store.mark_sending(&key(5), &owner).await.unwrap());
    store.settle(&key(5), &owner, accepted("R5")).await.unwrap();
    match store
        .claim(&key(5), &fingerprint(1), &stranger)
        .await
        .unwrap()
    {
        Claim::Replay(a) => assert_eq!(a.response.alibaba_request_id, "R5"),
        other => panic!("{other:?}"),
    }
    // Settled, the key is nobody's.
    assert!(!store.renew(&key(5), &owner).await.unwrap());
}

async fn a_caller_is_held_to_its_share_of_keys(store: Arc<dyn StateStore>) {
    let caller = |n| Key::new("noisy", uuid::Uuid::from_u128(n));
    for n in 0..3 {
        own(&*store, &caller(n), 1, &Token::new()).await;
    }
    assert!(matches!(
        store
            .claim(&caller(3), &fingerprint(1), &Token::new())
            .await,
        Err(StoreError::CallerFull(3))
    ));
    // Others keep their share.
    own(
        &*store,
        &Key::new("quiet", uuid::Uuid::from_u128(0)),
        1,
        &Token::new(),
    )
    .await;
}

async fn one_holder_per_instance_lock(store: Arc<dyn StateStore>) {
    let (a, b) = (Token::new(), Token::new());
    assert_eq!(
        held(store.lock_instance("r/one", &a, None).await.unwrap()),
        Some(None)
    );
    assert_eq!(
        held(store.lock_instance("r/one", &b, None).await.unwrap()),
        None
    );
    assert!(store.renew_instance("r/one", &a).await.unwrap());
    assert!(!store.renew_instance("r/one", &b).await.unwrap());
    assert!(!store.mark_instance("r/one", &b).await.unwrap());
    // Only the holder unlocks.
    store
        .unlock_instance("r/one", &b, &Settlement::NotApplied)
        .await
        .unwrap();
    assert_eq!(
        held(store.lock_instance("r/one", &b, None).await.unwrap()),
        None
    );
    store
        .unlock_instance("r/one", &a, &Settlement::NotApplied)
        .await
        .unwrap();
    assert_eq!(
        held(store.lock_instance("r/one", &b, None).await.unwrap()),
        Some(None)
    );
}

async fn a_send_on_an_instance_lock_outlives_its_holder_for_the_settle_window(
    store: Arc<dyn StateStore>,
) {
    // A holder that settles its send releases it with the lock: its caller heard the outcome.
    let (a, b) = (Token::new(), Token::new());
    assert!(held(store.lock_instance("r/two", &a, None).await.unwrap()).is_some());
    assert!(store.mark_instance("r/two", &a).await.unwrap());
    store
        .unlock_instance("r/two", &a, &Settlement::Unresolved)
        .await
        .unwrap();
    assert_eq!(
        held(store.lock_instance("r/two", &b, None).await.unwrap()),
        Some(None)
    );
    store
        .unlock_instance("r/two", &b, &Settlement::NotApplied)
        .await
        .unwrap();
    let Some(lease) = store.lease() else {
        // Holders in memory never lapse: they release their lock when dropped.
        return;
    };
    // A holder that lapsed after marking its send: the next holder, under any key, is told.
    let (c, d, e) = (Token::new(), Token::new(), Token::new());
    assert!(held(store.lock_instance("r/two", &c, None).await.unwrap()).is_some());
    assert!(store.mark_instance("r/two", &c).await.unwrap());
    tokio::time::sleep(lease + lease / 2).await;
    let unresolved = held(store.lock_instance("r/two", &d, None).await.unwrap());
    assert!(matches!(unresolved, Some(Some(_))), "{unresolved:?}");
    assert!(
        !store.renew_instance("r/two", &c).await.unwrap(),
        "the lapsed holder lost it"
    );
    // Giving up without a send of its own keeps it.
    store
        .unlock_instance("r/two", &d, &Settlement::NotApplied)
        .await
        .unwrap();
    let unresolved = held(store.lock_instance("r/two", &e, None).await.unwrap());
    assert!(matches!(unresolved, Some(Some(_))), "{unresolved:?}");
    store
        .unlock_instance("r/two", &e, &Settlement::NotApplied)
        .await
        .unwrap();
    // Until the settle window after the send ends.
    tokio::time::sleep(SETTLE_WINDOW).await;
    assert_eq!(
        held(
            store
                .lock_instance("r/two", &Token::new(), None)
                .await
                .unwrap()
        ),
        Some(None)
    );
}

async fn a_lapsed_claim_is_replaced_and_its_send_mark_makes_the_key_unresolved(
    store: Arc<dyn StateStore>,
) {
    let Some(lease) = store.lease() else {
        // Claims in memory never lapse: their owner is in this process and settles when dropped.
        return;
    };
    let (a, b) = (Token::new(), Token::new());
    own(&*store, &key(9), 1, &a).await;
    assert_eq!(
        held(store.lock_instance("r/nine", &a, None).await.unwrap()),
        Some(None)
    );
    assert!(store.mark_instance("r/nine", &a).await.unwrap());
    assert!(store.mark_sending(&key(9), &a).await.unwrap());
    // Nobody renews: the claim lapses, and the next claimer replaces its holder.
    let (unresolved, replaced) = own(&*store, &key(9), 1, &b).await;
    assert!(unresolved.is_some());
    assert_eq!(replaced.as_ref(), Some(&a));
    assert!(
        !store.mark_sending(&key(9), &a).await.unwrap(),
        "the stale holder lost it"
    );
    // The lapsed lock passes to its replacement, with the send on it.
    tokio::time::sleep(lease).await;
    let taken = held(
        store
            .lock_instance("r/nine", &b, replaced.as_ref())
            .await
            .unwrap(),
    );
    assert!(matches!(taken, Some(Some(_))), "{taken:?}");
    assert!(!store.renew_instance("r/nine", &a).await.unwrap());
}

/// Callers' rates mean the same in one process (its GCRA) and over every replica (the Redis
/// store's script): the same burst at once, then the same wait for the next call; each caller
/// has its own bucket.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_means_the_same_in_this_process_and_on_redis() {
    use dds_gateway::testing::limits::{Rate, SharedBucket, SharedRates};

    // One call per 10 s: the test's own pace cannot refill a bucket.
    let rate = Rate {
        per_second: 0.1,
        burst: 3,
    };
    let server = RedisServer::start().await;
    let shared = RedisStore::open(
        &dds_gateway::testing::config::RedisUrl::parse(&server.url()).unwrap(),
        None,
        "contract:",
        limits(),
    )
    .unwrap();
    let local = SharedBucket::new(rate);
    for call in 1..=3 {
        assert_eq!(local.take(rate), Ok(()), "local call {call}");
        assert_eq!(
            shared.take("build-bot", rate).await.unwrap(),
            Ok(()),
            "shared call {call}"
        );
    }
    let local_wait = local.take(rate).unwrap_err();
    let shared_wait = shared.take("build-bot", rate).await.unwrap().unwrap_err();
    for wait in [local_wait, shared_wait] {
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "the next call is one interval away: {wait:?}"
        );
    }
    assert!(local_wait.abs_diff(shared_wait) < Duration::from_secs(1));
    assert_eq!(shared.take("deploy-bot", rate).await.unwrap(), Ok(()));
}
