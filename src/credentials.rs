//! The gateway's own Alibaba Cloud credentials: secret-holding types that never print their
//! secrets and are zeroized on drop, and the [`CredentialsProvider`] trait that every source of
//! credentials (environment, static sandbox keys, and later STS, RAM roles, files) implements.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use zeroize::Zeroizing;

use crate::signer::SigningKey;

/// Environment variable of the AccessKey ID (official Alibaba Cloud chain).
pub const ENV_ACCESS_KEY_ID: &str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
/// Environment variable of the AccessKey secret.
pub const ENV_ACCESS_KEY_SECRET: &str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";
/// Environment variable of the STS security token.
pub const ENV_SECURITY_TOKEN: &str = "ALIBABA_CLOUD_SECURITY_TOKEN";

/// A secret string: zeroized on drop, `***` in `Debug`, no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The secret itself; call only where it is used (signing, sending).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

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
    signing_key_v3: crate::signer::v3::SigningKey,
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
        let signing_key_v3 = crate::signer::v3::SigningKey::new(access_key_secret.expose());
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
    pub fn signing_key_v3(&self) -> &crate::signer::v3::SigningKey {
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

/// Reads `ALIBABA_CLOUD_ACCESS_KEY_ID`, `ALIBABA_CLOUD_ACCESS_KEY_SECRET` and the optional
/// `ALIBABA_CLOUD_SECURITY_TOKEN` once, through `lookup` (the process environment in `main`,
/// a map in tests).
pub fn from_environment(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<StaticProvider, CredentialsError> {
    const PROVIDER: &str = "environment";
    let non_empty = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    match (
        non_empty(ENV_ACCESS_KEY_ID),
        non_empty(ENV_ACCESS_KEY_SECRET),
    ) {
        (Some(id), Some(secret)) => Ok(StaticProvider::new(Credential::new(
            id.trim(),
            Secret::new(secret.trim()),
            non_empty(ENV_SECURITY_TOKEN).map(|t| Secret::new(t.trim())),
            None,
            PROVIDER,
        ))),
        (Some(_), None) => Err(CredentialsError::NotConfigured {
            provider: PROVIDER,
            reason: format!("{ENV_ACCESS_KEY_ID} is set but {ENV_ACCESS_KEY_SECRET} is not"),
        }),
        (None, Some(_)) => Err(CredentialsError::NotConfigured {
            provider: PROVIDER,
            reason: format!("{ENV_ACCESS_KEY_SECRET} is set but {ENV_ACCESS_KEY_ID} is not"),
        }),
        (None, None) => Err(CredentialsError::NotConfigured {
            provider: PROVIDER,
            reason: format!("set {ENV_ACCESS_KEY_ID} and {ENV_ACCESS_KEY_SECRET}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[tokio::test]
    async fn reads_keys_and_token_from_the_environment() {
        let provider = from_environment(lookup(&[
            (ENV_ACCESS_KEY_ID, "testid"),
            (ENV_ACCESS_KEY_SECRET, "testsecret"),
            (ENV_SECURITY_TOKEN, "sts-token"),
        ]))
        .unwrap();
        let credential = provider.credential().await.unwrap();
        assert_eq!(credential.access_key_id(), "testid");
        assert_eq!(credential.access_key_secret().expose(), "testsecret");
        assert_eq!(credential.security_token().unwrap().expose(), "sts-token");
        assert_eq!(provider.name(), "environment");
    }

    #[test]
    fn missing_secret_is_named_without_values() {
        let err = from_environment(lookup(&[(ENV_ACCESS_KEY_ID, "testid")])).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(ENV_ACCESS_KEY_SECRET), "{message}");
        assert!(!message.contains("testid"), "{message}");
        assert!(from_environment(lookup(&[])).is_err());
        assert!(
            from_environment(lookup(&[
                (ENV_ACCESS_KEY_ID, " "),
                (ENV_ACCESS_KEY_SECRET, "x")
            ]))
            .is_err()
        );
    }

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
