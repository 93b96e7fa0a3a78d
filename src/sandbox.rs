//! A loopback-only simulation of the Dds API (2015-12-01) for trying the gateway without a cloud
//! account, and for the integration tests. It verifies signatures V2 and V3 (chosen, as Alibaba
//! does, by an `Authorization: ACS3-...` header) exactly as Alibaba Cloud does
//! (`SignatureDoesNotMatch`, `SignatureNonceUsed`, `InvalidTimeStamp.*`, unknown keys, STS tokens),
//! keeps a few demo instances (`Running` → `EngineVersionUpgrading` → `Running` on the new
//! version), and answers `UpgradeDBInstanceEngineVersion`, `DescribeDBInstanceAttribute` and
//! `DescribeAvailableEngineVersion` with Alibaba's shapes and error codes. Faults can be queued
//! (for any request or one action): error answers with `x-acs-retry-after`, raw bodies, delays,
//! dropped connections, and any of those after acting on the request. Its status can also lag
//! its own action, as Alibaba's does: for a while after an accepted upgrade,
//! `DescribeDBInstanceAttribute` still shows the instance as it was ([`Sandbox::lag_status`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::alibaba::credentials::{Credential, Secret};
use crate::alibaba::signer::{self, param, v3};
use crate::alibaba::{API_VERSION, action};
use crate::config::SignatureVersion;
use crate::upgrade::instance::version_key;

/// The sandbox's AccessKey ID: obviously fake, accepted only by the sandbox.
pub const ACCESS_KEY_ID: &str = "testid";
/// The sandbox's AccessKey secret.
pub const ACCESS_KEY_SECRET: &str = "testsecret";
/// The sandbox's host name in `HostId`.
const HOST_ID: &str = "mongodb.sandbox.local";
/// Alibaba refuses timestamps further than this from its clock.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);
/// Engine versions the simulated Dds offers, oldest first.
const OFFERED_VERSIONS: &[&str] = &["3.4", "4.0", "4.2", "4.4", "5.0", "6.0", "7.0", "8.0"];

/// A simulated instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub db_instance_id: String,
    pub region_id: String,
    pub status: String,
    pub engine_version: String,
}

/// An answer the sandbox gives the next request instead of the real one (tests, demos).
#[derive(Debug, Clone)]
pub enum Fault {
    /// Closes the connection (with a TCP reset) after reading the request, without answering
    /// and without acting on it.
    Drop,
    /// Acts on the request (verifies and applies it, e.g. starts the upgrade), then answers with
    /// the inner fault instead of the real answer: Alibaba did it, the client never heard.
    AfterActing(Box<Fault>),
    /// An Alibaba error body with this HTTP status and `Code`, and `x-acs-retry-after` if given.
    Error {
        status: u16,
        code: &'static str,
        retry_after_ms: Option<u64>,
    },
    /// A raw body, e.g. something unreadable.
    Body { status: u16, body: &'static str },
    /// The normal answer, after a delay.
    Delay(Duration),
}

/// A request the sandbox received, signature included or not.
#[derive(Clone)]
pub struct Received {
    pub method: String,
    /// How it was signed: V3 when it carried `Authorization: ACS3-...`, else V2.
    pub signature_version: SignatureVersion,
    /// `Action` (V2) or `x-acs-action` (V3), or empty when the request had none.
    pub action: String,
    /// The request's parameters (query and form body), `Signature` included.
    pub params: BTreeMap<String, String>,
    /// The query string as sent (the gateway's V2 requests send everything in the body).
    pub raw_query: Option<String>,
    /// The headers, names in lower case, repeated values joined with `,`.
    pub headers: BTreeMap<String, String>,
    /// The body as sent.
    pub body: Bytes,
}

// Signatures and security tokens are credentials: `***` in Debug.
impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |map: &'_ BTreeMap<String, String>, secret: &[&str]| {
            map.iter()
                .map(|(k, v)| {
                    let v = if secret.contains(&k.as_str()) {
                        "***"
                    } else {
                        v.as_str()
                    };
                    (k.clone(), v.to_string())
                })
                .collect::<BTreeMap<String, String>>()
        };
        f.debug_struct("Received")
            .field("method", &self.method)
            .field("signature_version", &self.signature_version)
            .field("action", &self.action)
            .field(
                "params",
                &redact(&self.params, &[param::SIGNATURE, param::SECURITY_TOKEN]),
            )
            .field(
                "headers",
                &redact(
                    &self.headers,
                    &[v3::header::AUTHORIZATION, v3::header::SECURITY_TOKEN],
                ),
            )
            .finish_non_exhaustive()
    }
}

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
            .finish()
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            upgrade_duration: Duration::from_secs(20),
            security_token: None,
            extra_keys: Vec::new(),
        }
    }
}

struct State_ {
    config: SandboxConfig,
    /// The AccessKeys accepted, by AccessKey ID.
    keys: HashMap<String, Credential>,
    instances: BTreeMap<String, (Instance, Option<(String, Instant)>)>,
    /// Nonces seen, with when they may be forgotten (after the timestamp window).
    nonces: HashMap<String, SystemTime>,
    /// Queued faults, each for one action or (`None`) any.
    faults: VecDeque<(Option<&'static str>, Fault)>,
    received: Vec<Received>,
    /// Instance ids of the upgrades started, in order.
    started: Vec<String>,
    /// How long `DescribeDBInstanceAttribute` keeps showing an instance as it was before an
    /// accepted upgrade.
    status_lag: Duration,
    /// What it shows until then, by instance id.
    stale: HashMap<String, (Instance, Instant)>,
}

type Shared = Arc<Mutex<State_>>;

/// A running sandbox; stops when dropped.
pub struct Sandbox {
    addr: SocketAddr,
    state: Shared,
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
        let keys = std::iter::once(own_credential(&config))
            .chain(config.extra_keys.iter().cloned())
            .map(|c| (c.access_key_id().to_string(), c))
            .collect();
        let state = Arc::new(Mutex::new(State_ {
            config,
            keys,
            instances: demo_instances()
                .into_iter()
                .map(|i| (i.db_instance_id.clone(), (i, None)))
                .collect(),
            nonces: HashMap::new(),
            faults: VecDeque::new(),
            received: Vec::new(),
            started: Vec::new(),
            status_lag: Duration::ZERO,
            stale: HashMap::new(),
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state))
            .into_make_service_with_connect_info::<connection::Connection>();
        let listener = connection::SeverableListener::new(listener);
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(error = %err, "sandbox stopped");
            }
        });
        tracing::info!(%addr, "sandbox Dds API listening (loopback only)");
        Ok(Self { addr, state, task })
    }

    /// The endpoint URL to configure as `alibaba.endpoint`.
    pub fn endpoint(&self) -> reqwest::Url {
        // A loopback socket address always forms a valid URL.
        reqwest::Url::parse(&format!("http://{}/", self.addr))
            .unwrap_or_else(|_| unreachable!("loopback address is a valid URL"))
    }

    /// The sandbox's own credential (`testid`, with `SandboxConfig::security_token`).
    pub fn credential(&self) -> Credential {
        own_credential(&lock(&self.state).config)
    }

    /// Queues an answer for the next request.
    pub fn push_fault(&self, fault: Fault) {
        lock(&self.state).faults.push_back((None, fault));
    }

    /// Queues an answer for the next request that names `action`; others pass it by.
    pub fn push_fault_on(&self, action: &'static str, fault: Fault) {
        lock(&self.state).faults.push_back((Some(action), fault));
    }

    /// From now on, `DescribeDBInstanceAttribute` shows an instance as it was before an accepted
    /// upgrade for `lag` after it: `Running` on the old version although the upgrade is under way.
    /// `Duration::ZERO` ends every lag at once: the view catches up.
    pub fn lag_status(&self, lag: Duration) {
        let mut state = lock(&self.state);
        state.status_lag = lag;
        if lag.is_zero() {
            state.stale.clear();
        }
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
        lock(&self.state)
            .started
            .iter()
            .filter(|s| *s == id)
            .count()
    }

    /// An instance as it is now.
    pub fn instance(&self, id: &str) -> Option<Instance> {
        let mut state = lock(&self.state);
        settle(&mut state, id).cloned()
    }
}

fn own_credential(config: &SandboxConfig) -> Credential {
    Credential::new(
        ACCESS_KEY_ID,
        Secret::new(ACCESS_KEY_SECRET),
        config.security_token.clone().map(Secret::new),
        None,
        "sandbox",
    )
}

fn demo_instances() -> Vec<Instance> {
    let instance = |id: &str, region: &str, status: &str, version: &str| Instance {
        db_instance_id: id.to_string(),
        region_id: region.to_string(),
        status: status.to_string(),
        engine_version: version.to_string(),
    };
    vec![
        instance("dds-sandbox01", "cn-hangzhou", "Running", "4.2"),
        instance("dds-sandbox02", "cn-hangzhou", "Running", "4.4"),
        instance("dds-sandbox03", "cn-hangzhou", "Running", "5.0"),
        instance("dds-sandboxsz", "cn-shenzhen", "Running", "6.0"),
        instance("dds-sandboxbusy", "cn-hangzhou", "Rebooting", "4.4"),
        instance("dds-sandboxforbidden", "cn-hangzhou", "Running", "4.4"),
    ]
}

fn lock(state: &Shared) -> MutexGuard<'_, State_> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Applies a finished upgrade and returns the instance.
fn settle<'a>(state: &'a mut State_, id: &str) -> Option<&'a Instance> {
    let (instance, upgrade) = state.instances.get_mut(id)?;
    if let Some((target, done_at)) = upgrade
        && Instant::now() >= *done_at
    {
        instance.engine_version = std::mem::take(target);
        instance.status = "Running".to_string();
        *upgrade = None;
    }
    Some(instance)
}

/// An Alibaba-shaped error answer.
fn error(status: u16, code: &str, message: &str) -> Response {
    let request_id = new_request_id();
    let body = json!({
        "RequestId": request_id,
        "HostId": HOST_ID,
        "Code": code,
        "Message": message,
        "Recommend": format!("https://api.alibabacloud.com/troubleshoot?q={code}&product=Dds&requestId={request_id}"),
    });
    json_response(status, &body)
}

/// [`error`], boxed for `Result`s (a response is large).
fn reject(status: u16, code: &str, message: &str) -> Box<Response> {
    Box::new(error(status, code, message))
}

fn json_response(status: u16, body: &serde_json::Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string().to_uppercase()
}

async fn handle(
    State(state): State<Shared>,
    axum::extract::ConnectInfo(connection): axum::extract::ConnectInfo<connection::Connection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let params = match collect_params(query.as_deref(), &headers, &body) {
        Ok(params) => params,
        Err(response) => return *response,
    };
    // Alibaba tells the versions apart by the `Authorization` header's algorithm.
    let version = match headers.get(header::AUTHORIZATION) {
        Some(value) if value.as_bytes().starts_with(b"ACS3-") => SignatureVersion::V3,
        _ => SignatureVersion::V2,
    };
    let (action, api_version) = match version {
        SignatureVersion::V2 => (
            param_of(&params, param::ACTION),
            param_of(&params, param::VERSION),
        ),
        SignatureVersion::V3 => (
            header_of(&headers, v3::header::ACTION),
            header_of(&headers, v3::header::VERSION),
        ),
    };
    let fault = {
        let mut state = lock(&state);
        state.received.push(Received {
            method: method.to_string(),
            signature_version: version,
            action: action.clone(),
            params: params.clone(),
            raw_query: query.clone(),
            headers: header_map(&headers),
            body: body.clone(),
        });
        let position = state
            .faults
            .iter()
            .position(|(only, _)| only.is_none_or(|a| a == action));
        position
            .and_then(|i| state.faults.remove(i))
            .map(|(_, f)| f)
    };
    let incoming = Incoming {
        version,
        method: method.as_str(),
        path: uri.path(),
        query: query.as_deref(),
        headers: &headers,
        body: &body,
        params: &params,
        action: &action,
        api_version: &api_version,
    };
    match fault {
        Some(Fault::AfterActing(inner)) => {
            let answer = act(&state, &incoming);
            inject(*inner, &connection).await.unwrap_or(answer)
        }
        Some(fault) => match inject(fault, &connection).await {
            Some(response) => response,
            None => act(&state, &incoming),
        },
        None => act(&state, &incoming),
    }
}

/// What answering a request needs of it.
struct Incoming<'a> {
    version: SignatureVersion,
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
    body: &'a [u8],
    params: &'a BTreeMap<String, String>,
    action: &'a str,
    api_version: &'a str,
}

/// Verifies the signature (V2 or V3) and answers the request, changing the simulated instances.
fn act(state: &Shared, incoming: &Incoming<'_>) -> Response {
    let mut state = lock(state);
    let verified = match incoming.version {
        SignatureVersion::V2 => verify(&mut state, incoming.method, incoming.params),
        SignatureVersion::V3 => {
            let request = V3Request {
                method: incoming.method,
                path: incoming.path,
                query: incoming.query,
                headers: incoming.headers,
                body: incoming.body,
            };
            verify_v3(&mut state, &request)
        }
    };
    if let Err(response) = verified {
        return *response;
    }
    dispatch(
        &mut state,
        incoming.action,
        incoming.api_version,
        incoming.params,
    )
}

/// The answer a fault gives instead of the real one; `None` to answer normally (after a delay).
async fn inject(fault: Fault, connection: &connection::Connection) -> Option<Response> {
    match fault {
        Fault::Error {
            status,
            code,
            retry_after_ms,
        } => {
            let mut response = error(status, code, "injected by the sandbox");
            if let Some(ms) = retry_after_ms
                && let Ok(value) = ms.to_string().parse()
            {
                response.headers_mut().insert("x-acs-retry-after", value);
            }
            Some(response)
        }
        Fault::Body { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some((status, body).into_response())
        }
        Fault::Delay(delay) => {
            tokio::time::sleep(delay).await;
            None
        }
        Fault::Drop => {
            // The response below is never written: the connection fails on the first write.
            connection.sever();
            Some(StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        // Nested `AfterActing`: the request was acted on already.
        Fault::AfterActing(inner) => Box::pin(inject(*inner, connection)).await,
    }
}

fn param_of(params: &BTreeMap<String, String>, name: &str) -> String {
    params.get(name).cloned().unwrap_or_default()
}

/// A header's values joined with `,`, empty when absent.
fn header_of(headers: &HeaderMap, name: &str) -> String {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    values.join(",")
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .keys()
        .map(|name| (name.as_str().to_string(), header_of(headers, name.as_str())))
        .collect()
}

/// `name=value` pairs of a query string or form body, percent-decoded.
fn parse_pairs(text: &str) -> Result<Vec<(String, String)>, Box<Response>> {
    let mut pairs = Vec::new();
    for pair in text.split('&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(name), Some(value)) =
            (signer::percent_decode(name), signer::percent_decode(value))
        else {
            return Err(reject(
                400,
                "InvalidParameter",
                "A parameter is not correctly percent-encoded.",
            ));
        };
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// The union of query and form body parameters, as Alibaba signs them.
fn collect_params(
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<BTreeMap<String, String>, Box<Response>> {
    let mut params = BTreeMap::new();
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body = if is_form {
        std::str::from_utf8(body)
            .map_err(|_| reject(400, "InvalidParameter", "The form body is not UTF-8."))?
    } else {
        ""
    };
    for (name, value) in parse_pairs(query.unwrap_or(""))?
        .into_iter()
        .chain(parse_pairs(body)?)
    {
        if params.insert(name.clone(), value).is_some() {
            return Err(reject(
                400,
                "InvalidParameter",
                &format!("The parameter {name} appears more than once."),
            ));
        }
    }
    Ok(params)
}

/// Signature V2 verification, in Alibaba's order of checks.
fn verify(
    state: &mut State_,
    method: &str,
    params: &BTreeMap<String, String>,
) -> Result<(), Box<Response>> {
    for name in [
        param::ACTION,
        param::VERSION,
        param::ACCESS_KEY_ID,
        param::SIGNATURE,
        param::SIGNATURE_METHOD,
        param::SIGNATURE_VERSION,
        param::SIGNATURE_NONCE,
        param::TIMESTAMP,
    ] {
        if params.get(name).is_none_or(String::is_empty) {
            return Err(reject(
                400,
                &format!("Missing{name}"),
                &format!("{name} is mandatory for this action."),
            ));
        }
    }
    let get = |name: &str| params.get(name).map(String::as_str).unwrap_or_default();
    if let Some(format) = params.get(param::FORMAT)
        && !format.eq_ignore_ascii_case("json")
        && !format.eq_ignore_ascii_case("xml")
    {
        return Err(reject(
            400,
            "InvalidParameter.Format",
            "Specified parameter format is not valid.",
        ));
    }
    if get(param::SIGNATURE_METHOD) != signer::SIGNATURE_METHOD {
        return Err(reject(
            400,
            "InvalidSignatureMethod",
            "Specified signature method is not valid.",
        ));
    }
    if get(param::SIGNATURE_VERSION) != signer::SIGNATURE_VERSION {
        return Err(reject(
            400,
            "InvalidSignatureVersion",
            "Specified signature version is not valid.",
        ));
    }
    let now = check_timestamp(get(param::TIMESTAMP))?;
    let credential = known_key(state, get(param::ACCESS_KEY_ID))?;

    let signed: Vec<(&str, &str)> = params
        .iter()
        .filter(|(name, _)| name.as_str() != param::SIGNATURE)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let expected = signer::sign(method, &signed, credential.signing_key());
    if expected.signature.as_str() != get(param::SIGNATURE) {
        // Alibaba echoes its string to sign, so a client can see where it differs.
        return Err(reject(
            400,
            "SignatureDoesNotMatch",
            &format!(
                "Specified signature is not matched with our calculation. server string to sign is:{}",
                expected.string_to_sign
            ),
        ));
    }

    check_security_token(
        &credential,
        params.get(param::SECURITY_TOKEN).map(String::as_str),
    )?;
    check_nonce(state, get(param::SIGNATURE_NONCE), now)
}

/// The parts of a request signature V3 covers, as received.
struct V3Request<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
    body: &'a [u8],
}

/// Headers every V3 request must carry, and sign.
const V3_REQUIRED_HEADERS: &[&str] = &[
    v3::header::HOST,
    v3::header::ACTION,
    v3::header::VERSION,
    v3::header::DATE,
    v3::header::SIGNATURE_NONCE,
    v3::header::CONTENT_SHA256,
];

/// Signature V3 verification: the `Authorization` header taken apart, the required headers
/// present and signed, the body hash, the date, the key, then the signature recomputed from
/// what arrived (the headers named in `SignedHeaders`, the query string, the body's hash).
fn verify_v3(state: &mut State_, request: &V3Request<'_>) -> Result<(), Box<Response>> {
    let incomplete = |detail: &str| {
        reject(
            400,
            "IncompleteSignature",
            &format!("The request signature does not conform to Aliyun standards. {detail}"),
        )
    };
    let authorization = header_of(request.headers, v3::header::AUTHORIZATION);
    let Some(auth) = v3::ParsedAuthorization::parse(&authorization) else {
        return Err(incomplete("The Authorization header is malformed."));
    };
    if auth.algorithm != v3::ALGORITHM {
        return Err(reject(
            400,
            "InvalidSignatureMethod",
            "Specified signature method is not valid.",
        ));
    }
    for name in V3_REQUIRED_HEADERS {
        if header_of(request.headers, name).is_empty() {
            return Err(incomplete(&format!("The header {name} is missing.")));
        }
    }
    // Every signable header that was sent must be signed, and every signed one sent: an
    // unsigned `x-acs-security-token` or `x-acs-date` could be swapped in transit.
    for name in request.headers.keys() {
        if v3::is_signed_header(name.as_str())
            && !auth.signed_headers.iter().any(|s| s == name.as_str())
        {
            return Err(incomplete(&format!("The header {name} is not signed.")));
        }
    }
    for name in &auth.signed_headers {
        if !request.headers.contains_key(name.as_str()) {
            return Err(incomplete(&format!("The signed header {name} is missing.")));
        }
    }
    let hashed_payload = v3::hashed_request_payload(request.body);
    if header_of(request.headers, v3::header::CONTENT_SHA256) != hashed_payload {
        return Err(reject(
            400,
            "SignatureDoesNotMatch",
            "Specified x-acs-content-sha256 is not the SHA-256 of the request body.",
        ));
    }
    let now = check_timestamp(&header_of(request.headers, v3::header::DATE))?;
    let credential = known_key(state, &auth.access_key_id)?;

    let query = parse_pairs(request.query.unwrap_or(""))?;
    let signed_headers: Vec<(String, String)> = auth
        .signed_headers
        .iter()
        .flat_map(|name| {
            request.headers.get_all(name.as_str()).iter().map(move |v| {
                (
                    name.clone(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
        })
        .collect();
    let expected = v3::sign(
        &v3::Request {
            method: request.method,
            canonical_uri: request.path,
            query: &query,
            headers: &signed_headers,
            hashed_payload: &hashed_payload,
        },
        &auth.access_key_id,
        credential.signing_key_v3(),
    );
    if expected.signature.as_str() != auth.signature {
        // Alibaba echoes what it signed, so a client can see where it differs.
        return Err(reject(
            400,
            "SignatureDoesNotMatch",
            &format!(
                "Specified signature is not matched with our calculation. server string to sign is:{} canonical request is:{}",
                expected.string_to_sign, expected.canonical_request
            ),
        ));
    }

    let token = request.headers.contains_key(v3::header::SECURITY_TOKEN);
    check_security_token(
        &credential,
        token
            .then(|| header_of(request.headers, v3::header::SECURITY_TOKEN))
            .as_deref(),
    )?;
    check_nonce(
        state,
        &header_of(request.headers, v3::header::SIGNATURE_NONCE),
        now,
    )
}

/// Parses a `yyyy-MM-ddTHH:mm:ssZ` request time and refuses one too far from the sandbox's
/// clock; returns the sandbox's "now".
fn check_timestamp(text: &str) -> Result<SystemTime, Box<Response>> {
    let Some(timestamp) = signer::parse_timestamp(text) else {
        return Err(reject(
            400,
            "InvalidTimeStamp.Format",
            "Specified time stamp or date value is not well formatted.",
        ));
    };
    let now = SystemTime::now();
    let skew = now
        .duration_since(timestamp)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or_default();
    if skew > MAX_CLOCK_SKEW {
        return Err(reject(
            400,
            "InvalidTimeStamp.Expired",
            "Specified time stamp or date value is expired.",
        ));
    }
    Ok(now)
}

/// The credential of a known AccessKey ID, or Alibaba's answer to an unknown one.
fn known_key(state: &State_, access_key_id: &str) -> Result<Credential, Box<Response>> {
    state.keys.get(access_key_id).cloned().ok_or_else(|| {
        reject(
            404,
            "InvalidAccessKeyId.NotFound",
            "Specified access key is not found.",
        )
    })
}

/// Checks the STS token sent against the one the key was issued with.
fn check_security_token(credential: &Credential, sent: Option<&str>) -> Result<(), Box<Response>> {
    match (credential.security_token(), sent) {
        (None, None) => Ok(()),
        (Some(expected), Some(sent)) if expected.expose() == sent => Ok(()),
        (Some(_), None) => Err(reject(
            400,
            "MissingSecurityToken",
            "SecurityToken is mandatory for this action.",
        )),
        _ => Err(reject(
            400,
            "InvalidSecurityToken.MismatchWithAccessKey",
            "Specified SecurityToken mismatch with the AccessKey.",
        )),
    }
}

/// Refuses a nonce seen within the timestamp window, and remembers this one.
fn check_nonce(state: &mut State_, nonce: &str, now: SystemTime) -> Result<(), Box<Response>> {
    state.nonces.retain(|_, forget_at| *forget_at > now);
    if state.nonces.contains_key(nonce) {
        return Err(reject(
            400,
            "SignatureNonceUsed",
            "Specified signature nonce was used already.",
        ));
    }
    state
        .nonces
        .insert(nonce.to_string(), now + 2 * MAX_CLOCK_SKEW);
    Ok(())
}

/// Answers a verified request for `action` of API version `version`.
fn dispatch(
    state: &mut State_,
    action: &str,
    version: &str,
    params: &BTreeMap<String, String>,
) -> Response {
    let get = |name: &str| params.get(name).map(String::as_str).unwrap_or_default();
    if version != API_VERSION
        || ![
            action::UPGRADE_DB_INSTANCE_ENGINE_VERSION,
            action::DESCRIBE_DB_INSTANCE_ATTRIBUTE,
            action::DESCRIBE_AVAILABLE_ENGINE_VERSION,
        ]
        .contains(&action)
    {
        return error(
            404,
            "InvalidApi.NotFound",
            "Specified api is not found, please check your url and method.",
        );
    }
    let id = get("DBInstanceId");
    if id.is_empty() {
        return error(
            400,
            "MissingDBInstanceId",
            "DBInstanceId is mandatory for this action.",
        );
    }
    let region = params.get("RegionId");
    let known_region = |r: &str| state.instances.values().any(|(i, _)| i.region_id == r);
    if let Some(region) = region
        && !known_region(region)
    {
        return error(
            404,
            "InvalidRegion.NotFound",
            "The RegionId provided does not exist in our records.",
        );
    }
    let upgrade_duration = state.config.upgrade_duration;
    let Some(instance) = settle(state, id)
        .filter(|i| region.is_none_or(|r| *r == i.region_id))
        .cloned()
    else {
        return error(
            404,
            "InvalidInstanceId.NotFound",
            "The InstanceId provided does not exist in our records.",
        );
    };
    if instance.db_instance_id == "dds-sandboxforbidden" {
        return error(
            403,
            "Forbidden.RAM",
            "User not authorized to operate on the specified resource, or this API doesn't support RAM.",
        );
    }
    let later: Vec<&str> = OFFERED_VERSIONS
        .iter()
        .copied()
        .filter(|v| version_key(v) > version_key(&instance.engine_version))
        .collect();

    let shown = match state.stale.get(id) {
        Some((before, until)) if Instant::now() < *until => before.clone(),
        _ => instance.clone(),
    };
    match action {
        action::DESCRIBE_DB_INSTANCE_ATTRIBUTE => json_response(
            200,
            &json!({
                "RequestId": new_request_id(),
                "DBInstances": { "DBInstance": [ {
                    "DBInstanceId": shown.db_instance_id,
                    "DBInstanceStatus": shown.status,
                    "EngineVersion": shown.engine_version,
                    "Engine": "MongoDB",
                    "DBInstanceType": "replicate",
                    "RegionId": instance.region_id,
                    "ZoneId": format!("{}-b", instance.region_id),
                    "LockMode": "Unlock",
                    "StorageEngine": "WiredTiger",
                } ] }
            }),
        ),
        action::DESCRIBE_AVAILABLE_ENGINE_VERSION => json_response(
            200,
            &json!({ "RequestId": new_request_id(), "EngineVersions": { "EngineVersion": later } }),
        ),
        _ => {
            let target = get("EngineVersion");
            if target.is_empty() {
                return error(
                    400,
                    "MissingEngineVersion",
                    "EngineVersion is mandatory for this action.",
                );
            }
            if !OFFERED_VERSIONS.contains(&target) {
                return error(
                    400,
                    "InvalidEngineVersion",
                    "Specified parameter EngineVersion is not valid.",
                );
            }
            if !matches!(
                params.get("SwitchMode").map(String::as_str),
                None | Some("0" | "1")
            ) {
                return error(
                    400,
                    "InvalidParameter",
                    "Specified parameter SwitchMode is not valid.",
                );
            }
            if instance.status != "Running" {
                return error(
                    400,
                    "IncorrectDBInstanceState",
                    "Current DB instance state does not support this operation.",
                );
            }
            if !later.contains(&target) {
                return error(
                    400,
                    "EngineVersion.ERROR",
                    "Target engineVersion must be greater than the current one.",
                );
            }
            if !state.status_lag.is_zero() {
                let until = Instant::now() + state.status_lag;
                state
                    .stale
                    .insert(id.to_string(), (instance.clone(), until));
            }
            // The maintenance window is not simulated: both switch modes start at once.
            if let Some((instance, upgrade)) = state.instances.get_mut(id) {
                instance.status = "EngineVersionUpgrading".to_string();
                *upgrade = Some((target.to_string(), Instant::now() + upgrade_duration));
            }
            state.started.push(id.to_string());
            json_response(200, &json!({ "RequestId": new_request_id() }))
        }
    }
}

/// Connections the sandbox can cut on purpose (`Fault::Drop`): each accepted socket carries a
/// flag; once a handler sets it, the next read or write fails and the socket closes with a reset.
mod connection {
    use std::io;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::{TcpListener, TcpStream};

    pub(super) struct SeverableListener(TcpListener);

    impl SeverableListener {
        pub(super) fn new(listener: TcpListener) -> Self {
            Self(listener)
        }
    }

    impl axum::serve::Listener for SeverableListener {
        type Io = Severable;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                match self.0.accept().await {
                    Ok((stream, addr)) => {
                        let severed = Arc::new(AtomicBool::new(false));
                        return (Severable { stream, severed }, addr);
                    }
                    // E.g. out of file descriptors: wait a little rather than spin.
                    Err(err) => {
                        tracing::warn!(error = %err, "sandbox cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }

        fn local_addr(&self) -> io::Result<Self::Addr> {
            self.0.local_addr()
        }
    }

    /// A handler's handle on its connection.
    #[derive(Clone)]
    pub(super) struct Connection(Arc<AtomicBool>);

    impl Connection {
        pub(super) fn sever(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, SeverableListener>>
        for Connection
    {
        fn connect_info(stream: axum::serve::IncomingStream<'_, SeverableListener>) -> Self {
            Self(Arc::clone(&stream.io().severed))
        }
    }

    pub(super) struct Severable {
        stream: TcpStream,
        severed: Arc<AtomicBool>,
    }

    impl Severable {
        fn cut(&self) -> Option<io::Error> {
            if !self.severed.load(Ordering::SeqCst) {
                return None;
            }
            // Closing with a zero linger sends a reset rather than an orderly end.
            let _ = self.stream.set_zero_linger();
            Some(io::Error::from(io::ErrorKind::ConnectionReset))
        }
    }

    impl AsyncRead for Severable {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.cut() {
                Some(err) => Poll::Ready(Err(err)),
                None => Pin::new(&mut self.stream).poll_read(cx, buf),
            }
        }
    }

    impl AsyncWrite for Severable {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            match self.cut() {
                Some(err) => Poll::Ready(Err(err)),
                None => Pin::new(&mut self.stream).poll_write(cx, buf),
            }
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.cut() {
                Some(err) => Poll::Ready(Err(err)),
                None => Pin::new(&mut self.stream).poll_flush(cx),
            }
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.cut() {
                Some(err) => Poll::Ready(Err(err)),
                None => Pin::new(&mut self.stream).poll_shutdown(cx),
            }
        }
    }
}
