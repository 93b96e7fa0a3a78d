//! The sandbox Dds API checked directly over HTTP with signature V3 (`ACS3-HMAC-SHA256`)
//! requests built here, then tampered with: it must refuse each the way Alibaba does, or the
//! gateway's V3 tests would prove nothing. Also: extra (STS-issued) keys, for V2 and V3.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::time::{Duration, SystemTime};

use dds_gateway::testing::alibaba::credentials::{Credential, Secret};
use dds_gateway::testing::alibaba::signer::{self, SigningKey, v3};
use dds_gateway::testing::config::SignatureVersion;
use dds_gateway::testing::sandbox::{Sandbox, SandboxConfig};
use serde_json::Value;

/// A V3 request signed by this test, its parts open to tampering before it is sent.
struct Prepared {
    url: reqwest::Url,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// What to sign.
struct Call<'a> {
    key_id: &'a str,
    secret: &'a str,
    token: Option<&'a str>,
    nonce: String,
    date: String,
    action: &'a str,
    query: Vec<(&'a str, &'a str)>,
    /// A form body, signed through its hash and `content-type`.
    form: Option<&'a str>,
}

impl<'a> Call<'a> {
    fn new(action: &'a str, query: &[(&'a str, &'a str)]) -> Self {
        Self {
            key_id: "testid",
            secret: "testsecret",
            token: None,
            nonce: nonce(),
            date: signer::format_timestamp(SystemTime::now()),
            action,
            query: query.to_vec(),
            form: None,
        }
    }

    fn describe() -> Self {
        Self::new(
            "DescribeDBInstanceAttribute",
            &[("DBInstanceId", "dds-sandbox01")],
        )
    }

    fn prepare(&self, sandbox: &Sandbox) -> Prepared {
        let mut url = sandbox.endpoint();
        let query = v3::canonical_query_string(&self.query);
        url.set_query(Some(&query).filter(|q| !q.is_empty()).map(String::as_str));
        let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
        let body = self.form.unwrap_or("").as_bytes().to_vec();
        let hashed = v3::hashed_request_payload(&body);
        let mut headers: Vec<(String, String)> = [
            ("host", host.as_str()),
            ("x-acs-action", self.action),
            ("x-acs-version", "2015-12-01"),
            ("x-acs-date", &self.date),
            ("x-acs-signature-nonce", &self.nonce),
            ("x-acs-content-sha256", &hashed),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if self.form.is_some() {
            headers.push((
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ));
        }
        if let Some(token) = self.token {
            headers.push(("x-acs-security-token".into(), token.into()));
        }
        let signed = v3::sign(
            &v3::Request {
                method: "POST",
                canonical_uri: "/",
                query: &self.query,
                headers: &headers,
                hashed_payload: &hashed,
            },
            self.key_id,
            &v3::SigningKey::new(self.secret),
        );
        headers.push((
            "authorization".into(),
            signed.authorization.as_str().to_string(),
        ));
        Prepared { url, headers, body }
    }
}

impl Prepared {
    fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.headers.push((name.to_string(), value.to_string()));
    }

    fn remove(&mut self, name: &str) {
        self.headers.retain(|(n, _)| n != name);
    }

    async fn send(self) -> (u16, Value) {
        let mut request = http().post(self.url).body(self.body);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&bytes))),
        )
    }
}

async fn send(sandbox: &Sandbox, call: &Call<'_>) -> (u16, Value) {
    call.prepare(sandbox).send().await
}

/// A plain HTTP client (reqwest is built without a default TLS crypto provider).
fn http() -> reqwest::Client {
    dds_gateway::testing::tls::install_crypto_provider();
    reqwest::Client::new()
}

fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn code(answer: &(u16, Value)) -> (u16, Option<&str>) {
    (answer.0, answer.1["Code"].as_str())
}

async fn sandbox() -> Sandbox {
    Sandbox::start(SandboxConfig::default()).await.unwrap()
}

#[tokio::test]
async fn verifies_a_v3_request_and_records_it_as_v3() {
    let sandbox = sandbox().await;
    let answer = send(&sandbox, &Call::describe()).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(
        answer.1["DBInstances"]["DBInstance"][0]["EngineVersion"],
        "4.2"
    );
    let received = &sandbox.received()[0];
    assert_eq!(received.signature_version, SignatureVersion::V3);
    assert_eq!(received.action, "DescribeDBInstanceAttribute");
    assert_eq!(received.params["DBInstanceId"], "dds-sandbox01");
    assert!(received.headers["authorization"].starts_with("ACS3-HMAC-SHA256 Credential=testid,"));
    let printed = format!("{received:?}");
    assert!(
        !printed.contains("Signature=") && printed.contains("\"authorization\": \"***\""),
        "{printed}"
    );
}

#[tokio::test]
async fn business_parameters_may_travel_in_a_signed_form_body() {
    let sandbox = sandbox().await;
    let mut call = Call::new("DescribeAvailableEngineVersion", &[]);
    call.form = Some("DBInstanceId=dds-sandbox03");
    let answer = send(&sandbox, &call).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(
        answer.1["EngineVersions"]["EngineVersion"],
        serde_json::json!(["6.0", "7.0", "8.0"])
    );
}

#[tokio::test]
async fn a_wrong_secret_is_refused_with_the_servers_string_to_sign_and_canonical_request() {
    let sandbox = sandbox().await;
    let mut call = Call::describe();
    call.secret = "wrong";
    let answer = send(&sandbox, &call).await;
    assert_eq!(code(&answer), (400, Some("SignatureDoesNotMatch")));
    let message = answer.1["Message"].as_str().unwrap();
    assert!(
        message.contains("server string to sign is:ACS3-HMAC-SHA256\n")
            && message.contains("canonical request is:POST\n/\nDBInstanceId=dds-sandbox01\nhost:"),
        "{message}"
    );
}

#[tokio::test]
async fn anything_changed_after_signing_is_refused() {
    let sandbox = sandbox().await;

    // A signed header.
    let mut tampered = Call::describe().prepare(&sandbox);
    tampered.set("x-acs-action", "DescribeAvailableEngineVersion");
    assert_eq!(
        code(&tampered.send().await),
        (400, Some("SignatureDoesNotMatch"))
    );

    // A query parameter.
    let mut tampered = Call::describe().prepare(&sandbox);
    tampered.url.set_query(Some("DBInstanceId=dds-sandbox02"));
    assert_eq!(
        code(&tampered.send().await),
        (400, Some("SignatureDoesNotMatch"))
    );

    // The body, under an unchanged x-acs-content-sha256.
    let mut tampered = Call::describe().prepare(&sandbox);
    tampered.body = b"DBInstanceId=dds-sandbox02".to_vec();
    let answer = tampered.send().await;
    assert_eq!(code(&answer), (400, Some("SignatureDoesNotMatch")));
    assert!(
        answer.1["Message"]
            .as_str()
            .unwrap()
            .contains("x-acs-content-sha256")
    );

    // The signature itself.
    let mut tampered = Call::describe().prepare(&sandbox);
    let auth = tampered
        .headers
        .iter()
        .find(|(n, _)| n == "authorization")
        .unwrap()
        .1
        .clone();
    let flipped = format!(
        "{}{}",
        &auth[..auth.len() - 1],
        if auth.ends_with('0') { "1" } else { "0" }
    );
    tampered.set("authorization", &flipped);
    assert_eq!(
        code(&tampered.send().await),
        (400, Some("SignatureDoesNotMatch"))
    );
    assert!(
        sandbox.received().len() == 4,
        "every attempt reached the sandbox"
    );
}

#[tokio::test]
async fn missing_unsigned_or_malformed_signature_parts_are_incomplete() {
    let sandbox = sandbox().await;

    // A required header neither sent nor signed.
    for required in [
        "x-acs-date",
        "x-acs-signature-nonce",
        "x-acs-content-sha256",
        "x-acs-action",
        "x-acs-version",
    ] {
        let mut call = Call::describe().prepare(&sandbox);
        call.remove(required);
        let answer = call.send().await;
        assert_eq!(
            code(&answer),
            (400, Some("IncompleteSignature")),
            "{required}: {}",
            answer.1
        );
        assert!(
            answer.1["Message"].as_str().unwrap().contains(required),
            "{}",
            answer.1
        );
    }

    // An x-acs-* header added after signing (an unsigned token could be swapped in).
    let mut call = Call::describe().prepare(&sandbox);
    call.set("x-acs-security-token", "unsigned");
    let answer = call.send().await;
    assert_eq!(code(&answer), (400, Some("IncompleteSignature")));
    assert!(answer.1["Message"].as_str().unwrap().contains("not signed"));

    for (authorization, expected) in [
        ("ACS3-HMAC-SHA256 Credential=testid", "IncompleteSignature"),
        ("ACS3-HMAC-SHA256 garbage", "IncompleteSignature"),
        (
            "ACS3-HMAC-SM3 Credential=testid,SignedHeaders=host,Signature=00",
            "InvalidSignatureMethod",
        ),
    ] {
        let mut call = Call::describe().prepare(&sandbox);
        call.set("authorization", authorization);
        assert_eq!(
            code(&call.send().await),
            (400, Some(expected)),
            "{authorization}"
        );
    }
}

#[tokio::test]
async fn dates_must_be_well_formed_and_within_fifteen_minutes() {
    let sandbox = sandbox().await;
    let skew = Duration::from_secs(16 * 60);
    for time in [SystemTime::now() - skew, SystemTime::now() + skew] {
        let mut call = Call::describe();
        call.date = signer::format_timestamp(time);
        assert_eq!(
            code(&send(&sandbox, &call).await),
            (400, Some("InvalidTimeStamp.Expired"))
        );
    }
    for bad in ["2023-10-26 10:22:32", "2023-10-26T10:22:32.5Z", "yesterday"] {
        let mut call = Call::describe();
        call.date = bad.to_string();
        assert_eq!(
            code(&send(&sandbox, &call).await),
            (400, Some("InvalidTimeStamp.Format")),
            "{bad}"
        );
    }
    let mut call = Call::describe();
    call.date = signer::format_timestamp(SystemTime::now() - Duration::from_secs(14 * 60));
    assert_eq!(send(&sandbox, &call).await.0, 200);
}

#[tokio::test]
async fn a_reused_nonce_is_refused() {
    let sandbox = sandbox().await;
    let call = Call::describe();
    assert_eq!(send(&sandbox, &call).await.0, 200);
    assert_eq!(
        code(&send(&sandbox, &call).await),
        (400, Some("SignatureNonceUsed"))
    );
}

#[tokio::test]
async fn unknown_keys_are_not_found() {
    let sandbox = sandbox().await;
    let mut call = Call::describe();
    call.key_id = "LTAInobody";
    assert_eq!(
        code(&send(&sandbox, &call).await),
        (404, Some("InvalidAccessKeyId.NotFound"))
    );
}

#[tokio::test]
async fn security_tokens_are_required_and_must_match() {
    let sandbox = Sandbox::start(SandboxConfig {
        security_token: Some("sts-token+/=".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut call = Call::describe();
    assert_eq!(
        code(&send(&sandbox, &call).await),
        (400, Some("MissingSecurityToken"))
    );
    call.nonce = nonce();
    call.token = Some("another-token");
    assert_eq!(
        code(&send(&sandbox, &call).await),
        (400, Some("InvalidSecurityToken.MismatchWithAccessKey"))
    );
    call.nonce = nonce();
    call.token = Some("sts-token+/=");
    assert_eq!(send(&sandbox, &call).await.0, 200);
    let printed = format!("{:?}", sandbox.received());
    assert!(!printed.contains("sts-token"), "{printed}");
}

/// A V2 form request signed with `key_id` / `secret` (and `token`), like `tests/sandbox.rs`.
async fn send_v2(
    sandbox: &Sandbox,
    key_id: &str,
    secret: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let time = signer::format_timestamp(SystemTime::now());
    let nonce = nonce();
    let mut params: Vec<(&str, &str)> = vec![
        ("Action", "DescribeDBInstanceAttribute"),
        ("Version", "2015-12-01"),
        ("Format", "JSON"),
        ("AccessKeyId", key_id),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("SignatureNonce", &nonce),
        ("Timestamp", &time),
        ("DBInstanceId", "dds-sandbox01"),
    ];
    if let Some(token) = token {
        params.push(("SecurityToken", token));
    }
    let signed = signer::sign("POST", &params, &SigningKey::new(secret));
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

#[tokio::test]
async fn extra_keys_are_accepted_with_their_own_tokens_in_v2_and_v3() {
    let sts = Credential::new(
        "STS.issued",
        Secret::new("sts-secret"),
        Some(Secret::new("sts-token")),
        None,
        "test",
    );
    let plain = Credential::new("LTAIplain", Secret::new("plain-secret"), None, None, "test");
    let sandbox = Sandbox::start(SandboxConfig {
        extra_keys: vec![sts, plain],
        ..Default::default()
    })
    .await
    .unwrap();
    let printed = format!("{sandbox:?} {:?}", SandboxConfig::default());
    assert!(!printed.contains("sts-secret"), "{printed}");

    // V3.
    for (key_id, secret, token, expected) in [
        ("STS.issued", "sts-secret", Some("sts-token"), None),
        ("LTAIplain", "plain-secret", None, None),
        ("testid", "testsecret", None, None),
        (
            "STS.issued",
            "sts-secret",
            None,
            Some("MissingSecurityToken"),
        ),
        (
            "STS.issued",
            "sts-secret",
            Some("other"),
            Some("InvalidSecurityToken.MismatchWithAccessKey"),
        ),
        (
            "STS.issued",
            "testsecret",
            Some("sts-token"),
            Some("SignatureDoesNotMatch"),
        ),
    ] {
        let mut call = Call::describe();
        call.key_id = key_id;
        call.secret = secret;
        call.token = token;
        let answer = send(&sandbox, &call).await;
        match expected {
            None => assert_eq!(answer.0, 200, "v3 {key_id}: {}", answer.1),
            Some(expected) => assert_eq!(code(&answer), (400, Some(expected)), "v3 {key_id}"),
        }

        // The same through V2.
        let answer = send_v2(&sandbox, key_id, secret, token).await;
        match expected {
            None => assert_eq!(answer.0, 200, "v2 {key_id}: {}", answer.1),
            Some(expected) => assert_eq!(code(&answer), (400, Some(expected)), "v2 {key_id}"),
        }
    }
}
