//! Signature checks V2 and V3 as Alibaba makes them, in its order and with its error codes:
//! required parts, algorithm, timestamp window, known AccessKey, the signature recomputed from
//! what arrived, STS token, then the nonce.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use axum::response::Response;

use super::answer::reject;
use super::request::{Incoming, header_of, parse_pairs};
use crate::alibaba::credentials::Credential;
use crate::alibaba::signer::{self, param, v3};
use crate::config::SignatureVersion;

/// Alibaba refuses timestamps further than this from its clock.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

/// Headers every V3 request must carry, and sign.
const V3_REQUIRED_HEADERS: &[&str] = &[
    v3::header::HOST,
    v3::header::ACTION,
    v3::header::VERSION,
    v3::header::DATE,
    v3::header::SIGNATURE_NONCE,
    v3::header::CONTENT_SHA256,
];

/// The AccessKeys the sandbox accepts and the nonces it has seen.
pub(super) struct Verifier {
    /// The AccessKeys accepted, by AccessKey ID.
    keys: HashMap<String, Credential>,
    /// Nonces seen, with when they may be forgotten (after the timestamp window).
    nonces: HashMap<String, SystemTime>,
}

impl Verifier {
    /// Accepts `keys`; a later key replaces an earlier one with the same AccessKey ID.
    pub(super) fn new(keys: impl IntoIterator<Item = Credential>) -> Self {
        Self {
            keys: keys
                .into_iter()
                .map(|c| (c.access_key_id().to_string(), c))
                .collect(),
            nonces: HashMap::new(),
        }
    }

    /// Verifies the request's signature, V2 or V3 as it was sent.
    pub(super) fn verify(&mut self, incoming: &Incoming<'_>) -> Result<(), Box<Response>> {
        match incoming.version {
            SignatureVersion::V2 => self.verify_v2(incoming.method, incoming.params),
            SignatureVersion::V3 => self.verify_v3(incoming),
        }
    }

    /// Signature V2 verification, in Alibaba's order of checks.
    fn verify_v2(
        &mut self,
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
        let credential = self.known_key(get(param::ACCESS_KEY_ID))?;

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
        self.check_nonce(get(param::SIGNATURE_NONCE), now)
    }

    /// Signature V3 verification: the `Authorization` header taken apart, the required headers
    /// present and signed, the body hash, the date, the key, then the signature recomputed from
    /// what arrived (the headers named in `SignedHeaders`, the query string, the body's hash).
    fn verify_v3(&mut self, request: &Incoming<'_>) -> Result<(), Box<Response>> {
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
        let credential = self.known_key(&auth.access_key_id)?;

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
        self.check_nonce(
            &header_of(request.headers, v3::header::SIGNATURE_NONCE),
            now,
        )
    }

    /// The credential of a known AccessKey ID, or Alibaba's answer to an unknown one.
    fn known_key(&self, access_key_id: &str) -> Result<Credential, Box<Response>> {
        self.keys.get(access_key_id).cloned().ok_or_else(|| {
            reject(
                404,
                "InvalidAccessKeyId.NotFound",
                "Specified access key is not found.",
            )
        })
    }

    /// Refuses a nonce seen within the timestamp window, and remembers this one.
    fn check_nonce(&mut self, nonce: &str, now: SystemTime) -> Result<(), Box<Response>> {
        self.nonces.retain(|_, forget_at| *forget_at > now);
        if self.nonces.contains_key(nonce) {
            return Err(reject(
                400,
                "SignatureNonceUsed",
                "Specified signature nonce was used already.",
            ));
        }
        self.nonces
            .insert(nonce.to_string(), now + 2 * MAX_CLOCK_SKEW);
        Ok(())
    }
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
    // A timestamp ahead of the clock is off by as much as one behind it.
    let skew = now
        .duration_since(timestamp)
        .unwrap_or_else(|ahead| ahead.duration());
    if skew > MAX_CLOCK_SKEW {
        return Err(reject(
            400,
            "InvalidTimeStamp.Expired",
            "Specified time stamp or date value is expired.",
        ));
    }
    Ok(now)
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
