//! A request as the sandbox reads it: the signature version, parameters from the query and form
//! body, headers, and the record kept of it ([`Received`]).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::http::{HeaderMap, header};
use axum::response::Response;

use super::answer::reject;
use crate::alibaba::signer::{self, param, v3};
use crate::config::SignatureVersion;

/// A request the sandbox received, signature included or not.
#[derive(Clone)]
pub struct Received {
    pub method: String,
    /// How it was signed: V3 when it carried `Authorization: ACS3-...`, else V2.
    pub signature_version: SignatureVersion,
    /// `Action` (V2) or `x-acs-action` (V3), or empty when the request had none.
    pub action: String,
    /// The request's parameters (query and form body), `Signature` included.
    pub params: BTreeMap<String, String>,
    /// The query string as sent (the gateway's V2 requests send everything in the body).
    pub raw_query: Option<String>,
    /// The headers, names in lower case, repeated values joined with `,`.
    pub headers: BTreeMap<String, String>,
    /// The body as sent.
    pub body: Bytes,
    /// When it arrived.
    pub at: tokio::time::Instant,
}

// Signatures and security tokens are credentials: `***` in Debug.
impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |map: &'_ BTreeMap<String, String>, secret: &[&str]| {
            map.iter()
                .map(|(k, v)| {
                    let v = if secret.contains(&k.as_str()) {
                        "***"
                    } else {
                        v.as_str()
                    };
                    (k.clone(), v.to_string())
                })
                .collect::<BTreeMap<String, String>>()
        };
        f.debug_struct("Received")
            .field("method", &self.method)
            .field("signature_version", &self.signature_version)
            .field("action", &self.action)
            .field(
                "params",
                &redact(&self.params, &[param::SIGNATURE, param::SECURITY_TOKEN]),
            )
            .field(
                "headers",
                &redact(
                    &self.headers,
                    &[v3::header::AUTHORIZATION, v3::header::SECURITY_TOKEN],
                ),
            )
            .finish_non_exhaustive()
    }
}

/// What answering a request needs of it.
pub(super) struct Incoming<'a> {
    pub(super) version: SignatureVersion,
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    pub(super) query: Option<&'a str>,
    pub(super) headers: &'a HeaderMap,
    pub(super) body: &'a [u8],
    pub(super) params: &'a BTreeMap<String, String>,
    pub(super) action: &'a str,
    pub(super) api_version: &'a str,
}

/// The signature version, told apart as Alibaba does: by the `Authorization` header's algorithm.
pub(super) fn signature_version(headers: &HeaderMap) -> SignatureVersion {
    match headers.get(header::AUTHORIZATION) {
        Some(value) if value.as_bytes().starts_with(b"ACS3-") => SignatureVersion::V3,
        _ => SignatureVersion::V2,
    }
}

/// The action and API version named: parameters in V2, `x-acs-*` headers in V3; empty if absent.
pub(super) fn action_and_version(
    version: SignatureVersion,
    params: &BTreeMap<String, String>,
    headers: &HeaderMap,
) -> (String, String) {
    let param_of = |name: &str| params.get(name).cloned().unwrap_or_default();
    match version {
        SignatureVersion::V2 => (param_of(param::ACTION), param_of(param::VERSION)),
        SignatureVersion::V3 => (
            header_of(headers, v3::header::ACTION),
            header_of(headers, v3::header::VERSION),
        ),
    }
}

/// A header's values joined with `,`, empty when absent.
pub(super) fn header_of(headers: &HeaderMap, name: &str) -> String {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    values.join(",")
}

/// Every header, by lower-case name, repeated values joined with `,`.
pub(super) fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .keys()
        .map(|name| (name.as_str().to_string(), header_of(headers, name.as_str())))
        .collect()
}

/// `name=value` pairs of a query string or form body, percent-decoded.
pub(super) fn parse_pairs(text: &str) -> Result<Vec<(String, String)>, Box<Response>> {
    let mut pairs = Vec::new();
    for pair in text.split('&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(name), Some(value)) =
            (signer::percent_decode(name), signer::percent_decode(value))
        else {
            return Err(reject(
                400,
                "InvalidParameter",
                "A parameter is not correctly percent-encoded.",
            ));
        };
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// The union of query and form body parameters, as Alibaba signs them.
pub(super) fn collect_params(
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<BTreeMap<String, String>, Box<Response>> {
    let mut params = BTreeMap::new();
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body = if is_form {
        std::str::from_utf8(body)
            .map_err(|_| reject(400, "InvalidParameter", "The form body is not UTF-8."))?
    } else {
        ""
    };
    for (name, value) in parse_pairs(query.unwrap_or(""))?
        .into_iter()
        .chain(parse_pairs(body)?)
    {
        if params.insert(name.clone(), value).is_some() {
            return Err(reject(
                400,
                "InvalidParameter",
                &format!("The parameter {name} appears more than once."),
            ));
        }
    }
    Ok(params)
}
