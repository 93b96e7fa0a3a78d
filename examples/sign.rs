//! Signs requests read as JSON lines on stdin and prints each stage as JSON lines on stdout, so
//! an independent implementation (Alibaba's Python SDKs, see `tests/python`) can check the signer.
//!
//! Signature V2 (the default, or `"version": "v2"`):
//! In:  `{"method": "POST", "secret": "testsecret", "params": [["Action", "..."], ...]}`
//! Out: `{"canonicalized_query_string": "...", "string_to_sign": "...", "signature": "..."}`
//!
//! Signature V3 (`"version": "v3"`):
//! In:  `{"version": "v3", "method": "POST", "canonical_uri": "/", "query": [["k", "v"], ...],
//!        "headers": [["x-acs-action", "..."], ...], "hashed_payload": "<hex>",
//!        "access_key_id": "...", "secret": "..."}`
//! Out: `{"canonical_request": "...", "string_to_sign": "...", "signature": "...",
//!        "authorization": "..."}`

use std::io::{BufRead, Write};

use dds_gateway::signer::{self, SigningKey, v3};

#[derive(serde::Deserialize)]
struct V2Case {
    method: String,
    secret: String,
    params: Vec<(String, String)>,
}

#[derive(serde::Deserialize)]
struct V3Case {
    method: String,
    canonical_uri: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    hashed_payload: String,
    access_key_id: String,
    secret: String,
}

fn sign_v2(case: V2Case) -> serde_json::Value {
    let signed = signer::sign(&case.method, &case.params, &SigningKey::new(&case.secret));
    serde_json::json!({
        "canonicalized_query_string": signed.canonicalized_query_string,
        "string_to_sign": signed.string_to_sign.as_str(),
        "signature": signed.signature.as_str(),
    })
}

fn sign_v3(case: V3Case) -> serde_json::Value {
    let request = v3::Request {
        method: &case.method,
        canonical_uri: &case.canonical_uri,
        query: &case.query,
        headers: &case.headers,
        hashed_payload: &case.hashed_payload,
    };
    let signed = v3::sign(
        &request,
        &case.access_key_id,
        &v3::SigningKey::new(&case.secret),
    );
    serde_json::json!({
        "canonical_request": signed.canonical_request.as_str(),
        "string_to_sign": signed.string_to_sign.as_str(),
        "signature": signed.signature.as_str(),
        "authorization": signed.authorization.as_str(),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let case: serde_json::Value = serde_json::from_str(&line)?;
        let out = match case.get("version").and_then(|v| v.as_str()) {
            None | Some("v2") => sign_v2(serde_json::from_value(case)?),
            Some("v3") => sign_v3(serde_json::from_value(case)?),
            Some(other) => return Err(format!("unknown signature version {other:?}").into()),
        };
        writeln!(stdout, "{out}")?;
    }
    Ok(())
}
