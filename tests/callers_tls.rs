//! Callers over TLS: bearer tokens over TLS, client certificates (mTLS) naming their caller
//! only with its opt-in, JSON over HTTPS, and the upgrade client speaking TLS and mTLS.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::callers::{
    BILLING_TOKEN, UPGRADE, call, callers_toml, gateway, validate_only, with_token,
};
use common::http_client;
use common::pki::{Pem, Pki, ca, leaf};
use common::{assert_error, request};
use dds_gateway::pb;
use tonic::Code;

/// `callers` and one more, `cert-only`, known only by its client certificate.
fn with_cert_only(callers: &str) -> String {
    format!(
        "{callers}\n[[callers]]\nname = \"cert-only\"\nmtls = true\nregions = [\"cn-hangzhou\"]\ninstances = [\"*\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_serves_bearer_callers_and_refuses_plaintext() {
    let (pki, _issuer, server_keys) = Pki::new(false);
    let gw = gateway(&server_keys, &callers_toml()).await;
    let client = pki.client(gw.addr, None).await.unwrap();
    let missing = call(
        &client,
        tonic::Request::new(validate_only("dds-sandbox01", "5.0")),
    )
    .await
    .unwrap_err();
    assert_error(
        &missing,
        Code::Unauthenticated,
        "CALLER_CREDENTIALS_MISSING",
    );
    let answer = call(
        &client,
        with_token(request("dds-sandbox01", "5.0"), BILLING_TOKEN),
    )
    .await
    .unwrap();
    assert!(!answer.alibaba_request_id.is_empty());

    // The plaintext client of the harness cannot talk to a TLS listener.
    assert!(
        gw.upgrade(validate_only("dds-sandbox01", "5.0"))
            .await
            .is_err()
    );
    assert_eq!(gw.sandbox.calls(UPGRADE), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_name_their_caller() {
    let (pki, issuer, server_keys) = Pki::new(true);
    // `billing` has a token and accepts certificates; `cert-only` is known only by its
    // certificate.
    let callers = with_cert_only(&callers_toml().replacen(
        "name = \"billing\"\n",
        "name = \"billing\"\nmtls = true\n",
        1,
    ));
    let gw = gateway(&server_keys, &callers).await;
    let client_auth = rcgen::ExtendedKeyUsagePurpose::ClientAuth;

    // Named by the subject CN.
    let by_cn = leaf(&issuer, "cert-only", &[], client_auth.clone());
    let client = pki.client(gw.addr, Some(&by_cn)).await.unwrap();
    let answer = call(
        &client,
        tonic::Request::new(request("dds-sandbox02", "5.0")),
    )
    .await
    .unwrap();
    assert!(!answer.alibaba_request_id.is_empty());
    // The certificate's caller and a token for another caller contradict each other.
    let conflicting = call(
        &client,
        with_token(validate_only("dds-sandbox02", "5.0"), BILLING_TOKEN),
    )
    .await
    .unwrap_err();
    assert_error(
        &conflicting,
        Code::Unauthenticated,
        "CALLER_CREDENTIALS_INVALID",
    );

    // Named by a DNS SAN; that caller's policy applies.
    let by_san = leaf(&issuer, "somebody", &["billing"], client_auth.clone());
    let client = pki.client(gw.addr, Some(&by_san)).await.unwrap();
    let denied = call(
        &client,
        tonic::Request::new(request("dds-sandbox03", "4.4")),
    )
    .await
    .unwrap_err();
    assert_eq!(
        assert_error(&denied, Code::PermissionDenied, "CALLER_NOT_PERMITTED")["caller"],
        "billing"
    );

    // A valid certificate that names no caller.
    let stranger = leaf(
        &issuer,
        "stranger",
        &["stranger.example"],
        client_auth.clone(),
    );
    let client = pki.client(gw.addr, Some(&stranger)).await.unwrap();
    let status = call(
        &client,
        tonic::Request::new(validate_only("dds-sandbox02", "5.0")),
    )
    .await
    .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "CALLER_CREDENTIALS_INVALID");

    // A certificate from another CA, with the right name, fails the handshake or the call.
    let (other_ca, _) = ca("someone else's ca");
    let forged = leaf(&other_ca, "cert-only", &[], client_auth);
    if let Ok(client) = pki.client(gw.addr, Some(&forged)).await {
        let status = call(
            &client,
            tonic::Request::new(validate_only("dds-sandbox02", "5.0")),
        )
        .await;
        assert!(status.is_err(), "{status:?}");
    }
    assert_eq!(gw.sandbox.calls(UPGRADE), 1);
}

/// A certificate names only a caller that opted in to certificates (`mtls = true`): one that
/// names a caller known by its token is refused as if it named nobody.
#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_cannot_name_a_caller_without_the_opt_in() {
    let (pki, issuer, server_keys) = Pki::new(true);
    let callers = with_cert_only(&callers_toml());
    let gw = gateway(&server_keys, &callers).await;
    let client_auth = rcgen::ExtendedKeyUsagePurpose::ClientAuth;
    for (cn, sans) in [("billing", &[][..]), ("somebody", &["billing"][..])] {
        let naming_billing = leaf(&issuer, cn, sans, client_auth.clone());
        let client = pki.client(gw.addr, Some(&naming_billing)).await.unwrap();
        let refused = call(
            &client,
            tonic::Request::new(validate_only("dds-sandbox02", "5.0")),
        )
        .await
        .unwrap_err();
        assert_error(
            &refused,
            Code::Unauthenticated,
            "CALLER_CREDENTIALS_INVALID",
        );
        // With billing's own token the call is billing's, as without a certificate.
        call(
            &client,
            with_token(validate_only("dds-sandbox02", "5.0"), BILLING_TOKEN),
        )
        .await
        .unwrap();
    }
    // The caller that opted in is still named by its certificate.
    let cert_only = leaf(&issuer, "cert-only", &[], client_auth);
    let client = pki.client(gw.addr, Some(&cert_only)).await.unwrap();
    call(
        &client,
        tonic::Request::new(validate_only("dds-sandbox02", "5.0")),
    )
    .await
    .unwrap();
    assert_eq!(gw.sandbox.calls(UPGRADE), 0);
}

/// JSON over HTTPS (HTTP/2 by ALPN) with the client certificate presented in the handshake.
async fn https_json(
    pki: &Pki,
    addr: std::net::SocketAddr,
    identity: Option<&Pem>,
    instance: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> http_client::Answer {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(pem) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(pem.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    http_client::http2(
        tls,
        "POST",
        &format!(
            "https://localhost:{}/v1/instances/{instance}:upgradeEngineVersion",
            addr.port()
        ),
        &all,
        Some(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn json_over_https_names_callers_by_certificate_or_token() {
    let (pki, issuer, server_keys) = Pki::new(true);
    let callers = with_cert_only(&callers_toml());
    let gw = gateway(&server_keys, &callers).await;
    let client_auth = rcgen::ExtendedKeyUsagePurpose::ClientAuth;
    let upgrade = r#"{"engineVersion":"5.0"}"#;

    let by_cert = leaf(&issuer, "cert-only", &[], client_auth.clone());
    let answer = https_json(&pki, gw.addr, Some(&by_cert), "dds-sandbox02", &[], upgrade).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json()["engineVersion"], "5.0");

    let token = format!("Bearer {BILLING_TOKEN}");
    let by_token = https_json(
        &pki,
        gw.addr,
        None,
        "dds-sandbox01",
        &[("authorization", token.as_str())],
        r#"{"engineVersion":"6.0","validateOnly":true}"#,
    )
    .await;
    assert_eq!(by_token.status, 200, "{:?}", by_token.body);
    // The certificate's caller and another caller's token contradict each other.
    https_json(
        &pki,
        gw.addr,
        Some(&by_cert),
        "dds-sandbox02",
        &[("authorization", token.as_str())],
        upgrade,
    )
    .await
    .assert_error(401, 16, "CALLER_CREDENTIALS_INVALID");
    let stranger = leaf(&issuer, "stranger", &[], client_auth);
    https_json(
        &pki,
        gw.addr,
        Some(&stranger),
        "dds-sandbox02",
        &[],
        upgrade,
    )
    .await
    .assert_error(401, 16, "CALLER_CREDENTIALS_INVALID");
    https_json(&pki, gw.addr, None, "dds-sandbox02", &[], upgrade)
        .await
        .assert_error(401, 16, "CALLER_CREDENTIALS_MISSING");
    assert_eq!(gw.sandbox.calls(UPGRADE), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upgrade_client_speaks_tls_and_mtls() {
    use dds_gateway::client::{Outcome, StatusArgs, Target, UpgradeArgs, status, upgrade};
    let (pki, issuer, server_keys) = Pki::new(true);
    let callers = with_cert_only(&callers_toml());
    let gw = gateway(&server_keys, &callers).await;
    let identity = leaf(
        &issuer,
        "cert-only",
        &[],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    std::fs::write(pki.dir.path().join("client.pem"), &identity.cert).unwrap();
    std::fs::write(pki.dir.path().join("client.key"), &identity.key).unwrap();
    let target = |token: Option<&str>, mtls: bool| Target {
        url: format!("https://localhost:{}", gw.addr.port()),
        token: token.map(dds_gateway::testing::alibaba::credentials::Secret::new),
        ca_cert: Some(pki.dir.path().join("ca.pem")),
        client_cert: mtls.then(|| {
            (
                pki.dir.path().join("client.pem"),
                pki.dir.path().join("client.key"),
            )
        }),
    };
    let args = |token: Option<&str>, mtls: bool| UpgradeArgs {
        target: target(token, mtls),
        instance: "dds-sandbox02".into(),
        version: "5.0".into(),
        region: None,
        switch_mode: pb::SwitchMode::Unspecified,
        request_id: None,
        validate_only: true,
        timeout: Duration::from_secs(10),
    };
    let Outcome::Answered(text) = upgrade(args(Some(BILLING_TOKEN), false)).await else {
        panic!("the bearer token over TLS is accepted");
    };
    assert!(text.contains("validate_only: true"), "{text}");
    let Outcome::Answered(_) = upgrade(args(None, true)).await else {
        panic!("the client certificate is accepted");
    };
    let Outcome::Failed(text) = upgrade(args(None, false)).await else {
        panic!("no credentials is refused");
    };
    assert!(text.contains("CALLER_CREDENTIALS_MISSING"), "{text}");
    // `status` (and `watch`) connect the same way.
    let Outcome::Answered(text) = status(StatusArgs {
        target: target(None, true),
        instance: "dds-sandbox02".into(),
        region: None,
        version: String::new(),
        timeout: Duration::from_secs(10),
    })
    .await
    else {
        panic!("status over mTLS is answered");
    };
    assert!(text.contains("engine_version: 4.4"), "{text}");
    assert_eq!(gw.sandbox.calls(UPGRADE), 0, "validate-only never upgrades");
}
