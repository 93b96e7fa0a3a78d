//! [`Traced`]: the gateway with a telemetry pipeline of its own (logs into a buffer, the admin
//! endpoint on an ephemeral port), called inside a caller's trace; and [`sample`], which reads
//! one value off the Prometheus text.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use dds_gateway::pb;
use dds_gateway::pb::engine_version_service_client::EngineVersionServiceClient;
use dds_gateway::testing::alibaba::credentials::StaticProvider;
use dds_gateway::testing::config::Config;
use dds_gateway::testing::sandbox::{Sandbox, SandboxConfig};
use dds_gateway::testing::server;
use dds_gateway::testing::telemetry::{LogOutput, Otlp, Protocol, Telemetry};
use tokio::net::TcpListener;

use super::{default_config, wait_until};

/// The caller's trace every [`Traced::upgrade`] continues.
pub const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
/// The sandbox credential's security token: never exported, never logged.
pub const SECURITY_TOKEN: &str = "sts-token-never-exported";
pub const UPGRADE_METHOD: &str = "dds.gateway.v1.EngineVersionService/UpgradeEngineVersion";
/// The token of the caller [`reporting_caller`] adds.
pub const REPORTING_TOKEN: &str = "reporting-token-0123456789";

/// A gateway in front of a sandbox whose credential carries a security token, with its own
/// telemetry pipeline (logs into a buffer).
pub struct Traced {
    pub sandbox: Sandbox,
    pub addr: SocketAddr,
    pub telemetry: Telemetry,
    pub logs: Arc<Mutex<Vec<u8>>>,
    pub channel: tonic::transport::Channel,
    pub client: EngineVersionServiceClient<tonic::transport::Channel>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), server::ServeError>>,
}

impl Traced {
    pub async fn start(configure: impl FnOnce(&mut Config)) -> Self {
        let sandbox = Sandbox::start(SandboxConfig {
            security_token: Some(SECURITY_TOKEN.to_string()),
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
        let mut config = default_config();
        config.alibaba.endpoint = Some(sandbox.endpoint());
        config.alibaba.preflight = true;
        config.telemetry.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        configure(&mut config);
        let logs = Arc::new(Mutex::new(Vec::new()));
        let telemetry = Telemetry::new(
            &config.telemetry,
            LogOutput::Buffer(Arc::clone(&logs)),
            tracing_subscriber::EnvFilter::new("info"),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve_with(
            config,
            Arc::new(StaticProvider::new(sandbox.credential())),
            listener,
            async {
                let _ = stopped.await;
            },
            telemetry.clone(),
        ));
        let channel = super::channel(addr).await;
        let client = EngineVersionServiceClient::new(channel.clone());
        Self {
            sandbox,
            addr,
            telemetry,
            logs,
            channel,
            client,
            stop: Some(stop),
            task,
        }
    }

    /// Calls UpgradeEngineVersion as a caller inside trace [`TRACE_ID`].
    pub async fn upgrade(
        &self,
        message: pb::UpgradeEngineVersionRequest,
    ) -> Result<tonic::Response<pb::UpgradeEngineVersionResponse>, tonic::Status> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            "traceparent",
            format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
                .parse()
                .unwrap(),
        );
        self.client.clone().upgrade_engine_version(request).await
    }

    /// The admin endpoint's `/metrics`, checked to be Prometheus text.
    pub async fn metrics(&self) -> String {
        let telemetry = self.telemetry.clone();
        wait_until("the admin endpoint listens", || {
            telemetry.admin_addr().is_some()
        })
        .await;
        let addr = self.telemetry.admin_addr().unwrap();
        let response = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        response.text().await.unwrap()
    }

    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        String::from_utf8(self.logs.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Graceful shutdown: the server stops, then the pipeline flushes its spans.
    pub async fn shutdown(mut self) -> Sandbox {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
        self.telemetry.shutdown().await;
        self.sandbox
    }
}

/// Sets `config` to export traces over OTLP/gRPC to `receiver`.
pub fn grpc_traces(config: &mut Config, receiver: SocketAddr) {
    config.telemetry.traces = Some(Otlp {
        endpoint: format!("http://{receiver}"),
        protocol: Protocol::Grpc,
    });
}

/// Sets `config.callers` to one caller, `reporting`, known by [`REPORTING_TOKEN`] and allowed the
/// sandbox's instances in `cn-hangzhou`; `keys` are more of its keys (TOML lines).
pub fn reporting_caller(config: &mut Config, keys: &str) {
    config.callers = Config::from_toml(
        &format!(
            "[[callers]]\nname = \"reporting\"\ntoken_sha256 = \"{}\"\nregions = [\"cn-hangzhou\"]\ninstances = [\"dds-sandbox*\"]\n{keys}",
            dds_gateway::testing::api::auth::hash_token(REPORTING_TOKEN)
        ),
        "test",
        |_| None,
        &dds_gateway::testing::config::Overrides::default(),
    )
    .unwrap()
    .callers;
}

/// The value of the sample `name{labels...}` whose labels include all of `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
