//! Signature V3 (`ACS3-HMAC-SHA256`) against Alibaba's published vectors (data files under
//! `tests/data/signer/v3`), stage by stage, and properties: header names and value padding do
//! not matter, order does not matter, unsigned headers do not matter, and every signed input does.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::path::{Path, PathBuf};

use dds_gateway::testing::alibaba::signer::v3::{self, ParsedAuthorization, Request, SigningKey};
use proptest::prelude::*;

#[derive(serde::Deserialize)]
struct Case {
    method: String,
    canonical_uri: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    hashed_payload: String,
    access_key_id: String,
    secret: String,
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/signer/v3")
}

/// Checks all four stage files of one vector directory.
fn check(name: &str) {
    let dir = data_dir().join(name);
    let stage = |file: &str| {
        std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{name}/{file}: {e}"))
    };
    let case: Case = serde_json::from_str(&stage("case.json")).unwrap();
    let request = Request {
        method: &case.method,
        canonical_uri: &case.canonical_uri,
        query: &case.query,
        headers: &case.headers,
        hashed_payload: &case.hashed_payload,
    };
    let signed = v3::sign(
        &request,
        &case.access_key_id,
        &SigningKey::new(&case.secret),
    );
    assert_eq!(
        signed.canonical_request.as_str(),
        stage("canonical-request.txt"),
        "canonical request of {name}"
    );
    assert_eq!(
        signed.string_to_sign.as_str(),
        stage("string-to-sign.txt"),
        "string to sign of {name}"
    );
    assert_eq!(
        signed.signature.as_str(),
        stage("signature.txt"),
        "signature of {name}"
    );
    assert_eq!(
        signed.authorization.as_str(),
        stage("authorization.txt"),
        "authorization of {name}"
    );
}

macro_rules! vectors {
    ($($test:ident => $dir:literal,)*) => {
        $(#[test] fn $test() { check($dir); })*

        #[test]
        fn every_vector_directory_has_a_test() {
            let mut listed = vec![$($dir),*];
            listed.sort_unstable();
            let mut found: Vec<String> = std::fs::read_dir(data_dir()).unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            found.sort_unstable();
            assert_eq!(found, listed);
        }
    };
}

vectors! {
    official_run_instances => "official-run-instances",
    darabonba_openapi_util_get_authorization => "darabonba-openapi-util-get-authorization",
    darabonba_openapi_util_go_empty_method => "darabonba-openapi-util-go-empty-method",
    dds_upgrade => "dds-upgrade",
    dds_upgrade_security_token => "dds-upgrade-security-token",
}

/// The documented example with `GET` instead of `POST` (value from the reference's own check).
#[test]
fn official_example_with_get_signs_differently() {
    let case: Case = serde_json::from_str(
        &std::fs::read_to_string(data_dir().join("official-run-instances/case.json")).unwrap(),
    )
    .unwrap();
    let request = Request {
        method: "GET",
        canonical_uri: "/",
        query: &case.query,
        headers: &case.headers,
        hashed_payload: &case.hashed_payload,
    };
    let signed = v3::sign(&request, "YourAccessKeyId", &SigningKey::new(&case.secret));
    assert_eq!(
        signed.signature.as_str(),
        "9f6beca8bc1d657b9dfa220898e087dd255411946c1091ced04ef0dc2ed19d87"
    );
}

/// A random request: signed headers with lower-case names, unsigned ones, query parameters.
#[derive(Debug, Clone)]
struct Generated {
    method: String,
    query: Vec<(String, String)>,
    signed: Vec<(String, String)>,
    unsigned: Vec<(String, String)>,
    payload: String,
    secret: String,
}

impl Generated {
    fn sign(&self, headers: &[(String, String)]) -> v3::SignedRequest {
        self.sign_with(
            &self.method,
            &self.query,
            headers,
            &self.payload,
            &self.secret,
        )
    }

    fn sign_with(
        &self,
        method: &str,
        query: &[(String, String)],
        headers: &[(String, String)],
        payload: &str,
        secret: &str,
    ) -> v3::SignedRequest {
        let request = Request {
            method,
            canonical_uri: "/",
            query,
            headers,
            hashed_payload: payload,
        };
        v3::sign(&request, "LTAIgenerated", &SigningKey::new(secret))
    }

    fn headers(&self) -> Vec<(String, String)> {
        self.signed.iter().chain(&self.unsigned).cloned().collect()
    }
}

fn generated() -> impl Strategy<Value = Generated> {
    let signed_name = prop_oneof![
        Just("host".to_string()),
        Just("content-type".to_string()),
        "x-acs-[a-z0-9-]{1,16}",
    ];
    // Header values as HTTP allows them: visible ASCII and inner spaces, no padding (the
    // properties add it).
    let value = "[!-~]([ !-~]{0,30}[!-~])?";
    (
        prop_oneof![Just("POST"), Just("GET"), Just("")],
        proptest::collection::btree_map("[A-Za-z][A-Za-z0-9]{0,10}", any::<String>(), 0..6),
        proptest::collection::btree_map(signed_name, value, 1..6),
        proptest::collection::btree_map(
            "(user-agent|accept|x-ac|x-acsx|content-length)",
            value,
            0..3,
        ),
        "[0-9a-f]{64}",
        "[ -~]{0,80}",
    )
        .prop_map(
            |(method, query, signed, unsigned, payload, secret)| Generated {
                method: method.to_string(),
                query: query.into_iter().collect(),
                signed: signed.into_iter().collect(),
                unsigned: unsigned.into_iter().collect(),
                payload,
                secret,
            },
        )
}

/// `s` with its ASCII letters' case flipped where `mask` has a bit set.
fn mix_case(s: &str, mask: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn header_name_case_and_value_padding_do_not_change_the_signature(
        g in generated(),
        mask in any::<u64>(),
        pad in prop_oneof![Just(""), Just(" "), Just("\t"), Just("  \t ")],
    ) {
        let reference = g.sign(&g.headers());
        let messy: Vec<(String, String)> = g
            .headers()
            .iter()
            .map(|(name, value)| (mix_case(name, mask), format!("{pad}{value}{pad}")))
            .collect();
        let signed = g.sign(&messy);
        prop_assert_eq!(signed.canonical_request.as_str(), reference.canonical_request.as_str());
        prop_assert_eq!(signed.authorization.as_str(), reference.authorization.as_str());
    }

    #[test]
    fn order_and_unsigned_headers_do_not_change_the_signature(g in generated(), seed in any::<u64>()) {
        let reference = g.sign(&g.signed);
        let mut headers = g.headers();
        let n = headers.len().max(1);
        headers.rotate_left((seed as usize) % n);
        headers.reverse();
        let mut shuffled = g.clone();
        shuffled.query.rotate_left((seed as usize) % g.query.len().max(1));
        shuffled.query.reverse();
        let signed = shuffled.sign(&headers);
        prop_assert_eq!(signed.authorization.as_str(), reference.authorization.as_str());
        // SignedHeaders names exactly the signed headers, sorted.
        let parsed = ParsedAuthorization::parse(signed.authorization.as_str()).unwrap();
        let names: Vec<&str> = g.signed.iter().map(|(n, _)| n.as_str()).collect();
        prop_assert_eq!(parsed.signed_headers, names);
    }

    #[test]
    fn any_change_to_a_signed_input_changes_the_signature(g in generated(), pick in any::<prop::sample::Index>(), which in 0..6u8) {
        let reference = g.sign(&g.signed).signature;
        let mut headers = g.signed.clone();
        let changed = match which {
            0 => g.sign_with(&format!("{}X", g.method), &g.query, &headers, &g.payload, &g.secret),
            1 => {
                let mut query = g.query.clone();
                query.push(("zzAdded".into(), String::new()));
                g.sign_with(&g.method, &query, &headers, &g.payload, &g.secret)
            }
            2 if !g.query.is_empty() => {
                let mut query = g.query.clone();
                let at = pick.index(query.len());
                query[at].1.push('x');
                g.sign_with(&g.method, &query, &headers, &g.payload, &g.secret)
            }
            3 => {
                headers[pick.index(g.signed.len())].1.push('x');
                g.sign_with(&g.method, &g.query, &headers, &g.payload, &g.secret)
            }
            4 => {
                let mut payload = g.payload.clone();
                let last = if payload.ends_with('0') { "1" } else { "0" };
                payload.replace_range(63.., last);
                g.sign_with(&g.method, &g.query, &headers, &payload, &g.secret)
            }
            _ => g.sign_with(&g.method, &g.query, &headers, &g.payload, &format!("{}x", g.secret)),
        };
        if which != 2 || !g.query.is_empty() {
            prop_assert_ne!(changed.signature, reference);
        }
    }

    #[test]
    fn signing_is_deterministic_and_matches_parse(g in generated()) {
        let a = g.sign(&g.headers());
        let b = g.sign(&g.headers());
        prop_assert_eq!(a.signature.as_str(), b.signature.as_str());
        let parsed = ParsedAuthorization::parse(a.authorization.as_str()).unwrap();
        prop_assert_eq!(parsed.signature.as_str(), a.signature.as_str());
        prop_assert_eq!(parsed.signature.len(), 64);
        prop_assert!(parsed.signature.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }
}
