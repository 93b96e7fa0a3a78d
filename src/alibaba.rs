//! The Alibaba Cloud API client: one pooled HTTPS client that turns a Dds operation into a
//! signed RPC-style request (`POST`, product `Dds`, version `2015-12-01`, signature V2 or V3 as
//! configured), sends it to the region's endpoint, and classifies the answer. It decides nothing
//! about gRPC: `error.rs` does.
//!
//! Requests are signed with the time and a nonce from one injected [`Clock`]: nothing here reads
//! the wall clock or a random source for a signature (`clippy.toml` denies it).
#![deny(clippy::disallowed_methods)]

pub mod calls;
pub mod clock;
pub mod codes;
pub mod endpoint;
pub mod response;
pub mod retry;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use calls::Alibaba;
pub use clock::{Clock, SystemClock};

use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tracing::Instrument as _;

use crate::config::{AlibabaConfig, SignatureVersion};
use crate::credentials::{Credential, CredentialsError, CredentialsProvider, Secret};
use crate::signer::{self, v3};
pub use response::{AvailableEngineVersions, InstanceAttribute, UpstreamError};

/// Alibaba's product code of ApsaraDB for MongoDB.
pub const PRODUCT: &str = "Dds";
/// The Dds API version.
pub const API_VERSION: &str = "2015-12-01";

/// The Dds operations the gateway calls.
pub mod action {
    pub const UPGRADE_DB_INSTANCE_ENGINE_VERSION: &str = "UpgradeDBInstanceEngineVersion";
    pub const DESCRIBE_DB_INSTANCE_ATTRIBUTE: &str = "DescribeDBInstanceAttribute";
    pub const DESCRIBE_AVAILABLE_ENGINE_VERSION: &str = "DescribeAvailableEngineVersion";
}

/// The most of an answer body the gateway reads; Dds answers are a few kilobytes.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Why a call produced no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Alibaba answered with an error `Code`.
    #[error("alibaba cloud answered {}: {}", .0.http_status, .0.code)]
    Upstream(UpstreamError),
    /// The request was never sent (connection refused, DNS, TLS handshake): safe to retry.
    #[error("alibaba cloud unreachable: {0}")]
    Unreachable(String),
    /// The request may have been sent but no answer came back (timeout, reset): the outcome
    /// is unknown.
    #[error("no answer from alibaba cloud: {0}")]
    OutcomeUnknown(String),
    /// An answer came back that the gateway cannot read.
    #[error("unreadable answer from alibaba cloud (http {http_status})")]
    Unreadable { http_status: u16 },
    /// The gateway has no usable credential.
    #[error("no credentials: {0}")]
    Credentials(#[from] CredentialsError),
    /// The gateway cannot send what was asked (e.g. a signature version it does not speak).
    #[error("{0}")]
    Unsupported(&'static str),
}

/// A Dds API client. Cheap to share behind an `Arc`; the HTTP connection pool is inside.
#[derive(Debug)]
pub struct AlibabaClient {
    http: reqwest::Client,
    endpoint: Option<Url>,
    credentials: Arc<dyn CredentialsProvider>,
    signature_version: SignatureVersion,
    clock: Arc<dyn Clock>,
}

impl AlibabaClient {
    /// Builds the client. Fails only if the TLS stack cannot be set up.
    pub fn new(
        config: &AlibabaConfig,
        credentials: Arc<dyn CredentialsProvider>,
    ) -> Result<Self, reqwest::Error> {
        let http = http_client_builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            http,
            endpoint: config.endpoint.clone(),
            credentials,
            signature_version: config.signature_version,
            clock: Arc::new(SystemClock),
        })
    }

    /// Signs with the time and nonces of `clock` instead of the system's.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The URL a region's requests go to: the configured endpoint, or the table's host.
    /// Validation has already refused regions outside the table when no endpoint is configured.
    pub fn endpoint(&self, region_id: &str) -> Option<Url> {
        match &self.endpoint {
            Some(url) => Some(url.clone()),
            None => Url::parse(&format!("https://{}/", endpoint::host(region_id)?)).ok(),
        }
    }

    /// `UpgradeDBInstanceEngineVersion`, signed but not sent: the caller of [`send_upgrade`]
    /// decides at the last moment whether it leaves.
    ///
    /// [`send_upgrade`]: Self::send_upgrade
    pub async fn sign_upgrade(
        &self,
        region_id: &str,
        db_instance_id: &str,
        engine_version: &str,
        switch_mode: Option<&'static str>,
    ) -> Result<Signed, CallError> {
        let mut params = vec![
            ("RegionId", region_id.to_string()),
            ("DBInstanceId", db_instance_id.to_string()),
            ("EngineVersion", engine_version.to_string()),
        ];
        if let Some(mode) = switch_mode {
            params.push(("SwitchMode", mode.to_string()));
        }
        self.sign(
            action::UPGRADE_DB_INSTANCE_ENGINE_VERSION,
            region_id,
            params,
        )
        .await
    }

    /// Sends a signed `UpgradeDBInstanceEngineVersion`; returns Alibaba's `RequestId`.
    pub async fn send_upgrade(&self, signed: Signed) -> Result<String, CallError> {
        let body = self.send(signed).await?;
        let parsed: response::RequestIdBody =
            serde_json::from_slice(&body.bytes).map_err(|_| CallError::Unreadable {
                http_status: body.http_status,
            })?;
        Ok(parsed.request_id)
    }

    /// `DescribeDBInstanceAttribute`; `Ok(None)` when the answer lists no such instance.
    pub async fn describe_db_instance_attribute(
        &self,
        region_id: &str,
        db_instance_id: &str,
    ) -> Result<Option<InstanceAttribute>, CallError> {
        let params = vec![
            ("RegionId", region_id.to_string()),
            ("DBInstanceId", db_instance_id.to_string()),
        ];
        let body = self
            .call(action::DESCRIBE_DB_INSTANCE_ATTRIBUTE, region_id, params)
            .await?;
        response::parse_instance_attribute(&body.bytes, db_instance_id).map_err(|()| {
            CallError::Unreadable {
                http_status: body.http_status,
            }
        })
    }

    /// `DescribeAvailableEngineVersion`: the versions the instance can be upgraded to.
    pub async fn describe_available_engine_version(
        &self,
        region_id: &str,
        db_instance_id: &str,
    ) -> Result<AvailableEngineVersions, CallError> {
        let params = vec![
            ("RegionId", region_id.to_string()),
            ("DBInstanceId", db_instance_id.to_string()),
        ];
        let body = self
            .call(action::DESCRIBE_AVAILABLE_ENGINE_VERSION, region_id, params)
            .await?;
        response::parse_available_engine_versions(&body.bytes).map_err(|()| CallError::Unreadable {
            http_status: body.http_status,
        })
    }

    /// Signs and sends one RPC call and returns the body of a successful (2xx) answer.
    #[tracing::instrument(skip(self, params), fields(product = PRODUCT, region_id = %region_id))]
    pub async fn call(
        &self,
        action: &'static str,
        region_id: &str,
        params: Vec<(&'static str, String)>,
    ) -> Result<Answer, CallError> {
        let signed = self.sign(action, region_id, params).await?;
        self.send(signed).await
    }

    /// Everything before the send, which may wait (a credential refresh, STS): resolves the
    /// credential and signs the request afresh (a new nonce and the current time).
    pub async fn sign(
        &self,
        action: &'static str,
        region_id: &str,
        params: Vec<(&'static str, String)>,
    ) -> Result<Signed, CallError> {
        let url = self
            .endpoint(region_id)
            .ok_or(CallError::Unsupported("region has no endpoint"))?;
        let credential = self
            .credentials
            .credential()
            .instrument(crate::telemetry::upstream::credentials_span())
            .await?;
        let (time, nonce) = (self.clock.now(), self.clock.nonce());
        let request = match self.signature_version {
            SignatureVersion::V2 => {
                let body = v2_form_body(action, API_VERSION, &credential, params, time, nonce);
                form_post(&self.http, url.clone(), body)
            }
            SignatureVersion::V3 => sign_v3(
                &self.http,
                url.clone(),
                action,
                &credential,
                &params,
                time,
                nonce,
            )
            .map_err(CallError::Unsupported)?,
        };
        Ok(Signed {
            action,
            region_id: region_id.to_string(),
            url,
            request,
            credential,
        })
    }

    /// Sends a signed request: the bytes leave here, in one CLIENT span.
    pub async fn send(&self, signed: Signed) -> Result<Answer, CallError> {
        let span = crate::telemetry::upstream::span(signed.action, &signed.region_id, &signed.url);
        // `traceparent` is not a signed header (neither `host`, `content-type` nor `x-acs-*`).
        let Signed {
            request,
            credential,
            ..
        } = signed;
        let request = request.headers(crate::telemetry::upstream::trace_headers(&span));
        let answer = send(request).instrument(span.clone()).await;
        crate::telemetry::upstream::record(&span, &answer);
        if let Err(err) = &answer
            && codes::credential_expired(err)
        {
            // The retry that follows (see `retry`) signs with a fresh credential.
            self.credentials.rejected_as_expired(&credential);
        }
        answer
    }
}

/// A request signed and ready to leave; nothing has been sent. Signatures expire (Alibaba
/// refuses timestamps 15 minutes off) and nonces are single-use: sign again for each attempt.
pub struct Signed {
    action: &'static str,
    region_id: String,
    url: Url,
    request: reqwest::RequestBuilder,
    /// What it was signed with, to drop from the cache if Alibaba says it has expired.
    credential: Credential,
}

// The request carries the signature and any security token.
impl std::fmt::Debug for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed")
            .field("action", &self.action)
            .field("region_id", &self.region_id)
            .finish_non_exhaustive()
    }
}

/// Sends one signed request and classifies the answer.
async fn send(request: reqwest::RequestBuilder) -> Result<Answer, CallError> {
    let response = request.send().await.map_err(classify_send_error)?;
    let http_status = response.status().as_u16();
    let retry_after = response::parse_retry_after(
        response
            .headers()
            .get("x-acs-retry-after")
            .and_then(|v| v.to_str().ok()),
    );
    let bytes = read_body(response).await?;
    if (200..300).contains(&http_status) {
        return Ok(Answer { http_status, bytes });
    }
    match response::parse_error(http_status, &bytes, retry_after) {
        Some(err) => Err(CallError::Upstream(err)),
        None if http_status >= 500 => Err(CallError::OutcomeUnknown(format!(
            "http {http_status} without an alibaba error body"
        ))),
        None => Err(CallError::Unreadable { http_status }),
    }
}

/// The HTTP client every call the gateway makes to Alibaba Cloud starts from (Dds, STS, the
/// metadata service, credentials URIs): rustls with ring, the gateway's user agent, and no
/// redirects, which would send a signed or token-bearing request somewhere nobody configured.
pub(crate) fn http_client_builder() -> reqwest::ClientBuilder {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("dds-gateway/", env!("CARGO_PKG_VERSION")))
}

/// A successful answer's status and body.
#[derive(Debug)]
pub struct Answer {
    pub http_status: u16,
    pub bytes: Vec<u8>,
}

/// Signature V2, for Dds and STS alike: the common parameters (`SignatureNonce`, `Timestamp`),
/// the security token and the signature join the business parameters in a form body.
pub(crate) fn v2_form_body(
    action: &'static str,
    api_version: &str,
    credential: &Credential,
    params: Vec<(&'static str, String)>,
    time: SystemTime,
    nonce: uuid::Uuid,
) -> String {
    let mut all = signer::common_params(
        action,
        api_version,
        credential.access_key_id(),
        credential.security_token().map(Secret::expose),
        nonce.to_string(),
        time,
    );
    all.extend(params);
    signer::sign_form_body("POST", &all, credential.signing_key())
}

/// A `POST` of a form body. Everything goes in the body, none in the URL: URLs end up in proxy
/// and error logs, and the body carries the security token and signature. Alibaba signs the
/// union of query and body parameters, so both placements verify the same.
pub(crate) fn form_post(
    http: &reqwest::Client,
    url: Url,
    body: impl Into<reqwest::Body>,
) -> reqwest::RequestBuilder {
    http.post(url)
        .header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        )
        .body(body)
}

/// Why a V3 request cannot be built: a credential part with bytes HTTP headers cannot carry.
const NOT_A_HEADER: &str = "a credential cannot be sent in an HTTP header";

/// Signature V3, laid out as the official SDK sends RPC calls: the business parameters in the
/// query string (they hold no secret), an empty body, and action, version, date, a fresh nonce,
/// the body hash and any security token in signed `x-acs-*` headers, then `Authorization`.
fn sign_v3(
    http: &reqwest::Client,
    mut url: Url,
    action: &'static str,
    credential: &Credential,
    params: &[(&'static str, String)],
    time: SystemTime,
    nonce: uuid::Uuid,
) -> Result<reqwest::RequestBuilder, &'static str> {
    let query = v3::canonical_query_string(params);
    url.set_query(Some(&query).filter(|q| !q.is_empty()).map(String::as_str));
    // The host is signed, so send exactly the value that was signed rather than leave it to
    // the HTTP stack.
    let host = match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        (None, _) => return Err("endpoint has no host"),
    };
    let date = signer::format_timestamp(time);
    let nonce = nonce.simple().to_string();
    let mut headers: Vec<(&'static str, &str)> = vec![
        (v3::header::HOST, &host),
        (v3::header::ACTION, action),
        (v3::header::VERSION, API_VERSION),
        (v3::header::DATE, &date),
        (v3::header::SIGNATURE_NONCE, &nonce),
        (v3::header::CONTENT_SHA256, v3::EMPTY_PAYLOAD_SHA256),
    ];
    if let Some(token) = credential.security_token() {
        headers.push((v3::header::SECURITY_TOKEN, token.expose()));
    }
    let request = v3::Request {
        method: "POST",
        canonical_uri: "/",
        query: params,
        headers: &headers,
        hashed_payload: v3::EMPTY_PAYLOAD_SHA256,
    };
    let signed = v3::sign(
        &request,
        credential.access_key_id(),
        credential.signing_key_v3(),
    );

    let mut map = HeaderMap::with_capacity(headers.len() + 1);
    for (name, value) in headers {
        let mut value = HeaderValue::from_str(value).map_err(|_| NOT_A_HEADER)?;
        // Never indexed by HTTP/2 header compression, and `Sensitive` in Debug.
        value.set_sensitive(name == v3::header::SECURITY_TOKEN);
        map.insert(HeaderName::from_static(name), value);
    }
    let mut authorization =
        HeaderValue::from_str(signed.authorization.as_str()).map_err(|_| NOT_A_HEADER)?;
    authorization.set_sensitive(true);
    map.insert(AUTHORIZATION, authorization);
    Ok(http.post(url).headers(map))
}

/// Reads at most [`MAX_BODY_BYTES`] of an answer.
async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, CallError> {
    let http_status = response.status().as_u16();
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(classify_send_error)? {
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(CallError::Unreadable { http_status });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Sorts a reqwest failure into "never sent" and "outcome unknown". The URL is dropped from the
/// error first: it is the endpoint only, but errors must never grow a place for secrets.
fn classify_send_error(err: reqwest::Error) -> CallError {
    let err = err.without_url();
    let detail = error_chain(&err);
    if err.is_connect() {
        CallError::Unreachable(detail)
    } else {
        CallError::OutcomeUnknown(detail)
    }
}

/// `error: cause: cause` for logs.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
