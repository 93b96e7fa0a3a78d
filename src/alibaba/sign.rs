//! Signing a request with a credential: V2 as a form body (Dds and STS), V3 in headers.
//! The time and nonce are arguments: they come from the injected clock.
#![deny(clippy::disallowed_methods)]

use std::time::SystemTime;

use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

use super::credentials::credential::Credential;
use super::dds::API_VERSION;
use super::signer::{self, v3};
use crate::secret::Secret;

/// Signature V2, for Dds and STS alike: the common parameters (`SignatureNonce`, `Timestamp`),
/// the security token and the signature join the business parameters in a form body.
pub(crate) fn v2_form_body(
    action: &'static str,
    api_version: &str,
    credential: &Credential,
    params: Vec<(&'static str, String)>,
    time: SystemTime,
    nonce: uuid::Uuid,
) -> String {
    let mut all = signer::common_params(
        action,
        api_version,
        credential.access_key_id(),
        credential.security_token().map(Secret::expose),
        nonce.to_string(),
        time,
    );
    all.extend(params);
    signer::sign_form_body("POST", &all, credential.signing_key())
}

/// Why a V3 request cannot be built: a credential part with bytes HTTP headers cannot carry.
const NOT_A_HEADER: &str = "a credential cannot be sent in an HTTP header";

/// Signature V3, laid out as the official SDK sends RPC calls: the business parameters in the
/// query string (they hold no secret), an empty body, and action, version, date, a fresh nonce,
/// the body hash and any security token in signed `x-acs-*` headers, then `Authorization`.
pub(crate) fn sign_v3(
    http: &reqwest::Client,
    mut url: Url,
    action: &'static str,
    credential: &Credential,
    params: &[(&'static str, String)],
    time: SystemTime,
    nonce: uuid::Uuid,
) -> Result<reqwest::RequestBuilder, &'static str> {
    let query = v3::canonical_query_string(params);
    url.set_query(Some(&query).filter(|q| !q.is_empty()).map(String::as_str));
    // The host is signed, so send exactly the value that was signed rather than leave it to
    // the HTTP stack.
    let host = match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        (None, _) => return Err("endpoint has no host"),
    };
    let date = signer::format_timestamp(time);
    let nonce = nonce.simple().to_string();
    let mut headers: Vec<(&'static str, &str)> = vec![
        (v3::header::HOST, &host),
        (v3::header::ACTION, action),
        (v3::header::VERSION, API_VERSION),
        (v3::header::DATE, &date),
        (v3::header::SIGNATURE_NONCE, &nonce),
        (v3::header::CONTENT_SHA256, v3::EMPTY_PAYLOAD_SHA256),
    ];
    if let Some(token) = credential.security_token() {
        headers.push((v3::header::SECURITY_TOKEN, token.expose()));
    }
    let request = v3::Request {
        method: "POST",
        canonical_uri: "/",
        query: params,
        headers: &headers,
        hashed_payload: v3::EMPTY_PAYLOAD_SHA256,
    };
    let signed = v3::sign(
        &request,
        credential.access_key_id(),
        credential.signing_key_v3(),
    );

    let mut map = HeaderMap::with_capacity(headers.len() + 1);
    for (name, value) in headers {
        let mut value = HeaderValue::from_str(value).map_err(|_| NOT_A_HEADER)?;
        // Never indexed by HTTP/2 header compression, and `Sensitive` in Debug.
        value.set_sensitive(name == v3::header::SECURITY_TOKEN);
        map.insert(HeaderName::from_static(name), value);
    }
    let mut authorization =
        HeaderValue::from_str(signed.authorization.as_str()).map_err(|_| NOT_A_HEADER)?;
    authorization.set_sensitive(true);
    map.insert(AUTHORIZATION, authorization);
    Ok(http.post(url).headers(map))
}
