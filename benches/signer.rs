//! Signing cost: one `UpgradeDBInstanceEngineVersion` request end to end with a credential's
//! pre-keyed HMAC state, in signature V2 (canonicalize, string to sign, HMAC-SHA1, Base64) and V3
//! (canonical request, SHA-256, HMAC-SHA256, hex, Authorization), and percent-encoding.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dds_gateway::signer::{self, SigningKey, StringToSign, v3};

/// The parameters the gateway signs for an upgrade, STS token included.
fn upgrade_params() -> Vec<(&'static str, String)> {
    vec![
        ("Action", "UpgradeDBInstanceEngineVersion".into()),
        ("Version", "2015-12-01".into()),
        ("Format", "JSON".into()),
        ("AccessKeyId", "STS.NUgYrLnoC37mZZCNnAbez2ZVQ".into()),
        ("SignatureMethod", "HMAC-SHA1".into()),
        ("SignatureVersion", "1.0".into()),
        (
            "SignatureNonce",
            "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf".into(),
        ),
        ("Timestamp", "2026-11-26T12:46:24Z".into()),
        ("SecurityToken", "CAIS+token/with=special*chars~".repeat(8)),
        ("RegionId", "cn-hangzhou".into()),
        ("DBInstanceId", "dds-bp1234567890abcd".into()),
        ("EngineVersion", "5.0".into()),
        ("SwitchMode", "0".into()),
    ]
}

type Pairs<'a> = [(&'a str, &'a str)];

/// The V3 request the gateway signs for an upgrade: parameters in the query, empty body.
fn v3_request<'a>(
    query: &'a Pairs<'a>,
    headers: &'a Pairs<'a>,
) -> v3::Request<'a, (&'a str, &'a str), (&'a str, &'a str)> {
    v3::Request {
        method: "POST",
        canonical_uri: "/",
        query,
        headers,
        hashed_payload: v3::EMPTY_PAYLOAD_SHA256,
    }
}

fn bench(c: &mut Criterion) {
    let key = SigningKey::new("testsecret");
    let params = upgrade_params();
    // What the gateway does per call (form body with the signature), next to the bare crypto of
    // the same string to sign: the target is at most 1.5 times the baseline.
    c.bench_function("v2 form body, 240-byte token (as the gateway sends)", |b| {
        b.iter(|| signer::sign_form_body("POST", black_box(&params), &key))
    });
    let sts = StringToSign::new("POST", &signer::canonicalized_query_string(&params));
    c.bench_function(
        "baseline: hmac-sha1 + base64 of the same string to sign",
        |b| b.iter(|| key.sign(black_box(&sts))),
    );
    c.bench_function(
        "sign UpgradeDBInstanceEngineVersion (v2, pre-keyed, all stages kept)",
        |b| b.iter(|| signer::sign("POST", black_box(&params), &key)),
    );
    let without_token: Vec<_> = params
        .iter()
        .filter(|(k, _)| *k != "SecurityToken")
        .cloned()
        .collect();
    c.bench_function("sign UpgradeDBInstanceEngineVersion (v2, no token)", |b| {
        b.iter(|| signer::sign("POST", black_box(&without_token), &key))
    });
    c.bench_function("canonicalized query string (no token)", |b| {
        b.iter(|| signer::canonicalized_query_string(black_box(&without_token)))
    });
    let cqs = signer::canonicalized_query_string(&without_token);
    c.bench_function("string to sign (no token)", |b| {
        b.iter(|| StringToSign::new("POST", black_box(&cqs)))
    });
    c.bench_function("signing key from secret", |b| {
        b.iter(|| SigningKey::new(black_box("testsecret")))
    });

    // V3: business parameters in the query, the rest in headers, as the gateway sends it.
    let query = [
        ("RegionId", "cn-hangzhou"),
        ("DBInstanceId", "dds-bp1234567890abcd"),
        ("EngineVersion", "5.0"),
        ("SwitchMode", "0"),
    ];
    let token = "CAIS+token/with=special*chars~".repeat(8);
    let mut headers = vec![
        ("host", "mongodb.aliyuncs.com"),
        ("x-acs-action", "UpgradeDBInstanceEngineVersion"),
        ("x-acs-version", "2015-12-01"),
        ("x-acs-date", "2026-11-26T12:46:24Z"),
        ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
        ("x-acs-content-sha256", v3::EMPTY_PAYLOAD_SHA256),
    ];
    let key_v3 = v3::SigningKey::new("testsecret");
    c.bench_function("sign UpgradeDBInstanceEngineVersion (v3, no token)", |b| {
        b.iter(|| {
            v3::sign(
                black_box(&v3_request(&query, &headers)),
                "LTAIexample",
                &key_v3,
            )
        })
    });
    headers.push(("x-acs-security-token", &token));
    c.bench_function("sign UpgradeDBInstanceEngineVersion (v3, pre-keyed)", |b| {
        b.iter(|| {
            v3::sign(
                black_box(&v3_request(&query, &headers)),
                "STS.NUgYrLnoC37mZZCNnAbez2ZVQ",
                &key_v3,
            )
        })
    });

    // The V3 baselines: the crypto no V3 signature can avoid, on the same inputs.
    let signed = v3::sign(
        &v3_request(&query, &headers),
        "STS.NUgYrLnoC37mZZCNnAbez2ZVQ",
        &key_v3,
    );
    c.bench_function(
        "baseline: hmac-sha256 + hex of the same v3 string to sign",
        |b| b.iter(|| key_v3.sign(black_box(&signed.string_to_sign))),
    );
    c.bench_function(
        "baseline: sha-256 hex of the v3 canonical request + hmac-sha256 + hex",
        |b| {
            b.iter(|| {
                let hashed = v3::hashed_request_payload(black_box(
                    signed.canonical_request.as_str().as_bytes(),
                ));
                (hashed, key_v3.sign(black_box(&signed.string_to_sign)))
            })
        },
    );

    let text = "CAIS+token/with=special*chars~ 中文 2026-11-26T12:46:24Z";
    c.bench_function("percent_encode 60 bytes", |b| {
        b.iter(|| signer::percent_encode(black_box(text)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
