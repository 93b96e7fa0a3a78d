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

    /// The commands the gateway sent between two marks: not run inside a script (`lua`), not
    /// the health check's `PING`, not the test's own.
    fn sent_between(&self, from: usize, to: usize) -> Vec<String> {
        self.lines.lock().unwrap()[from + 1..to]
            .iter()
            .filter(|l| !l.contains(" lua] "))
            .filter(|l| !l.contains("\"PING\""))
            .filter(|l| !l.contains("\"ECHO\"") && !l.contains("\"ZCARD\""))
            .cloned()
            .collect()
    }
}

/// The account quota's commands (its keys carry the `{quota}` tag).
fn quota(commands: &[String]) -> usize {
    commands.iter().filter(|c| c.contains("{quota}")).count()
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

/// Waits until the quota's place of the last call is given back (its release is sent in the
/// background once the answer is in).
async fn quota_places_given_back(redis: &RedisServer) {
    let key = "dds-gateway:{quota}:cn-hangzhou:holders";
    common::eventually("the quota place is given back", || async {
        matches!(redis.command(&["ZCARD", key]).await, redis::Value::Int(0))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_idempotent_upgrade_takes_three_round_trips_and_a_replay_one() {
    let redis = RedisServer::start().await;
    let gateway = gateway(&redis).await;
    let monitor = Monitor::start(&redis).await;
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
    quota_places_given_back(&redis).await;

    let key = uuid::Uuid::new_v4().to_string();
    let start = monitor.mark(&redis, "first-upgrade").await;
    let first = gateway
        .upgrade(keyed("dds-sandbox02", "5.0", &key))
        .await
        .unwrap();
    quota_places_given_back(&redis).await;
    let end = monitor.mark(&redis, "first-upgrade-done").await;
    let sent = monitor.sent_between(start, end);
    let store = sent.len() - quota(&sent);
    assert_eq!(
        store, 3,
        "claim and lock, the send mark, settle and unlock: {sent:#?}"
    );
    assert_eq!(
        quota(&sent),
        2,
        "the quota's take and return for the one upstream call: {sent:#?}"
    );

    let start = monitor.mark(&redis, "replay").await;
    let replayed = gateway
        .upgrade(keyed("dds-sandbox02", "5.0", &key))
        .await
        .unwrap();
    let end = monitor.mark(&redis, "replay-done").await;
    assert_eq!(replayed, first);
    let sent = monitor.sent_between(start, end);
    assert_eq!(sent.len(), 1, "a replay is one round trip: {sent:#?}");
}
