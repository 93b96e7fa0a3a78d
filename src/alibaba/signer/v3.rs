//! Alibaba Cloud request signing, signature V3 (`ACS3-HMAC-SHA256`), as a pure function: the
//! request's method, query, headers and payload hash go in, the `Authorization` header value
//! comes out. Nothing here reads the clock, the environment or a random source; the caller puts
//! `x-acs-date` and `x-acs-signature-nonce` among the headers.
//!
//! The stages carry Alibaba's names: *CanonicalRequest*, *HashedRequestPayload*,
//! *CanonicalHeaders* / *SignedHeaders*, *StringToSign*, *Signature* and *Authorization*.
//! See Alibaba's [V3 request structure and signature](https://alibabacloud.com/help/en/sdk/product-overview/v3-request-structure-and-signature):
//!
//! ```text
//! CanonicalRequest = Method \n CanonicalURI \n CanonicalQueryString \n CanonicalHeaders \n
//!                    SignedHeaders \n HashedRequestPayload
//! StringToSign     = "ACS3-HMAC-SHA256" \n hex(sha256(CanonicalRequest))
//! Signature        = hex(HMAC-SHA256(AccessKeySecret, StringToSign))      (no "&" on the key)
//! Authorization    = ACS3-HMAC-SHA256 Credential=<id>,SignedHeaders=<names>,Signature=<sig>
//! ```

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The signature algorithm, first word of `Authorization` and of the string to sign.
pub const ALGORITHM: &str = "ACS3-HMAC-SHA256";

/// `HashedRequestPayload` of an empty body: hex SHA-256 of nothing.
pub const EMPTY_PAYLOAD_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Names of the headers of signature V3, lower case as they are signed.
pub mod header {
    pub const HOST: &str = "host";
    pub const CONTENT_TYPE: &str = "content-type";
    pub const AUTHORIZATION: &str = "authorization";
    pub const ACTION: &str = "x-acs-action";
    pub const VERSION: &str = "x-acs-version";
    pub const DATE: &str = "x-acs-date";
    pub const SIGNATURE_NONCE: &str = "x-acs-signature-nonce";
    pub const CONTENT_SHA256: &str = "x-acs-content-sha256";
    pub const SECURITY_TOKEN: &str = "x-acs-security-token";
    /// Every header whose name starts with this is signed.
    pub const ACS_PREFIX: &str = "x-acs-";
}

/// Whether V3 signs a header of this name: `host`, `content-type` and every `x-acs-*` (in any
/// case). `Authorization` is the one common header left out; it carries the signature.
pub fn is_signed_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(header::HOST)
        || name.eq_ignore_ascii_case(header::CONTENT_TYPE)
        || name
            .get(..header::ACS_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(header::ACS_PREFIX))
}

/// `HashedRequestPayload`: lower-case hex SHA-256 of the body, also sent as
/// `x-acs-content-sha256`.
pub fn hashed_request_payload(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// `CanonicalQueryString`: parameters sorted by name, `name=value` with both percent-encoded by
/// the rules shared with V2 ([`percent_encode`](super::percent_encode)), joined with `&`; an empty value
/// gives `name=`, no parameters the empty string. The same text V2 calls the canonicalized query
/// string, so it is the same function.
pub fn canonical_query_string<K, V>(params: &[(K, V)]) -> String
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    super::canonicalized_query_string(params)
}

/// `SignedHeaders`: the lower-case names of the signed headers, sorted, joined with `;`. Not
/// secret: it is sent in the clear inside `Authorization`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders(String);

impl SignedHeaders {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.split(';').filter(|n| !n.is_empty())
    }
}

impl fmt::Display for SignedHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `CanonicalHeaders` with its [`SignedHeaders`]: every signed header (see [`is_signed_header`])
/// as `lowercase(name):trim(value)\n`, sorted by name. Several values under one name (in any
/// case) are trimmed, sorted and joined with `,`, as Alibaba's official Go and Python utils do.
#[derive(Clone, PartialEq, Eq)]
pub struct CanonicalHeaders {
    text: String,
    signed_headers: SignedHeaders,
}

impl CanonicalHeaders {
    pub fn new<K, V>(headers: &[(K, V)]) -> Self
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut entries: Vec<(String, &str)> = headers
            .iter()
            .filter(|(name, _)| is_signed_header(name.as_ref()))
            .map(|(name, value)| (name.as_ref().to_ascii_lowercase(), value.as_ref().trim()))
            .collect();
        // Sorting the pairs orders names, and the values under one name, in one pass.
        entries.sort_unstable();
        let mut text = String::with_capacity(
            entries
                .iter()
                .map(|(name, value)| name.len() + value.len() + 2)
                .sum(),
        );
        let mut signed = String::new();
        let mut previous: Option<&str> = None;
        for (name, value) in &entries {
            if previous == Some(name.as_str()) {
                // Same name again: append to the line just written, before its newline.
                text.pop();
                text.push(',');
            } else {
                if previous.is_some() {
                    signed.push(';');
                }
                signed.push_str(name);
                text.push_str(name);
                text.push(':');
            }
            text.push_str(value);
            text.push('\n');
            previous = Some(name);
        }
        Self {
            text,
            signed_headers: SignedHeaders(signed),
        }
    }

    /// The canonical headers as text (each line ends in `\n`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn signed_headers(&self) -> &SignedHeaders {
        &self.signed_headers
    }
}

// The canonical headers include `x-acs-security-token`.
impl fmt::Debug for CanonicalHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CanonicalHeaders")
            .field("signed_headers", &self.signed_headers)
            .finish_non_exhaustive()
    }
}

/// The parts of a request that signature V3 covers.
#[derive(Clone, Copy)]
pub struct Request<'a, Q, H> {
    /// HTTP method as sent (`POST`); Alibaba's Go util signs an unset method as empty.
    pub method: &'a str,
    /// `CanonicalURI`: `/` for RPC-style APIs.
    pub canonical_uri: &'a str,
    /// Query parameters, unencoded, in any order.
    pub query: &'a [Q],
    /// Headers as sent, any case, in any order; only the signed ones are used.
    pub headers: &'a [H],
    /// `HashedRequestPayload`, see [`hashed_request_payload`].
    pub hashed_payload: &'a str,
}

// The headers may include a security token.
impl<Q, H> fmt::Debug for Request<'_, Q, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("canonical_uri", &self.canonical_uri)
            .finish_non_exhaustive()
    }
}

/// `CanonicalRequest`; `Display` yields exactly the bytes that are hashed.
#[derive(Clone, PartialEq, Eq)]
pub struct CanonicalRequest {
    text: String,
    signed_headers: SignedHeaders,
}

impl CanonicalRequest {
    pub fn new<QK, QV, HK, HV>(request: &Request<'_, (QK, QV), (HK, HV)>) -> Self
    where
        QK: AsRef<str>,
        QV: AsRef<str>,
        HK: AsRef<str>,
        HV: AsRef<str>,
    {
        let query = canonical_query_string(request.query);
        let headers = CanonicalHeaders::new(request.headers);
        let mut text = String::with_capacity(
            request.method.len()
                + request.canonical_uri.len()
                + query.len()
                + headers.as_str().len() * 2
                + request.hashed_payload.len()
                + 5,
        );
        for part in [
            request.method,
            "\n",
            request.canonical_uri,
            "\n",
            &query,
            "\n",
            headers.as_str(),
            "\n",
            headers.signed_headers().as_str(),
            "\n",
            request.hashed_payload,
        ] {
            text.push_str(part);
        }
        Self {
            text,
            signed_headers: headers.signed_headers,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn signed_headers(&self) -> &SignedHeaders {
        &self.signed_headers
    }
}

impl fmt::Display for CanonicalRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

// The canonical request carries the security token header.
impl fmt::Debug for CanonicalRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CanonicalRequest(***)")
    }
}

/// `StringToSign = "ACS3-HMAC-SHA256\n" + hex(sha256(CanonicalRequest))`. Holds only a hash,
/// so it prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringToSign(String);

impl StringToSign {
    pub fn new(canonical_request: &CanonicalRequest) -> Self {
        let digest = Sha256::digest(canonical_request.as_str().as_bytes());
        let mut s = String::with_capacity(ALGORITHM.len() + 1 + 64);
        s.push_str(ALGORITHM);
        s.push('\n');
        push_hex(&mut s, &digest);
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StringToSign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A computed V3 `Signature` (lower-case hex). `***` in `Debug`: with its request it is a
/// replayable credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature(String);

impl Signature {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signature(***)")
    }
}

/// The `Authorization` header value. `***` in `Debug`: it contains the signature.
#[derive(Clone, PartialEq, Eq)]
pub struct Authorization(String);

impl Authorization {
    pub fn new(access_key_id: &str, signed_headers: &SignedHeaders, signature: &Signature) -> Self {
        Self(format!(
            "{ALGORITHM} Credential={access_key_id},SignedHeaders={signed_headers},Signature={}",
            signature.as_str()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Authorization(***)")
    }
}

/// An `Authorization: ACS3-HMAC-SHA256 ...` value taken apart, as the server reads it.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedAuthorization {
    pub algorithm: String,
    pub access_key_id: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

// The signature it carries is a credential.
impl fmt::Debug for ParsedAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedAuthorization")
            .field("algorithm", &self.algorithm)
            .field("access_key_id", &self.access_key_id)
            .field("signed_headers", &self.signed_headers)
            .finish_non_exhaustive()
    }
}

impl ParsedAuthorization {
    /// Reads `<algorithm> Credential=<id>,SignedHeaders=<a;b>,Signature=<hex>`; `None` when a
    /// part is missing, repeated or empty.
    pub fn parse(value: &str) -> Option<Self> {
        let (algorithm, rest) = value.trim().split_once(' ')?;
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let (name, value) = part.trim().split_once('=')?;
            let slot = match name {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed_headers,
                "Signature" => &mut signature,
                _ => return None,
            };
            if slot.replace(value).is_some() || value.is_empty() {
                return None;
            }
        }
        Some(Self {
            algorithm: algorithm.to_string(),
            access_key_id: credential?.to_string(),
            signed_headers: signed_headers?.split(';').map(str::to_string).collect(),
            signature: signature?.to_string(),
        })
    }
}

/// The HMAC-SHA256 key of a credential, keyed once. V3 uses the AccessKey secret as it is (V2
/// appends `&`; V3 does not).
#[derive(Clone)]
pub struct SigningKey {
    mac: Hmac<Sha256>,
}

impl SigningKey {
    pub fn new(access_key_secret: &str) -> Self {
        let key = access_key_secret.as_bytes();
        #[expect(
            clippy::expect_used,
            reason = "HMAC takes a key of any length, so `new_from_slice` never fails"
        )]
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
        Self { mac }
    }

    /// `Signature = hex(HMAC-SHA256(key, StringToSign))`.
    pub fn sign(&self, string_to_sign: &StringToSign) -> Signature {
        let mut mac = self.mac.clone();
        mac.update(string_to_sign.as_str().as_bytes());
        Signature(hex(&mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// Every stage of one V3 signature, kept so tests and the sandbox can compare each.
#[derive(Clone)]
pub struct SignedRequest {
    pub canonical_request: CanonicalRequest,
    pub string_to_sign: StringToSign,
    pub signature: Signature,
    pub authorization: Authorization,
}

impl fmt::Debug for SignedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedRequest")
            .field("signed_headers", self.canonical_request.signed_headers())
            .field("string_to_sign", &self.string_to_sign)
            .finish_non_exhaustive()
    }
}

/// Signs `request` for the AccessKey `access_key_id` whose secret keyed `key`.
pub fn sign<QK, QV, HK, HV>(
    request: &Request<'_, (QK, QV), (HK, HV)>,
    access_key_id: &str,
    key: &SigningKey,
) -> SignedRequest
where
    QK: AsRef<str>,
    QV: AsRef<str>,
    HK: AsRef<str>,
    HV: AsRef<str>,
{
    let canonical_request = CanonicalRequest::new(request);
    let string_to_sign = StringToSign::new(&canonical_request);
    let signature = key.sign(&string_to_sign);
    let authorization = Authorization::new(
        access_key_id,
        canonical_request.signed_headers(),
        &signature,
    );
    SignedRequest {
        canonical_request,
        string_to_sign,
        signature,
        authorization,
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// Lower-case hex, as V3 wants its hashes and signatures.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The official documented example (V3-A): RunInstances, POST, empty body.
    type Pairs = Vec<(&'static str, &'static str)>;

    fn official() -> (Pairs, Pairs) {
        (
            vec![
                (
                    "ImageId",
                    "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
                ),
                ("RegionId", "cn-shanghai"),
            ],
            vec![
                ("host", "ecs.cn-shanghai.aliyuncs.com"),
                ("x-acs-action", "RunInstances"),
                ("x-acs-version", "2014-05-26"),
                ("x-acs-date", "2023-10-26T10:22:32Z"),
                ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
                ("x-acs-content-sha256", EMPTY_PAYLOAD_SHA256),
            ],
        )
    }

    #[test]
    fn signs_the_official_example() {
        let (query, headers) = official();
        let request = Request {
            method: "POST",
            canonical_uri: "/",
            query: &query,
            headers: &headers,
            hashed_payload: EMPTY_PAYLOAD_SHA256,
        };
        let signed = sign(
            &request,
            "YourAccessKeyId",
            &SigningKey::new("YourAccessKeySecret"),
        );
        assert_eq!(
            signed.string_to_sign.as_str(),
            "ACS3-HMAC-SHA256\n7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
        );
        assert_eq!(
            signed.signature.as_str(),
            "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
    }

    #[test]
    fn keys_of_any_length_match_the_hmac_crate() {
        let sts = StringToSign("data".to_string());
        for len in [0, 1, 32, 63, 64, 65, 200] {
            let key = "k".repeat(len);
            let mut reference = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).unwrap();
            reference.update(b"data");
            let expected = hex(&reference.finalize().into_bytes());
            assert_eq!(SigningKey::new(&key).sign(&sts).as_str(), expected, "{len}");
        }
    }

    #[test]
    fn empty_payload_hash_is_the_hash_of_nothing() {
        assert_eq!(hashed_request_payload(b""), EMPTY_PAYLOAD_SHA256);
    }

    #[test]
    fn canonical_headers_lowercase_trim_filter_and_join_duplicates() {
        let headers = CanonicalHeaders::new(&[
            ("X-Acs-Test", " b "),
            ("User-Agent", "not signed"),
            ("Authorization", "not signed"),
            ("x-acs-TEST", "a\t"),
            ("Host", "example.com"),
            ("Content-Type", "application/json"),
        ]);
        assert_eq!(
            headers.as_str(),
            "content-type:application/json\nhost:example.com\nx-acs-test:a,b\n"
        );
        assert_eq!(
            headers.signed_headers().as_str(),
            "content-type;host;x-acs-test"
        );
        assert_eq!(
            CanonicalHeaders::new::<&str, &str>(&[])
                .signed_headers()
                .as_str(),
            ""
        );
    }

    #[test]
    fn is_signed_header_ignores_case_and_non_ascii() {
        assert!(is_signed_header("X-ACS-DATE"));
        assert!(is_signed_header("x-acs-"));
        assert!(!is_signed_header("x-acs"));
        assert!(!is_signed_header("authorization"));
        assert!(!is_signed_header("x-ac中"));
    }

    #[test]
    fn parses_an_authorization_value() {
        let (query, headers) = official();
        let request = Request {
            method: "POST",
            canonical_uri: "/",
            query: &query,
            headers: &headers,
            hashed_payload: EMPTY_PAYLOAD_SHA256,
        };
        let signed = sign(&request, "id", &SigningKey::new("s"));
        let parsed = ParsedAuthorization::parse(signed.authorization.as_str()).unwrap();
        assert_eq!(parsed.algorithm, ALGORITHM);
        assert_eq!(parsed.access_key_id, "id");
        assert_eq!(parsed.signature, signed.signature.as_str());
        assert_eq!(
            parsed.signed_headers.join(";"),
            signed.canonical_request.signed_headers().as_str()
        );
        for bad in [
            "ACS3-HMAC-SHA256",
            "ACS3-HMAC-SHA256 Credential=a,SignedHeaders=host",
            "ACS3-HMAC-SHA256 Credential=a,SignedHeaders=host,Signature=",
            "ACS3-HMAC-SHA256 Credential=a,Credential=b,SignedHeaders=host,Signature=x",
            "ACS3-HMAC-SHA256 Credential=a,SignedHeaders=host,Signature=x,Extra=y",
        ] {
            assert_eq!(ParsedAuthorization::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn debug_never_prints_key_signature_or_token() {
        let headers = [("x-acs-security-token", "tok-123"), ("host", "h")];
        let request = Request::<(&str, &str), _> {
            method: "POST",
            canonical_uri: "/",
            query: &[],
            headers: &headers,
            hashed_payload: EMPTY_PAYLOAD_SHA256,
        };
        let key = SigningKey::new("the-secret");
        let signed = sign(&request, "id", &key);
        let parsed = ParsedAuthorization::parse(signed.authorization.as_str()).unwrap();
        let printed = format!(
            "{key:?} {signed:?} {request:?} {parsed:?} {:?} {:?} {:?}",
            signed.canonical_request,
            signed.authorization,
            CanonicalHeaders::new(&headers)
        );
        assert!(!printed.contains("the-secret"), "{printed}");
        assert!(!printed.contains("tok-123"), "{printed}");
        assert!(!printed.contains(signed.signature.as_str()), "{printed}");
    }
}
