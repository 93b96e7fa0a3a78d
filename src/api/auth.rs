//! Caller identity: who is calling, from `authorization: Bearer <token>` metadata (the token's
//! SHA-256 compared in constant time with every configured hash) or from a verified client
//! certificate whose subject CN or a DNS/URI SAN is the name of a caller that opted in to
//! certificates (`mtls = true`): a certificate never names a caller known only by its token. The callers table sits
//! behind an `Arc` that a reload swaps whole, so a call reads one consistent table.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::policy::Policy;
use crate::config::{CallerConfig, DEFAULT_CALLER_BURST, DEFAULT_CALLER_RATE};
use crate::limits::{Rate, SharedBucket};

/// Lowercase hex SHA-256 of a token: the `token_sha256` value for it.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random bearer token: 256 bits from the OS generator, hex-encoded.
pub fn generate_token() -> String {
    let bytes: Vec<u8> = (0..2)
        .flat_map(|_| *uuid::Uuid::new_v4().as_bytes())
        .collect();
    // Two v4 UUIDs carry 244 random bits; hashing keeps them and evens out the fixed bits.
    hash_token(&bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// An authenticated caller, as the service sees it in the request's extensions.
#[derive(Debug)]
pub struct Caller {
    name: String,
    /// The SHA-256 of the caller's token, when it has one.
    token_digest: Option<[u8; 32]>,
    /// A client certificate naming the caller identifies it.
    mtls: bool,
    policy: Policy,
    rate: Rate,
    bucket: SharedBucket,
}

impl Caller {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
    /// Takes one call from the caller's rate, or says how long to wait.
    pub fn take_call(&self) -> Result<(), std::time::Duration> {
        self.bucket.take(self.rate)
    }
    /// [`take_call`](Self::take_call) from the shared buckets in `rates`, when there are any.
    pub async fn take_call_from(
        &self,
        rates: &crate::limits::Rates,
    ) -> Result<(), std::time::Duration> {
        rates.take(&self.name, self.rate, &self.bucket).await
    }
}

/// Why a call could not be tied to a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no credentials: send `authorization: Bearer <token>` metadata or a client certificate"
    )]
    Missing,
    #[error("the `authorization` metadata is not a single `Bearer <token>`")]
    Malformed,
    #[error("unknown credentials")]
    Unknown,
    #[error("the bearer token and the client certificate name different callers")]
    Conflicting,
}

impl AuthError {
    /// `ErrorInfo.reason` for this failure.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "CALLER_CREDENTIALS_MISSING",
            Self::Malformed | Self::Unknown | Self::Conflicting => "CALLER_CREDENTIALS_INVALID",
        }
    }
}

/// Every configured caller.
#[derive(Debug, Default)]
pub struct Callers {
    callers: Vec<Arc<Caller>>,
}

impl Callers {
    /// Builds the table; callers keep the rate buckets they had in `previous` (by name).
    pub fn new(configs: &[CallerConfig], previous: Option<&Callers>) -> Self {
        let old: HashMap<&str, &SharedBucket> = previous
            .map(|p| {
                p.callers
                    .iter()
                    .map(|c| (c.name.as_str(), &c.bucket))
                    .collect()
            })
            .unwrap_or_default();
        let callers = configs
            .iter()
            .map(|c| {
                let rate = Rate {
                    per_second: c.rate_per_second.unwrap_or(DEFAULT_CALLER_RATE),
                    burst: c.burst.unwrap_or(DEFAULT_CALLER_BURST),
                };
                let name = c.name.trim().to_string();
                let bucket = old
                    .get(name.as_str())
                    .map_or_else(|| SharedBucket::new(rate), |b| (*b).clone());
                Arc::new(Caller {
                    token_digest: c.token_sha256.as_deref().and_then(decode_digest),
                    mtls: c.mtls,
                    policy: Policy::new(c),
                    rate,
                    bucket,
                    name,
                })
            })
            .collect();
        Self { callers }
    }

    /// No callers configured: the gateway is open (and then only on loopback).
    pub fn is_open(&self) -> bool {
        self.callers.is_empty()
    }

    pub fn len(&self) -> usize {
        self.callers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.callers.is_empty()
    }

    /// The caller behind a call's metadata and, with mTLS, its verified client certificate.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        peer_cert: Option<&[u8]>,
    ) -> Result<Arc<Caller>, AuthError> {
        let by_token = match bearer_token(headers)? {
            Some(token) => Some(self.by_token(token).ok_or(AuthError::Unknown)?),
            None => None,
        };
        let by_cert = peer_cert.and_then(|der| self.by_certificate(der));
        match (by_token, by_cert) {
            (Some(t), Some(c)) if !Arc::ptr_eq(&t, &c) => Err(AuthError::Conflicting),
            (Some(caller), _) | (None, Some(caller)) => Ok(caller),
            (None, None) if peer_cert.is_some() => Err(AuthError::Unknown),
            (None, None) => Err(AuthError::Missing),
        }
    }

    fn by_token(&self, token: &str) -> Option<Arc<Caller>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare with every hash, without stopping at the first match, each in constant time.
        let mut found = None;
        for caller in &self.callers {
            if let Some(expected) = &caller.token_digest
                && bool::from(expected.ct_eq(&digest))
            {
                found = Some(Arc::clone(caller));
            }
        }
        found
    }

    fn by_certificate(&self, der: &[u8]) -> Option<Arc<Caller>> {
        let names = certificate_names(der);
        self.callers
            .iter()
            .find(|c| c.mtls && names.iter().any(|n| n == &c.name))
            .cloned()
    }
}

/// The callers table, swapped whole by a reload; reading it is one lock and one `Arc` clone.
#[derive(Debug, Clone, Default)]
pub struct CallersHandle(Arc<RwLock<Arc<Callers>>>);

impl CallersHandle {
    pub fn new(callers: Callers) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(callers))))
    }

    pub fn current(&self) -> Arc<Callers> {
        // A writer only ever stores a whole table, so a poisoned lock still holds a good one.
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn replace(&self, callers: Callers) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(callers);
    }
}

/// The token of a single `authorization: Bearer <token>` header, `None` when there is none.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(Some(token))
}

fn decode_digest(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The names a certificate gives its subject: each subject CN, DNS and URI SAN.
pub(crate) fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::URI(n) => names.push((*n).to_string()),
                _ => {}
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    const TOKEN_A: &str = "token-a";

    fn callers() -> Callers {
        let toml = format!(
            "[[callers]]\nname = \"a\"\ntoken_sha256 = \"{}\"\n[[callers]]\nname = \"b\"\ntoken_sha256 = \"{}\"\n",
            hash_token(TOKEN_A),
            hash_token("token-b").to_uppercase(),
        );
        let config = Config::from_toml(&toml, "t", |_| None, &Overrides::default()).unwrap();
        Callers::new(&config.callers, None)
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append("authorization", v.parse().unwrap());
        }
        map
    }

    #[test]
    fn hash_token_is_hex_sha256() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let token = generate_token();
        assert_eq!(token.len(), 64);
        assert_ne!(token, generate_token());
    }

    #[test]
    fn bearer_tokens_name_their_caller() {
        let callers = callers();
        let who = |h: &[&str]| {
            callers
                .authenticate(&headers(h), None)
                .map(|c| c.name.clone())
        };
        assert_eq!(who(&["Bearer token-a"]), Ok("a".to_string()));
        assert_eq!(who(&["bearer token-b"]), Ok("b".to_string()));
        assert_eq!(who(&[]), Err(AuthError::Missing));
        assert_eq!(who(&["Bearer token-c"]), Err(AuthError::Unknown));
        assert_eq!(who(&["Basic dG9rZW4tYQ=="]), Err(AuthError::Malformed));
        assert_eq!(who(&["Bearer "]), Err(AuthError::Malformed));
        assert_eq!(who(&["token-a"]), Err(AuthError::Malformed));
        assert_eq!(
            who(&["Bearer token-a", "Bearer token-b"]),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn a_reload_keeps_each_callers_bucket() {
        let first = callers();
        let a = first
            .authenticate(&headers(&["Bearer token-a"]), None)
            .unwrap();
        while a.take_call().is_ok() {}
        let second = Callers::new(
            &first
                .callers
                .iter()
                .map(|c| CallerConfig {
                    name: c.name.clone(),
                    token_sha256: Some(hash_token(if c.name == "a" { TOKEN_A } else { "x" })),
                    regions: vec![],
                    instances: vec![],
                    engine_versions: None,
                    validate_only: false,
                    rollouts: false,
                    mtls: false,
                    rate_per_second: None,
                    burst: None,
                })
                .collect::<Vec<_>>(),
            Some(&first),
        );
        let a = second
            .authenticate(&headers(&["Bearer token-a"]), None)
            .unwrap();
        assert!(
            a.take_call().is_err(),
            "the emptied bucket survives the reload"
        );
    }

    #[test]
    fn unparsable_certificates_name_nobody() {
        assert!(certificate_names(b"not a certificate").is_empty());
    }
}
