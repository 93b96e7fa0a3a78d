//! The ECS RAM role: temporary credentials from the instance metadata service. IMDSv2 first
//! (a session token from `PUT /latest/api/token`), IMDSv1 only when that fails and is allowed.

use reqwest::Url;
use serde::Deserialize;

use super::cache::Fetch;
use super::credential::{Credential, CredentialsError};
use super::http::{read_capped, send_error};
use super::sts::TemporaryCredentials;
use crate::secret::Secret;

/// Where the metadata service lives on every ECS instance.
pub(crate) const DEFAULT_ENDPOINT: &str = "http://100.100.100.200";
const TOKEN_PATH: &str = "latest/api/token";
const ROLES_PATH: &str = "latest/meta-data/ram/security-credentials/";
const TOKEN_TTL_HEADER: &str = "X-aliyun-ecs-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aliyun-ecs-metadata-token";
/// Six hours, as the official libraries ask.
const TOKEN_TTL_SECONDS: &str = "21600";

/// Credentials of the RAM role attached to this ECS instance.
#[derive(Debug)]
pub(crate) struct EcsRamRole {
    pub http: reqwest::Client,
    pub endpoint: Url,
    /// The role; discovered from the metadata service when `None`.
    pub role_name: Option<String>,
    /// Refuse IMDSv1 (no session token) even when IMDSv2 fails.
    pub imdsv1_disabled: bool,
}

impl EcsRamRole {
    fn unavailable(&self, reason: String) -> CredentialsError {
        CredentialsError::Unavailable {
            provider: self.name(),
            reason,
        }
    }

    fn url(&self, path: &str) -> Result<Url, CredentialsError> {
        self.endpoint
            .join(path)
            .map_err(|e| self.unavailable(format!("metadata URL for {path}: {e}")))
    }

    async fn session_token(&self) -> Result<Option<Secret>, CredentialsError> {
        let answer = self
            .http
            .put(self.url(TOKEN_PATH)?)
            .header(TOKEN_TTL_HEADER, TOKEN_TTL_SECONDS)
            .send()
            .await;
        let failure = match answer {
            Ok(response) if response.status().is_success() => match read_capped(response).await {
                Ok(bytes) => {
                    return Ok(Some(Secret::new(
                        String::from_utf8_lossy(&bytes).trim().to_string(),
                    )));
                }
                Err(e) => e,
            },
            Ok(response) => format!("http {}", response.status().as_u16()),
            Err(e) => send_error(e),
        };
        if self.imdsv1_disabled {
            return Err(self.unavailable(format!(
                "cannot get an IMDSv2 session token ({failure}) and IMDSv1 is disabled"
            )));
        }
        tracing::debug!(reason = %failure, "no IMDSv2 session token; falling back to IMDSv1");
        Ok(None)
    }

    async fn get(
        &self,
        path: &str,
        token: Option<&Secret>,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, CredentialsError> {
        let mut request = self.http.get(self.url(path)?);
        if let Some(token) = token {
            request = request.header(TOKEN_HEADER, token.expose());
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.unavailable(format!("metadata service: {}", send_error(e))))?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.unavailable(format!(
                "metadata service answered http {} for /{path}",
                status.as_u16()
            )));
        }
        read_capped(response)
            .await
            .map_err(|e| self.unavailable(format!("metadata service: {e}")))
    }
}

#[derive(Deserialize)]
struct MetadataCredentials {
    #[serde(rename = "Code")]
    code: String,
    #[serde(flatten)]
    credentials: TemporaryCredentials,
}

/// Parses `{"Code": "Success", "AccessKeyId": ..., "Expiration": ...}`, the shape of the ECS
/// metadata service and of credentials URIs.
pub(crate) fn parse_success_body(
    bytes: &[u8],
    provider: &'static str,
) -> Result<Credential, CredentialsError> {
    let unavailable = |reason: String| CredentialsError::Unavailable { provider, reason };
    let parsed: MetadataCredentials = serde_json::from_slice(bytes)
        .map_err(|_| unavailable("the answer is not a credentials document".to_string()))?;
    if parsed.code != "Success" {
        return Err(unavailable(format!(
            "the answer's Code is {:?}, not \"Success\"",
            parsed.code
        )));
    }
    parsed
        .credentials
        .into_credential(provider)
        .map_err(|what| unavailable(what.to_string()))
}

#[async_trait::async_trait]
impl Fetch for EcsRamRole {
    fn name(&self) -> &'static str {
        "ecs_ram_role"
    }

    async fn fetch(&self) -> Result<Credential, CredentialsError> {
        let token = self.session_token().await?;
        let role = match &self.role_name {
            Some(role) => role.clone(),
            None => {
                let body = self.get(ROLES_PATH, token.as_ref()).await?;
                let role = String::from_utf8_lossy(&body).trim().to_string();
                if role.is_empty() {
                    return Err(self
                        .unavailable("no RAM role is attached to this ECS instance".to_string()));
                }
                role
            }
        };
        if role.contains(['/', '?', '#']) || role == ".." {
            return Err(self.unavailable("the RAM role name is not a plain name".to_string()));
        }
        let body = self
            .get(&format!("{ROLES_PATH}{role}"), token.as_ref())
            .await?;
        parse_success_body(&body, self.name())
    }
}
