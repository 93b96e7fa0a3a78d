//! The environment provider: `ALIBABA_CLOUD_ACCESS_KEY_ID`, `ALIBABA_CLOUD_ACCESS_KEY_SECRET`
//! and the optional `ALIBABA_CLOUD_SECURITY_TOKEN`, read once at start-up.

use super::credential::{Credential, CredentialsError, StaticProvider};
use crate::secret::Secret;

/// Environment variable of the AccessKey ID (official Alibaba Cloud chain).
pub(crate) const ENV_ACCESS_KEY_ID: &str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
/// Environment variable of the AccessKey secret.
pub(crate) const ENV_ACCESS_KEY_SECRET: &str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";
/// Environment variable of the STS security token.
pub(crate) const ENV_SECURITY_TOKEN: &str = "ALIBABA_CLOUD_SECURITY_TOKEN";

/// Reads `ALIBABA_CLOUD_ACCESS_KEY_ID`, `ALIBABA_CLOUD_ACCESS_KEY_SECRET` and the optional
/// `ALIBABA_CLOUD_SECURITY_TOKEN` once, through `lookup` (the process environment in `main`,
/// a map in tests).
pub(crate) fn from_environment(
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
    use super::super::credential::CredentialsProvider;
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
}
