//! The `dds-gateway` command: parses the command line and calls the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use dds_gateway::alibaba::credentials::{
    self, Credential, CredentialsError, CredentialsProvider, StaticProvider,
};
use dds_gateway::client::{self, Outcome, StatusArgs, UpgradeArgs};
use dds_gateway::config::{Config, Overrides};
use dds_gateway::pb;
use dds_gateway::sandbox::{Sandbox, SandboxConfig};
use dds_gateway::server;
use dds_gateway::telemetry::{LogOutput, Telemetry};

/// mimalloc instead of the system allocator: a call allocates and frees hundreds of small
/// buffers (HTTP/2 frames, spans, log lines), where glibc's malloc spent a fifth of the CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a configuration or usage problem (sysexits `EX_USAGE`).
const EX_USAGE: u8 = 64;
/// Exit code when the gateway cannot get going for another reason (`EX_UNAVAILABLE`).
const EX_UNAVAILABLE: u8 = 69;
const EX_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "dds-gateway",
    version,
    about = "gRPC gateway for ApsaraDB for MongoDB engine upgrades"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// TOML configuration file.
        #[arg(long, env = "DDS_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on (overrides server.listen), e.g. 127.0.0.1:50051.
        #[arg(long)]
        listen: Option<String>,
        /// Serve against a built-in loopback simulation of the Dds API (no cloud account needed).
        #[arg(long)]
        sandbox: bool,
    },
    /// Resolve the gateway's Alibaba Cloud credentials as `serve` would and say which provider
    /// answered (never the secret); exit non-zero with the reason when none does.
    CheckCredentials {
        /// TOML configuration file.
        #[arg(long, env = "DDS_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Ask a running gateway to upgrade an instance.
    Upgrade {
        /// The instance, e.g. dds-bp1234567890ab.
        #[arg(long)]
        instance: String,
        /// The target engine version, e.g. 4.4.
        #[arg(long)]
        version: String,
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The instance's region (the gateway's default when absent).
        #[arg(long)]
        region: Option<String>,
        /// When the new version takes effect.
        #[arg(long, value_enum, default_value_t = SwitchModeArg::Unspecified)]
        switch_mode: SwitchModeArg,
        /// Idempotency key (a UUID): retries with the same key upgrade at most once.
        #[arg(long)]
        request_id: Option<String>,
        /// Check everything, upgrade nothing.
        #[arg(long)]
        validate_only: bool,
        /// How long to wait for the answer, e.g. 30s.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Print the `token_sha256` of a bearer token read from standard input (one line), to paste
    /// into a `[[callers]]` entry.
    HashToken {
        /// Make a new random token instead: prints the token (give it to the caller), then its hash.
        #[arg(long)]
        generate: bool,
    },
    /// Show an instance's engine version, state and available upgrade targets.
    Status {
        /// The instance, e.g. dds-bp1234567890ab.
        #[arg(long)]
        instance: String,
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The instance's region (the gateway's default when absent).
        #[arg(long)]
        region: Option<String>,
        /// How long to wait for the answer, e.g. 30s.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Plan, start, follow and control fleet rollouts (`rollout --help`).
    Rollout {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[command(subcommand)]
        command: client::rollouts::RolloutCommand,
    },
    /// Follow an upgrade: print each state change until the instance runs the target version.
    Watch {
        /// The instance, e.g. dds-bp1234567890ab.
        #[arg(long)]
        instance: String,
        /// The target engine version of the upgrade, e.g. 4.4.
        #[arg(long)]
        version: String,
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The instance's region (the gateway's default when absent).
        #[arg(long)]
        region: Option<String>,
        /// How long to follow at most, e.g. 30m (the gateway also bounds it: watch.max_duration).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// Where the gateway is and how to authenticate to it (client subcommands).
#[derive(Debug, Args)]
struct GatewayArgs {
    /// The gateway's address (https:// for a TLS listener).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// File holding the bearer token for the gateway (one line). Without it the token comes
    /// from DDS_GATEWAY_TOKEN.
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Bearer token for the gateway, on the command line. Discouraged: other users of the
    /// machine can read a command line (ps, /proc); use --token-file or DDS_GATEWAY_TOKEN.
    #[arg(long)]
    token: Option<String>,
    /// For an https:// target: PEM file of the CA that signed the gateway's certificate.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// For mTLS: PEM client certificate (with --key).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// For mTLS: PEM private key of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

/// The variable the client subcommands read the bearer token from.
const TOKEN_VARIABLE: &str = "DDS_GATEWAY_TOKEN";

impl GatewayArgs {
    /// Where the gateway is, with the bearer token from `--token-file`, `--token` (with a
    /// warning) or `DDS_GATEWAY_TOKEN`, in that order.
    fn target(self) -> Result<client::Target, String> {
        let token = match (&self.token_file, self.token) {
            (Some(path), _) => Some(client::read_token_file(path)?),
            (None, Some(token)) => {
                eprintln!(
                    "warning: --token puts the bearer token on the command line, where other users of this machine can read it; use --token-file or {TOKEN_VARIABLE}"
                );
                Some(credentials::Secret::new(token))
            }
            (None, None) => std::env::var(TOKEN_VARIABLE)
                .ok()
                .filter(|t| !t.is_empty())
                .map(credentials::Secret::new),
        };
        Ok(client::Target {
            url: self.target,
            token,
            ca_cert: self.ca_cert,
            client_cert: self.cert.zip(self.key),
        })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SwitchModeArg {
    Unspecified,
    Immediate,
    MaintenanceWindow,
}

impl From<SwitchModeArg> for pb::SwitchMode {
    fn from(mode: SwitchModeArg) -> Self {
        match mode {
            SwitchModeArg::Unspecified => Self::Unspecified,
            SwitchModeArg::Immediate => Self::Immediate,
            SwitchModeArg::MaintenanceWindow => Self::MaintenanceWindow,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` logs through its telemetry pipeline, set up once the configuration is read.
    if !matches!(cli.command, Command::Serve { .. }) {
        tracing_subscriber::fmt()
            .with_env_filter(log_filter())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    // A multi-thread runtime: telemetry exporters need one, and the gateway serves many callers.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve {
            config,
            listen,
            sandbox,
        } => serve(config, listen, sandbox).await,
        Command::CheckCredentials { config } => check_credentials(config).await,
        Command::HashToken { generate } => hash_token(generate),
        Command::Upgrade {
            instance,
            version,
            gateway,
            region,
            switch_mode,
            request_id,
            validate_only,
            timeout,
        } => {
            let target = match gateway.target() {
                Ok(target) => target,
                Err(problem) => return usage(&problem),
            };
            let args = UpgradeArgs {
                target,
                instance,
                version,
                region,
                switch_mode: switch_mode.into(),
                request_id,
                validate_only,
                timeout,
            };
            report(client::upgrade(args).await)
        }
        Command::Status {
            instance,
            gateway,
            region,
            timeout,
        } => {
            let target = match gateway.target() {
                Ok(target) => target,
                Err(problem) => return usage(&problem),
            };
            let args = StatusArgs {
                target,
                instance,
                region,
                version: String::new(),
                timeout,
            };
            report(client::status(args).await)
        }
        Command::Rollout { gateway, command } => {
            let target = match gateway.target() {
                Ok(target) => target,
                Err(problem) => return usage(&problem),
            };
            report(client::rollouts::run(target, command, |line| print!("{line}")).await)
        }
        Command::Watch {
            instance,
            version,
            gateway,
            region,
            timeout,
        } => {
            let target = match gateway.target() {
                Ok(target) => target,
                Err(problem) => return usage(&problem),
            };
            let args = StatusArgs {
                target,
                instance,
                region,
                version,
                timeout,
            };
            report(client::watch(args, |line| print!("{line}")).await)
        }
    }
}

/// Prints a usage problem and exits with `EX_USAGE`.
fn usage(problem: &str) -> ExitCode {
    eprintln!("{problem}");
    ExitCode::from(EX_USAGE)
}

/// Prints an outcome (answers on stdout, failures on stderr) and picks the exit code.
fn report(outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::Answered(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Outcome::Failed(text) => {
            eprint!("{text}");
            if !text.ends_with('\n') {
                eprintln!();
            }
            ExitCode::FAILURE
        }
    }
}

/// The token is read from stdin, never the command line, so it stays out of shell history and `ps`.
fn hash_token(generate: bool) -> ExitCode {
    use dds_gateway::api::auth;
    if generate {
        let token = auth::generate_token();
        println!("token:        {token}");
        println!("token_sha256: {}", auth::hash_token(&token));
        return ExitCode::SUCCESS;
    }
    let mut line = String::new();
    if let Err(err) = std::io::stdin().read_line(&mut line) {
        eprintln!("cannot read the token from standard input: {err}");
        return ExitCode::from(EX_USAGE);
    }
    let token = line.trim_end_matches(['\r', '\n']);
    if token.is_empty() || token.trim() != token {
        eprintln!("expected the token on standard input (one line, no surrounding spaces)");
        return ExitCode::from(EX_USAGE);
    }
    println!("{}", auth::hash_token(token));
    ExitCode::SUCCESS
}

/// `RUST_LOG`, or `info`.
fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

async fn serve(config_file: Option<PathBuf>, listen: Option<String>, sandbox: bool) -> ExitCode {
    let env = |key: &str| std::env::var(key).ok();
    let config = match Config::load(config_file.as_deref(), env, &Overrides { listen }) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("invalid configuration: {err}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let telemetry = match Telemetry::new(&config.telemetry, LogOutput::Stderr, log_filter()) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("invalid telemetry configuration: {err}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if tracing::dispatcher::set_global_default(telemetry.dispatch().clone()).is_err() {
        eprintln!("a log subscriber is already installed");
    }
    let code = serve_configured(config, sandbox, telemetry.clone()).await;
    // Spans and metrics of the last calls are exported before the process ends.
    telemetry.shutdown().await;
    code
}

async fn serve_configured(mut config: Config, sandbox: bool, telemetry: Telemetry) -> ExitCode {
    // The sandbox lives as long as the gateway; it is dropped (stopped) when serving ends.
    let (credentials, _sandbox): (Arc<dyn CredentialsProvider>, Option<Sandbox>) = if sandbox {
        let fleet = config.sandbox.fleet.clone();
        let simulation = match Sandbox::start(SandboxConfig {
            fleet,
            ..SandboxConfig::default()
        })
        .await
        {
            Ok(simulation) => simulation,
            Err(err) => {
                eprintln!("cannot start the sandbox: {err}");
                return ExitCode::from(EX_UNAVAILABLE);
            }
        };
        config.alibaba.endpoint = Some(simulation.endpoint());
        // The console is on by default in the sandbox (`server.console = false` turns it off).
        config.server.console.get_or_insert(true);
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
        match resolve_credentials(&config).await {
            Ok((provider, _)) => (provider, None),
            Err(err) => {
                eprintln!(
                    "no Alibaba Cloud credentials: {err} (see the README's credentials section, or run with --sandbox to try the gateway without a cloud account)"
                );
                return ExitCode::from(EX_USAGE);
            }
        }
    };

    let listener = match tokio::net::TcpListener::bind(config.server.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "cannot listen on {} (server.listen): {err}",
                config.server.listen
            );
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    match server::serve_with(
        config,
        credentials,
        listener,
        server::shutdown_signal(),
        telemetry,
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(server::ServeError::Refused(reason)) => {
            eprintln!("refusing to start: {reason}");
            ExitCode::from(EX_USAGE)
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::from(EX_UNAVAILABLE)
        }
    }
}

/// Builds the configured provider and resolves one credential, logging which provider answered.
async fn resolve_credentials(
    config: &Config,
) -> Result<(Arc<dyn CredentialsProvider>, Credential), CredentialsError> {
    let env = |key: &str| std::env::var(key).ok();
    let provider = credentials::build(&config.credentials, &env)?;
    let credential = provider.credential().await?;
    tracing::info!(
        provider = credential.provider(),
        access_key_id = %credentials::masked(credential.access_key_id()),
        temporary = credential.security_token().is_some(),
        expiration = ?credential.expiration().map(humantime::format_rfc3339_seconds),
        "credentials resolved"
    );
    Ok((provider, credential))
}

async fn check_credentials(config_file: Option<PathBuf>) -> ExitCode {
    let env = |key: &str| std::env::var(key).ok();
    let config = match Config::load(config_file.as_deref(), env, &Overrides::default()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("invalid configuration: {err}");
            return ExitCode::from(EX_USAGE);
        }
    };
    match resolve_credentials(&config).await {
        Ok((_, credential)) => {
            println!(
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
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("no usable Alibaba Cloud credentials: {err}");
            ExitCode::from(match err {
                CredentialsError::NotConfigured { .. } => EX_CONFIG,
                CredentialsError::Unavailable { .. } => EX_UNAVAILABLE,
            })
        }
    }
}
