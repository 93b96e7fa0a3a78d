//! Secrets never leak: the gateway runs with every log target at TRACE through success and each
//! failure path (signatures V2 and V3, every credential provider: environment, OIDC role, RAM
//! role, ECS metadata, credentials URI, and their failures; callers' bearer tokens;
//! `check-credentials`; a Redis state store with its password, a wrong password, and Redis
//! gone), and nothing it logged, answered or printed with `Debug` contains an
//! AccessKey secret, a security token, an OIDC or metadata token, a Redis password, or any
//! request signature.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::fake_cloud;
use common::{Gateway, Options, request};
use dds_gateway::testing::alibaba::credentials::{Credential, Secret};
use dds_gateway::testing::config::SignatureVersion;
use dds_gateway::testing::sandbox::{Fault, SandboxConfig};

const TOKEN: &str = "CANARY-security-token-5f1e";
const WRONG_SECRET: &str = "CANARY-wrong-secret-9b2c";
const BEARER: &str = "CANARY-bearer-token-77aa";
const WRONG_BEARER: &str = "CANARY-wrong-bearer-31cd";
const OIDC_TOKEN: &str = "CANARY-oidc-token-0d3f";
const BASE_TOKEN: &str = "CANARY-base-token-a41e";
const WRONG_REDIS_PASSWORD: &str = "CANARY-wrong-redis-password-6c0a";

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
    let audit = tempfile::tempdir().unwrap();
    let audit_file = audit.path().join("audit.jsonl");
    let gw = Gateway::from_toml(sandbox, &format!("[audit]\nfile = {audit_file:?}\n")).await;
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
        let sandbox = dds_gateway::testing::sandbox::Sandbox::start(SandboxConfig::default())
            .await
            .unwrap();
        let toml = format!(
            "[alibaba]\nendpoint = \"{}\"\n[[callers]]\nname = \"c\"\ntoken_sha256 = \"{}\"\nregions = [\"cn-hangzhou\"]\ninstances = [\"*\"]\n",
            sandbox.endpoint(),
            dds_gateway::testing::api::auth::hash_token(BEARER)
        );
        let config = dds_gateway::testing::config::Config::from_toml(
            &toml,
            "t",
            |_| None,
            &dds_gateway::testing::config::Overrides::default(),
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
    // The same over JSON/HTTP: answers, headers and logs.
    for (token, body) in [
        (BEARER, r#"{"engineVersion":"5.0","validateOnly":true}"#),
        (WRONG_BEARER, r#"{"engineVersion":"5.0"}"#),
    ] {
        dds_gateway::testing::tls::install_crypto_provider();
        let response = reqwest::Client::new()
            .post(format!(
                "http://{}/v1/instances/dds-sandbox01:upgradeEngineVersion",
                callers_gateway.addr
            ))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(body)
            .send()
            .await
            .unwrap();
        answers.push(format!("{:?}", response.headers()));
        answers.push(response.text().await.unwrap());
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
    // The audit trail (`sending` and outcome events) holds no secret either.
    let audited = std::fs::read_to_string(&audit_file).unwrap();
    assert!(audited.contains(r#""outcome":"sending""#), "{audited}");
    answers.push(audited);
    // A request signed but not yet sent prints without its signature or token.
    let mut alibaba = common::default_config().alibaba;
    alibaba.endpoint = Some(gw.sandbox.endpoint());
    let client = dds_gateway::testing::alibaba::AlibabaClient::new(
        &alibaba,
        Arc::new(
            dds_gateway::testing::alibaba::credentials::StaticProvider::new(
                gw.sandbox.credential(),
            ),
        ),
    )
    .unwrap();
    let signed = client
        .sign_upgrade("cn-hangzhou", "dds-sandbox01", "5.0", None)
        .await
        .unwrap();
    answers.push(format!("{signed:?}"));

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
    assert!(v3_received.len() >= 2, "both v3 gateways called upstream");
    assert!(
        v3_received
            .iter()
            .all(|r| r.headers.get("x-acs-security-token").map(String::as_str) == Some(TOKEN))
    );
    let v3_signatures: Vec<String> = v3_received
        .iter()
        .map(|r| {
            dds_gateway::testing::alibaba::signer::v3::ParsedAuthorization::parse(
                &r.headers["authorization"],
            )
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
            .map(|s| dds_gateway::testing::alibaba::signer::percent_encode(s)),
    );

    signatures.extend(v3_signatures);

    answers.extend(credential_chain_paths().await);
    answers.extend(redis_paths().await);

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("upgrade failed") && logs.contains("upgrade accepted"),
        "logging was captured"
    );
    let everything = format!("{logs}\n{}", answers.join("\n"));
    assert!(
        logs.contains("credential fetched") && logs.contains("AssumeRole"),
        "the credential chain's logging was captured"
    );
    assert!(
        logs.contains("redis://:***@127.0.0.1"),
        "the Redis store's logging was captured"
    );
    for secret in [
        "testsecret",
        WRONG_SECRET,
        TOKEN,
        BEARER,
        WRONG_BEARER,
        OIDC_TOKEN,
        BASE_TOKEN,
        fake_cloud::IMDS_TOKEN,
        "uri-canary",
        "issued-secret-canary",
        "issued-token-canary",
        common::redis::PASSWORD,
        WRONG_REDIS_PASSWORD,
    ]
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

/// Serves with a Redis state store (right password, wrong password, Redis killed) through an
/// accepted upgrade and refusals; returns the answers and the configuration's `Debug`.
async fn redis_paths() -> Vec<String> {
    let mut redis = common::redis::RedisServer::start().await;
    let mut seen = Vec::new();
    let wrong = format!("redis://:{WRONG_REDIS_PASSWORD}@127.0.0.1:{}/0", redis.port);
    let right = redis.url();
    for (url, killed) in [(right.clone(), false), (wrong, false), (right, true)] {
        if killed {
            redis.kill().await;
        }
        let sandbox = dds_gateway::testing::sandbox::Sandbox::start(SandboxConfig::default())
            .await
            .unwrap();
        let mut config = common::default_config();
        config.alibaba.endpoint = Some(sandbox.endpoint());
        config.state.store = dds_gateway::testing::config::StoreKind::Redis;
        config.state.redis_url = Some(dds_gateway::testing::config::RedisUrl::parse(&url).unwrap());
        seen.push(format!("{config:?}"));
        let credentials = common::credentials_of(&sandbox);
        let gw = Gateway::serve(config, credentials, sandbox).await;
        for (instance, version) in [("dds-sandbox01", "4.4"), ("dds-sandbox02", "5.0")] {
            let answer = gw
                .upgrade(dds_gateway::pb::UpgradeEngineVersionRequest {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    ..request(instance, version)
                })
                .await;
            assert!(!killed || answer.is_err(), "no Redis, no upgrade");
            seen.push(format!("{answer:?}"));
        }
    }
    seen
}

/// Runs every credential provider that fetches over HTTP through success and failure, serving a
/// gateway with each; returns everything a caller or operator would see besides the logs.
async fn credential_chain_paths() -> Vec<String> {
    use fake_cloud::{BASE_ID, BASE_SECRET, Fake, OIDC_PROVIDER_ARN, ROLE_ARN, Scratch};

    let fake = Fake::start().await;
    let scratch = Scratch::new("leaks");
    let token_file = scratch.write("token", OIDC_TOKEN);
    let base_env = [
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", BASE_ID),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", BASE_SECRET),
        ("ALIBABA_CLOUD_SECURITY_TOKEN", BASE_TOKEN),
    ];
    let build = |section: String, env: &[(&str, &str)]| {
        let env: std::collections::BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let config = dds_gateway::testing::config::Config::from_toml(
            &format!(
                "[credentials]\nsts_endpoint = \"{}\"\n{section}",
                fake.url()
            ),
            "t",
            |_| None,
            &dds_gateway::testing::config::Overrides::default(),
        )
        .unwrap();
        let provider = dds_gateway::testing::alibaba::credentials::build(
            &config.credentials,
            &|k: &str| env.get(k).cloned(),
            &dds_gateway::testing::telemetry::Metrics::default(),
        )
        .unwrap();
        (config, provider)
    };
    let oidc = format!(
        "provider = \"oidc_role_arn\"\nrole_arn = \"{ROLE_ARN}\"\noidc_provider_arn = \"{OIDC_PROVIDER_ARN}\"\noidc_token_file = \"{}\"",
        token_file.display()
    );
    let ram = format!("provider = \"ram_role_arn\"\nrole_arn = \"{ROLE_ARN}\"");
    let ecs = format!(
        "provider = \"ecs_ram_role\"\nimds_endpoint = \"{}\"",
        fake.url()
    );
    let uri = format!(
        "provider = \"credentials_uri\"\ncredentials_uri = \"{}creds?token=uri-canary\"",
        fake.url()
    );

    let mut seen = Vec::new();
    for (section, version) in [
        (&oidc, SignatureVersion::V2),
        (&ram, SignatureVersion::V3),
        (&ecs, SignatureVersion::V2),
        (&uri, SignatureVersion::V3),
    ] {
        let (mut config, provider) = build(section.clone(), &base_env);
        let sandbox = dds_gateway::testing::sandbox::Sandbox::start(SandboxConfig {
            extra_keys: (1..=20).map(fake_cloud::issued_credential).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
        config.alibaba.endpoint = Some(sandbox.endpoint());
        config.alibaba.signature_version = version;
        seen.push(format!("{config:?} {provider:?}"));
        let gw = Gateway::serve(config, provider, sandbox).await;
        let answer = gw.upgrade(request("dds-sandbox01", "5.0")).await;
        assert!(answer.is_ok(), "{section}: {answer:?}");
        seen.push(format!("{answer:?} {:?}", gw.sandbox.received()));
    }

    // Failures: STS refuses (its message echoes the signed base token), the metadata service
    // refuses IMDSv1 when IMDSv2 fails; the gateway answers CREDENTIALS_UNAVAILABLE.
    fake.state().sts_failures = 1;
    fake.state().imds_v1_only = true;
    for section in [ram, format!("{ecs}\nimdsv1_disabled = true")] {
        let (config, provider) = build(section, &base_env);
        seen.push(format!("{:?}", provider.credential().await));
        let sandbox = dds_gateway::testing::sandbox::Sandbox::start(SandboxConfig::default())
            .await
            .unwrap();
        let mut config = config;
        config.alibaba.endpoint = Some(sandbox.endpoint());
        let gw = Gateway::serve(config, provider, sandbox).await;
        let answer = gw.upgrade(request("dds-sandbox01", "5.0")).await;
        let status = answer.as_ref().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        seen.push(format!("{answer:?}"));
    }

    // The operator's check, at the most verbose level, in a child process.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dds-gateway"))
        .env_clear()
        .env("RUST_LOG", "trace")
        .env("ALIBABA_CLOUD_ROLE_ARN", ROLE_ARN)
        .env("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", OIDC_PROVIDER_ARN)
        .env("ALIBABA_CLOUD_OIDC_TOKEN_FILE", &token_file)
        .env("DDS_GATEWAY_CREDENTIALS_STS_ENDPOINT", fake.url())
        .arg("check-credentials")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    seen.push(String::from_utf8_lossy(&out.stdout).into_owned());
    seen.push(String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(
        fake.state().oidc_tokens.iter().all(|t| t == OIDC_TOKEN),
        "the OIDC token was sent"
    );
    seen
}

/// The client's bearer token, from `--token-file`, `DDS_GATEWAY_TOKEN` or `--token`, appears
/// nowhere in what the command prints (errors and trace logs included), nor in `Debug`.
#[tokio::test(flavor = "multi_thread")]
async fn the_clients_bearer_token_is_never_printed() {
    let target = dds_gateway::client::Target {
        url: "http://127.0.0.1:9".into(),
        token: Some(Secret::new(BEARER)),
        ca_cert: None,
        client_cert: None,
    };
    assert!(!format!("{target:?}").contains(BEARER));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{BEARER}\n")).unwrap();
    // Nothing listens on port 9: the command fails after building the request.
    let base = [
        "upgrade",
        "--target",
        "http://127.0.0.1:9",
        "--instance",
        "dds-sandbox01",
        "--version",
        "5.0",
    ];
    let file = file.to_str().unwrap().to_string();
    let with = |extra: &[&str]| {
        base.iter()
            .chain(extra)
            .map(|a| (*a).to_string())
            .collect::<Vec<String>>()
    };
    let runs = [
        (with(&["--token-file", &file]), vec![("RUST_LOG", "trace")]),
        (
            with(&[]),
            vec![("RUST_LOG", "trace"), ("DDS_GATEWAY_TOKEN", BEARER)],
        ),
        (with(&["--token", BEARER]), vec![("RUST_LOG", "trace")]),
    ];
    for (args, env) in runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = common::run_cli(&args, &env).await;
        // Nothing listens there: unavailable (69).
        assert_eq!(code, Some(69), "{stderr}");
        assert!(
            !stdout.contains(BEARER) && !stderr.contains(BEARER),
            "{stderr}"
        );
    }
}
