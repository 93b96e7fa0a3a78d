//! One resolved credential (never printed, zeroized on drop), the [`CredentialsProvider`] trait
//! every source implements, and the static provider.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::alibaba::signer::SigningKey;
use crate::secret::Secret;

/// One resolved credential: an AccessKey pair, possibly temporary (STS) with a security token.
///
/// Cheap to clone (shared); the signing key is derived once per credential.
#[derive(Clone)]
pub struct Credential(Arc<Inner>);

struct Inner {
    access_key_id: String,
    access_key_secret: Secret,
    security_token: Option<Secret>,
    expiration: Option<SystemTime>,
    signing_key: SigningKey,
    signing_key_v3: crate::alibaba::signer::v3::SigningKey,
    provider: &'static str,
}

impl Credential {
    /// A credential from its parts; `provider` names where it came from (for logs, never secret).
    pub fn new(
        access_key_id: impl Into<String>,
        access_key_secret: Secret,
        security_token: Option<Secret>,
        expiration: Option<SystemTime>,
        provider: &'static str,
    ) -> Self {
        let signing_key = SigningKey::new(access_key_secret.expose());
        let signing_key_v3 =
            crate::alibaba::signer::v3::SigningKey::new(access_key_secret.expose());
        Self(Arc::new(Inner {
            access_key_id: access_key_id.into(),
            access_key_secret,
            security_token,
            expiration,
            signing_key,
            signing_key_v3,
            provider,
        }))
    }

    pub fn access_key_id(&self) -> &str {
        &self.0.access_key_id
    }

    pub fn access_key_secret(&self) -> &Secret {
        &self.0.access_key_secret
    }

    pub fn security_token(&self) -> Option<&Secret> {
        self.0.security_token.as_ref()
    }

    /// When a temporary credential stops working; `None` for long-lived AccessKeys.
    pub fn expiration(&self) -> Option<SystemTime> {
        self.0.expiration
    }

    /// The V2 signing key (`AccessKeySecret + "&"`), keyed once.
    pub fn signing_key(&self) -> &SigningKey {
        &self.0.signing_key
    }

    /// The V3 signing key (`AccessKeySecret` as it is), keyed once.
    pub fn signing_key_v3(&self) -> &crate::alibaba::signer::v3::SigningKey {
        &self.0.signing_key_v3
    }

    /// The name of the provider that produced this credential.
    pub fn provider(&self) -> &'static str {
        self.0.provider
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("access_key_id", &self.0.access_key_id)
            .field("access_key_secret", &self.0.access_key_secret)
            .field("security_token", &self.0.security_token)
            .field("expiration", &self.0.expiration)
            .field("provider", &self.0.provider)
            .finish()
    }
}

/// An AccessKey ID for logs: the first four and last four characters. IDs are not secrets, but
/// need not be printed whole either.
pub(crate) fn masked(access_key_id: &str) -> String {
    let chars: Vec<char> = access_key_id.chars().collect();
    if chars.len() <= 12 {
        return "****".to_string();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

/// Why no credential could be had. Messages name variables and sources, never values.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{provider}: {reason}")]
    NotConfigured {
        provider: &'static str,
        reason: String,
    },
    #[error("{provider}: {reason}")]
    Unavailable {
        provider: &'static str,
        reason: String,
    },
}

/// A source of credentials. Called for every upstream attempt, so implementations cache.
#[async_trait::async_trait]
pub trait CredentialsProvider: Send + Sync + fmt::Debug {
    /// A short name for logs, e.g. `environment`.
    fn name(&self) -> &'static str;

    /// The credential to sign the next request with.
    async fn credential(&self) -> Result<Credential, CredentialsError>;

    /// Re-reads whatever the provider reads from files (SIGHUP); others have nothing to do.
    async fn reload(&self) {}

    /// Alibaba Cloud answered `InvalidSecurityToken.Expired` to a request signed with
    /// `credential`: a provider that caches temporary credentials drops it, so that the next
    /// call fetches a new one. Others have nothing to do.
    fn rejected_as_expired(&self, _credential: &Credential) {}
}

/// A credential fixed at start-up (the sandbox's keys, or keys read once from the environment).
#[derive(Debug, Clone)]
pub struct StaticProvider {
    credential: Credential,
}

impl StaticProvider {
    pub fn new(credential: Credential) -> Self {
        Self { credential }
    }
}

#[async_trait::async_trait]
impl CredentialsProvider for StaticProvider {
    fn name(&self) -> &'static str {
        self.credential.provider()
    }

    async fn credential(&self) -> Result<Credential, CredentialsError> {
        Ok(self.credential.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_secret() {
        let credential = Credential::new(
            "testid",
            Secret::new("testsecret"),
            Some(Secret::new("sts-token")),
            None,
            "test",
        );
        let printed = format!("{credential:?}");
        assert!(printed.contains("testid"));
        assert!(!printed.contains("testsecret"), "{printed}");
        assert!(!printed.contains("sts-token"), "{printed}");
    }
}
