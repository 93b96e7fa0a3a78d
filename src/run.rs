//! Start-up of the gateway's commands, so that the binary only parses its arguments: `serve`
//! reads the configuration (refusing unknown `DDS_GATEWAY_*` variables), sets up telemetry,
//! starts the sandbox or resolves the gateway's credentials (asking a source that does not
//! answer yet again, with backoff, for `credentials.startup_timeout`), listens and serves;
//! `check-credentials` resolves the credentials as `serve` would. Every failure is a
//! [`StartError`], whose [`exit_code`](StartError::exit_code) follows sysexits ([`crate::exit`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::instrument::WithSubscriber as _;
use tracing_subscriber::EnvFilter;

use crate::alibaba::credentials::{
    self, Credential, CredentialsError, CredentialsProvider, StaticProvider,
};
use crate::backoff::Backoff;
use crate::config::{Config, ConfigError, Overrides};
use crate::exit::{EX_CONFIG, EX_UNAVAILABLE};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::server::{self, ServeError};
use crate::telemetry::{LogOutput, Metrics, Telemetry, TelemetryConfig, TelemetryError};

/// What `dds-gateway serve` was asked for.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The TOML configuration file.
    pub config: Option<PathBuf>,
    /// `--listen`, over `server.listen`.
    pub listen: Option<String>,
    /// Serve against the built-in simulation of the Dds API.
    pub sandbox: bool,
}

/// Why a command could not start (or `serve` stopped with an error).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("invalid telemetry configuration: {0}")]
    Telemetry(#[source] TelemetryError),
    #[error(
        "no usable Alibaba Cloud credentials: {0} (see the README's credentials section, or run with --sandbox to try the gateway without a cloud account)"
    )]
    NoCredentials(#[source] CredentialsError),
    #[error(
        "no usable Alibaba Cloud credentials after trying for {} (credentials.startup_timeout): {source}",
        humantime::format_duration(*waited)
    )]
    CredentialsUnavailable {
        waited: Duration,
        #[source]
        source: CredentialsError,
    },
    #[error("cannot start the sandbox: {0}")]
    Sandbox(#[source] std::io::Error),
    #[error("cannot listen on {addr} (server.listen): {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to start: {0}")]
    Serve(#[from] ServeError),
}

impl StartError {
    /// The process's exit code: 78 for a setting to fix, 69 for something missing now (a
    /// credential source that did not answer in time, an address in use), and the server's own
    /// code for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::Telemetry(_) | Self::NoCredentials(_) => EX_CONFIG,
            Self::CredentialsUnavailable { .. } | Self::Sandbox(_) | Self::Listen { .. } => {
                EX_UNAVAILABLE
            }
            Self::Serve(err) => err.exit_code(),
        }
    }
}

/// Logs on standard error for a command other than `serve`, or for a failure before `serve` has
/// read its configuration: the same lines as `serve` writes with the default settings (text on
/// a terminal, JSON otherwise). The pipeline is returned to be kept while the command runs.
pub fn command_logs() -> Option<Telemetry> {
    let telemetry =
        Telemetry::new(&TelemetryConfig::default(), LogOutput::Stderr, log_filter()).ok()?;
    tracing::dispatcher::set_global_default(telemetry.dispatch().clone()).ok()?;
    Some(telemetry)
}

/// `RUST_LOG`, or `info`.
pub fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The configuration from `file` and the process's environment (unknown `DDS_GATEWAY_*`
/// variables refused), then `overrides`.
pub fn load_config(
    file: Option<&std::path::Path>,
    overrides: &Overrides,
) -> Result<Config, StartError> {
    crate::config::env::check_variable_names(
        std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()),
    )?;
    Ok(Config::load(
        file,
        |key| std::env::var(key).ok(),
        overrides,
    )?)
}

/// `dds-gateway serve`: runs the gateway until SIGINT or SIGTERM. Logs go to standard error
/// through the telemetry pipeline, which is flushed before this returns.
pub async fn serve(options: ServeOptions) -> Result<(), StartError> {
    let config = load_config(
        options.config.as_deref(),
        &Overrides {
            listen: options.listen,
        },
    )?;
    let telemetry = Telemetry::new(&config.telemetry, LogOutput::Stderr, log_filter())
        .map_err(StartError::Telemetry)?;
    if tracing::dispatcher::set_global_default(telemetry.dispatch().clone()).is_err() {
        tracing::debug!("a log subscriber is already installed");
    }
    let served = serve_configured(config, options.sandbox, telemetry.clone())
        .with_subscriber(telemetry.dispatch().clone())
        .await;
    // Spans and metrics of the last calls are exported before the process ends.
    telemetry.shutdown().await;
    served
}

async fn serve_configured(
    mut config: Config,
    sandbox: bool,
    telemetry: Telemetry,
) -> Result<(), StartError> {
    warn_about_timeouts(&config);
    // The sandbox lives as long as the gateway; it is dropped (stopped) when serving ends.
    let (credentials, _sandbox): (Arc<dyn CredentialsProvider>, Option<Sandbox>) = if sandbox {
        let simulation = Sandbox::start(SandboxConfig {
            fleet: config.sandbox.fleet.clone(),
            ..SandboxConfig::default()
        })
        .await
        .map_err(StartError::Sandbox)?;
        config.alibaba.endpoint = Some(simulation.endpoint());
        tracing::warn!(
            endpoint = %simulation.endpoint(),
            fleet = config.sandbox.fleet.count,
            "sandbox mode: calls go to a local simulation of the Dds API, not to Alibaba Cloud; demo instances dds-sandbox01 (4.2), dds-sandbox02 (4.4), dds-sandbox03 (5.0), dds-sandboxsz (cn-shenzhen, 6.0), dds-sandboxbusy (Rebooting), dds-sandboxforbidden; a fleet of dds-fleetNNN instances ([sandbox.fleet], list them with GET /v1/instances)"
        );
        (
            Arc::new(StaticProvider::new(simulation.credential())),
            Some(simulation),
        )
    } else {
        let (provider, _) = resolve_credentials(
            &config,
            config.credentials.startup_timeout,
            telemetry.metrics(),
        )
        .await?;
        (provider, None)
    };
    let addr = config.server.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    server::serve_with(
        config,
        credentials,
        listener,
        server::shutdown_signal(),
        telemetry,
    )
    .await?;
    Ok(())
}

/// A call still waiting on Alibaba when the grace period ends is cut off: say so at start-up,
/// when the settings allow it, rather than at the first shutdown.
fn warn_about_timeouts(config: &Config) {
    if config.alibaba.read_timeout > config.server.shutdown_grace {
        tracing::warn!(
            read_timeout = %humantime::format_duration(config.alibaba.read_timeout),
            shutdown_grace = %humantime::format_duration(config.server.shutdown_grace),
            "alibaba.read_timeout exceeds server.shutdown_grace: at shutdown, an upgrade still waiting for Alibaba's answer is cut off and its outcome is unknown"
        );
    }
}

/// The first wait after a credential source did not answer at start-up, and the longest.
const STARTUP_BACKOFF: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));

/// Builds the configured provider and resolves one credential, logging which provider
/// answered. A source that cannot be reached (not one that is not configured) is asked again,
/// with backoff, until `patience` has passed: a sidecar or metadata service that starts a little
/// after the gateway is no reason to exit.
pub async fn resolve_credentials(
    config: &Config,
    patience: Duration,
    metrics: &Metrics,
) -> Result<(Arc<dyn CredentialsProvider>, Credential), StartError> {
    let env = |key: &str| std::env::var(key).ok();
    let started = Instant::now();
    let mut failures = 0;
    let (provider, credential) = loop {
        // A provider of its own for each try: a failed one holds its failure for a while.
        let answer = match credentials::build(&config.credentials, &env, metrics) {
            Ok(provider) => provider.credential().await.map(|c| (provider, c)),
            Err(err) => Err(err),
        };
        let err = match answer {
            Ok(resolved) => break resolved,
            Err(err @ CredentialsError::NotConfigured { .. }) => {
                return Err(StartError::NoCredentials(err));
            }
            Err(err) => err,
        };
        failures += 1;
        let waited = started.elapsed();
        let wait = STARTUP_BACKOFF
            .half_jittered(failures)
            .min(patience.saturating_sub(waited));
        if wait.is_zero() {
            return Err(StartError::CredentialsUnavailable {
                waited,
                source: err,
            });
        }
        if failures == 1 {
            tracing::warn!(error = %err, patience = %humantime::format_duration(patience), "credential source not answering yet; asking again");
        } else {
            tracing::debug!(error = %err, failures, "credential source not answering yet");
        }
        tokio::time::sleep(wait).await;
    };
    tracing::info!(
        provider = credential.provider(),
        access_key_id = %credentials::masked(credential.access_key_id()),
        temporary = credential.security_token().is_some(),
        // Absent for a credential that does not expire (never "None").
        expiration = credential
            .expiration()
            .map(|at| tracing::field::display(humantime::format_rfc3339_seconds(at))),
        "credentials resolved"
    );
    Ok((provider, credential))
}

/// `dds-gateway check-credentials`: resolves the credentials as `serve` would, without waiting
/// for a source that does not answer, and describes the one found (never its secret).
pub async fn check_credentials(config: Option<PathBuf>) -> Result<String, StartError> {
    let config = load_config(config.as_deref(), &Overrides::default())?;
    let (_, credential) = resolve_credentials(&config, Duration::ZERO, &Metrics::default()).await?;
    Ok(format!(
        "credentials OK: provider {}, AccessKeyId {}{}",
        credential.provider(),
        credentials::masked(credential.access_key_id()),
        credential
            .expiration()
            .map(|at| format!(
                ", temporary until {}",
                humantime::format_rfc3339_seconds(at)
            ))
            .unwrap_or_default()
    ))
}
