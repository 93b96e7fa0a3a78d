//! The guarantee under faults, Jepsen's idea at our scale: three gateway processes on one real
//! `redis-server` and one sandbox Dds API, clients retrying keys and racing on shared instances,
//! while a seeded scheduler injects faults: answers Alibaba acted on but never gave, slow
//! answers, a status that lags, Redis stalls (`DEBUG SLEEP`) and pauses (`CLIENT PAUSE`),
//! replicas frozen (SIGSTOP) and killed (SIGKILL, then started again), and Redis's wall clock
//! stepped behind and ahead of the gateways' (as after a failover to a replica whose clock lags,
//! or an NTP step; `tests/faults/clock_skew.c`), which moves its scripts' `now` and its key
//! expiry. Afterwards an oracle
//! checks what must hold whatever happened:
//! - at most one upgrade call per key (each (instance, target) pair has one key, and the settle
//!   window outlasts the run, so a second call for a pair is a second send of its key);
//! - at most one upgrade call in flight per instance;
//! - every upgrade call has its `sending` line in an audit file;
//! - every `sending` line of a replica that was not killed has its outcome after it.
//!
//! `DDS_FAULTS_SEED` replays a run's choices (the seed is printed; thread timing still varies),
//! `DDS_FAULTS_SECONDS` makes it longer (default 12 s, as CI runs it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ServingBinary;
use common::clock_skew::ClockSkew;
use common::redis::{PASSWORD, RedisServer};
use dds_gateway::pb;
use dds_gateway::pb::engine_version_service_client::EngineVersionServiceClient;
use dds_gateway::testing::alibaba::action::UPGRADE_DB_INSTANCE_ENGINE_VERSION as UPGRADE;
use dds_gateway::testing::sandbox::{Fault, FleetSpec, Sandbox, SandboxConfig, UpgradeCall};
use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The instances the clients race on (all `Running` in the sandbox), with their regions: the
/// demo instances and a small fleet on 4.2, so that a run has many upgrades to make.
const INSTANCES: &[(&str, &str)] = &[
    ("dds-sandbox01", "cn-hangzhou"),
    ("dds-sandbox02", "cn-hangzhou"),
    ("dds-sandbox03", "cn-hangzhou"),
    ("dds-sandboxsz", "cn-shenzhen"),
    ("dds-fleet000", "cn-hangzhou"),
    ("dds-fleet001", "cn-hangzhou"),
    ("dds-fleet002", "cn-hangzhou"),
    ("dds-fleet003", "cn-hangzhou"),
    ("dds-fleet004", "cn-hangzhou"),
    ("dds-fleet005", "cn-hangzhou"),
];
const FLEET: usize = 6;
const VERSIONS: &[&str] = &["4.0", "4.2", "4.4", "5.0", "6.0", "7.0", "8.0"];
const REPLICAS: usize = 3;
const CLIENTS: usize = 12;

fn later(version: &str, steps: usize) -> Option<&'static str> {
    let at = VERSIONS.iter().position(|v| *v == version)?;
    VERSIONS.get(at + steps).copied()
}

fn rng(seed: u64, stream: u64) -> TestRng {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&stream.to_le_bytes());
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// One replica's place: its process now, and every audit file it wrote, each marked with
/// whether that incarnation was killed (its last `sending` may have no outcome).
struct Slot {
    process: Option<ServingBinary>,
    addr: Option<String>,
    stopped: bool,
    incarnations: Vec<(PathBuf, bool)>,
}

struct Cluster {
    sandbox: Sandbox,
    redis: RedisServer,
    clock: ClockSkew,
    dir: tempfile::TempDir,
    slots: Vec<Mutex<Slot>>,
}

impl Cluster {
    async fn start_replica(&self, index: usize) {
        let audit = {
            let slot = self.slots[index].lock().unwrap();
            self.dir
                .path()
                .join(format!("audit-{index}-{}.jsonl", slot.incarnations.len()))
        };
        let endpoint = self.sandbox.endpoint().to_string();
        let url = self.redis.url();
        let audit_file = audit.to_str().unwrap().to_string();
        let process = ServingBinary::start(
            &["serve", "--listen", "127.0.0.1:0"],
            &[
                ("RUST_LOG", "info"),
                ("ALIBABA_CLOUD_ACCESS_KEY_ID", "testid"),
                ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "testsecret"),
                ("DDS_GATEWAY_ALIBABA_ENDPOINT", &endpoint),
                ("DDS_GATEWAY_ALIBABA_READ_TIMEOUT", "15s"),
                ("DDS_GATEWAY_SERVER_SHUTDOWN_GRACE", "20s"),
                ("DDS_GATEWAY_STATE_STORE", "redis"),
                ("DDS_GATEWAY_STATE_REDIS_URL", &url),
                ("DDS_GATEWAY_STATE_LEASE", "2s"),
                // Longer than the run: a key whose outcome is unknown is never sent again, so
                // a second upgrade call for a key is always a fault of the gateway.
                ("DDS_GATEWAY_IDEMPOTENCY_SETTLE_WINDOW", "10m"),
                ("DDS_GATEWAY_AUDIT_FILE", &audit_file),
            ],
        )
        .await;
        let mut slot = self.slots[index].lock().unwrap();
        slot.addr = Some(process.addr.clone());
        slot.process = Some(process);
        slot.stopped = false;
        slot.incarnations.push((audit, false));
    }

    fn live_addr(&self, pick: usize) -> Option<String> {
        (0..REPLICAS)
            .map(|i| (pick + i) % REPLICAS)
            .find_map(|i| self.slots[i].lock().unwrap().addr.clone())
    }

    fn pid(&self, index: usize) -> Option<u32> {
        let slot = self.slots[index].lock().unwrap();
        slot.process.as_ref().and_then(|p| p.process.id())
    }
}

async fn signal(pid: u32, name: &str) {
    let status = tokio::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Sends one command to Redis on a connection of its own and waits for its answer (a
/// `DEBUG SLEEP` answers when it has slept); an error answer fails the test, so that a fault
/// Redis refused is never reported as injected.
async fn redis_command(port: u16, args: &[&str]) {
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut command = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{PASSWORD}\r\n", PASSWORD.len());
    command.push_str(&format!("*{}\r\n", args.len()));
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    socket.write_all(command.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    while answer.iter().filter(|b| **b == b'\n').count() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut buf))
            .await
            .expect("redis answers")
            .unwrap();
        assert!(n > 0, "redis closed the connection");
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.lines().all(|line| !line.starts_with('-')),
        "redis refused {args:?}: {answer}"
    );
}

/// What the clients heard, by gRPC code.
type Heard = Arc<Mutex<BTreeMap<String, usize>>>;

/// The key of each (instance, target) pair: every client retrying that upgrade reuses it.
type Keys = Arc<Mutex<HashMap<(String, String), String>>>;

async fn client_loop(
    cluster: Arc<Cluster>,
    seed: u64,
    index: u64,
    keys: Keys,
    heard: Heard,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut rng = rng(seed, 1000 + index);
    while !*stop.borrow() {
        let (id, region) = INSTANCES[rng.random_range(0..INSTANCES.len())];
        let Some(now) = cluster.sandbox.instance(id).map(|i| i.engine_version) else {
            continue;
        };
        // Mostly the next version; sometimes one further, which races on the instance's lock.
        let steps = if rng.random_bool(0.2) { 2 } else { 1 };
        let Some(target) = later(&now, steps) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let key = {
            let mut keys = keys.lock().unwrap();
            let fresh = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
            keys.entry((id.to_string(), target.to_string()))
                .or_insert_with(|| fresh.to_string())
                .clone()
        };
        let Some(addr) = cluster.live_addr(rng.random_range(0..REPLICAS)) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let request = pb::UpgradeEngineVersionRequest {
            db_instance_id: id.to_string(),
            engine_version: target.to_string(),
            region_id: region.to_string(),
            request_id: key,
            ..Default::default()
        };
        let code = tokio::time::timeout(Duration::from_secs(3), async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_timeout(Duration::from_secs(1))
                .connect()
                .await;
            match channel {
                Ok(channel) => match EngineVersionServiceClient::new(channel)
                    .upgrade_engine_version(request)
                    .await
                {
                    Ok(_) => "OK".to_string(),
                    Err(status) => format!("{:?}", status.code()),
                },
                Err(_) => "connect failed".to_string(),
            }
        })
        .await
        .unwrap_or_else(|_| "client timeout".to_string());
        *heard.lock().unwrap().entry(code).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..200))).await;
    }
}

/// Injects one fault after another until `stop`; returns what it did, in order.
async fn scheduler(
    cluster: Arc<Cluster>,
    seed: u64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<String> {
    let mut rng = rng(seed, 0);
    let mut done = Vec::new();
    let mut background = Vec::new();
    while !*stop.borrow() {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1200))).await;
        let what = match rng.random_range(0..9) {
            0 => {
                cluster
                    .sandbox
                    .push_fault_on(UPGRADE, Fault::AfterActing(Box::new(Fault::Drop)));
                "an upgrade's answer lost after acting".to_string()
            }
            1 => {
                let ms = rng.random_range(500..6000);
                cluster
                    .sandbox
                    .push_fault_on(UPGRADE, Fault::Delay(Duration::from_millis(ms)));
                format!("the next upgrade answered after {ms} ms")
            }
            2 => {
                let ms = rng.random_range(0..3000);
                cluster.sandbox.lag_status(Duration::from_millis(ms));
                format!("status lags {ms} ms")
            }
            3 => {
                let seconds = format!("{:.1}", rng.random_range(3..30) as f64 / 10.0);
                let port = cluster.redis.port;
                let text = format!("redis DEBUG SLEEP {seconds}");
                background.push(tokio::spawn(async move {
                    redis_command(port, &["DEBUG", "SLEEP", &seconds]).await;
                }));
                text
            }
            4 => {
                let ms = rng.random_range(300..3000).to_string();
                redis_command(cluster.redis.port, &["CLIENT", "PAUSE", &ms, "ALL"]).await;
                format!("redis CLIENT PAUSE {ms} ALL")
            }
            5 => {
                // Mostly behind (a lagging replica promoted, an NTP step back), sometimes a
                // little ahead; each step is from true time, so the clock also jumps back.
                let ms = rng.random_range(-8000..1500);
                cluster.clock.set(ms);
                format!("redis clock set {ms:+} ms from true time")
            }
            6 | 7 => {
                let index = rng.random_range(0..REPLICAS);
                let ms = rng.random_range(500..4000);
                let Some(pid) = cluster.pid(index) else {
                    continue;
                };
                if std::mem::replace(&mut cluster.slots[index].lock().unwrap().stopped, true) {
                    continue;
                }
                signal(pid, "STOP").await;
                let cluster = Arc::clone(&cluster);
                background.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    signal(pid, "CONT").await;
                    cluster.slots[index].lock().unwrap().stopped = false;
                }));
                format!("replica {index} frozen {ms} ms")
            }
            _ => {
                let index = rng.random_range(0..REPLICAS);
                let others_live = (0..REPLICAS)
                    .filter(|i| *i != index)
                    .any(|i| cluster.slots[i].lock().unwrap().addr.is_some());
                let process = {
                    let mut slot = cluster.slots[index].lock().unwrap();
                    if !others_live || slot.stopped {
                        continue;
                    }
                    slot.addr = None;
                    if let Some(last) = slot.incarnations.last_mut() {
                        last.1 = true;
                    }
                    slot.process.take()
                };
                let Some(mut process) = process else {
                    continue;
                };
                process.process.kill().await.unwrap();
                let ms = rng.random_range(200..1500);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                cluster.start_replica(index).await;
                format!("replica {index} killed, back after {ms} ms")
            }
        };
        done.push(what);
    }
    for task in background {
        task.await.unwrap();
    }
    done
}

#[derive(serde::Deserialize)]
struct AuditLine {
    db_instance_id: String,
    to_version: String,
    outcome: String,
    request_id: String,
}

fn read_audit(path: &PathBuf) -> Vec<AuditLine> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("torn audit line {line:?}: {e}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_never_cost_a_second_upgrade_or_an_audit_line() {
    let seed = std::env::var("DDS_FAULTS_SEED")
        .ok()
        .map(|s| s.parse().expect("DDS_FAULTS_SEED is a number"))
        .unwrap_or_else(rand_seed);
    let seconds: u64 = std::env::var("DDS_FAULTS_SECONDS")
        .ok()
        .map(|s| s.parse().expect("DDS_FAULTS_SECONDS is a number"))
        .unwrap_or(12);
    println!("fault test: DDS_FAULTS_SEED={seed} DDS_FAULTS_SECONDS={seconds}");

    let sandbox = Sandbox::start(SandboxConfig {
        upgrade_duration: Duration::from_millis(1500),
        fleet: FleetSpec {
            count: FLEET,
            engine_versions: vec!["4.2".to_string()],
            upgrade_time: Duration::from_millis(1500),
            ..FleetSpec::default()
        },
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let clock = ClockSkew::new();
    let redis = RedisServer::start_skewed(&clock).await;
    // The clock the scripts read is the one the test steps.
    let true_now = redis.now_ms().await;
    clock.set(-60_000);
    let skewed = redis.now_ms().await;
    assert!(
        (true_now - skewed - 60_000).abs() < 5_000,
        "redis's clock did not follow the skew: {true_now} then {skewed}"
    );
    clock.set(0);
    let cluster = Arc::new(Cluster {
        sandbox,
        redis,
        clock,
        dir: tempfile::tempdir().unwrap(),
        slots: (0..REPLICAS)
            .map(|_| {
                Mutex::new(Slot {
                    process: None,
                    addr: None,
                    stopped: false,
                    incarnations: Vec::new(),
                })
            })
            .collect(),
    });
    for index in 0..REPLICAS {
        cluster.start_replica(index).await;
    }

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let keys = Keys::default();
    let heard = Heard::default();
    let clients: Vec<_> = (0..CLIENTS as u64)
        .map(|i| {
            tokio::spawn(client_loop(
                Arc::clone(&cluster),
                seed,
                i,
                Arc::clone(&keys),
                Arc::clone(&heard),
                stopped.clone(),
            ))
        })
        .collect();
    let faults = tokio::spawn(scheduler(Arc::clone(&cluster), seed, stopped.clone()));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.send(true).unwrap();
    for client in clients {
        client.await.unwrap();
    }
    let faults = faults.await.unwrap();

    // Quiet again: the view catches up, every call the sandbox holds is answered, then each
    // replica stops as Kubernetes stops it (SIGTERM, drain within the shutdown grace).
    cluster.sandbox.lag_status(Duration::ZERO);
    common::eventually("every upgrade call is answered", || async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cluster
            .sandbox
            .upgrade_calls()
            .iter()
            .all(|call| call.ended_at.is_some())
    })
    .await;
    for index in 0..REPLICAS {
        let process = cluster.slots[index].lock().unwrap().process.take();
        if let Some(mut process) = process {
            signal(process.process.id().unwrap(), "TERM").await;
            let exit = tokio::time::timeout(Duration::from_secs(30), process.process.wait())
                .await
                .expect("a replica drains within its shutdown grace")
                .unwrap();
            assert!(exit.success(), "replica {index} exited {exit:?}");
        }
    }

    let calls = cluster.sandbox.upgrade_calls();
    let report = format!(
        "seed {seed}, {seconds} s: faults {faults:#?}\nclients heard {:?}\nupgrade calls {calls:#?}",
        heard.lock().unwrap()
    );
    println!("{report}");
    assert!(
        calls.iter().any(|c| c.started),
        "the run upgraded something: {report}"
    );

    // At most one upgrade per key, i.e. per (instance, target): a key is sent again only after
    // Alibaba refused it and the gateway heard the refusal (it provably did nothing).
    let mut maybe_done: BTreeMap<(&str, &str), &UpgradeCall> = BTreeMap::new();
    for call in &calls {
        let pair = (call.db_instance_id.as_str(), call.engine_version.as_str());
        if let Some(earlier) = maybe_done.get(&pair) {
            panic!("{pair:?} sent again after {earlier:?}: {call:?}\n{report}");
        }
        let refused = !call.started && call.answered.is_some_and(|status| status >= 400);
        if !refused {
            maybe_done.insert(pair, call);
        }
    }

    // At most one upgrade call in flight per instance.
    for (i, a) in calls.iter().enumerate() {
        for b in &calls[i + 1..] {
            if a.db_instance_id == b.db_instance_id {
                let a_end = a.ended_at.unwrap();
                assert!(
                    b.received_at >= a_end,
                    "two upgrades of {} in flight at once: {a:?} and {b:?}\n{report}",
                    a.db_instance_id
                );
            }
        }
    }

    // Every call has its `sending` line; every `sending` of a replica that was not killed has
    // its outcome after it, in the same file.
    let mut sending = Vec::new();
    for slot in &cluster.slots {
        for (path, killed) in &slot.lock().unwrap().incarnations {
            let lines = read_audit(path);
            for (at, line) in lines.iter().enumerate() {
                if line.outcome != "sending" {
                    continue;
                }
                sending.push((line.db_instance_id.clone(), line.to_version.clone()));
                let answered = lines[at + 1..]
                    .iter()
                    .any(|l| l.request_id == line.request_id && l.outcome != "sending");
                assert!(
                    *killed || answered,
                    "{path:?}: `sending` for {} without its outcome\n{report}",
                    line.request_id
                );
            }
        }
    }
    for call in &calls {
        assert!(
            sending.contains(&(call.db_instance_id.clone(), call.engine_version.clone())),
            "an upgrade call without its `sending` line: {call:?}\n{report}"
        );
    }
}

fn rand_seed() -> u64 {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    u64::from_le_bytes(bytes[..8].try_into().unwrap())
}
