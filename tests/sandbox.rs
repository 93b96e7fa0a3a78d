//! The sandbox Dds API checked directly over HTTP: it must verify signatures the way Alibaba
//! does, or the integration tests that use it would prove nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::time::{Duration, SystemTime};

use dds_gateway::testing::alibaba::signer::{self, SigningKey};
use dds_gateway::testing::sandbox::{Sandbox, SandboxConfig};
use serde_json::Value;

/// Signs `params` plus the common parameters with `secret` and POSTs them as a form.
async fn call(
    sandbox: &Sandbox,
    secret: &str,
    nonce: &str,
    timestamp: SystemTime,
    params: &[(&str, &str)],
) -> (u16, Value) {
    let time = signer::format_timestamp(timestamp);
    let mut all: Vec<(&str, &str)> = vec![
        ("Version", "2015-12-01"),
        ("Format", "JSON"),
        ("AccessKeyId", "testid"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("SignatureNonce", nonce),
        ("Timestamp", &time),
    ];
    all.extend_from_slice(params);
    let signed = signer::sign("POST", &all, &SigningKey::new(secret));
    let body = format!(
        "{}&Signature={}",
        signed.canonicalized_query_string,
        signer::percent_encode(signed.signature.as_str())
    );
    let response = http()
        .post(sandbox.endpoint())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap(),
    )
}

/// A plain HTTP client (reqwest is built without a default TLS crypto provider).
fn http() -> reqwest::Client {
    dds_gateway::testing::tls::install_crypto_provider();
    reqwest::Client::new()
}

fn nonce() -> String {
    uuid::Uuid::new_v4().to_string()
}

const DESCRIBE: &[(&str, &str)] = &[
    ("Action", "DescribeDBInstanceAttribute"),
    ("DBInstanceId", "dds-sandbox01"),
];

#[tokio::test]
async fn answers_describe_db_instance_attribute_in_alibabas_shape() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let (status, body) = call(
        &sandbox,
        "testsecret",
        &nonce(),
        SystemTime::now(),
        DESCRIBE,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let instance = &body["DBInstances"]["DBInstance"][0];
    assert_eq!(instance["DBInstanceStatus"], "Running");
    assert_eq!(instance["EngineVersion"], "4.2");
    assert!(body["RequestId"].as_str().is_some_and(|id| !id.is_empty()));

    let (_, body) = call(
        &sandbox,
        "testsecret",
        &nonce(),
        SystemTime::now(),
        &[
            ("Action", "DescribeAvailableEngineVersion"),
            ("DBInstanceId", "dds-sandbox03"),
        ],
    )
    .await;
    assert_eq!(
        body["EngineVersions"]["EngineVersion"],
        serde_json::json!(["6.0", "7.0", "8.0"])
    );
}

#[tokio::test]
async fn rejects_a_wrong_signature_and_echoes_its_string_to_sign() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let (status, body) = call(&sandbox, "wrong", &nonce(), SystemTime::now(), DESCRIBE).await;
    assert_eq!(
        (status, body["Code"].as_str()),
        (400, Some("SignatureDoesNotMatch"))
    );
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .contains("server string to sign is:POST&%2F&AccessKeyId%3Dtestid")
    );
}

#[tokio::test]
async fn rejects_a_reused_nonce() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let nonce = nonce();
    let (first, _) = call(&sandbox, "testsecret", &nonce, SystemTime::now(), DESCRIBE).await;
    let (second, body) = call(&sandbox, "testsecret", &nonce, SystemTime::now(), DESCRIBE).await;
    assert_eq!(first, 200);
    assert_eq!(
        (second, body["Code"].as_str()),
        (400, Some("SignatureNonceUsed"))
    );
}

#[tokio::test]
async fn rejects_timestamps_more_than_fifteen_minutes_off() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    for skew in [Duration::from_secs(16 * 60)] {
        for time in [SystemTime::now() - skew, SystemTime::now() + skew] {
            let (status, body) = call(&sandbox, "testsecret", &nonce(), time, DESCRIBE).await;
            assert_eq!(
                (status, body["Code"].as_str()),
                (400, Some("InvalidTimeStamp.Expired"))
            );
        }
    }
    let (status, _) = call(
        &sandbox,
        "testsecret",
        &nonce(),
        SystemTime::now() - Duration::from_secs(14 * 60),
        DESCRIBE,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn rejects_missing_parameters_unknown_keys_and_unknown_actions() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let response = http()
        .post(sandbox.endpoint())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("Action=DescribeDBInstanceAttribute&Version=2015-12-01")
        .send()
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(body["Code"], "MissingAccessKeyId");

    let (status, body) = call(
        &sandbox,
        "testsecret",
        &nonce(),
        SystemTime::now(),
        &[
            ("Action", "DeleteDBInstance"),
            ("DBInstanceId", "dds-sandbox01"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["Code"].as_str()),
        (404, Some("InvalidApi.NotFound"))
    );
}

#[tokio::test]
async fn an_upgrade_moves_through_engine_version_upgrading_to_running_on_the_target() {
    // A long upgrade stays in EngineVersionUpgrading and refuses a second upgrade.
    let slow = Sandbox::start(SandboxConfig {
        upgrade_duration: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let upgrade = [
        ("Action", "UpgradeDBInstanceEngineVersion"),
        ("DBInstanceId", "dds-sandbox01"),
        ("EngineVersion", "5.0"),
    ];
    let (status, _) = call(&slow, "testsecret", &nonce(), SystemTime::now(), &upgrade).await;
    assert_eq!(status, 200);
    let instance = slow.instance("dds-sandbox01").unwrap();
    assert_eq!(
        (instance.status.as_str(), instance.engine_version.as_str()),
        ("EngineVersionUpgrading", "4.2")
    );
    let (status, body) = call(&slow, "testsecret", &nonce(), SystemTime::now(), &upgrade).await;
    assert_eq!(
        (status, body["Code"].as_str()),
        (400, Some("IncorrectDBInstanceState"))
    );

    // A finished one is Running on the target, and the same target is no longer later.
    let fast = Sandbox::start(SandboxConfig {
        upgrade_duration: Duration::ZERO,
        ..Default::default()
    })
    .await
    .unwrap();
    call(&fast, "testsecret", &nonce(), SystemTime::now(), &upgrade).await;
    let instance = fast.instance("dds-sandbox01").unwrap();
    assert_eq!(
        (instance.status.as_str(), instance.engine_version.as_str()),
        ("Running", "5.0")
    );
    let (status, body) = call(&fast, "testsecret", &nonce(), SystemTime::now(), &upgrade).await;
    assert_eq!(
        (status, body["Code"].as_str()),
        (400, Some("EngineVersion.ERROR"))
    );
}
