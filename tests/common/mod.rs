//! Shared test harness: the gateway on an ephemeral loopback port in front of a sandbox (a real
//! HTTP server that verifies signatures), plus a connected client, condition waits, `ErrorInfo`
//! checks and the `dds-gateway` binary run as a child process. Its modules:
//! - `callers`: two `[[callers]]` known by bearer tokens, and gRPC calls made with a token;
//! - `fake_cloud`: fake STS, ECS metadata and credentials URI servers, and scratch files;
//! - `http_client`: HTTP/1.1, HTTP/2 and raw-bytes clients of the JSON routes;
//! - `otlp`: in-process OTLP receivers (traces over gRPC and http/protobuf, metrics over gRPC);
//! - `pki`: a CA and certificates (rcgen) for TLS and mTLS;
//! - `redis`: a real `redis-server`, plain or TLS;
//! - `rollouts`: a rollout read back, and a wait on its state;
//! - `traced`: the gateway with a telemetry pipeline of its own.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod callers;
pub mod clock_skew;
pub mod fake_cloud;
pub mod http_client;
pub mod otlp;
pub mod pki;
pub mod redis;
pub mod rollouts;
pub mod traced;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dds_gateway::pb;
use dds_gateway::pb::engine_version_service_client::EngineVersionServiceClient;
use dds_gateway::testing::alibaba::credentials::{Credential, CredentialsProvider, StaticProvider};
use dds_gateway::testing::config::{Config, Overrides, SignatureVersion};
use dds_gateway::testing::sandbox::{Sandbox, SandboxConfig};
use dds_gateway::testing::server::{self, ServeError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

pub struct Gateway {
    pub sandbox: Sandbox,
    pub addr: SocketAddr,
    pub client: EngineVersionServiceClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

/// Options for [`Gateway::start_with`].
#[derive(Default)]
pub struct Options {
    pub sandbox: SandboxConfig,
    /// Signs with this credential instead of the sandbox's own.
    pub credential: Option<Credential>,
    /// Sends upstream calls here instead of the sandbox.
    pub endpoint: Option<String>,
    /// Changes the configuration before the gateway starts (preflight, retries, watch...).
    pub configure: Option<fn(&mut Config)>,
    /// `alibaba.signature_version`; the default's (V2) when `None`.
    pub signature_version: Option<SignatureVersion>,
}

impl Gateway {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        let sandbox = Sandbox::start(options.sandbox).await.unwrap();
        let mut config = default_config();
        config.alibaba.endpoint = Some(match options.endpoint {
            Some(url) => url.parse().unwrap(),
            None => sandbox.endpoint(),
        });
        if let Some(configure) = options.configure {
            configure(&mut config);
        }
        if let Some(version) = options.signature_version {
            config.alibaba.signature_version = version;
        }
        let credential = options.credential.unwrap_or_else(|| sandbox.credential());
        Self::serve(config, Arc::new(StaticProvider::new(credential)), sandbox).await
    }

    /// Serves the configuration `toml` in front of a sandbox started with `sandbox`. `toml` follows
    /// an `[alibaba]` table that points at the sandbox, so it may begin with more `[alibaba]` keys.
    pub async fn from_toml(sandbox: SandboxConfig, toml: &str) -> Self {
        let sandbox = Sandbox::start(sandbox).await.unwrap();
        let toml = format!("[alibaba]\nendpoint = \"{}\"\n{toml}", sandbox.endpoint());
        let config = Config::from_toml(&toml, "test", |_| None, &Overrides::default()).unwrap();
        let credentials = credentials_of(&sandbox);
        Self::serve(config, credentials, sandbox).await
    }

    /// Serves exactly `config` (no endpoint override) with `credentials`.
    pub async fn serve(
        config: Config,
        credentials: Arc<dyn CredentialsProvider>,
        sandbox: Sandbox,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(config, credentials, listener, async {
            let _ = stopped.await;
        }));
        // Lazy: a gateway serving TLS cannot be reached over this plaintext channel.
        let client = EngineVersionServiceClient::new(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_lazy(),
        );
        Self {
            sandbox,
            addr,
            client,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Signals shutdown and waits for the server to finish.
    pub async fn shutdown(&mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().unwrap().await.unwrap()
    }

    pub fn stop_signal(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn upgrade(
        &self,
        request: pb::UpgradeEngineVersionRequest,
    ) -> Result<pb::UpgradeEngineVersionResponse, tonic::Status> {
        self.client
            .clone()
            .upgrade_engine_version(request)
            .await
            .map(tonic::Response::into_inner)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The configuration with every default (no endpoint: the endpoint table decides).
pub fn default_config() -> Config {
    Config::from_toml("", "test", |_| None, &Overrides::default()).unwrap()
}

/// A provider of the sandbox's own credential.
pub fn credentials_of(sandbox: &Sandbox) -> Arc<dyn CredentialsProvider> {
    Arc::new(StaticProvider::new(sandbox.credential()))
}

/// A client channel to the gateway; the server is already listening, so this connects at once.
pub async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

pub fn request(instance: &str, version: &str) -> pb::UpgradeEngineVersionRequest {
    pb::UpgradeEngineVersionRequest {
        db_instance_id: instance.to_string(),
        engine_version: version.to_string(),
        ..Default::default()
    }
}

/// Sends `request` from a task of its own and returns once the sandbox has received a call, so
/// that the upgrade is in flight while the test goes on (it has made the sandbox slow to answer).
pub async fn upgrade_in_flight(
    mut client: EngineVersionServiceClient<Channel>,
    sandbox: &Sandbox,
    request: pb::UpgradeEngineVersionRequest,
) -> JoinHandle<Result<tonic::Response<pb::UpgradeEngineVersionResponse>, tonic::Status>> {
    let in_flight = tokio::spawn(async move { client.upgrade_engine_version(request).await });
    wait_until("the call reaches the upstream", || {
        !sandbox.received().is_empty()
    })
    .await;
    in_flight
}

/// Asserts that `status` has `code` and an `ErrorInfo` of domain `dds-gateway` with `reason`;
/// returns the `ErrorInfo`'s metadata.
pub fn assert_error(
    status: &tonic::Status,
    code: tonic::Code,
    reason: &str,
) -> HashMap<String, String> {
    assert_eq!(status.code(), code, "{status:?}");
    let info = status
        .get_details_error_info()
        .expect("every error carries ErrorInfo");
    assert_eq!(info.domain, "dds-gateway");
    assert_eq!(info.reason, reason, "{status:?}");
    info.metadata
}

/// Waits until `condition` holds, checking often, failing after five seconds.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until an asynchronous `condition` holds (a call is answered...), failing after ten
/// seconds.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the `dds-gateway` binary with only `PATH` and `env` set; returns its exit code, stdout and
/// stderr.
pub async fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dds-gateway"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .args(args)
        .output()
        .await
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// The address in the gateway's "listening" log line (JSON, the default log format), or `None`
/// for any other line.
pub fn listening_addr(line: &str) -> Option<String> {
    if !line.contains("dds-gateway listening") {
        return None;
    }
    let log: serde_json::Value = serde_json::from_str(line).ok()?;
    log["local"].as_str().map(str::to_string)
}

/// The `dds-gateway` binary serving in a child process (killed when dropped), started with only
/// `PATH` and the given environment.
pub struct ServingBinary {
    pub process: tokio::process::Child,
    /// Where it listens, from its "listening" log line.
    pub addr: String,
    /// The log lines up to and including the "listening" one.
    pub startup_log: String,
    /// Every later log line; the pipe is drained so the child never blocks on it.
    pub log: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl ServingBinary {
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut process = tokio::process::Command::new(env!("CARGO_BIN_EXE_dds-gateway"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .args(args)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(process.stderr.take().unwrap()).lines();
        let mut startup_log = String::new();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                startup_log.push_str(&line);
                startup_log.push('\n');
                if let Some(addr) = listening_addr(&line) {
                    return addr;
                }
            }
            panic!("the gateway exited before listening: {startup_log}");
        })
        .await
        .expect("the gateway listens");
        let (sender, log) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = sender.send(line);
            }
        });
        Self {
            process,
            addr,
            startup_log,
            log,
        }
    }

    /// Sends SIGHUP.
    #[cfg(unix)]
    pub async fn hang_up(&self) {
        let pid = self.process.id().unwrap().to_string();
        let status = tokio::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    /// Waits (at most ten seconds) for a log line containing `text`.
    pub async fn wait_for_log(&mut self, text: &str) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = self.log.recv().await {
                if line.contains(text) {
                    return;
                }
            }
            panic!("the gateway's log ended before {text:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("no log line with {text:?}"));
    }
}
