//! Signs requests read as JSON lines on stdin and prints each stage as JSON lines on stdout, so
//! an independent implementation (Alibaba's Python SDK, see `tests/python`) can check the signer.
//!
//! In:  `{"method": "POST", "secret": "testsecret", "params": [["Action", "..."], ...]}`
//! Out: `{"canonicalized_query_string": "...", "string_to_sign": "...", "signature": "..."}`

use std::io::{BufRead, Write};

use dds_gateway::signer::{self, SigningKey};

#[derive(serde::Deserialize)]
struct Case {
    method: String,
    secret: String,
    params: Vec<(String, String)>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let case: Case = serde_json::from_str(&line)?;
        let signed = signer::sign(&case.method, &case.params, &SigningKey::new(&case.secret));
        let out = serde_json::json!({
            "canonicalized_query_string": signed.canonicalized_query_string,
            "string_to_sign": signed.string_to_sign.as_str(),
            "signature": signed.signature.as_str(),
        });
        writeln!(stdout, "{out}")?;
    }
    Ok(())
}
