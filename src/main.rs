//! The `dds-gateway` command: parses the command line and calls the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use dds_gateway::Secret;
use dds_gateway::client::{self, ClientError, Outcome, StatusArgs, UpgradeArgs};
use dds_gateway::exit::{EX_SOFTWARE, EX_USAGE};
use dds_gateway::pb;
use dds_gateway::run::{self, ServeOptions};

/// mimalloc instead of the system allocator: a call allocates and frees hundreds of small
/// buffers (HTTP/2 frames, spans, log lines), where glibc's malloc spent a fifth of the CPU.
/// Built without transparent huge pages (`no_thp` in Cargo.toml), which cost memory, not CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    fn target(self) -> Result<client::Target, ClientError> {
        let token = match (&self.token_file, self.token) {
            (Some(path), _) => Some(client::read_token_file(path)?),
            (None, Some(token)) => {
                tracing::warn!(
                    "--token puts the bearer token on the command line, where other users of this machine can read it; use --token-file or {TOKEN_VARIABLE}"
                );
                Some(Secret::new(token))
            }
            (None, None) => std::env::var(TOKEN_VARIABLE)
                .ok()
                .filter(|t| !t.is_empty())
                .map(Secret::new),
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
    // A multi-thread runtime: telemetry exporters need one, and the gateway serves many callers.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&err, EX_SOFTWARE),
    };
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    // `serve` logs through its telemetry pipeline, set up once the configuration is read; the
    // other commands log the same way, with the default settings.
    let _logs = match &command {
        Command::Serve { .. } => None,
        _ => run::command_logs(),
    };
    match command {
        Command::Serve {
            config,
            listen,
            sandbox,
        } => match run::serve(ServeOptions {
            config,
            listen,
            sandbox,
        })
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(&err, err.exit_code()),
        },
        Command::CheckCredentials { config } => match run::check_credentials(config).await {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(err) => fail(&err, err.exit_code()),
        },
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
                Err(err) => return fail(&err, err.exit_code()),
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
                Err(err) => return fail(&err, err.exit_code()),
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
                Err(err) => return fail(&err, err.exit_code()),
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
                Err(err) => return fail(&err, err.exit_code()),
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

/// Logs why the command failed, as its other log lines look, and exits with `code`.
fn fail(err: &dyn std::error::Error, code: u8) -> ExitCode {
    // `serve` may have failed before its logs were set up.
    let _logs = (!tracing::dispatcher::has_been_set()).then(run::command_logs);
    tracing::error!(exit_code = code, "{err}");
    ExitCode::from(code)
}

/// Prints an outcome (answers on stdout, failures on stderr) and picks the exit code: 1 when the
/// gateway answered with an error.
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
        Outcome::NotSent(err) => fail(&err, err.exit_code()),
    }
}

/// The token is read from stdin, never the command line, so it stays out of shell history and `ps`.
fn hash_token(generate: bool) -> ExitCode {
    use dds_gateway as auth;
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
