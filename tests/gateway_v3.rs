//! End-to-end with `alibaba.signature_version = "v3"`: the gateway on an ephemeral port signs
//! `ACS3-HMAC-SHA256` requests that the sandbox verifies over real HTTP. Asserts on what the
//! sandbox received: the business parameters in the query, nothing secret in the URL, the
//! `x-acs-*` headers (security token included) signed, a fresh nonce per call.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::{Gateway, Options, request};
use dds_gateway::pb;
use dds_gateway::testing::alibaba::credentials::{Credential, Secret};
use dds_gateway::testing::alibaba::signer::{self, v3};
use dds_gateway::testing::config::SignatureVersion;
use dds_gateway::testing::sandbox::{Received, SandboxConfig};
use tonic::Code;
use tonic_types::StatusExt;

async fn start(sandbox: SandboxConfig, credential: Option<Credential>) -> Gateway {
    Gateway::start_with(Options {
        sandbox,
        credential,
        signature_version: Some(SignatureVersion::V3),
        // These tests read the upgrade call alone; preflight's reads are signed the same way
        // (see `keys_the_sandbox_was_given_as_extra_keys_work_in_v2_and_v3`).
        configure: Some(|config| config.alibaba.preflight = false),
        ..Default::default()
    })
    .await
}

/// The query string as sent, decoded into pairs.
fn query_pairs(received: &Received) -> Vec<(String, String)> {
    form_urlencoded::parse(received.raw_query.as_deref().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

const SIGNED_HEADERS: &str =
    "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version";

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_is_signed_with_v3_and_parameters_travel_in_the_query() {
    let gw = start(SandboxConfig::default(), None).await;
    let mut req = request("dds-sandbox01", "4.4");
    req.switch_mode = pb::SwitchMode::MaintenanceWindow as i32;
    let answer = gw.upgrade(req).await.unwrap();
    assert!(!answer.alibaba_request_id.is_empty());
    assert_eq!(
        gw.sandbox.instance("dds-sandbox01").unwrap().status,
        "EngineVersionUpgrading"
    );

    let received = gw.sandbox.received();
    assert_eq!(received.len(), 1);
    let sent = &received[0];
    assert_eq!(sent.signature_version, SignatureVersion::V3);
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.action, "UpgradeDBInstanceEngineVersion");
    // Exactly the business parameters, sorted and encoded as signed; nothing of V2's.
    assert_eq!(
        sent.raw_query.as_deref(),
        Some("DBInstanceId=dds-sandbox01&EngineVersion=4.4&RegionId=cn-hangzhou&SwitchMode=1")
    );
    assert!(sent.body.is_empty());
    let headers = &sent.headers;
    assert_eq!(headers["host"], gw.sandbox.endpoint().authority());
    assert_eq!(headers["x-acs-action"], "UpgradeDBInstanceEngineVersion");
    assert_eq!(headers["x-acs-version"], "2015-12-01");
    assert_eq!(headers["x-acs-content-sha256"], v3::EMPTY_PAYLOAD_SHA256);
    assert!(signer::parse_timestamp(&headers["x-acs-date"]).is_some());
    let nonce = &headers["x-acs-signature-nonce"];
    assert!(nonce.len() == 32 && nonce.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!headers.contains_key("x-acs-security-token"));
    let auth = v3::ParsedAuthorization::parse(&headers["authorization"]).unwrap();
    assert_eq!(auth.algorithm, "ACS3-HMAC-SHA256");
    assert_eq!(auth.access_key_id, "testid");
    assert_eq!(auth.signed_headers.join(";"), SIGNED_HEADERS);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_call_gets_a_fresh_nonce_and_upstream_errors_map_as_with_v2() {
    let gw = start(SandboxConfig::default(), None).await;
    gw.upgrade(request("dds-sandbox01", "5.0")).await.unwrap();
    let status = gw
        .upgrade(request("dds-sandbox03", "4.4"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().metadata["alibabaCode"],
        "EngineVersion.ERROR"
    );
    let received = gw.sandbox.received();
    assert_eq!(received.len(), 2);
    assert_ne!(
        received[0].headers["x-acs-signature-nonce"],
        received[1].headers["x-acs-signature-nonce"]
    );
    // No SwitchMode when the caller left it unspecified.
    assert!(
        !query_pairs(&received[0])
            .iter()
            .any(|(k, _)| k == "SwitchMode")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn security_token_is_sent_in_a_signed_header_and_never_in_the_url() {
    const TOKEN: &str = "CAIS+sts-token/with=chars";
    let gw = start(
        SandboxConfig {
            security_token: Some(TOKEN.into()),
            ..Default::default()
        },
        None,
    )
    .await;
    gw.upgrade(request("dds-sandbox02", "6.0")).await.unwrap();
    let sent = &gw.sandbox.received()[0];
    assert_eq!(sent.headers["x-acs-security-token"], TOKEN);
    let auth = v3::ParsedAuthorization::parse(&sent.headers["authorization"]).unwrap();
    assert!(
        auth.signed_headers
            .iter()
            .any(|h| h == "x-acs-security-token")
    );
    let query = sent.raw_query.as_deref().unwrap();
    for secret in [
        "CAIS",
        "sts-token",
        "testsecret",
        "Signature",
        "SecurityToken",
        "AccessKeyId",
        &auth.signature,
    ] {
        assert!(!query.contains(secret), "{secret} in the URL: {query}");
    }
    let names: Vec<String> = query_pairs(sent).into_iter().map(|(k, _)| k).collect();
    assert_eq!(names, ["DBInstanceId", "EngineVersion", "RegionId"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_the_sandbox_was_given_as_extra_keys_work_in_v2_and_v3() {
    let issued = Credential::new(
        "STS.issued",
        Secret::new("sts-secret"),
        Some(Secret::new("sts-token")),
        None,
        "test",
    );
    for version in [SignatureVersion::V2, SignatureVersion::V3] {
        let gw = Gateway::start_with(Options {
            sandbox: SandboxConfig {
                extra_keys: vec![issued.clone()],
                ..Default::default()
            },
            credential: Some(issued.clone()),
            signature_version: Some(version),
            ..Default::default()
        })
        .await;
        gw.upgrade(request("dds-sandbox01", "5.0")).await.unwrap();
        let received = gw.sandbox.received();
        assert_eq!(received.len(), 3, "two preflight reads and the upgrade");
        assert!(received.iter().all(|r| r.signature_version == version));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_v3_credentials_are_internal_and_never_echoed() {
    let token = |t: &str| Some(Secret::new(t));
    let cases = [
        (
            Credential::new("testid", Secret::new("not-the-secret"), None, None, "test"),
            None,
            "SignatureDoesNotMatch",
        ),
        (
            Credential::new(
                "someone-else",
                Secret::new("testsecret"),
                None,
                None,
                "test",
            ),
            None,
            "InvalidAccessKeyId.NotFound",
        ),
        (
            Credential::new("testid", Secret::new("testsecret"), None, None, "test"),
            Some("sts-token"),
            "MissingSecurityToken",
        ),
        (
            Credential::new(
                "testid",
                Secret::new("testsecret"),
                token("stale"),
                None,
                "test",
            ),
            Some("sts-token"),
            "InvalidSecurityToken.MismatchWithAccessKey",
        ),
    ];
    for (credential, sandbox_token, alibaba_code) in cases {
        let gw = start(
            SandboxConfig {
                security_token: sandbox_token.map(str::to_string),
                ..Default::default()
            },
            Some(credential),
        )
        .await;
        let status = gw
            .upgrade(request("dds-sandbox01", "5.0"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "GATEWAY_CREDENTIALS_REJECTED");
        assert_eq!(info.metadata["alibabaCode"], alibaba_code);
        let message = status.message();
        assert!(
            !message.contains("canonical request")
                && !message.contains("string to sign")
                && !message.contains("secret"),
            "{message}"
        );
        assert_eq!(
            gw.sandbox.received()[0].signature_version,
            SignatureVersion::V3
        );
        assert_eq!(
            gw.sandbox.instance("dds-sandbox01").unwrap().status,
            "Running"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_that_cannot_be_a_header_value_is_refused_before_sending() {
    let credential = Credential::new(
        "testid",
        Secret::new("testsecret"),
        Some(Secret::new("line\nbreak-token")),
        None,
        "test",
    );
    let gw = start(SandboxConfig::default(), Some(credential)).await;
    let status = gw
        .upgrade(request("dds-sandbox01", "5.0"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "GATEWAY_UNSUPPORTED"
    );
    assert!(!status.message().contains("break-token"), "{status:?}");
    assert!(gw.sandbox.received().is_empty(), "nothing was sent");
}
