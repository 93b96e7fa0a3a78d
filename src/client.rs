//! `dds-gateway upgrade`, `status` and `watch`: a command-line client of the gateway that sends
//! one `UpgradeEngineVersion`, `GetEngineVersion` or `WatchUpgrade` call and prints the answer
//! (for a watch, each message as it arrives), or the gRPC error with its details.

use std::fmt::Write as _;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt;

use crate::alibaba::credentials::Secret;
use crate::pb;
use crate::pb::engine_version_service_client::EngineVersionServiceClient;

/// Where the gateway is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port`, or `https://` for a TLS listener.
    pub url: String,
    /// Bearer token, sent as `authorization: Bearer <token>`.
    pub token: Option<Secret>,
    /// PEM CA that signed the gateway's certificate (for an `https://` target).
    pub ca_cert: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for mTLS.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// What to send.
#[derive(Debug, Clone)]
pub struct UpgradeArgs {
    pub target: Target,
    pub instance: String,
    pub version: String,
    pub region: Option<String>,
    pub switch_mode: pb::SwitchMode,
    pub request_id: Option<String>,
    pub validate_only: bool,
    pub timeout: Duration,
}

/// The outcome, ready to print: `Answered` on stdout; `Failed` (the gateway answered with an
/// error, exit 1) and `NotSent` (no call could be made) on stderr.
#[derive(Debug)]
pub enum Outcome {
    Answered(String),
    Failed(String),
    NotSent(ClientError),
}

/// Why no call could be made: a flag to fix (`EX_USAGE`), or a gateway that cannot be reached
/// (`EX_UNAVAILABLE`).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{flag} {path}: {source}")]
    ReadFile {
        flag: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--token-file {path}: expected the token on the first line, found none")]
    EmptyTokenFile { path: std::path::PathBuf },
    #[error("the token contains characters not allowed in a header")]
    TokenNotAHeader,
    #[error("--ca-cert, --cert and --key need an https:// --target")]
    TlsFlagsWithoutHttps,
    #[error("an https:// --target needs --ca-cert (the CA that signed the gateway's certificate)")]
    NoCaCert,
    #[error("invalid --target {url:?}: {source}")]
    Target {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("TLS settings: {0}")]
    Tls(#[source] tonic::transport::Error),
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

impl ClientError {
    /// The process's exit code (sysexits): 69 when the gateway cannot be reached, else 64.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Connect { .. } => crate::exit::EX_UNAVAILABLE,
            _ => crate::exit::EX_USAGE,
        }
    }
}

/// What `status` and `watch` ask about.
#[derive(Debug, Clone)]
pub struct StatusArgs {
    pub target: Target,
    pub instance: String,
    pub region: Option<String>,
    /// For `watch`: the target version; ignored by `status`.
    pub version: String,
    pub timeout: Duration,
}

pub mod rollouts;

/// Connects to the gateway (TLS when the target is `https://`) and builds a request with the
/// timeout and bearer token.
async fn prepare<T>(
    target: &Target,
    timeout: Duration,
    message: T,
) -> Result<
    (
        EngineVersionServiceClient<tonic::transport::Channel>,
        tonic::Request<T>,
    ),
    ClientError,
> {
    let (channel, request) = connect(target, timeout, message).await?;
    Ok((EngineVersionServiceClient::new(channel), request))
}

/// Connects to the gateway and builds a request with the timeout and bearer token, for any of
/// its services.
async fn connect<T>(
    target: &Target,
    timeout: Duration,
    message: T,
) -> Result<(tonic::transport::Channel, tonic::Request<T>), ClientError> {
    let url = &target.url;
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|source| ClientError::Target {
            url: url.clone(),
            source,
        })?
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls(target)? {
        endpoint = endpoint.tls_config(tls).map_err(ClientError::Tls)?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            url: url.clone(),
            source,
        })?;
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    if let Some(token) = &target.token {
        let mut value = MetadataValue::try_from(format!("Bearer {}", token.expose()))
            .map_err(|_| ClientError::TokenNotAHeader)?;
        value.set_sensitive(true);
        request.metadata_mut().insert("authorization", value);
    }
    Ok((channel, request))
}

/// The bearer token in `path`: its first line, without surrounding whitespace. The error names
/// the file, never its content.
pub fn read_token_file(path: &std::path::Path) -> Result<Secret, ClientError> {
    let text = std::fs::read_to_string(path)
        .map(Secret::new)
        .map_err(|source| ClientError::ReadFile {
            flag: "--token-file",
            path: path.to_path_buf(),
            source,
        })?;
    let token = text.expose().lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(ClientError::EmptyTokenFile {
            path: path.to_path_buf(),
        });
    }
    Ok(Secret::new(token))
}

/// `GetEngineVersion`.
pub async fn status(args: StatusArgs) -> Outcome {
    let message = pb::GetEngineVersionRequest {
        db_instance_id: args.instance,
        region_id: args.region.unwrap_or_default(),
    };
    let (mut client, request) = match prepare(&args.target, args.timeout, message).await {
        Ok(prepared) => prepared,
        Err(problem) => return Outcome::NotSent(problem),
    };
    match client.get_engine_version(request).await {
        Ok(response) => {
            let r = response.into_inner();
            let mut out = String::new();
            let _ = writeln!(out, "db_instance_id: {}", r.db_instance_id);
            let _ = writeln!(out, "region_id: {}", r.region_id);
            let _ = writeln!(out, "status: {}", r.status);
            let _ = writeln!(out, "engine_version: {}", r.engine_version);
            let _ = writeln!(
                out,
                "available_engine_versions: {}",
                r.available_engine_versions.join(", ")
            );
            Outcome::Answered(out)
        }
        Err(status) => Outcome::Failed(describe_status(&status)),
    }
}

/// How long `watch` waits before resuming when the gateway gave no RetryInfo.
const RESUME_DELAY: Duration = Duration::from_secs(1);

/// `WatchUpgrade`: `print` gets one line per state change as it arrives. A watch that ends with
/// UNAVAILABLE (its connection aged out, the gateway restarted) is resumed on a new call until
/// `timeout` has passed since the start; a state already printed is not printed again.
pub async fn watch(args: StatusArgs, mut print: impl FnMut(&str)) -> Outcome {
    let message = pb::WatchUpgradeRequest {
        db_instance_id: args.instance,
        engine_version: args.version,
        region_id: args.region.unwrap_or_default(),
    };
    // An absurd --timeout is "as long as it takes", not an overflow.
    let until = crate::deadline::later(tokio::time::Instant::now(), args.timeout);
    let mut last: Option<(String, String)> = None;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let status =
            match watch_once(&args.target, left, message.clone(), &mut last, &mut print).await {
                Ok(outcome) => return outcome,
                Err(status) => status,
            };
        let delay = status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay)
            .unwrap_or(RESUME_DELAY);
        // The delay comes from the gateway's RetryInfo: never trusted not to overflow.
        let Some(resume_at) = tokio::time::Instant::now()
            .checked_add(delay)
            .filter(|at| status.code() == tonic::Code::Unavailable && *at < until)
        else {
            return Outcome::Failed(describe_status(&status));
        };
        tokio::time::sleep_until(resume_at).await;
    }
}

/// One `WatchUpgrade` call: its outcome, or the status it ended with when that is UNAVAILABLE
/// (for the caller to resume).
async fn watch_once(
    target: &Target,
    timeout: Duration,
    message: pb::WatchUpgradeRequest,
    last: &mut Option<(String, String)>,
    print: &mut impl FnMut(&str),
) -> Result<Outcome, tonic::Status> {
    let (mut client, request) = match prepare(target, timeout, message).await {
        Ok(prepared) => prepared,
        Err(problem) => return Ok(Outcome::NotSent(problem)),
    };
    let unavailable = |status: tonic::Status| match status.code() {
        tonic::Code::Unavailable => Err(status),
        _ => Ok(Outcome::Failed(describe_status(&status))),
    };
    let mut stream = match client.watch_upgrade(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return unavailable(status),
    };
    loop {
        match stream.message().await {
            Ok(Some(m)) => {
                let seen = (m.status.clone(), m.engine_version.clone());
                if last.as_ref() == Some(&seen) {
                    continue;
                }
                *last = Some(seen);
                print(&format!(
                    "{} {} engine_version {} (target {}){}\n",
                    m.db_instance_id,
                    m.status,
                    m.engine_version,
                    m.target_engine_version,
                    if m.done { ": done" } else { "" }
                ));
            }
            Ok(None) => return Ok(Outcome::Answered(String::new())),
            Err(status) => return unavailable(status),
        }
    }
}

/// Sends the call. Connection problems and gRPC errors both become [`Outcome::Failed`].
pub async fn upgrade(args: UpgradeArgs) -> Outcome {
    let message = pb::UpgradeEngineVersionRequest {
        db_instance_id: args.instance,
        engine_version: args.version,
        region_id: args.region.unwrap_or_default(),
        switch_mode: args.switch_mode as i32,
        request_id: args.request_id.unwrap_or_default(),
        validate_only: args.validate_only,
    };
    let (mut client, request) = match prepare(&args.target, args.timeout, message).await {
        Ok(prepared) => prepared,
        Err(problem) => return Outcome::NotSent(problem),
    };
    match client.upgrade_engine_version(request).await {
        Ok(response) => Outcome::Answered(describe_response(&response.into_inner())),
        Err(status) => Outcome::Failed(describe_status(&status)),
    }
}

/// TLS settings for an `https://` target: the CA to trust and, for mTLS, the client identity.
fn tls(args: &Target) -> Result<Option<ClientTlsConfig>, ClientError> {
    if !args.url.starts_with("https://") {
        if args.ca_cert.is_some() || args.client_cert.is_some() {
            return Err(ClientError::TlsFlagsWithoutHttps);
        }
        return Ok(None);
    }
    let read = |flag: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| ClientError::ReadFile {
            flag,
            path: path.to_path_buf(),
            source,
        })
    };
    let mut tls = ClientTlsConfig::new();
    match &args.ca_cert {
        Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read("--ca-cert", ca)?)),
        None => return Err(ClientError::NoCaCert),
    }
    if let Some((cert, key)) = &args.client_cert {
        tls = tls.identity(Identity::from_pem(
            read("--cert", cert)?,
            read("--key", key)?,
        ));
    }
    Ok(Some(tls))
}

/// `key: value` lines of a response.
pub fn describe_response(r: &pb::UpgradeEngineVersionResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "db_instance_id: {}", r.db_instance_id);
    let _ = writeln!(out, "engine_version: {}", r.engine_version);
    if !r.previous_engine_version.is_empty() {
        let _ = writeln!(
            out,
            "previous_engine_version: {}",
            r.previous_engine_version
        );
    }
    let _ = writeln!(out, "validate_only: {}", r.validate_only);
    if !r.alibaba_request_id.is_empty() {
        let _ = writeln!(out, "alibaba_request_id: {}", r.alibaba_request_id);
    }
    out
}

/// A status with its code, message and standard details.
pub fn describe_status(status: &tonic::Status) -> String {
    let mut out = format!("error: {:?}: {}\n", status.code(), status.message());
    let details = status.get_error_details();
    if let Some(info) = details.error_info() {
        let _ = writeln!(out, "  reason: {} (domain {})", info.reason, info.domain);
        let mut metadata: Vec<_> = info.metadata.iter().collect();
        metadata.sort();
        for (key, value) in metadata {
            let _ = writeln!(out, "  {key}: {value}");
        }
    }
    if let Some(bad) = details.bad_request() {
        for v in &bad.field_violations {
            let _ = writeln!(out, "  field {}: {}", v.field, v.description);
        }
    }
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        let _ = writeln!(out, "  retry after: {delay:?}");
    }
    out
}
