//! Alibaba Cloud RPC request signing, signature V2 (`SignatureMethod=HMAC-SHA1`,
//! `SignatureVersion=1.0`), as a pure function: parameters, secret, time and nonce go in, the
//! signature comes out. Nothing here reads the clock, the environment or a random source.
//!
//! The stages carry Alibaba's own names: the *canonicalized query string*, the *string to sign*
//! and the *signature*. See Alibaba's
//! [RPC signature mechanism](https://help.aliyun.com/en/sdk/product-overview/rpc-mechanism). Signature V3 (`ACS3-HMAC-SHA256`) is
//! in [`v3`]; both share this module's percent-encoding.
#![deny(clippy::disallowed_methods)]

use std::fmt;
use std::time::SystemTime;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha1::Sha1;

pub mod v3;

/// `SignatureMethod` of signature V2.
pub const SIGNATURE_METHOD: &str = "HMAC-SHA1";
/// `SignatureVersion` of signature V2.
pub const SIGNATURE_VERSION: &str = "1.0";

/// Names of the common request parameters of signature V2.
pub mod param {
    pub const ACTION: &str = "Action";
    pub const VERSION: &str = "Version";
    pub const FORMAT: &str = "Format";
    pub const ACCESS_KEY_ID: &str = "AccessKeyId";
    pub const SIGNATURE_METHOD: &str = "SignatureMethod";
    pub const SIGNATURE_VERSION: &str = "SignatureVersion";
    pub const SIGNATURE_NONCE: &str = "SignatureNonce";
    pub const TIMESTAMP: &str = "Timestamp";
    pub const SECURITY_TOKEN: &str = "SecurityToken";
    pub const SIGNATURE: &str = "Signature";
}

/// What Alibaba's `percentEncode` escapes: every byte but the RFC 3986 unreserved
/// `A-Za-z0-9-_.~` (so space is `%20`, `*` is `%2A`, `~` stays), in upper-case hex.
const ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Appends `s` percent-encoded the way Alibaba signs: UTF-8 bytes, only `A-Za-z0-9-_.~` left as
/// they are, everything else `%XY` in upper-case hex.
pub fn percent_encode_into(out: &mut String, s: &str) {
    out.extend(utf8_percent_encode(s, ENCODED));
}

/// `percentEncode(s)`; see [`percent_encode_into`].
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 2);
    percent_encode_into(&mut out, s);
    out
}

/// The inverse of [`percent_encode`] for form bodies and query strings as Alibaba reads them:
/// `%XY` decodes to a byte and `+` to a space. `None` when the result is not UTF-8 or an escape
/// is malformed.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `CanonicalizedQueryString`: the parameters (without `Signature`) sorted by name in byte order,
/// each name and value percent-encoded, joined as `name=value` pairs with `&`.
pub fn canonicalized_query_string<K, V>(params: &[(K, V)]) -> String
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    // Names are unique in a request; the value breaks ties only to make the order total.
    sorted.sort_unstable();
    let len: usize = sorted.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    // Room for escapes and for `&Signature=` and its value, appended by `sign_form_body`.
    let mut out = String::with_capacity(len + len / 4 + 48);
    for (i, (name, value)) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode_into(&mut out, name);
        out.push('=');
        percent_encode_into(&mut out, value);
    }
    out
}

/// `StringToSign = HTTPMethod + "&" + percentEncode("/") + "&" + percentEncode(CanonicalizedQueryString)`.
///
/// `Display` yields exactly the bytes that are signed.
#[derive(Clone, PartialEq, Eq)]
pub struct StringToSign(String);

impl StringToSign {
    /// Builds the string to sign for `method` (`GET`, `POST`) and a canonicalized query string.
    pub fn new(method: &str, canonicalized_query_string: &str) -> Self {
        let mut s =
            String::with_capacity(method.len() + 5 + canonicalized_query_string.len() * 5 / 4);
        s.push_str(method);
        s.push_str("&%2F&");
        percent_encode_into(&mut s, canonicalized_query_string);
        Self(s)
    }

    /// The string to sign as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StringToSign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// The string to sign carries the AccessKeyId and any security token: never in `Debug`.
impl fmt::Debug for StringToSign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StringToSign(***)")
    }
}

/// A computed `Signature` (Base64). Printed as `***` by `Debug` because a signature together
/// with its request is a replayable credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature(String);

impl Signature {
    /// The signature text, to be sent as the `Signature` parameter.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signature(***)")
    }
}

/// The HMAC-SHA1 key of a credential, keyed once so each signature costs only the HMAC over the
/// string to sign. The key is `AccessKeySecret + "&"`.
#[derive(Clone)]
pub struct SigningKey {
    mac: Hmac<Sha1>,
}

impl SigningKey {
    /// The signing key of an AccessKey secret (`AccessKeySecret + "&"`).
    pub fn new(access_key_secret: &str) -> Self {
        let mut key = zeroize::Zeroizing::new(String::with_capacity(access_key_secret.len() + 1));
        key.push_str(access_key_secret);
        key.push('&');
        Self::from_raw_key(key.as_bytes())
    }

    /// A key used exactly as given (no `&` appended), for the raw HMAC test vectors.
    pub fn from_raw_key(key: &[u8]) -> Self {
        #[expect(
            clippy::expect_used,
            reason = "HMAC takes a key of any length, so `new_from_slice` never fails"
        )]
        let mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
        Self { mac }
    }

    /// `Signature = Base64(HMAC-SHA1(key, StringToSign))`.
    pub fn sign(&self, string_to_sign: &StringToSign) -> Signature {
        self.sign_bytes(string_to_sign.as_str().as_bytes())
    }

    /// HMAC-SHA1 over any bytes, Base64-encoded.
    pub fn sign_bytes(&self, data: &[u8]) -> Signature {
        let mut mac = self.mac.clone();
        mac.update(data);
        Signature(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// The three stages of one V2 signature, kept so tests can compare each against the vectors.
#[derive(Clone)]
pub struct SignedParams {
    pub canonicalized_query_string: String,
    pub string_to_sign: StringToSign,
    pub signature: Signature,
}

impl SignedParams {
    /// The signed parameters as an `application/x-www-form-urlencoded` body, `Signature` last.
    /// A body rather than a URL, because URLs end up in proxy and error logs.
    pub fn form_body(&self) -> String {
        let mut body = String::with_capacity(self.canonicalized_query_string.len() + 40);
        body.push_str(&self.canonicalized_query_string);
        body.push('&');
        body.push_str(param::SIGNATURE);
        body.push('=');
        percent_encode_into(&mut body, self.signature.as_str());
        body
    }
}

// The canonicalized query string carries the AccessKeyId and any security token.
impl fmt::Debug for SignedParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SignedParams(***)")
    }
}

/// The common parameters of a V2 RPC request, everything but the operation's own parameters and
/// `Signature`: `Action`, `Version`, `Format=JSON`, `AccessKeyId`, `SignatureMethod`,
/// `SignatureVersion`, `SignatureNonce`, `Timestamp`, and `SecurityToken` for STS credentials.
/// The nonce and time are given: the signer never reads the clock or a random source.
pub fn common_params(
    action: &str,
    api_version: &str,
    access_key_id: &str,
    security_token: Option<&str>,
    signature_nonce: String,
    time: SystemTime,
) -> Vec<(&'static str, String)> {
    let mut params = Vec::with_capacity(16);
    params.push((param::ACTION, action.to_string()));
    params.push((param::VERSION, api_version.to_string()));
    params.push((param::FORMAT, "JSON".to_string()));
    params.push((param::ACCESS_KEY_ID, access_key_id.to_string()));
    params.push((param::SIGNATURE_METHOD, SIGNATURE_METHOD.to_string()));
    params.push((param::SIGNATURE_VERSION, SIGNATURE_VERSION.to_string()));
    params.push((param::SIGNATURE_NONCE, signature_nonce));
    params.push((param::TIMESTAMP, format_timestamp(time)));
    if let Some(token) = security_token {
        params.push((param::SECURITY_TOKEN, token.to_string()));
    }
    params
}

/// Signs a parameter set (everything but `Signature`) for `method`.
pub fn sign<K, V>(method: &str, params: &[(K, V)], key: &SigningKey) -> SignedParams
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let canonicalized_query_string = canonicalized_query_string(params);
    let string_to_sign = StringToSign::new(method, &canonicalized_query_string);
    let signature = key.sign(&string_to_sign);
    SignedParams {
        canonicalized_query_string,
        string_to_sign,
        signature,
    }
}

/// What the gateway sends: the signed parameters as an `application/x-www-form-urlencoded`
/// body, `Signature` last (`sign(method, params, key).form_body()`).
pub fn sign_form_body<K, V>(method: &str, params: &[(K, V)], key: &SigningKey) -> String
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    sign(method, params, key).form_body()
}

/// `Timestamp` as signature V2 wants it: UTC, `yyyy-MM-ddTHH:mm:ssZ`, no fractional seconds.
pub fn format_timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Parses a `yyyy-MM-ddTHH:mm:ssZ` timestamp (the inverse of [`format_timestamp`]).
pub fn parse_timestamp(s: &str) -> Option<SystemTime> {
    // Alibaba's format is exactly 20 characters, ending in `Z`; humantime accepts more shapes.
    if s.len() != 20 || !s.ends_with('Z') {
        return None;
    }
    humantime::parse_rfc3339(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn encodes_the_official_java_sdk_vector() {
        assert_eq!(
            percent_encode("123abc!@#$%^&*()-=_+ ~|\\/"),
            "123abc%21%40%23%24%25%5E%26%2A%28%29-%3D_%2B%20~%7C%5C%2F"
        );
    }

    #[test]
    fn encodes_utf8_bytes_in_upper_case_hex() {
        assert_eq!(percent_encode("中"), "%E4%B8%AD");
        assert_eq!(percent_encode("a b*c~"), "a%20b%2Ac~");
    }

    #[test]
    fn decode_inverts_encode_and_reads_plus_as_space() {
        let s = "a b+c/中~*";
        assert_eq!(percent_decode(&percent_encode(s)).as_deref(), Some(s));
        assert_eq!(percent_decode("a+b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%FF"), None);
    }

    #[test]
    fn the_string_to_sign_encodes_the_canonicalized_query_string_again() {
        assert_eq!(StringToSign::new("GET", "a b").as_str(), "GET&%2F&a%20b");
        let cqs = canonicalized_query_string(&[("a b", "c=d&e%f~*中"), ("Z", "")]);
        assert_eq!(cqs, "Z=&a%20b=c%3Dd%26e%25f~%2A%E4%B8%AD");
        assert_eq!(
            StringToSign::new("POST", &cqs).as_str(),
            "POST&%2F&Z%3D%26a%2520b%3Dc%253Dd%2526e%2525f~%252A%25E4%25B8%25AD"
        );
    }

    #[test]
    fn sorts_by_name_in_byte_order() {
        let params = [("b", "2"), ("B", "1"), ("a", "3")];
        assert_eq!(canonicalized_query_string(&params), "B=1&a=3&b=2");
    }

    #[test]
    fn signs_the_official_describe_regions_example() {
        let params = [
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Version", "2014-05-26"),
        ];
        let signed = sign("GET", &params, &SigningKey::new("testsecret"));
        assert_eq!(signed.signature.as_str(), "OLeaidS1JvxuMvnyHOwuJ+uX5qY=");
    }

    #[test]
    fn the_form_body_is_the_canonicalized_query_string_then_the_signature() {
        let key = SigningKey::new("testsecret");
        let params = [
            ("Action", "UpgradeDBInstanceEngineVersion"),
            ("SecurityToken", "CAIS+/=*~%&中"),
        ];
        let signed = sign("POST", &params, &key);
        let body = sign_form_body("POST", &params, &key);
        assert_eq!(body, signed.form_body());
        assert_eq!(
            body,
            format!(
                "{}&Signature={}",
                signed.canonicalized_query_string,
                percent_encode(signed.signature.as_str())
            )
        );
    }

    #[test]
    fn keys_of_any_length_match_the_hmac_crate() {
        for len in [0, 1, 20, 63, 64, 65, 200] {
            let key = vec![b'k'; len];
            let mut reference = <Hmac<Sha1> as Mac>::new_from_slice(&key).unwrap();
            reference.update(b"data");
            let expected =
                base64::engine::general_purpose::STANDARD.encode(reference.finalize().into_bytes());
            assert_eq!(
                SigningKey::from_raw_key(&key).sign_bytes(b"data").as_str(),
                expected,
                "{len}"
            );
        }
    }

    #[test]
    fn formats_and_parses_timestamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_456_231_584);
        assert_eq!(format_timestamp(t), "2016-02-23T12:46:24Z");
        assert_eq!(
            format_timestamp(t + Duration::from_millis(999)),
            "2016-02-23T12:46:24Z"
        );
        assert_eq!(parse_timestamp("2016-02-23T12:46:24Z"), Some(t));
        assert_eq!(parse_timestamp("2016-02-23T12:46:24.5Z"), None);
        assert_eq!(parse_timestamp("2016-02-23 12:46:24Z"), None);
    }

    #[test]
    fn debug_never_prints_key_material() {
        let key = SigningKey::new("testsecret");
        let signed = sign("GET", &[("SecurityToken", "tok")], &key);
        let printed = format!("{key:?} {signed:?}");
        assert!(!printed.contains("testsecret"));
        assert!(!printed.contains(signed.signature.as_str()));
        assert!(!printed.contains("tok"));
    }
}
