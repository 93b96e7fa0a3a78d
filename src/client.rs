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

/// The outcome, ready to print: `Ok` on stdout, `Err` on stderr with a non-zero exit.
#[derive(Debug)]
pub enum Outcome {
    Answered(String),
    Failed(String),
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
    String,
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
) -> Result<(tonic::transport::Channel, tonic::Request<T>), String> {
    let url = &target.url;
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|err| format!("invalid --target {url:?}: {err}"))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls(target)? {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|err| format!("TLS settings: {err}"))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|err| format!("cannot connect to {url}: {err}"))?;
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    if let Some(token) = &target.token {
        let mut value = MetadataValue::try_from(format!("Bearer {}", token.expose()))
            .map_err(|_| "the token contains characters not allowed in a header".to_string())?;
        value.set_sensitive(true);
        request.metadata_mut().insert("authorization", value);
    }
    Ok((channel, request))
}

/// The bearer token in `path`: its first line, without surrounding whitespace. The error names
/// the file, never its content.
pub fn read_token_file(path: &std::path::Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map(Secret::new)
        .map_err(|err| format!("--token-file {}: {err}", path.display()))?;
    let token = text.expose().lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(format!(
            "--token-file {}: expected the token on the first line, found none",
            path.display()
        ));
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
        Err(problem) => return Outcome::Failed(problem),
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

/// `WatchUpgrade`: `print` gets one line per state change as it arrives.
pub async fn watch(args: StatusArgs, mut print: impl FnMut(&str)) -> Outcome {
    let message = pb::WatchUpgradeRequest {
        db_instance_id: args.instance,
        engine_version: args.version,
        region_id: args.region.unwrap_or_default(),
    };
    let (mut client, request) = match prepare(&args.target, args.timeout, message).await {
        Ok(prepared) => prepared,
        Err(problem) => return Outcome::Failed(problem),
    };
    let mut stream = match client.watch_upgrade(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Outcome::Failed(describe_status(&status)),
    };
    loop {
        match stream.message().await {
            Ok(Some(m)) => print(&format!(
                "{} {} engine_version {} (target {}){}\n",
                m.db_instance_id,
                m.status,
                m.engine_version,
                m.target_engine_version,
                if m.done { ": done" } else { "" }
            )),
            Ok(None) => return Outcome::Answered(String::new()),
            Err(status) => return Outcome::Failed(describe_status(&status)),
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
        Err(problem) => return Outcome::Failed(problem),
    };
    match client.upgrade_engine_version(request).await {
        Ok(response) => Outcome::Answered(describe_response(&response.into_inner())),
        Err(status) => Outcome::Failed(describe_status(&status)),
    }
}

/// TLS settings for an `https://` target: the CA to trust and, for mTLS, the client identity.
fn tls(args: &Target) -> Result<Option<ClientTlsConfig>, String> {
    if !args.url.starts_with("https://") {
        if args.ca_cert.is_some() || args.client_cert.is_some() {
            return Err("--ca-cert, --cert and --key need an https:// --target".to_string());
        }
        return Ok(None);
    }
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("{flag}: cannot read {}: {e}", path.display()))
    };
    let mut tls = ClientTlsConfig::new();
    match &args.ca_cert {
        Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read("--ca-cert", ca)?)),
        None => return Err(
            "an https:// --target needs --ca-cert (the CA that signed the gateway's certificate)"
                .to_string(),
        ),
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
