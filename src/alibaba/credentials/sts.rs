//! Alibaba Cloud STS (`2015-04-01`): `AssumeRole`, signed with a base credential on the same V2
//! path as Dds calls, and the anonymous `AssumeRoleWithOIDC` (RRSA on Kubernetes, the token file
//! re-read for every call because the kubelet rotates it). Time and nonces come from a
//! [`Clock`].
#![deny(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::Url;
use serde::Deserialize;

use super::cache::Fetch;
use super::credential::{Credential, CredentialsError, CredentialsProvider};
use super::http::{read_capped, send_error};
use crate::alibaba::clock::{Clock, SystemClock};
use crate::alibaba::http::form_post;
use crate::alibaba::sign::v2_form_body;
use crate::alibaba::signer::{self, param};
use crate::secret::Secret;

/// STS API version.
pub(crate) const API_VERSION: &str = "2015-04-01";
/// The public STS endpoint, used when nothing names another.
pub(crate) const DEFAULT_ENDPOINT: &str = "https://sts.aliyuncs.com";

/// The STS endpoint for a region (`ALIBABA_CLOUD_STS_REGION`), over VPC when asked
/// (`ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED`), as the official credentials libraries build it.
pub(crate) fn regional_endpoint(region: &str, vpc: bool) -> Option<Url> {
    let valid = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let host = if vpc { "sts-vpc" } else { "sts" };
    valid
        .then(|| Url::parse(&format!("https://{host}.{region}.aliyuncs.com/")).ok())
        .flatten()
}

/// An STS endpoint as `ALIBABA_CLOUD_STS_ENDPOINT` gives it: a host (what the ACK pod identity
/// webhook injects, e.g. `sts-vpc.cn-hangzhou.aliyuncs.com`, reached over HTTPS) or an http(s)
/// URL. Only scheme, host and port: a path or query could smuggle parameters into the request.
pub(crate) fn parse_endpoint(value: &str) -> Option<Url> {
    let value = value.trim();
    let url = if value.contains("://") {
        Url::parse(value).ok()?
    } else {
        Url::parse(&format!("https://{value}/")).ok()?
    };
    let plain = matches!(url.scheme(), "https" | "http")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.path() == "/"
        && url.query().is_none()
        && url.username().is_empty()
        && url.password().is_none();
    plain.then_some(url)
}

/// Which role to assume, for how long, under what session name.
#[derive(Debug, Clone)]
pub(crate) struct RoleSession {
    pub role_arn: String,
    pub role_session_name: String,
    pub duration: Duration,
}

/// An STS endpoint and the HTTP client to reach it.
#[derive(Debug, Clone)]
pub(crate) struct Sts {
    http: reqwest::Client,
    endpoint: Url,
    clock: Arc<dyn Clock>,
}

impl Sts {
    pub(crate) fn new(http: reqwest::Client, endpoint: Url) -> Self {
        Self {
            http,
            endpoint,
            clock: Arc::new(SystemClock),
        }
    }

    #[cfg(test)]
    /// Signs with the time and nonces of `clock` instead of the system's.
    pub(crate) fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    #[cfg(test)]
    /// Where the calls go.
    pub(crate) fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// `AssumeRole`, signed with `base`.
    pub(crate) async fn assume_role(
        &self,
        base: &Credential,
        session: &RoleSession,
        provider: &'static str,
    ) -> Result<Credential, CredentialsError> {
        let mut params = Vec::new();
        push_session(&mut params, session);
        let body = v2_form_body(
            "AssumeRole",
            API_VERSION,
            base,
            params,
            self.clock.now(),
            self.clock.nonce(),
        );
        self.post("AssumeRole", body, provider).await
    }

    /// `AssumeRoleWithOIDC`: anonymous, the OIDC token is the proof.
    pub(crate) async fn assume_role_with_oidc(
        &self,
        session: &RoleSession,
        oidc_provider_arn: &str,
        oidc_token: &Secret,
        provider: &'static str,
    ) -> Result<Credential, CredentialsError> {
        let mut params = anonymous_params("AssumeRoleWithOIDC", self.clock.now());
        params.push(("OIDCProviderArn", oidc_provider_arn.to_string()));
        params.push(("OIDCToken", oidc_token.expose().to_string()));
        push_session(&mut params, session);
        let body = signer::canonicalized_query_string(&params);
        self.post("AssumeRoleWithOIDC", body, provider).await
    }

    async fn post(
        &self,
        action: &'static str,
        body: String,
        provider: &'static str,
    ) -> Result<Credential, CredentialsError> {
        // The body carries a token or a signature: zeroized once sent.
        let body = zeroize::Zeroizing::new(body);
        let host = self.endpoint.host_str().unwrap_or("sts").to_string();
        let unavailable = |reason: String| CredentialsError::Unavailable { provider, reason };
        let response = form_post(&self.http, self.endpoint.clone(), body.as_bytes().to_vec())
            .send()
            .await
            .map_err(|e| unavailable(format!("STS {action} at {host}: {}", send_error(e))))?;
        let status = response.status().as_u16();
        let bytes = read_capped(response)
            .await
            .map_err(|e| unavailable(format!("STS {action} at {host}: {e}")))?;
        if !(200..300).contains(&status) {
            // Only the Code and RequestId: STS echoes the string to sign in its Message.
            let reason = match crate::alibaba::response::parse_error(status, &bytes, None) {
                Some(err) => format!(
                    "STS {action} at {host} answered {} (http {status}, RequestId {})",
                    err.code,
                    err.request_id.as_deref().unwrap_or("unknown")
                ),
                None => format!("STS {action} at {host} answered http {status}"),
            };
            return Err(unavailable(reason));
        }
        let parsed: AssumeRoleBody = serde_json::from_slice(&bytes).map_err(|_| {
            unavailable(format!(
                "STS {action} at {host}: the answer has no readable Credentials"
            ))
        })?;
        parsed
            .credentials
            .into_credential(provider)
            .map_err(|what| unavailable(format!("STS {action} at {host}: {what}")))
    }
}

/// The parameters of the anonymous `AssumeRoleWithOIDC`: no key, no signature.
fn anonymous_params(action: &'static str, time: SystemTime) -> Vec<(&'static str, String)> {
    vec![
        (param::ACTION, action.to_string()),
        (param::VERSION, API_VERSION.to_string()),
        (param::FORMAT, "JSON".to_string()),
        (param::TIMESTAMP, signer::format_timestamp(time)),
    ]
}

fn push_session(params: &mut Vec<(&'static str, String)>, session: &RoleSession) {
    params.push(("RoleArn", session.role_arn.clone()));
    params.push(("RoleSessionName", session.role_session_name.clone()));
    params.push(("DurationSeconds", session.duration.as_secs().to_string()));
}

#[derive(Deserialize)]
struct AssumeRoleBody {
    #[serde(rename = "Credentials")]
    credentials: TemporaryCredentials,
}

/// The `Credentials` object of STS, and the body of the ECS metadata service and credentials
/// URIs (which add `Code: "Success"`).
#[derive(Deserialize)]
pub(super) struct TemporaryCredentials {
    #[serde(rename = "AccessKeyId")]
    access_key_id: String,
    #[serde(rename = "AccessKeySecret")]
    access_key_secret: String,
    #[serde(rename = "SecurityToken")]
    security_token: Option<String>,
    #[serde(rename = "Expiration")]
    expiration: String,
}

impl TemporaryCredentials {
    /// Checks the fields and builds a credential; the error names what is wrong, not values.
    pub(super) fn into_credential(
        self,
        provider: &'static str,
    ) -> Result<Credential, &'static str> {
        let expiration = signer::parse_timestamp(&self.expiration)
            .ok_or("Expiration is not yyyy-MM-ddTHH:mm:ssZ")?;
        if self.access_key_id.is_empty() || self.access_key_secret.is_empty() {
            return Err("the answer has an empty AccessKeyId or AccessKeySecret");
        }
        Ok(Credential::new(
            self.access_key_id,
            Secret::new(self.access_key_secret),
            self.security_token
                .filter(|t| !t.is_empty())
                .map(Secret::new),
            Some(expiration),
            provider,
        ))
    }
}

/// A RAM role assumed with a base credential (profile type `ram_role_arn`, or the configured
/// role on top of the rest of the chain).
#[derive(Debug)]
pub(crate) struct RamRoleArn {
    pub sts: Sts,
    pub base: Arc<dyn CredentialsProvider>,
    pub session: RoleSession,
}

#[async_trait::async_trait]
impl Fetch for RamRoleArn {
    fn name(&self) -> &'static str {
        "ram_role_arn"
    }

    async fn fetch(&self) -> Result<Credential, CredentialsError> {
        let base = self.base.credential().await?;
        self.sts
            .assume_role(&base, &self.session, self.name())
            .await
    }
}

/// A RAM role assumed with an OIDC token (RRSA): no AccessKey at all.
#[derive(Debug)]
pub(crate) struct OidcRoleArn {
    pub sts: Sts,
    pub session: RoleSession,
    pub oidc_provider_arn: String,
    pub oidc_token_file: PathBuf,
}

#[async_trait::async_trait]
impl Fetch for OidcRoleArn {
    fn name(&self) -> &'static str {
        "oidc_role_arn"
    }

    async fn fetch(&self) -> Result<Credential, CredentialsError> {
        let token = tokio::fs::read_to_string(&self.oidc_token_file)
            .await
            .map_err(|e| CredentialsError::Unavailable {
                provider: self.name(),
                reason: format!(
                    "cannot read the OIDC token file {}: {e}",
                    self.oidc_token_file.display()
                ),
            })?;
        let token = Secret::new(token.trim().to_string());
        if token.expose().is_empty() {
            return Err(CredentialsError::Unavailable {
                provider: self.name(),
                reason: format!(
                    "the OIDC token file {} is empty",
                    self.oidc_token_file.display()
                ),
            });
        }
        self.sts
            .assume_role_with_oidc(&self.session, &self.oidc_provider_arn, &token, self.name())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regional_endpoints_follow_the_official_libraries() {
        assert_eq!(
            regional_endpoint("cn-hangzhou", false).unwrap().as_str(),
            "https://sts.cn-hangzhou.aliyuncs.com/"
        );
        assert_eq!(
            regional_endpoint("cn-shanghai", true).unwrap().as_str(),
            "https://sts-vpc.cn-shanghai.aliyuncs.com/"
        );
        assert!(regional_endpoint("evil.com/x", false).is_none());
        assert!(regional_endpoint("", false).is_none());
    }

    #[test]
    fn sts_endpoint_variable_takes_a_host_or_a_plain_url() {
        let parse = |v: &str| parse_endpoint(v).map(|u| u.to_string());
        assert_eq!(
            parse("sts-vpc.cn-hangzhou.aliyuncs.com").as_deref(),
            Some("https://sts-vpc.cn-hangzhou.aliyuncs.com/")
        );
        assert_eq!(
            parse("http://127.0.0.1:8080").as_deref(),
            Some("http://127.0.0.1:8080/")
        );
        for bad in [
            "",
            "ftp://sts.aliyuncs.com",
            "https://sts.aliyuncs.com/x?Action=y",
            "sts.aliyuncs.com/path",
            "user@sts.aliyuncs.com",
            "sts aliyuncs com",
        ] {
            assert!(parse(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn temporary_credentials_are_checked() {
        let parse = |json: &str| {
            serde_json::from_str::<TemporaryCredentials>(json)
                .unwrap()
                .into_credential("test")
        };
        let ok = parse(r#"{"AccessKeyId":"STS.a","AccessKeySecret":"s","SecurityToken":"t","Expiration":"2030-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!(ok.access_key_id(), "STS.a");
        assert!(ok.expiration().is_some());
        assert!(
            parse(r#"{"AccessKeyId":"STS.a","AccessKeySecret":"s","Expiration":"soon"}"#).is_err()
        );
        assert!(
            parse(
                r#"{"AccessKeyId":"","AccessKeySecret":"s","Expiration":"2030-01-01T00:00:00Z"}"#
            )
            .is_err()
        );
    }

    /// The time and nonces of an injected clock.
    #[derive(Debug)]
    struct FixedClock;

    impl Clock for FixedClock {
        fn now(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000)
        }
        fn nonce(&self) -> uuid::Uuid {
            uuid::Uuid::from_u128(42)
        }
    }

    /// One fake STS exchange over loopback: the form body the request carried.
    async fn one_exchange(listener: &tokio::net::TcpListener) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut received = Vec::new();
        let body_start = loop {
            let mut chunk = [0u8; 4096];
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the request ended early");
            received.extend_from_slice(&chunk[..n]);
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
        };
        let head = String::from_utf8_lossy(&received[..body_start]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        while received.len() < body_start + length {
            let mut chunk = [0u8; 4096];
            let n = socket.read(&mut chunk).await.unwrap();
            received.extend_from_slice(&chunk[..n]);
        }
        let answer = r#"{"RequestId":"r","Credentials":{"AccessKeyId":"STS.a","AccessKeySecret":"s","SecurityToken":"t","Expiration":"2030-01-01T00:00:00Z"}}"#;
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
            answer.len()
        );
        socket.write_all(response.as_bytes()).await.unwrap();
        String::from_utf8(received[body_start..].to_vec()).unwrap()
    }

    #[tokio::test]
    async fn assume_role_is_signed_with_the_injected_clock() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let sts = Sts::new(
            crate::alibaba::http::http_client_builder().build().unwrap(),
            endpoint,
        )
        .with_clock(Arc::new(FixedClock));
        let base = Credential::new("testid", Secret::new("testsecret"), None, None, "test");
        let session = RoleSession {
            role_arn: "acs:ram::123:role/r".into(),
            role_session_name: "s".into(),
            duration: Duration::from_secs(3600),
        };
        let mut bodies = Vec::new();
        for _ in 0..2 {
            let (body, answer) = tokio::join!(
                one_exchange(&listener),
                sts.assume_role(&base, &session, "test")
            );
            assert_eq!(answer.unwrap().access_key_id(), "STS.a");
            bodies.push(body);
        }
        // Signed from the clock alone: the same time and nonce give the same bytes.
        assert_eq!(bodies[0], bodies[1]);
        let params: std::collections::BTreeMap<String, String> =
            form_urlencoded::parse(bodies[0].as_bytes())
                .into_owned()
                .collect();
        assert_eq!(params["Timestamp"], "2030-03-17T17:46:40Z");
        assert_eq!(
            params["SignatureNonce"],
            "00000000-0000-0000-0000-00000000002a"
        );
        assert_eq!(params["Action"], "AssumeRole");
    }
}
