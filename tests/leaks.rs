//! Secrets never leak: the gateway runs with every log target at TRACE through success and each
//! failure path, and nothing it logged or answered contains the AccessKey secret, the security
//! token, or any request signature.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{Gateway, Options, request};
use dds_gateway::credentials::{Credential, Secret};
use dds_gateway::sandbox::{Fault, SandboxConfig};

const TOKEN: &str = "CANARY-security-token-5f1e";
const WRONG_SECRET: &str = "CANARY-wrong-secret-9b2c";
const BEARER: &str = "CANARY-bearer-token-77aa";
const WRONG_BEARER: &str = "CANARY-wrong-bearer-31cd";

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
    // Bearer tokens of callers, right and wrong, stay out of logs and answers too.
    let callers_gateway = {
        let sandbox = dds_gateway::sandbox::Sandbox::start(SandboxConfig::default())
            .await
            .unwrap();
        let toml = format!(
            "[alibaba]\nendpoint = \"{}\"\n[[callers]]\nname = \"c\"\ntoken_sha256 = \"{}\"\nregions = [\"cn-hangzhou\"]\ninstances = [\"*\"]\n",
            sandbox.endpoint(),
            dds_gateway::auth::hash_token(BEARER)
        );
        let config = dds_gateway::config::Config::from_toml(
            &toml,
            "t",
            |_| None,
            &dds_gateway::config::Overrides::default(),
        )
        .unwrap();
        let credentials = common::credentials_of(&sandbox);
        Gateway::serve(config, credentials, sandbox).await
    };
    for token in [BEARER, WRONG_BEARER] {
        let mut call = tonic::Request::new(request("dds-sandbox01", "5.0"));
        call.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        answers.push(format!(
            "{:?}",
            callers_gateway
                .client
                .clone()
                .upgrade_engine_version(call)
                .await
        ));
    }
    assert_eq!(
        callers_gateway
            .sandbox
            .calls("UpgradeDBInstanceEngineVersion"),
        1
    );
    answers.push(format!(
        "{:?} {:?} {:?}",
        gw.sandbox.credential(),
        gw.sandbox,
        gw.sandbox.received()
    ));

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

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("upgrade failed") && logs.contains("upgrade accepted"),
        "logging was captured"
    );
    let everything = format!("{logs}\n{}", answers.join("\n"));
    for secret in ["testsecret", WRONG_SECRET, TOKEN, BEARER, WRONG_BEARER]
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
