//! Round trips to Redis per idempotent upgrade (issue 21): the commands a gateway on a real
//! `redis-server` sends for one first upgrade and for one replay, read from `MONITOR` (a
//! command a script runs inside is marked `lua` there and is not a round trip). Counts, not
//! times: a change that adds a round trip fails here.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::{Arc, Mutex};

use common::redis::{PASSWORD, RedisServer};
use common::{Gateway, wait_until};
use dds_gateway::testing::sandbox::SandboxConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// What `MONITOR` has shown so far, one command per line.
#[derive(Clone, Default)]
struct Monitor {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Monitor {
    async fn start(redis: &RedisServer) -> Self {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
            .await
            .unwrap();
        socket
            .write_all(format!("AUTH {PASSWORD}\r\nMONITOR\r\n").as_bytes())
            .await
            .unwrap();
        let monitor = Self::default();
        let lines = Arc::clone(&monitor.lines);
        let mut reader = BufReader::new(socket).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().unwrap().push(line);
            }
        });
        // MONITOR answers +OK twice (AUTH, MONITOR) before the first command it shows.
        wait_until("MONITOR is on", || monitor.lines.lock().unwrap().len() >= 2).await;
        monitor
    }

    /// Marks the stream with `ECHO text` from another connection and waits until it shows.
    async fn mark(&self, redis: &RedisServer, text: &str) -> usize {
        redis.command(&["ECHO", text]).await;
        let needle = format!("\"ECHO\" \"{text}\"");
        wait_until("the mark shows in MONITOR", || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(&needle))
        })
        .await;
        let lines = self.lines.lock().unwrap();
        lines.iter().position(|l| l.contains(&needle)).unwrap()
    }

    /// The round trips the gateway made between two marks: its commands (from `client`, its
    /// connection), not those run inside a script (`lua`), not the health check's `PING`, and a
    /// transaction (`MULTI` … `EXEC`, sent as one pipeline) as one.
    fn round_trips_between(&self, client: &str, from: usize, to: usize) -> Vec<String> {
        let mut trips = Vec::new();
        let mut in_transaction = false;
        for line in &self.lines.lock().unwrap()[from + 1..to] {
            if !line.contains(&format!("[{client}]")) || line.contains("\"PING\"") {
                continue;
            }
            if line.contains("\"MULTI\"") {
                in_transaction = true;
                trips.push(line.clone());
            } else if line.contains("\"EXEC\"") {
                in_transaction = false;
            } else if !in_transaction {
                trips.push(line.clone());
            }
        }
        trips
    }

    /// The gateway's connection (`0 127.0.0.1:port`), the one that ran the first script.
    fn gateway_client(&self) -> String {
        let lines = self.lines.lock().unwrap();
        let line = lines
            .iter()
            .find(|l| l.contains("\"EVALSHA\"") || l.contains("\"EVAL\""))
            .expect("the gateway ran a script");
        let open = line.find('[').unwrap();
        let close = line.find(']').unwrap();
        line[open + 1..close].to_string()
    }
}

/// The round trips on keys of `tag` (`quota`: the account quota; `activity`: the console's
/// list of recent activity).
fn on(tag: &str, trips: &[String]) -> usize {
    trips
        .iter()
        .filter(|c| {
            c.contains(&format!("{{{tag}}}")) || (tag == "activity" && c.contains("\"MULTI\""))
        })
        .count()
}

async fn gateway(redis: &RedisServer) -> Gateway {
    // Preflight off: the upgrade is the one call to the upstream.
    Gateway::from_toml(
        SandboxConfig::default(),
        &format!(
            "preflight = false\n[state]\nstore = \"redis\"\nredis_url = \"{}\"\n",
            redis.url()
        ),
    )
    .await
}

fn keyed(instance: &str, version: &str, key: &str) -> dds_gateway::pb::UpgradeEngineVersionRequest {
    dds_gateway::pb::UpgradeEngineVersionRequest {
        request_id: key.to_string(),
        ..common::request(instance, version)
    }
}

/// Waits until what the gateway does in the background after an answer is done: the quota's
/// place given back, and the console's list holding `entries`.
async fn background_done(redis: &RedisServer, entries: i64) {
    let holders = "dds-gateway:{quota}:cn-hangzhou:holders";
    let recent = "dds-gateway:{activity}:recent";
    common::eventually("the quota place is given back, the activity kept", || async {
        matches!(redis.command(&["ZCARD", holders]).await, redis::Value::Int(0))
            && matches!(redis.command(&["LLEN", recent]).await, redis::Value::Int(n) if n == entries)
    })
    .await;
}

/// Claim and lock, the quota's take, the send mark, and settle and unlock with the quota's
/// place given back in the same script.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_idempotent_upgrade_takes_four_round_trips_and_a_replay_one() {
    let redis = RedisServer::start().await;
    round_trips(&redis, 4, false).await;
}

/// A cluster refuses scripts on several slots: once told, the store sends one single-slot
/// script per step (six), and never the refused scripts again; the quota's take and its
/// return (a `ZREM` of its own) are two more.
#[tokio::test(flavor = "multi_thread")]
async fn on_a_cluster_each_step_is_a_round_trip_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start_cluster(dir.path()).await;
    round_trips(&redis, 8, true).await;
}

/// Counts the round trips of a warm first upgrade (`trips` on the state store's and the
/// quota's keys, `zrem`: whether the quota's place goes back in a round trip of its own) and
/// of its replay (one).
async fn round_trips(redis: &RedisServer, expected: usize, zrem: bool) {
    let gateway = gateway(redis).await;
    let monitor = Monitor::start(redis).await;
    // Warm: the scripts are loaded and the connection is open.
    let warm = uuid::Uuid::new_v4().to_string();
    gateway
        .upgrade(keyed("dds-sandbox01", "4.4", &warm))
        .await
        .unwrap();
    gateway
        .upgrade(keyed("dds-sandbox01", "4.4", &warm))
        .await
        .unwrap();
    background_done(redis, 2).await;
    let gateway_client = monitor.gateway_client();

    let key = uuid::Uuid::new_v4().to_string();
    let start = monitor.mark(redis, "first-upgrade").await;
    let first = gateway
        .upgrade(keyed("dds-sandbox02", "5.0", &key))
        .await
        .unwrap();
    background_done(redis, 3).await;
    let end = monitor.mark(redis, "first-upgrade-done").await;
    let trips = monitor.round_trips_between(&gateway_client, start, end);
    let activity = on("activity", &trips);
    assert_eq!(
        trips.len() - activity,
        expected,
        "claim and lock, the quota's take, the send mark, settle and unlock and the quota's return: {trips:#?}"
    );
    let own_zrem = trips.iter().filter(|c| c.contains("\"ZREM\"")).count();
    assert_eq!(
        own_zrem,
        usize::from(zrem),
        "the quota's place goes back with the settlement unless the server refuses several slots: {trips:#?}"
    );
    assert_eq!(
        activity, 1,
        "the console's list, after the answer: {trips:#?}"
    );

    let start = monitor.mark(redis, "replay").await;
    let replayed = gateway
        .upgrade(keyed("dds-sandbox02", "5.0", &key))
        .await
        .unwrap();
    background_done(redis, 4).await;
    let end = monitor.mark(redis, "replay-done").await;
    assert_eq!(replayed, first);
    let trips = monitor.round_trips_between(&gateway_client, start, end);
    let activity = on("activity", &trips);
    assert_eq!(
        activity, 1,
        "the console's list, after the answer: {trips:#?}"
    );
    assert_eq!(
        trips.len() - activity,
        1,
        "a replay is one round trip: {trips:#?}"
    );
}
