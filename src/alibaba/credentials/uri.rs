//! Credentials from a URI (`ALIBABA_CLOUD_CREDENTIALS_URI`): a plain `GET` answering the ECS
//! metadata service's document (`Code: "Success"`, the keys, `Expiration`).

use reqwest::Url;

use super::cache::Fetch;
use super::credential::{Credential, CredentialsError};
use super::ecs::parse_success_body;
use super::http::{read_capped, send_error};

/// Credentials served at a URI, e.g. by a sidecar.
pub(crate) struct CredentialsUri {
    pub http: reqwest::Client,
    pub uri: Url,
}

// The URI may carry a token in its query: print only where it points.
impl std::fmt::Debug for CredentialsUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsUri")
            .field("host", &self.uri.host_str())
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Fetch for CredentialsUri {
    fn name(&self) -> &'static str {
        "credentials_uri"
    }

    async fn fetch(&self) -> Result<Credential, CredentialsError> {
        let unavailable = |reason: String| CredentialsError::Unavailable {
            provider: "credentials_uri",
            reason,
        };
        let host = self.uri.host_str().unwrap_or("?").to_string();
        let response = self
            .http
            .get(self.uri.clone())
            .send()
            .await
            .map_err(|e| unavailable(format!("{host}: {}", send_error(e))))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(unavailable(format!("{host} answered http {status}")));
        }
        let body = read_capped(response)
            .await
            .map_err(|e| unavailable(format!("{host}: {e}")))?;
        parse_success_body(&body, self.name())
    }
}
