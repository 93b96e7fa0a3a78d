//! A loopback-only simulation of the Dds API (2015-12-01) for trying the gateway without a cloud
//! account, and for the integration tests. It verifies signatures V2 and V3 (chosen, as Alibaba
//! does, by an `Authorization: ACS3-...` header) exactly as Alibaba Cloud does
//! (`SignatureDoesNotMatch`, `SignatureNonceUsed`, `InvalidTimeStamp.*`, unknown keys, STS tokens),
//! keeps a few demo instances and an optional generated fleet ([`FleetSpec`]: versions, both
//! instance types, tags, resource groups, regions, lock modes, failures by id pattern)
//! (`Running` → `EngineVersionUpgrading` → `Running` on the new version), and answers
//! `UpgradeDBInstanceEngineVersion`, `DescribeDBInstanceAttribute`,
//! `DescribeAvailableEngineVersion` and `DescribeDBInstances` (filters, pages) with Alibaba's
//! shapes and error codes. Faults can be queued
//! (for any request or one action): error answers with `x-acs-retry-after`, raw bodies, delays,
//! dropped connections, and any of those after acting on the request. Its status can also lag
//! its own action, as Alibaba's does: for a while after an accepted upgrade,
//! `DescribeDBInstanceAttribute` still shows the instance as it was ([`Sandbox::lag_status`]).
//!
//! One file per concern, each importing only those below it: `listener` (reads, records and
//! routes requests) over `faults`, `signature` and `dds`, over `fleet`, `request`, `answer` and
//! `connection`.

mod answer;
mod connection;
mod dds;
mod faults;
mod fleet;
mod listener;
mod request;
mod signature;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::alibaba::credentials::{Credential, Secret};
pub use dds::Instance;
pub use faults::Fault;
pub use fleet::{Failure, FailureRule, FleetSpec};
pub use listener::UpgradeCall;
use listener::{SandboxState, Shared, lock};
pub use request::Received;
use signature::Verifier;

/// The sandbox's AccessKey ID: obviously fake, accepted only by the sandbox.
pub const ACCESS_KEY_ID: &str = "testid";
/// The sandbox's AccessKey secret.
pub const ACCESS_KEY_SECRET: &str = "testsecret";

/// Settings of a sandbox.
#[derive(Clone)]
pub struct SandboxConfig {
    /// How long an upgrade keeps an instance in `EngineVersionUpgrading`.
    pub upgrade_duration: Duration,
    /// The STS security token the sandbox's credential must carry, if any.
    pub security_token: Option<String>,
    /// More AccessKeys accepted besides `testid` (e.g. ones an STS double issued), each with
    /// the security token it must be sent with, if any. Same-id entries replace `testid`.
    pub extra_keys: Vec<Credential>,
    /// Generated instances besides the demo ones (none by default).
    pub fleet: FleetSpec,
}

impl std::fmt::Debug for SandboxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxConfig")
            .field("upgrade_duration", &self.upgrade_duration)
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "***"),
            )
            .field("extra_keys", &self.extra_keys)
            .field("fleet", &self.fleet)
            .finish()
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            upgrade_duration: Duration::from_secs(20),
            security_token: None,
            extra_keys: Vec::new(),
            fleet: FleetSpec::default(),
        }
    }
}

/// A running sandbox; stops when dropped.
pub struct Sandbox {
    addr: SocketAddr,
    endpoint: reqwest::Url,
    credential: Credential,
    state: Shared,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

// Only the address: the state holds received requests, with their signatures and tokens.
impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sandbox {
    /// Starts a sandbox on an ephemeral loopback port.
    pub async fn start(config: SandboxConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let endpoint =
            reqwest::Url::parse(&format!("http://{addr}/")).map_err(std::io::Error::other)?;
        let credential = Credential::new(
            ACCESS_KEY_ID,
            Secret::new(ACCESS_KEY_SECRET),
            config.security_token.clone().map(Secret::new),
            None,
            "sandbox",
        );
        let state = Arc::new(Mutex::new(SandboxState {
            verifier: Verifier::new(
                std::iter::once(credential.clone()).chain(config.extra_keys.iter().cloned()),
            ),
            dds: dds::Dds::new(config.upgrade_duration, config.fleet.clone()),
            faults: faults::FaultQueue::default(),
            received: Vec::new(),
            in_flight: 0,
            peak_in_flight: 0,
            upgrade_calls: Vec::new(),
        }));
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = listener::spawn(listener, Arc::clone(&state), Arc::clone(&accepted));
        tracing::info!(%addr, "sandbox Dds API listening (loopback only)");
        Ok(Self {
            addr,
            endpoint,
            credential,
            state,
            accepted,
            task,
        })
    }

    /// The endpoint URL to configure as `alibaba.endpoint`.
    pub fn endpoint(&self) -> reqwest::Url {
        self.endpoint.clone()
    }

    /// The sandbox's own credential (`testid`, with `SandboxConfig::security_token`).
    pub fn credential(&self) -> Credential {
        self.credential.clone()
    }

    /// Queues an answer for the next request.
    pub fn push_fault(&self, fault: Fault) {
        lock(&self.state).faults.push(None, fault);
    }

    /// Queues an answer for the next request that names `action`; others pass it by.
    pub fn push_fault_on(&self, action: &'static str, fault: Fault) {
        lock(&self.state).faults.push(Some(action), fault);
    }

    /// From now on, `DescribeDBInstanceAttribute` shows an instance as it was before an accepted
    /// upgrade for `lag` after it: `Running` on the old version although the upgrade is under way.
    /// `Duration::ZERO` ends every lag at once: the view catches up.
    pub fn lag_status(&self, lag: Duration) {
        lock(&self.state).dds.lag_status(lag);
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state).received.clone()
    }

    /// How many requests named `action`.
    pub fn calls(&self, action: &str) -> usize {
        lock(&self.state)
            .received
            .iter()
            .filter(|r| r.action == action)
            .count()
    }

    /// How many upgrades of `id` the sandbox started (acted on, whatever the client heard).
    pub fn upgrades_started(&self, id: &str) -> usize {
        lock(&self.state).dds.upgrades_started(id)
    }

    /// Every upgrade call so far, in the order they arrived.
    pub fn upgrade_calls(&self) -> Vec<UpgradeCall> {
        lock(&self.state).upgrade_calls.clone()
    }

    /// An instance as it is now.
    pub fn instance(&self, id: &str) -> Option<Instance> {
        lock(&self.state).dds.instance(id)
    }

    /// Every instance as it is now (demo and fleet), by id.
    pub fn instances(&self) -> Vec<Instance> {
        lock(&self.state).dds.instances()
    }

    /// Sets an instance's `LockMode` (`ManualLock`, `Unlock`, …); false if there is no such
    /// instance.
    pub fn set_lock_mode(&self, id: &str, lock_mode: &str) -> bool {
        lock(&self.state).dds.set_lock_mode(id, lock_mode)
    }

    /// The TCP connections the sandbox has accepted: a client that reuses its connections opens
    /// far fewer than it sends requests.
    pub fn connections_accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The most requests the sandbox was answering at one time (from arrival to answer).
    pub fn peak_in_flight(&self) -> usize {
        lock(&self.state).peak_in_flight
    }

    /// The most requests naming `action` (any action when `None`) that arrived within any
    /// window of `window`: what a rate limit in front of the sandbox let through.
    pub fn peak_rate(&self, action: Option<&str>, window: Duration) -> usize {
        let state = lock(&self.state);
        let times: Vec<tokio::time::Instant> = state
            .received
            .iter()
            .filter(|r| action.is_none_or(|a| r.action == a))
            .map(|r| r.at)
            .collect();
        // `received` is in arrival order: slide a window over it.
        let mut start = 0;
        let mut peak = 0;
        for (end, at) in times.iter().enumerate() {
            while *at - times[start] >= window {
                start += 1;
            }
            peak = peak.max(end + 1 - start);
        }
        peak
    }
}
