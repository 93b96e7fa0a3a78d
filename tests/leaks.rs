//! Secrets never leak: the gateway runs with every log target at TRACE through success and each
//! failure path, and nothing it logged or answered contains the AccessKey secret, the security
//! token, or any request signature.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{Gateway, Options, request};
use dds_gateway::config::SignatureVersion;
use dds_gateway::credentials::{Credential, Secret};
use dds_gateway::sandbox::{Fault, SandboxConfig};

const TOKEN: &str = "CANARY-security-token-5f1e";
const WRONG_SECRET: &str = "CANARY-wrong-secret-9b2c";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_or_signature_appears_in_logs_errors_or_debug_output() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let sandbox = SandboxConfig {
        security_token: Some(TOKEN.into()),
        ..Default::default()
    };
    let gw = Gateway::start_with(Options {
        sandbox,
        ..Default::default()
    })
    .await;
    let mut answers = Vec::new();
    answers.push(format!(
        "{:?}",
        gw.upgrade(request("dds-sandbox01", "5.0")).await
    ));
    for (instance, version) in [
        ("dds-nope1", "5.0"),
        ("dds-sandboxbusy", "5.0"),
        ("BAD", "1"),
    ] {
        answers.push(format!(
            "{:?}",
            gw.upgrade(request(instance, version)).await
        ));
    }
    for fault in [
        Fault::Error {
            status: 400,
            code: "Throttling",
            retry_after_ms: Some(10),
        },
        Fault::Error {
            status: 503,
            code: "ServiceUnavailable",
            retry_after_ms: None,
        },
        Fault::Body {
            status: 200,
            body: "garbage",
        },
    ] {
        gw.sandbox.push_fault(fault);
        answers.push(format!(
            "{:?}",
            gw.upgrade(request("dds-sandbox02", "5.0")).await
        ));
    }
    let wrong = Credential::new(
        "testid",
        Secret::new(WRONG_SECRET),
        Some(Secret::new(TOKEN)),
        None,
        "test",
    );
    answers.push(format!("{wrong:?}"));
    let rejected = Gateway::start_with(Options {
        sandbox: SandboxConfig {
            security_token: Some(TOKEN.into()),
            ..Default::default()
        },
        credential: Some(wrong),
        ..Default::default()
    })
    .await;
    answers.push(format!(
        "{:?}",
        rejected.upgrade(request("dds-sandbox01", "5.0")).await
    ));
    answers.push(format!(
        "{:?} {:?} {:?}",
        gw.sandbox.credential(),
        gw.sandbox,
        gw.sandbox.received()
    ));

    // Signature V3: the token and signature travel in headers instead.
    let v3_sandbox = || SandboxConfig {
        security_token: Some(TOKEN.into()),
        ..Default::default()
    };
    let v3 = Gateway::start_with(Options {
        sandbox: v3_sandbox(),
        signature_version: Some(SignatureVersion::V3),
        ..Default::default()
    })
    .await;
    answers.push(format!(
        "{:?}",
        v3.upgrade(request("dds-sandbox01", "5.0")).await
    ));
    let v3_rejected = Gateway::start_with(Options {
        sandbox: v3_sandbox(),
        credential: Some(Credential::new(
            "testid",
            Secret::new(WRONG_SECRET),
            Some(Secret::new(TOKEN)),
            None,
            "test",
        )),
        signature_version: Some(SignatureVersion::V3),
        ..Default::default()
    })
    .await;
    answers.push(format!(
        "{:?}",
        v3_rejected.upgrade(request("dds-sandbox01", "5.0")).await
    ));
    let v3_received: Vec<_> = v3
        .sandbox
        .received()
        .into_iter()
        .chain(v3_rejected.sandbox.received())
        .collect();
    answers.push(format!("{v3_received:?}"));
    assert_eq!(v3_received.len(), 2);
    assert!(
        v3_received
            .iter()
            .all(|r| r.headers.get("x-acs-security-token").map(String::as_str) == Some(TOKEN))
    );
    let v3_signatures: Vec<String> = v3_received
        .iter()
        .map(|r| {
            dds_gateway::signer::v3::ParsedAuthorization::parse(&r.headers["authorization"])
                .unwrap()
                .signature
        })
        .collect();

    let mut signatures: Vec<String> = gw
        .sandbox
        .received()
        .iter()
        .chain(rejected.sandbox.received().iter())
        .filter_map(|r| r.params.get("Signature").cloned())
        .collect();
    assert!(signatures.len() >= 6, "the upstream saw the signed calls");
    assert!(
        gw.sandbox
            .received()
            .iter()
            .all(|r| r.params.get("SecurityToken").map(String::as_str) == Some(TOKEN))
    );
    // Signatures also travel percent-encoded.
    signatures.extend(
        signatures
            .clone()
            .iter()
            .map(|s| dds_gateway::signer::percent_encode(s)),
    );

    signatures.extend(v3_signatures);

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("upgrade failed") && logs.contains("upgrade accepted"),
        "logging was captured"
    );
    let everything = format!("{logs}\n{}", answers.join("\n"));
    for secret in ["testsecret", WRONG_SECRET, TOKEN]
        .iter()
        .map(|s| s.to_string())
        .chain(signatures)
    {
        if let Some(at) = everything.find(&secret) {
            let start = everything[..at]
                .char_indices()
                .rev()
                .nth(300)
                .map_or(0, |(i, _)| i);
            panic!(
                "{secret:?} leaked: ...{}",
                &everything[start..(at + secret.len() + 100).min(everything.len())]
            );
        }
    }
}
