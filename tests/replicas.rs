//! Several replicas, one guarantee: two gateway processes share one real `redis-server` and one
//! sandbox Dds API (in this process), and every duplicate, conflict, concurrent upgrade of one
//! instance, dead owner and Redis outage still ends with at most one upstream upgrade.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::ServingBinary;
use common::redis::{PASSWORD, RedisPki, RedisServer};
use dds_gateway::pb;
use dds_gateway::pb::engine_version_service_client::EngineVersionServiceClient;
use dds_gateway::testing::alibaba::action::UPGRADE_DB_INSTANCE_ENGINE_VERSION as UPGRADE;
use dds_gateway::testing::api::service::RECONCILED_HEADER;
use dds_gateway::testing::sandbox::{Fault, Sandbox, SandboxConfig};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const INSTANCE: &str = "dds-sandbox01"; // Running, 4.2

/// A gateway process on the shared Redis and sandbox.
async fn replica(sandbox: &Sandbox, redis: &RedisServer, log_level: &str) -> ServingBinary {
    replica_with(sandbox, redis, log_level, &[], &[]).await
}

/// A replica with more command-line arguments and environment variables.
async fn replica_with(
    sandbox: &Sandbox,
    redis: &RedisServer,
    log_level: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> ServingBinary {
    let endpoint = sandbox.endpoint().to_string();
    let url = redis.url();
    let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut vars = vec![
        ("RUST_LOG", log_level),
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", "testid"),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "testsecret"),
        ("DDS_GATEWAY_ALIBABA_ENDPOINT", &endpoint),
        ("DDS_GATEWAY_STATE_STORE", "redis"),
        ("DDS_GATEWAY_STATE_REDIS_URL", &url),
        ("DDS_GATEWAY_STATE_LEASE", "2s"),
    ];
    vars.extend_from_slice(env);
    ServingBinary::start(&all, &vars).await
}

async fn client(replica: &ServingBinary) -> EngineVersionServiceClient<Channel> {
    EngineVersionServiceClient::new(common::channel(replica.addr.parse().unwrap()).await)
}

fn keyed(instance: &str, version: &str, key: &str) -> pb::UpgradeEngineVersionRequest {
    pb::UpgradeEngineVersionRequest {
        request_id: key.to_string(),
        ..common::request(instance, version)
    }
}

fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .expect("every error carries ErrorInfo")
        .reason
}

struct Setup {
    sandbox: Sandbox,
    redis: RedisServer,
    a: ServingBinary,
    b: ServingBinary,
}

async fn setup() -> Setup {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let redis = RedisServer::start().await;
    let a = replica(&sandbox, &redis, "info").await;
    let b = replica(&sandbox, &redis, "info").await;
    Setup {
        sandbox,
        redis,
        a,
        b,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_spread_over_two_replicas_upgrade_once_and_a_reused_key_is_refused() {
    let s = setup().await;
    // The upgrade call hangs a while, so every duplicate arrives while the first is in flight.
    s.sandbox
        .push_fault_on(UPGRADE, Fault::Delay(Duration::from_millis(500)));
    let (a, b) = (client(&s.a).await, client(&s.b).await);
    let key = new_key();
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let mut client = if i % 2 == 0 { a.clone() } else { b.clone() };
            let req = keyed(INSTANCE, "5.0", &key);
            tokio::spawn(async move { client.upgrade_engine_version(req).await })
        })
        .collect();
    let mut answers = std::collections::HashSet::new();
    for call in calls {
        answers.insert(call.await.unwrap().unwrap().into_inner().alibaba_request_id);
    }
    assert_eq!(answers.len(), 1, "one answer for all: {answers:?}");
    assert!(!answers.iter().next().unwrap().is_empty());
    assert_eq!(s.sandbox.calls(UPGRADE), 1);
    assert_eq!(s.sandbox.upgrades_started(INSTANCE), 1);

    // The same key for another request, on either replica: refused.
    for mut client in [a, b] {
        let status = client
            .upgrade_engine_version(keyed("dds-sandbox02", "5.0", &key))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(reason(&status), "REQUEST_ID_REUSED");
    }
    assert_eq!(s.sandbox.calls(UPGRADE), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_keys_for_one_instance_on_two_replicas_send_one_upgrade() {
    let s = setup().await;
    s.sandbox
        .push_fault_on(UPGRADE, Fault::Delay(Duration::from_secs(3600)));
    let mut a = client(&s.a).await;
    let first = tokio::spawn(async move {
        a.upgrade_engine_version(keyed(INSTANCE, "4.4", &new_key()))
            .await
    });
    common::wait_until("the first upgrade is sent", || {
        s.sandbox.calls(UPGRADE) == 1
    })
    .await;
    let mut b = client(&s.b).await;
    for other in [
        keyed(INSTANCE, "5.0", &new_key()),
        common::request(INSTANCE, "4.4"),
    ] {
        let status = b.upgrade_engine_version(other).await.unwrap_err();
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        assert_eq!(reason(&status), "UPGRADE_IN_PROGRESS");
        assert!(status.get_details_retry_info().is_some());
    }
    assert_eq!(s.sandbox.calls(UPGRADE), 1);
    first.abort();
}

/// The owner dies (SIGKILL) after Alibaba acted on its upgrade and before it heard back. The
/// caller's retries on the other replica wait for the dead owner's lease, then only look (the
/// status still lags), and succeed once the instance shows the upgrade: one upgrade in all.
#[tokio::test(flavor = "multi_thread")]
async fn an_owner_killed_mid_call_leaves_retries_that_look_and_never_send_again() {
    let mut s = setup().await;
    s.sandbox.lag_status(Duration::from_secs(3600));
    s.sandbox.push_fault_on(
        UPGRADE,
        Fault::AfterActing(Box::new(Fault::Delay(Duration::from_secs(3600)))),
    );
    let key = new_key();
    let mut a = client(&s.a).await;
    let request = keyed(INSTANCE, "4.4", &key);
    let in_flight = tokio::spawn(async move { a.upgrade_engine_version(request).await });
    common::wait_until("Alibaba acted on the upgrade", || {
        s.sandbox.upgrades_started(INSTANCE) == 1
    })
    .await;
    s.a.process.kill().await.unwrap();
    let _ = in_flight.await;

    let mut b = client(&s.b).await;
    // Within the settle window, and while the status lags: only looks.
    let status = b
        .upgrade_engine_version(keyed(INSTANCE, "4.4", &key))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "UPSTREAM_OUTCOME_UNKNOWN");
    assert_eq!(s.sandbox.calls(UPGRADE), 1, "nothing sent again");
    // Another key for the instance is not held up by the dead owner's lock for long either,
    // but it is a new intended upgrade: not part of this test.
    s.sandbox.lag_status(Duration::ZERO);
    let answer = b
        .upgrade_engine_version(keyed(INSTANCE, "4.4", &key))
        .await
        .unwrap();
    assert_eq!(
        answer.metadata().get(RECONCILED_HEADER).unwrap(),
        "reconciled"
    );
    assert_eq!(s.sandbox.calls(UPGRADE), 1);
    assert_eq!(s.sandbox.upgrades_started(INSTANCE), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_redis_upgrades_are_refused_and_nothing_is_sent_until_it_is_back() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut s = setup().await;
    let mut a = client(&s.a).await;
    // Health follows the store only when asked to (the default keeps the replica in the Service;
    // tests/store_outage.rs).
    let opted_in = replica_with(
        &s.sandbox,
        &s.redis,
        "info",
        &[],
        &[("DDS_GATEWAY_STATE_READINESS_FOLLOWS_STORE", "true")],
    )
    .await;
    let mut health = HealthClient::new(common::channel(opted_in.addr.parse().unwrap()).await);
    let status_of = |service: &str| HealthCheckRequest {
        service: service.to_string(),
    };
    s.redis.kill().await;
    let status = a
        .upgrade_engine_version(keyed(INSTANCE, "4.4", &new_key()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "STATE_STORE_UNAVAILABLE");
    assert!(status.get_details_retry_info().is_some());
    // Without a key too: the instance lock needs the store.
    let status = a
        .upgrade_engine_version(common::request(INSTANCE, "4.4"))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "STATE_STORE_UNAVAILABLE");
    assert_eq!(s.sandbox.calls(UPGRADE), 0);
    // Validate-only needs no store.
    a.upgrade_engine_version(pb::UpgradeEngineVersionRequest {
        validate_only: true,
        ..keyed(INSTANCE, "4.4", &new_key())
    })
    .await
    .unwrap();

    let service = dds_gateway::testing::api::service::SERVICE_NAME;
    let serving = |service: &'static str| {
        let mut health = health.clone();
        async move {
            health
                .check(status_of(service))
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while serving(service).await != ServingStatus::NotServing as i32 {
        assert!(tokio::time::Instant::now() < deadline, "never NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(serving("").await, ServingStatus::Serving as i32);

    s.redis = RedisServer::start_on(s.redis.port).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while serving(service).await != ServingStatus::Serving as i32 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never SERVING again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.upgrade_engine_version(keyed(INSTANCE, "4.4", &new_key()))
        .await
        .unwrap();
    assert_eq!(s.sandbox.calls(UPGRADE), 1);
    let _ = health.check(status_of("")).await;
}

/// One caller, one bucket: its burst is shared by both replicas (GCRA in Redis). Without Redis
/// each replica limits the caller with its own bucket instead of refusing every call.
#[tokio::test(flavor = "multi_thread")]
async fn a_callers_burst_is_shared_by_the_replicas() {
    use sha2::Digest as _;
    const TOKEN: &str = "billing-token-0123456789";
    let digest: String = sha2::Sha256::digest(TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[[callers]]\nname = \"billing\"\ntoken_sha256 = \"{digest}\"\nregions = [\"cn-hangzhou\"]\ninstances = [\"dds-sandbox*\"]\nrate_per_second = 0.001\nburst = 4\n"
        ),
    )
    .unwrap();
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut redis = RedisServer::start().await;
    let config = ["--config", file.to_str().unwrap()];
    let mut a = replica_with(&sandbox, &redis, "info", &config, &[]).await;
    let b = replica_with(&sandbox, &redis, "info", &config, &[]).await;
    let (ca, cb) = (client(&a).await, client(&b).await);
    let read = |mut client: EngineVersionServiceClient<Channel>| async move {
        let mut request = tonic::Request::new(pb::GetEngineVersionRequest {
            db_instance_id: INSTANCE.to_string(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        client.get_engine_version(request).await
    };
    for i in 0..4 {
        let client = if i % 2 == 0 { ca.clone() } else { cb.clone() };
        read(client).await.unwrap();
    }
    for client in [ca.clone(), cb.clone()] {
        let status = read(client).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(reason(&status), "CALLER_RATE_LIMITED");
    }
    // Redis gone: this replica's own bucket (untouched so far) decides.
    redis.kill().await;
    read(ca.clone()).await.unwrap();
    a.wait_for_log("cannot reach the shared caller rate limits")
        .await;
}

/// A Redis that may evict keys is warned about at start-up: an evicted key can mean a second
/// upgrade. One that does not is not.
#[tokio::test(flavor = "multi_thread")]
async fn an_evicting_redis_is_warned_about_at_start_up() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let evicting = RedisServer::start_with(port, &["--maxmemory-policy", "allkeys-lru"]).await;
    let gateway = replica(&sandbox, &evicting, "info").await;
    assert!(
        gateway.startup_log.contains("maxmemory-policy")
            && gateway.startup_log.contains("allkeys-lru"),
        "{}",
        gateway.startup_log
    );
    let safe = RedisServer::start().await;
    let gateway = replica(&sandbox, &safe, "info").await;
    assert!(
        !gateway.startup_log.contains("may evict keys"),
        "{}",
        gateway.startup_log
    );
}

/// The Redis password appears nowhere in the log, even at TRACE, also when Redis is gone.
#[tokio::test(flavor = "multi_thread")]
async fn the_redis_password_never_appears_in_the_log_at_trace() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut redis = RedisServer::start().await;
    let mut gateway = replica(&sandbox, &redis, "trace").await;
    let mut c = client(&gateway).await;
    c.upgrade_engine_version(keyed(INSTANCE, "4.4", &new_key()))
        .await
        .unwrap();
    redis.kill().await;
    let _ = c
        .upgrade_engine_version(keyed("dds-sandbox02", "5.0", &new_key()))
        .await
        .unwrap_err();
    gateway.process.kill().await.unwrap();
    let mut log = gateway.startup_log.clone();
    while let Some(line) = gateway.log.recv().await {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(
        log.contains("TRACE") || log.contains("\"level\":\"TRACE\""),
        "the log is at TRACE"
    );
    assert!(!log.contains(PASSWORD), "the password leaked into the log");
    assert!(
        log.contains("redis://:***@127.0.0.1"),
        "the URL appears masked"
    );
}

/// The Redis store's scripts, one by one: a holder whose lease lapsed before its send mark is
/// simply replaced (nothing was sent); after its mark, the key is unresolved; a stale holder can
/// neither mark nor settle; a caller is held to its share of keys; a lapsed holder's instance
/// lock passes to whoever replaced it on the key, and to no one else.
#[tokio::test(flavor = "multi_thread")]
async fn the_redis_store_replaces_lapsed_holders_by_their_mark_and_only_by_token() {
    use dds_gateway::testing::config::RedisUrl;
    use dds_gateway::testing::state::redis::RedisStore;
    use dds_gateway::testing::state::store::{
        Claim, Key, Settlement, StateStore, StoreError, StoreLimits, Token,
    };
    use dds_gateway::testing::upgrade::idempotency::fingerprint;
    let redis = RedisServer::start().await;
    let lease = Duration::from_millis(300);
    let store = RedisStore::open(
        &RedisUrl::parse(&redis.url()).unwrap(),
        None,
        "test:",
        StoreLimits {
            retention: Duration::from_secs(3600),
            max_keys: 100,
            max_keys_per_caller: 3,
            settle_window: Duration::from_secs(120),
            lease,
        },
    )
    .unwrap();
    let validator =
        dds_gateway::testing::upgrade::validation::Validator::new(&common::default_config());
    let fingerprint = fingerprint(
        &validator
            .validate(common::request(INSTANCE, "4.4"))
            .unwrap(),
    );
    let key = |n: u128| Key::new("billing", uuid::Uuid::from_u128(n));
    let held = |lock| {
        matches!(
            lock,
            dds_gateway::testing::state::store::InstanceLock::Held { .. }
        )
    };
    let owner = |claim: Claim| match claim {
        Claim::Owner {
            unresolved_for,
            replaced,
        } => (unresolved_for, replaced),
        other => panic!("expected ownership, got {other:?}"),
    };

    // Lapsed before its mark: replaced, nothing unresolved.
    let (a, b) = (Token::new(), Token::new());
    owner(store.claim(&key(1), &fingerprint, &a).await.unwrap());
    assert!(held(store.lock_instance("r/i1", &a, None).await.unwrap()));
    // Its lock outlives its key a little (renewed first), as a dead holder's may.
    let store = std::sync::Arc::new(store);
    let renewing = tokio::spawn({
        let (store, a) = (std::sync::Arc::clone(&store), a.clone());
        async move {
            while store.renew_instance("r/i1", &a).await.unwrap() {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    });
    let started = tokio::time::Instant::now();
    let (unresolved, replaced) = owner(store.claim(&key(1), &fingerprint, &b).await.unwrap());
    assert!(started.elapsed() >= lease / 2, "waited for the lease");
    assert_eq!(unresolved, None);
    assert_eq!(replaced.as_ref(), Some(&a));
    // The instance lock passes with the key, and to no one else.
    assert!(!held(
        store
            .lock_instance("r/i1", &Token::new(), None)
            .await
            .unwrap()
    ));
    assert!(held(
        store
            .lock_instance("r/i1", &b, replaced.as_ref())
            .await
            .unwrap()
    ));
    assert!(!store.renew_instance("r/i1", &a).await.unwrap());
    renewing.await.unwrap();
    // The stale holder can neither mark nor settle.
    assert!(!store.mark_sending(&key(1), &a).await.unwrap());
    store
        .settle(&key(1), &a, Settlement::NotApplied)
        .await
        .unwrap();
    assert!(store.renew(&key(1), &b).await.unwrap());

    // Lapsed after its mark: unresolved since the mark.
    let (c, d) = (Token::new(), Token::new());
    owner(store.claim(&key(2), &fingerprint, &c).await.unwrap());
    assert!(store.mark_sending(&key(2), &c).await.unwrap());
    let (unresolved, _) = owner(store.claim(&key(2), &fingerprint, &d).await.unwrap());
    assert!(
        unresolved.is_some_and(|ago| ago >= lease / 2),
        "{unresolved:?}"
    );
    // Failing without a send of its own keeps it unresolved, since the same mark.
    store
        .settle(&key(2), &d, Settlement::NotApplied)
        .await
        .unwrap();
    let (unresolved, _) = owner(store.claim(&key(2), &fingerprint, &d).await.unwrap());
    assert!(unresolved.is_some());

    // The caller's share: keys 1 and 2 are held; a third fits, a fourth does not.
    owner(
        store
            .claim(&key(3), &fingerprint, &Token::new())
            .await
            .unwrap(),
    );
    assert!(matches!(
        store.claim(&key(4), &fingerprint, &Token::new()).await,
        Err(StoreError::CallerFull(3))
    ));
    // A failure that did nothing gives its place back.
    let e = Token::new();
    store
        .settle(&key(1), &b, Settlement::NotApplied)
        .await
        .unwrap();
    owner(store.claim(&key(4), &fingerprint, &e).await.unwrap());
    store
        .settle(
            &key(4),
            &e,
            Settlement::Accepted(dds_gateway::testing::state::store::Accepted {
                response: pb::UpgradeEngineVersionResponse {
                    alibaba_request_id: "R4".into(),
                    ..Default::default()
                },
                reconciled: true,
            }),
        )
        .await
        .unwrap();
    match store
        .claim(&key(4), &fingerprint, &Token::new())
        .await
        .unwrap()
    {
        Claim::Replay(accepted) => {
            assert_eq!(accepted.response.alibaba_request_id, "R4");
            assert!(accepted.reconciled);
        }
        other => panic!("{other:?}"),
    }
}

/// `rediss://` over loopback: a TLS-only `redis-server` whose certificate a test CA signed. With
/// that CA in `state.redis_ca_file` a duplicate is deduplicated through it (one upstream upgrade,
/// the answer replayed); trusting only the system roots, or another CA, the store cannot be
/// reached, so upgrades are refused and nothing is sent.
#[tokio::test(flavor = "multi_thread")]
async fn rediss_verifies_redis_with_the_configured_ca() {
    let pki = RedisPki::new();
    let redis = RedisServer::start_tls(&pki).await;
    assert!(redis.url().starts_with("rediss://"));
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();

    let ca_file = pki.ca_file();
    let ca = ("DDS_GATEWAY_STATE_REDIS_CA_FILE", ca_file.to_str().unwrap());
    let gateway = replica_with(&sandbox, &redis, "info", &[], &[ca]).await;
    assert!(
        !gateway.startup_log.contains("cannot be reached"),
        "{}",
        gateway.startup_log
    );
    let mut trusting = client(&gateway).await;
    let key = new_key();
    let first = trusting
        .upgrade_engine_version(keyed(INSTANCE, "4.4", &key))
        .await
        .unwrap()
        .into_inner();
    let again = trusting
        .upgrade_engine_version(keyed(INSTANCE, "4.4", &key))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.alibaba_request_id.is_empty());
    assert_eq!(again.alibaba_request_id, first.alibaba_request_id);
    assert_eq!(sandbox.calls(UPGRADE), 1);

    let other_ca = pki.other_ca_file();
    let wrong = (
        "DDS_GATEWAY_STATE_REDIS_CA_FILE",
        other_ca.to_str().unwrap(),
    );
    for env in [&[][..], &[wrong][..]] {
        let gateway = replica_with(&sandbox, &redis, "info", &[], env).await;
        let mut refused = client(&gateway).await;
        assert!(
            gateway
                .startup_log
                .contains("invalid peer certificate: UnknownIssuer"),
            "refused for its certificate: {}",
            gateway.startup_log
        );
        let status = refused
            .upgrade_engine_version(keyed("dds-sandbox02", "5.0", &new_key()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(reason(&status), "STATE_STORE_UNAVAILABLE");
        assert_eq!(sandbox.calls(UPGRADE), 1, "nothing more is sent");
    }
}

/// A caller's rate means the same in one process and in Redis: the same burst and rate admit
/// the same calls and name the same wait, because both run GCRA with the same parameters (the
/// memory one on this process's clock, the script on Redis's).
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_admits_the_same_calls_in_memory_and_in_redis() {
    use dds_gateway::testing::config::RedisUrl;
    use dds_gateway::testing::limits::{Rate, SharedBucket, SharedRates};
    use dds_gateway::testing::state::redis::RedisStore;
    use dds_gateway::testing::state::store::StoreLimits;
    let redis = RedisServer::start().await;
    let store = RedisStore::open(
        &RedisUrl::parse(&redis.url()).unwrap(),
        None,
        "rates:",
        StoreLimits::from_config(&common::default_config()),
    )
    .unwrap();
    // One call a second: the margins are wide against a slow machine.
    let rate = Rate {
        per_second: 1.0,
        burst: 3,
    };
    let local = SharedBucket::new(rate);
    // One round: five calls at once in each, then the wait each names for the next.
    let round = async |caller: &str| {
        let mut in_memory = Vec::new();
        let mut in_redis = Vec::new();
        for _ in 0..5 {
            in_memory.push(local.take(rate));
            in_redis.push(SharedRates::take(&store, caller, rate).await.unwrap());
        }
        (in_memory, in_redis)
    };
    let admitted =
        |takes: &[Result<(), Duration>]| takes.iter().map(Result::is_ok).collect::<Vec<_>>();
    let (memory, shared) = round("billing").await;
    assert_eq!(admitted(&memory), [true, true, true, false, false]);
    assert_eq!(admitted(&shared), admitted(&memory));
    // The waits named agree (to the time the calls themselves took).
    let wait = |takes: &[Result<(), Duration>]| takes[3].unwrap_err();
    let (a, b) = (wait(&memory), wait(&shared));
    assert!(a.abs_diff(b) < Duration::from_millis(100), "{a:?} vs {b:?}");
    assert!(
        a <= Duration::from_secs(1) && a > Duration::from_millis(800),
        "{a:?}"
    );
    // After the wait named, one more call is admitted in each, and only one.
    tokio::time::sleep(a.max(b) + Duration::from_millis(20)).await;
    assert_eq!(local.take(rate), Ok(()));
    assert_eq!(
        SharedRates::take(&store, "billing", rate).await.unwrap(),
        Ok(())
    );
    assert!(local.take(rate).is_err());
    assert!(
        SharedRates::take(&store, "billing", rate)
            .await
            .unwrap()
            .is_err()
    );
}

/// A Redis stall longer than the lease while replica A waits for Alibaba's answer to its
/// upgrade: A's instance lock lapses. Replica B, asked to upgrade the same instance under another
/// key (or none), must not take the lock over blindly: A may have sent, so B answers
/// UPGRADE_IN_PROGRESS and sends nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_lapsed_lock_whose_holder_may_have_sent_is_not_taken_over_blindly() {
    let s = setup().await;
    s.sandbox
        .push_fault_on(UPGRADE, Fault::Delay(Duration::from_secs(3600)));
    let mut a = client(&s.a).await;
    let first = tokio::spawn(async move {
        a.upgrade_engine_version(keyed(INSTANCE, "4.4", &new_key()))
            .await
    });
    common::wait_until("the first upgrade is sent", || {
        s.sandbox.calls(UPGRADE) == 1
    })
    .await;
    // Longer than the replicas' 2 s lease: A cannot renew its lock meanwhile.
    s.redis.pause(3000).await;
    s.redis.command(&["PING"]).await; // answered once the stall is over
    let mut b = client(&s.b).await;
    for other in [
        keyed(INSTANCE, "5.0", &new_key()),
        common::request(INSTANCE, "4.4"),
    ] {
        let status = b.upgrade_engine_version(other).await.unwrap_err();
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        assert_eq!(reason(&status), "UPGRADE_IN_PROGRESS");
    }
    assert_eq!(
        s.sandbox.calls(UPGRADE),
        1,
        "no second upgrade of the instance"
    );
    first.abort();
}

/// Redis stalls (`DEBUG SLEEP 3`) longer than the store's response timeout: the caller hears
/// STATE_STORE_UNAVAILABLE, and Redis runs the claim and the lock late. Neither may be orphaned
/// for a whole lease (30 s here): once Redis answers again, retries go through.
#[tokio::test(flavor = "multi_thread")]
async fn an_operation_whose_answer_was_lost_orphans_neither_lock_nor_claim() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let redis = RedisServer::start_debuggable().await;
    let gateway = replica_with(
        &sandbox,
        &redis,
        "info",
        &[],
        &[("DDS_GATEWAY_STATE_LEASE", "30s")],
    )
    .await;
    let key = new_key();
    let requests = || {
        [
            common::request(INSTANCE, "4.4"),
            keyed("dds-sandbox02", "5.0", &key),
        ]
    };
    // Warm: Redis knows the scripts, so a late EVALSHA runs rather than failing NOSCRIPT.
    let warm = client(&gateway)
        .await
        .upgrade_engine_version(keyed("dds-sandbox03", "5.0", &new_key()))
        .await;
    assert!(warm.is_err(), "already on 5.0: refused by the preflight");
    let asleep = redis.sleep(3).await;
    let calls = requests().map(|request| {
        let address = gateway.addr.clone();
        tokio::spawn(async move {
            let channel = common::channel(address.parse().unwrap()).await;
            EngineVersionServiceClient::new(channel)
                .upgrade_engine_version(request)
                .await
        })
    });
    for call in calls {
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(reason(&status), "STATE_STORE_UNAVAILABLE");
    }
    asleep.await.unwrap();
    for request in requests() {
        let mut request = tonic::Request::new(request);
        request.set_timeout(Duration::from_secs(10));
        let answer = client(&gateway).await.upgrade_engine_version(request).await;
        assert!(answer.is_ok(), "{answer:?}");
    }
    assert_eq!(sandbox.calls(UPGRADE), 2);
}

fn store_on(
    redis: &RedisServer,
    limits: dds_gateway::testing::state::store::StoreLimits,
) -> dds_gateway::testing::state::redis::RedisStore {
    dds_gateway::testing::state::redis::RedisStore::open(
        &dds_gateway::testing::config::RedisUrl::parse(&redis.url()).unwrap(),
        None,
        "test:",
        limits,
    )
    .unwrap()
}

fn a_fingerprint() -> dds_gateway::testing::state::store::Fingerprint {
    dds_gateway::testing::state::store::Fingerprint::of_fields(&["test"])
}

/// `since` and `sent` written from a clock ahead of Redis's (a failover to a replica whose clock
/// lags, an NTP step): the age is negative, and is 0, never "not sent".
#[tokio::test(flavor = "multi_thread")]
async fn a_send_marked_by_a_clock_ahead_of_redis_is_still_a_send() {
    use dds_gateway::testing::state::store::{
        Claim, Key, Settlement, StateStore, StoreLimits, Token,
    };
    let redis = RedisServer::start().await;
    let lease = Duration::from_millis(200);
    let store = store_on(
        &redis,
        StoreLimits {
            retention: Duration::from_secs(3600),
            max_keys: 100,
            max_keys_per_caller: 100,
            settle_window: Duration::from_secs(120),
            lease,
        },
    );
    let key = |n: u128| Key::new("billing", uuid::Uuid::from_u128(n));
    let record = |n: u128| format!("test:{{c:62696c6c696e67}}:k:{}", uuid::Uuid::from_u128(n));
    let unresolved = |claim: Claim| match claim {
        Claim::Owner { unresolved_for, .. } => unresolved_for,
        other => panic!("expected ownership, got {other:?}"),
    };
    let ahead = (redis.now_ms().await + 60_000).to_string();
    // A holder marked its send, then lapsed; its mark came from a clock a minute ahead.
    let a = Token::new();
    store.claim(&key(1), &a_fingerprint(), &a).await.unwrap();
    assert!(store.mark_sending(&key(1), &a).await.unwrap());
    redis.command(&["HSET", &record(1), "sent", &ahead]).await;
    let b = Token::new();
    let claim = store.claim(&key(1), &a_fingerprint(), &b).await.unwrap();
    assert_eq!(unresolved(claim), Some(Duration::ZERO));
    // A settled unresolved key whose `since` is ahead of Redis.
    let c = Token::new();
    store.claim(&key(2), &a_fingerprint(), &c).await.unwrap();
    assert!(store.mark_sending(&key(2), &c).await.unwrap());
    store
        .settle(&key(2), &c, Settlement::Unresolved)
        .await
        .unwrap();
    redis.command(&["HSET", &record(2), "since", &ahead]).await;
    let claim = store
        .claim(&key(2), &a_fingerprint(), &Token::new())
        .await
        .unwrap();
    assert_eq!(unresolved(claim), Some(Duration::ZERO));
}

/// Renewal keeps the Redis key alive, not only the claim: with a retention shorter than the
/// upgrade in flight, a duplicate still waits for the owner and replays its answer.
#[tokio::test(flavor = "multi_thread")]
async fn renewal_keeps_a_claimed_key_alive_past_its_retention() {
    use dds_gateway::testing::state::store::{
        Accepted, Claim, Key, Settlement, StateStore, StoreLimits, Token,
    };
    let redis = RedisServer::start().await;
    let store = std::sync::Arc::new(store_on(
        &redis,
        StoreLimits {
            retention: Duration::from_millis(500),
            max_keys: 100,
            max_keys_per_caller: 100,
            settle_window: Duration::from_millis(300),
            lease: Duration::from_millis(300),
        },
    ));
    let key = Key::new("billing", uuid::Uuid::from_u128(1));
    let owner = Token::new();
    assert!(matches!(
        store.claim(&key, &a_fingerprint(), &owner).await.unwrap(),
        Claim::Owner { .. }
    ));
    let duplicate = tokio::spawn({
        let (store, key) = (std::sync::Arc::clone(&store), key.clone());
        async move { store.claim(&key, &a_fingerprint(), &Token::new()).await }
    });
    // The owner renews (as its lease does) well past the retention.
    for _ in 0..15 {
        assert!(store.renew(&key, &owner).await.unwrap(), "still held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !duplicate.is_finished(),
        "the duplicate waits for the owner"
    );
    store
        .settle(
            &key,
            &owner,
            Settlement::Accepted(Accepted {
                response: pb::UpgradeEngineVersionResponse {
                    alibaba_request_id: "R1".into(),
                    ..Default::default()
                },
                reconciled: false,
            }),
        )
        .await
        .unwrap();
    match duplicate.await.unwrap().unwrap() {
        Claim::Replay(accepted) => assert_eq!(accepted.response.alibaba_request_id, "R1"),
        other => panic!("expected the owner's answer, got {other:?}"),
    }
}

/// SIGTERM while an upgrade's caller has already timed out. An upgrade Alibaba answers within
/// `server.shutdown_grace` is waited for: its outcome is audited and its Redis record settled.
/// One it answers after the grace is audited `abandoned` and named in a WARN line.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_waits_for_upgrades_whose_caller_has_gone_and_audits_the_rest_abandoned() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "dds-sandbox01",
            "4.4",
            Duration::from_secs(3),
            "30s",
            "accepted",
        ),
        (
            "dds-sandbox02",
            "5.0",
            Duration::from_secs(3600),
            "2s",
            "abandoned",
        ),
    ];
    for (n, (instance, version, answer_after, grace, outcome)) in cases.into_iter().enumerate() {
        let audit = dir.path().join(format!("audit-{n}.jsonl"));
        let audit_file = audit.to_str().unwrap().to_string();
        let mut gateway = replica_with(
            &sandbox,
            &redis,
            "info",
            &[],
            &[
                ("DDS_GATEWAY_SERVER_SHUTDOWN_GRACE", grace),
                ("DDS_GATEWAY_AUDIT_FILE", &audit_file),
            ],
        )
        .await;
        sandbox.push_fault_on(UPGRADE, Fault::Delay(answer_after));
        let key = new_key();
        let mut request = tonic::Request::new(keyed(instance, version, &key));
        request.set_timeout(Duration::from_secs(1));
        let status = client(&gateway)
            .await
            .upgrade_engine_version(request)
            .await
            .unwrap_err();
        // The caller gives up: the gateway's DEADLINE_EXCEEDED, or the client's own timer when
        // it fires first (CANCELLED "Timeout expired") on a busy machine.
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status:?}"
        );
        assert_eq!(sandbox.calls(UPGRADE), n + 1, "the upgrade is under way");
        let pid = gateway.process.id().unwrap().to_string();
        let killed = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        let exit = tokio::time::timeout(Duration::from_secs(60), gateway.process.wait())
            .await
            .expect("the gateway exits within its grace")
            .unwrap();
        assert!(exit.success(), "{exit:?}");
        let mut log = String::new();
        while let Some(line) = gateway.log.recv().await {
            log.push_str(&line);
            log.push('\n');
        }
        let outcomes: Vec<String> = std::fs::read_to_string(&audit)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|event| event["request_id"] == key.as_str())
            .map(|event| event["outcome"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(outcomes, ["sending", outcome], "{log}");
        let record = format!("dds-gateway:{{c:}}:k:{key}");
        let answered = redis.command(&["HEXISTS", &record, "answer"]).await;
        if outcome == "accepted" {
            assert_eq!(answered, redis::Value::Int(1), "the key is settled");
        } else {
            assert_eq!(answered, redis::Value::Int(0));
            let warned = log.lines().any(|line| {
                line.contains("WARN")
                    && line.contains("abandoned")
                    && line.contains(&key)
                    && line.contains(instance)
            });
            assert!(warned, "a WARN line names the abandoned upgrade: {log}");
        }
    }
}
