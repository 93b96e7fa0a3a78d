//! Fake Alibaba Cloud credential endpoints for tests, as real loopback HTTP servers: STS (checks
//! the V2 signature of `AssumeRole` with the base key, takes OIDC tokens for
//! `AssumeRoleWithOIDC`), the ECS metadata service (IMDSv2 session tokens, or IMDSv1 only), and a
//! credentials URI. Every issued secret and token contains `canary`, for the leak test.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use dds_gateway::testing::alibaba::credentials::{Credential, Secret};
use dds_gateway::testing::alibaba::signer::{self, SigningKey};
use serde_json::json;

/// The base AccessKey the fake STS trusts for `AssumeRole`.
pub const BASE_ID: &str = "testid";
pub const BASE_SECRET: &str = "testsecret";
pub const ROLE_ARN: &str = "acs:ram::1234567890:role/dds-gateway";
pub const OIDC_PROVIDER_ARN: &str = "acs:ram::1234567890:oidc-provider/ack-rrsa";
pub const IMDS_TOKEN: &str = "imds-session-token-canary";
pub const ROLE_NAME: &str = "GatewayEcsRole";

/// What the fake cloud was asked and how it should answer.
#[derive(Default)]
pub struct FakeState {
    /// `Action`s received by STS, in order.
    pub sts_actions: Vec<String>,
    /// OIDC tokens received by `AssumeRoleWithOIDC`.
    pub oidc_tokens: Vec<String>,
    /// Answers to fail with (`Code`), before answering normally again.
    pub sts_failures: usize,
    /// Lifetime of issued credentials.
    pub lifetime: Option<Duration>,
    pub issued: usize,
    /// IMDS: refuse session tokens (an IMDSv1-only metadata service).
    pub imds_v1_only: bool,
    pub imds_token_seen: Vec<Option<String>>,
    pub uri_calls: usize,
    /// The credentials URI answers after this long (a slow sidecar).
    pub uri_delay: Option<Duration>,
    /// Answers of the credentials URI to fail with 503 (a sidecar still starting), before
    /// answering normally.
    pub uri_failures: usize,
}

#[derive(Clone)]
pub struct Fake {
    pub addr: std::net::SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
}

impl Fake {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let app = axum::Router::new()
            .route("/", axum::routing::post(sts))
            .route("/latest/api/token", axum::routing::put(imds_token))
            .route(
                "/latest/meta-data/ram/security-credentials/",
                axum::routing::get(imds_roles),
            )
            .route(
                "/latest/meta-data/ram/security-credentials/{role}",
                axum::routing::get(imds_credentials),
            )
            .route("/creds", axum::routing::get(uri_credentials))
            .with_state(Arc::clone(&state));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }
}

/// The AccessKeyId of the `n`th credential the fake issues.
pub fn issued(n: usize) -> String {
    format!("STS.FakeIssuedKey{n:04}")
}

/// Issues the next temporary credential.
fn issue(state: &mut FakeState) -> serde_json::Value {
    state.issued += 1;
    let lifetime = state.lifetime.unwrap_or(Duration::from_secs(3600));
    json!({
        "AccessKeyId": issued(state.issued),
        "AccessKeySecret": format!("issued-secret-canary-{}", state.issued),
        "SecurityToken": format!("issued-token-canary-{}", state.issued),
        "Expiration": signer::format_timestamp(SystemTime::now() + lifetime),
    })
}

fn alibaba_error(status: u16, code: &str, message: &str) -> Response {
    let body = json!({"RequestId": "FAKE-REQUEST", "Code": code, "Message": message});
    (StatusCode::from_u16(status).unwrap(), body.to_string()).into_response()
}

async fn sts(State(state): State<Arc<Mutex<FakeState>>>, body: Bytes) -> Response {
    let params: BTreeMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    let mut state = state.lock().unwrap();
    state.sts_actions.push(get("Action"));
    if state.sts_failures > 0 {
        state.sts_failures -= 1;
        // Like Alibaba, the message echoes what was signed: it must never reach a log.
        return alibaba_error(
            403,
            "NoPermission",
            &format!(
                "You are not authorized. stringToSign: {}",
                get("SecurityToken")
            ),
        );
    }
    if get("Version") != "2015-04-01" || get("RoleArn") != ROLE_ARN {
        return alibaba_error(400, "InvalidParameter", "Version or RoleArn");
    }
    match get("Action").as_str() {
        "AssumeRole" => {
            if get("AccessKeyId") != BASE_ID {
                return alibaba_error(404, "InvalidAccessKeyId.NotFound", "not found");
            }
            let signed: Vec<(&str, &str)> = params
                .iter()
                .filter(|(k, _)| k.as_str() != "Signature")
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let expected = signer::sign("POST", &signed, &SigningKey::new(BASE_SECRET));
            if expected.signature.as_str() != get("Signature") {
                return alibaba_error(400, "SignatureDoesNotMatch", "mismatch");
            }
            if get("RoleSessionName").is_empty() || get("DurationSeconds") != "3600" {
                return alibaba_error(400, "InvalidParameter", "session");
            }
        }
        "AssumeRoleWithOIDC" => {
            if params.contains_key("Signature") || params.contains_key("AccessKeyId") {
                return alibaba_error(400, "InvalidParameter", "OIDC is anonymous");
            }
            if get("OIDCProviderArn") != OIDC_PROVIDER_ARN {
                return alibaba_error(400, "InvalidParameter.OIDCProviderArn", "provider");
            }
            let token = get("OIDCToken");
            state.oidc_tokens.push(token);
        }
        _ => return alibaba_error(400, "InvalidAction.NotFound", "action"),
    }
    let credentials = issue(&mut state);
    (
        StatusCode::OK,
        json!({"RequestId": "FAKE", "Credentials": credentials}).to_string(),
    )
        .into_response()
}

async fn imds_token(State(state): State<Arc<Mutex<FakeState>>>, headers: HeaderMap) -> Response {
    let state = state.lock().unwrap();
    if state.imds_v1_only {
        return StatusCode::FORBIDDEN.into_response();
    }
    if headers
        .get("x-aliyun-ecs-metadata-token-ttl-seconds")
        .is_none()
    {
        return StatusCode::BAD_REQUEST.into_response();
    }
    IMDS_TOKEN.into_response()
}

/// IMDSv2 calls must carry the session token; IMDSv1 calls carry none.
fn imds_check(state: &mut FakeState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let token = headers
        .get("x-aliyun-ecs-metadata-token")
        .map(|v| v.to_str().unwrap().to_string());
    state.imds_token_seen.push(token.clone());
    match (state.imds_v1_only, token.as_deref()) {
        (true, None) => Ok(()),
        (false, Some(IMDS_TOKEN)) => Ok(()),
        _ => Err(Box::new(StatusCode::UNAUTHORIZED.into_response())),
    }
}

async fn imds_roles(State(state): State<Arc<Mutex<FakeState>>>, headers: HeaderMap) -> Response {
    let mut state = state.lock().unwrap();
    if let Err(response) = imds_check(&mut state, &headers) {
        return *response;
    }
    ROLE_NAME.into_response()
}

async fn imds_credentials(
    State(state): State<Arc<Mutex<FakeState>>>,
    UrlPath(role): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let mut state = state.lock().unwrap();
    if let Err(response) = imds_check(&mut state, &headers) {
        return *response;
    }
    if role != ROLE_NAME {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mut body = issue(&mut state);
    body["Code"] = json!("Success");
    body["LastUpdated"] = json!("2026-11-26T00:00:00Z");
    body.to_string().into_response()
}

async fn uri_credentials(
    State(state): State<Arc<Mutex<FakeState>>>,
    method: Method,
    RawQuery(query): RawQuery,
) -> Response {
    let delay = state.lock().unwrap().uri_delay;
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut state = state.lock().unwrap();
    state.uri_calls += 1;
    if state.uri_failures > 0 {
        state.uri_failures -= 1;
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if method != Method::GET || query.as_deref() != Some("token=uri-canary") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut body = issue(&mut state);
    body["Code"] = json!("Success");
    body.to_string().into_response()
}

/// A scratch directory for credential files, removed when dropped.
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    /// A new temporary directory, removed when dropped (named after `name`, for whoever looks).
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("dds-gateway-credentials-{name}-"))
            .tempdir()
            .unwrap();
        Self(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        // Write then rename, as a secret mount or a careful operator does.
        let staged = self
            .0
            .path()
            .join(format!(".{}.tmp", name.replace('/', "_")));
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        path
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// The `n`th credential the fake issues, as a sandbox must accept it.
pub fn issued_credential(n: usize) -> Credential {
    Credential::new(
        issued(n),
        Secret::new(format!("issued-secret-canary-{n}")),
        Some(Secret::new(format!("issued-token-canary-{n}"))),
        None,
        "fake",
    )
}
