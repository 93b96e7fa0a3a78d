//! Signing cost: one `UpgradeDBInstanceEngineVersion` request end to end (canonicalize, string to
//! sign, HMAC-SHA1, Base64) with a credential's pre-keyed HMAC state, and percent-encoding.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dds_gateway::signer::{self, SigningKey, StringToSign};

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

fn bench(c: &mut Criterion) {
    let key = SigningKey::new("testsecret");
    let params = upgrade_params();
    c.bench_function("sign UpgradeDBInstanceEngineVersion (v2, pre-keyed)", |b| {
        b.iter(|| signer::sign("POST", black_box(&params), &key))
    });
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
    let sts = StringToSign::new("POST", &signer::canonicalized_query_string(&params));
    c.bench_function("hmac-sha1 + base64 of the string to sign", |b| {
        b.iter(|| key.sign(black_box(&sts)))
    });
    c.bench_function("signing key from secret", |b| {
        b.iter(|| SigningKey::new(black_box("testsecret")))
    });
    let text = "CAIS+token/with=special*chars~ 中文 2026-11-26T12:46:24Z";
    c.bench_function("percent_encode 60 bytes", |b| {
        b.iter(|| signer::percent_encode(black_box(text)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
