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
    Accepted, Claim, Fingerprint, Hold, InstanceLock, Key, QuotaPlace, Settlement, StateStore,
    StoreError, StoreLimits, Token,
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
        /// A cluster refuses scripts on several slots: the store keeps to single-slot ones.
        mod on_redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $promise() {
                    let dir = tempfile::tempdir().unwrap();
                    let server = super::RedisServer::start_cluster(dir.path()).await;
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
    a_claim_with_its_lock_holds_both_or_nothing,
    the_send_mark_and_the_release_cover_the_key_and_the_lock,
    a_lapsed_holder_of_both_is_replaced_with_its_send_unresolved,
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

/// `claim_and_lock` of `key` (fingerprint `f`) on `instance`.
async fn hold(
    store: &dyn StateStore,
    key: Option<&Key>,
    f: u8,
    instance: &str,
    token: &Token,
) -> Hold {
    let fingerprint = fingerprint(f);
    store
        .claim_and_lock(key.map(|k| (k, &fingerprint)), instance, token)
        .await
        .unwrap()
}

/// The ages a `Held` answer carries, or a panic.
fn both(hold: Hold) -> (Option<Duration>, Option<Duration>) {
    match hold {
        Hold::Held {
            unresolved_for,
            instance_unresolved_for,
        } => (unresolved_for, instance_unresolved_for),
        other => panic!("expected the key and the lock, got {other:?}"),
    }
}

async fn a_claim_with_its_lock_holds_both_or_nothing(store: Arc<dyn StateStore>) {
    let owner = Token::new();
    assert_eq!(
        both(hold(&*store, Some(&key(20)), 1, "r/both", &owner).await),
        (None, None)
    );
    // Another key on the instance: refused, and its key given back (so no conflict after).
    let other = Token::new();
    assert!(matches!(
        hold(&*store, Some(&key(21)), 1, "r/both", &other).await,
        Hold::InstanceBusy
    ));
    assert!(matches!(
        hold(&*store, None, 1, "r/both", &other).await,
        Hold::InstanceBusy
    ));
    assert_eq!(own(&*store, &key(21), 2, &other).await, (None, None));
    store
        .settle(&key(21), &other, Settlement::NotApplied)
        .await
        .unwrap();
    // A different request with the holder's key conflicts without touching the lock.
    assert!(matches!(
        hold(&*store, Some(&key(20)), 2, "r/elsewhere", &Token::new()).await,
        Hold::Conflict
    ));
    assert_eq!(
        held(
            store
                .lock_instance("r/elsewhere", &other, None)
                .await
                .unwrap()
        ),
        Some(None),
        "a conflict holds no lock"
    );
    // A duplicate waits for the holder, then replays without taking the lock.
    let duplicate = tokio::spawn({
        let store = Arc::clone(&store);
        async move {
            let fingerprint = fingerprint(1);
            store
                .claim_and_lock(Some((&key(20), &fingerprint)), "r/both", &Token::new())
                .await
        }
    });
    tokio::time::sleep(LEASE / 3).await;
    assert!(store.renew_instance("r/both", &owner).await.unwrap());
    assert!(store.renew(&key(20), &owner).await.unwrap());
    assert!(!duplicate.is_finished(), "a duplicate waits for the holder");
    store
        .release(Some(&key(20)), Some("r/both"), &owner, &accepted("R20"))
        .await
        .unwrap();
    match duplicate.await.unwrap().unwrap() {
        Hold::Replay(a) => assert_eq!(a.response.alibaba_request_id, "R20"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        both(hold(&*store, None, 1, "r/both", &Token::new()).await),
        (None, None),
        "released, and the replay took nothing"
    );
}

async fn the_send_mark_and_the_release_cover_the_key_and_the_lock(store: Arc<dyn StateStore>) {
    let (owner, stranger) = (Token::new(), Token::new());
    both(hold(&*store, Some(&key(22)), 1, "r/mark", &owner).await);
    assert!(
        !store
            .mark(Some(&key(22)), "r/mark", &stranger)
            .await
            .unwrap()
    );
    assert!(store.mark(Some(&key(22)), "r/mark", &owner).await.unwrap());
    // A stranger releases nothing.
    store
        .release(
            Some(&key(22)),
            Some("r/mark"),
            &stranger,
            &Settlement::NotApplied,
        )
        .await
        .unwrap();
    assert!(store.renew(&key(22), &owner).await.unwrap());
    assert!(store.renew_instance("r/mark", &owner).await.unwrap());
    assert!(
        store
            .renew_hold(Some(&key(22)), "r/mark", &owner)
            .await
            .unwrap()
    );
    assert!(
        !store
            .renew_hold(Some(&key(22)), "r/mark", &stranger)
            .await
            .unwrap()
    );
    // An unknown outcome after the mark: the key's next holder looks first; the lock is free,
    // its holder's own send settled with it.
    store
        .release(
            Some(&key(22)),
            Some("r/mark"),
            &owner,
            &Settlement::Unresolved,
        )
        .await
        .unwrap();
    let next = Token::new();
    let (key_age, lock_age) = both(hold(&*store, Some(&key(22)), 1, "r/mark", &next).await);
    assert!(key_age.is_some(), "the next holder looks first");
    assert_eq!(lock_age, None);
    store
        .release(Some(&key(22)), Some("r/mark"), &next, &accepted("R22"))
        .await
        .unwrap();
    assert!(matches!(
        hold(&*store, Some(&key(22)), 1, "r/mark", &Token::new()).await,
        Hold::Replay(_)
    ));
    // Without a key, the lock alone.
    let keyless = Token::new();
    both(hold(&*store, None, 1, "r/mark", &keyless).await);
    assert!(store.mark(None, "r/mark", &keyless).await.unwrap());
    store
        .release(None, Some("r/mark"), &keyless, &Settlement::NotApplied)
        .await
        .unwrap();
    both(hold(&*store, None, 1, "r/mark", &Token::new()).await);
}

async fn a_lapsed_holder_of_both_is_replaced_with_its_send_unresolved(store: Arc<dyn StateStore>) {
    let Some(lease) = store.lease() else {
        // Holders in memory never lapse: they settle when dropped.
        return;
    };
    let (a, b) = (Token::new(), Token::new());
    both(hold(&*store, Some(&key(23)), 1, "r/lapse", &a).await);
    assert!(store.mark(Some(&key(23)), "r/lapse", &a).await.unwrap());
    // Nobody renews: the next claimer of the key takes the key and the lock over, told of the
    // send on both.
    tokio::time::sleep(lease + lease / 2).await;
    let (key_age, lock_age) = both(hold(&*store, Some(&key(23)), 1, "r/lapse", &b).await);
    assert!(
        key_age.is_some() && lock_age.is_some(),
        "{key_age:?} {lock_age:?}"
    );
    assert!(
        !store.mark(Some(&key(23)), "r/lapse", &a).await.unwrap(),
        "the lapsed holder may send nothing"
    );
    assert!(
        !store
            .renew_hold(Some(&key(23)), "r/lapse", &a)
            .await
            .unwrap()
    );
    assert!(
        store
            .renew_hold(Some(&key(23)), "r/lapse", &b)
            .await
            .unwrap()
    );
    store
        .release(Some(&key(23)), Some("r/lapse"), &b, &Settlement::NotApplied)
        .await
        .unwrap();
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

/// The call budget's place, kept beside the store (`contract:{quota}` on Redis).
const PLACE: QuotaPlace<'static> = QuotaPlace {
    region: "r1",
    holder: "the-upgrade-call",
};
const HOLDERS: &str = "contract:{quota}:r1:holders";

/// Whether `server` still counts the place of [`PLACE`].
async fn place_held(server: &RedisServer) -> bool {
    !matches!(
        server.command(&["ZSCORE", HOLDERS, PLACE.holder]).await,
        redis::Value::Nil
    )
}

/// Settles the key, releases the lock and, where the store gives it back (`given_back`), the
/// place; whatever the store answers, the key and the lock are released as by `release`.
async fn settle_with_place(
    store: Arc<dyn StateStore>,
    server: Option<&RedisServer>,
    given_back: bool,
) {
    if let Some(server) = server {
        server
            .command(&["ZADD", HOLDERS, "99999999999999", PLACE.holder])
            .await;
    }
    let owner = Token::new();
    both(hold(&*store, Some(&key(30)), 1, "r/place", &owner).await);
    assert!(store.mark(Some(&key(30)), "r/place", &owner).await.unwrap());
    assert_eq!(
        store
            .release_with_place(
                Some(&key(30)),
                Some("r/place"),
                &owner,
                &accepted("R30"),
                PLACE
            )
            .await
            .unwrap(),
        given_back
    );
    if let Some(server) = server {
        assert_eq!(
            place_held(server).await,
            !given_back,
            "the place goes back exactly when the store says so"
        );
    }
    match hold(&*store, Some(&key(30)), 1, "r/place", &Token::new()).await {
        Hold::Replay(a) => assert_eq!(a.response.alibaba_request_id, "R30"),
        other => panic!("settled: {other:?}"),
    }
    both(hold(&*store, None, 1, "r/place", &Token::new()).await);
    // Without a key there is no script to share: the place is left to its holder.
    let keyless = Token::new();
    both(hold(&*store, None, 1, "r/place-keyless", &keyless).await);
    if let Some(server) = server {
        server
            .command(&["ZADD", HOLDERS, "99999999999999", PLACE.holder])
            .await;
    }
    assert!(
        !store
            .release_with_place(
                None,
                Some("r/place-keyless"),
                &keyless,
                &Settlement::NotApplied,
                PLACE
            )
            .await
            .unwrap()
    );
    if let Some(server) = server {
        assert!(place_held(server).await);
    }
    both(hold(&*store, None, 1, "r/place-keyless", &Token::new()).await);
}

/// The memory store keeps no budget: the place is left to its holder.
#[tokio::test(start_paused = true)]
async fn on_memory_settle_leaves_the_place_to_its_holder() {
    settle_with_place(memory(), None, false).await;
}

/// One script settles the key, releases the lock and gives the place back.
#[tokio::test(flavor = "multi_thread")]
async fn on_redis_settle_gives_the_place_back_in_the_same_script() {
    let server = RedisServer::start().await;
    settle_with_place(redis(&server).await, Some(&server), true).await;
}

/// A cluster refuses a script on several slots: the key and the lock go back in single-slot
/// steps, and the place is left to its holder (its own `ZREM`).
#[tokio::test(flavor = "multi_thread")]
async fn on_redis_cluster_settle_leaves_the_place_to_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start_cluster(dir.path()).await;
    settle_with_place(redis(&server).await, Some(&server), false).await;
}
