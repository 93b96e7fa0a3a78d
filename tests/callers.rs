//! Callers over loopback: bearer tokens, policy, rate limits, load shedding, TLS and mTLS,
//! bad input on the wire, and reloading `[[callers]]`. Each refusal is checked to reach no
//! upstream (the sandbox records every call).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;
#[path = "common/http_client.rs"]
mod http_client;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Gateway, request, wait_until};
use dds_gateway::api::auth::hash_token;
use dds_gateway::config::{Config, Overrides};
use dds_gateway::pb;
use dds_gateway::pb::engine_version_service_client::EngineVersionServiceClient;
use dds_gateway::sandbox::{Fault, Sandbox, SandboxConfig};
use tokio::io::AsyncWriteExt;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt;

const UPGRADE: &str = "UpgradeDBInstanceEngineVersion";
const BILLING_TOKEN: &str = "billing-token-0123456789";
const OPS_TOKEN: &str = "ops-token-0123456789";

/// Two callers; `ops` has rules that must never show in `billing`'s errors.
fn callers_toml() -> String {
    format!(
        r#"
[[callers]]
name = "billing"
token_sha256 = "{}"
regions = ["cn-hangzhou"]
instances = ["dds-sandbox0*"]
engine_versions = ["5.0", "6.0"]

[[callers]]
name = "secret-ops"
token_sha256 = "{}"
regions = ["cn-shenzhen"]
instances = ["dds-sandboxsz"]
validate_only = true
"#,
        hash_token(BILLING_TOKEN),
        hash_token(OPS_TOKEN)
    )
}

/// The gateway in front of a fresh sandbox, with `server` keys and `callers` as TOML.
async fn gateway(server: &str, callers: &str) -> Gateway {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let toml = format!(
        "[server]\n{server}\n[alibaba]\nendpoint = \"{}\"\n{callers}",
        sandbox.endpoint()
    );
    let config = Config::from_toml(&toml, "test", |_| None, &Overrides::default()).unwrap();
    let credentials = common::credentials_of(&sandbox);
    Gateway::serve(config, credentials, sandbox).await
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

async fn call(
    client: &EngineVersionServiceClient<Channel>,
    request: tonic::Request<pb::UpgradeEngineVersionRequest>,
) -> Result<pb::UpgradeEngineVersionResponse, tonic::Status> {
    client
        .clone()
        .upgrade_engine_version(request)
        .await
        .map(tonic::Response::into_inner)
}

fn validate_only(instance: &str, version: &str) -> pb::UpgradeEngineVersionRequest {
    pb::UpgradeEngineVersionRequest {
        validate_only: true,
        ..request(instance, version)
    }
}

fn assert_error(
    status: &tonic::Status,
    code: Code,
    reason: &str,
) -> std::collections::HashMap<String, String> {
    assert_eq!(status.code(), code, "{status:?}");
    let info = status
        .get_details_error_info()
        .expect("every error carries ErrorInfo");
    assert_eq!(info.domain, "dds-gateway");
    assert_eq!(info.reason, reason, "{status:?}");
    info.metadata
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_malformed_and_unknown_tokens_are_unauthenticated_without_upstream_calls() {
    let gw = gateway("", &callers_toml()).await;
    let missing = call(
        &gw.client,
        tonic::Request::new(request("dds-sandbox01", "5.0")),
    )
    .await
    .unwrap_err();
    assert_error(
        &missing,
        Code::Unauthenticated,
        "CALLER_CREDENTIALS_MISSING",
    );

    let wrong = call(
        &gw.client,
        with_token(request("dds-sandbox01", "5.0"), "guess"),
    )
    .await
    .unwrap_err();
    assert_error(&wrong, Code::Unauthenticated, "CALLER_CREDENTIALS_INVALID");
    assert!(!wrong.message().contains("guess"), "{wrong:?}");

    let mut basic = tonic::Request::new(request("dds-sandbox01", "5.0"));
    basic
        .metadata_mut()
        .insert("authorization", "Basic YmlsbGluZzp4".parse().unwrap());
    let basic = call(&gw.client, basic).await.unwrap_err();
    assert_error(&basic, Code::Unauthenticated, "CALLER_CREDENTIALS_INVALID");

    // Two authorization headers are ambiguous, even if one of them is right.
    let mut twice = with_token(request("dds-sandbox01", "5.0"), BILLING_TOKEN);
    twice
        .metadata_mut()
        .append("authorization", "Bearer guess".parse().unwrap());
    let twice = call(&gw.client, twice).await.unwrap_err();
    assert_error(&twice, Code::Unauthenticated, "CALLER_CREDENTIALS_INVALID");

    assert!(gw.sandbox.received().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_call_goes_through_once() {
    let gw = gateway("", &callers_toml()).await;
    let answer = call(
        &gw.client,
        with_token(request("dds-sandbox01", "5.0"), BILLING_TOKEN),
    )
    .await
    .unwrap();
    assert!(!answer.alibaba_request_id.is_empty());
    assert_eq!(gw.sandbox.calls(UPGRADE), 1);
    assert_eq!(
        gw.sandbox.instance("dds-sandbox01").unwrap().status,
        "EngineVersionUpgrading"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_policy_rule_denies_by_name_and_never_reveals_other_callers() {
    let gw = gateway("", &callers_toml()).await;
    let region = pb::UpgradeEngineVersionRequest {
        region_id: "cn-shenzhen".into(),
        ..request("dds-sandbox01", "5.0")
    };
    let cases = [
        (BILLING_TOKEN, region, "regions", "billing"),
        (
            BILLING_TOKEN,
            request("dds-sandboxsz", "6.0"),
            "instances",
            "billing",
        ),
        (
            BILLING_TOKEN,
            request("dds-sandbox01", "4.4"),
            "engine_versions",
            "billing",
        ),
        (
            OPS_TOKEN,
            request("dds-sandboxsz", "7.0"),
            "validate_only",
            "secret-ops",
        ),
    ];
    for (token, message, rule, caller) in cases {
        let status = call(&gw.client, with_token(message, token))
            .await
            .unwrap_err();
        let metadata = assert_error(&status, Code::PermissionDenied, "CALLER_NOT_PERMITTED");
        assert_eq!(metadata["rule"], rule, "{status:?}");
        assert_eq!(metadata["caller"], caller, "{status:?}");
        let text = format!("{status:?} {}", status.message());
        let other = if caller == "billing" {
            "secret-ops"
        } else {
            "billing"
        };
        assert!(!text.contains(other), "{text}");
        assert!(!text.contains("dds-sandbox0*"), "{text}");
    }
    assert!(
        gw.sandbox.received().is_empty(),
        "denied calls never reach Alibaba"
    );
    // A validate-only caller may validate what its other rules allow (preflight reads only).
    let ok = call(
        &gw.client,
        with_token(
            pb::UpgradeEngineVersionRequest {
                region_id: "cn-shenzhen".into(),
                ..validate_only("dds-sandboxsz", "7.0")
            },
            OPS_TOKEN,
        ),
    )
    .await
    .unwrap();
    assert!(ok.validate_only && ok.alibaba_request_id.is_empty());
    assert_eq!(gw.sandbox.calls(UPGRADE), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_over_its_rate_is_resource_exhausted_and_others_are_not() {
    // A refill so slow that no token comes back during the test.
    let callers = callers_toml().replacen(
        "engine_versions = [\"5.0\", \"6.0\"]",
        "engine_versions = [\"5.0\", \"6.0\"]\nrate_per_second = 0.001\nburst = 2",
        1,
    );
    let gw = gateway("", &callers).await;
    for _ in 0..2 {
        call(
            &gw.client,
            with_token(validate_only("dds-sandbox01", "5.0"), BILLING_TOKEN),
        )
        .await
        .unwrap();
    }
    let limited = call(
        &gw.client,
        with_token(request("dds-sandbox01", "5.0"), BILLING_TOKEN),
    )
    .await
    .unwrap_err();
    let metadata = assert_error(&limited, Code::ResourceExhausted, "CALLER_RATE_LIMITED");
    assert_eq!(metadata["caller"], "billing");
    let delay = limited
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(delay > Duration::from_secs(60), "{delay:?}");
    assert_eq!(gw.sandbox.calls(UPGRADE), 0);

    // Keyed by caller, not by connection: the other caller on the same channel is unaffected.
    let other = pb::UpgradeEngineVersionRequest {
        region_id: "cn-shenzhen".into(),
        ..validate_only("dds-sandboxsz", "7.0")
    };
    call(&gw.client, with_token(other, OPS_TOKEN))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_is_shed_at_once_and_calls_in_flight_finish() {
    let gw = gateway(
        "max_in_flight = 2\nmax_in_flight_per_caller = 2",
        &callers_toml(),
    )
    .await;
    for _ in 0..2 {
        gw.sandbox
            .push_fault_on(UPGRADE, Fault::Delay(Duration::from_secs(3)));
    }
    let in_flight: Vec<_> = ["dds-sandbox01", "dds-sandbox02"]
        .into_iter()
        .map(|id| {
            let client = gw.client.clone();
            tokio::spawn(async move {
                call(&client, with_token(request(id, "5.0"), BILLING_TOKEN)).await
            })
        })
        .collect();
    let sandbox = &gw.sandbox;
    wait_until("both calls reach the upstream", || {
        sandbox.calls(UPGRADE) == 2
    })
    .await;

    let shed = call(
        &gw.client,
        with_token(request("dds-sandbox03", "6.0"), BILLING_TOKEN),
    )
    .await
    .unwrap_err();
    assert_error(&shed, Code::Unavailable, "GATEWAY_OVERLOADED");
    assert!(shed.get_details_retry_info().is_some());
    assert_eq!(
        gw.sandbox.calls(UPGRADE),
        2,
        "the shed call never went upstream"
    );

    for call in in_flight {
        assert!(call.await.unwrap().is_ok());
    }
    // With room again, the next call is served.
    call(
        &gw.client,
        with_token(validate_only("dds-sandbox03", "6.0"), BILLING_TOKEN),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_with_callers_may_listen_beyond_loopback() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let toml = format!(
        "[alibaba]\nendpoint = \"{}\"\n{}",
        sandbox.endpoint(),
        callers_toml()
    );
    let config = Config::from_toml(&toml, "test", |_| None, &Overrides::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let credentials = common::credentials_of(&sandbox);
    let task = tokio::spawn(dds_gateway::server::serve(
        config,
        credentials,
        listener,
        std::future::pending(),
    ));
    let client = EngineVersionServiceClient::new(
        common::channel(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await,
    );
    let denied = call(
        &client,
        tonic::Request::new(validate_only("dds-sandbox01", "5.0")),
    )
    .await
    .unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);
    call(
        &client,
        with_token(validate_only("dds-sandbox01", "5.0"), BILLING_TOKEN),
    )
    .await
    .unwrap();
    task.abort();
}

// ---- bad input on the wire ----

/// A message shaped like the request but with bytes that are not UTF-8 where a string belongs.
#[derive(Clone, PartialEq, prost::Message)]
struct NotUtf8 {
    #[prost(bytes = "vec", tag = "1")]
    db_instance_id: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread")]
async fn undecodable_and_oversized_messages_get_error_info_and_no_upstream_call() {
    let gw = gateway("", &callers_toml()).await;
    let mut grpc = tonic::client::Grpc::new(common::channel(gw.addr).await);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/dds.gateway.v1.EngineVersionService/UpgradeEngineVersion",
    );
    let garbage = with_token(
        NotUtf8 {
            db_instance_id: vec![0xff, 0xfe, 0xfd],
        },
        BILLING_TOKEN,
    );
    let status = grpc
        .unary::<_, pb::UpgradeEngineVersionResponse, _>(
            garbage,
            path.clone(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_error(&status, Code::Internal, "MALFORMED_REQUEST");

    let big = with_token(
        request(&format!("dds-{}", "a".repeat(200_000)), "5.0"),
        BILLING_TOKEN,
    );
    let status = call(&gw.client, big).await.unwrap_err();
    assert_error(&status, Code::OutOfRange, "REQUEST_TOO_LARGE");

    // An unknown method is answered by the router; it too carries ErrorInfo.
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<_, pb::UpgradeEngineVersionResponse, _>(
            with_token(request("dds-sandbox01", "5.0"), BILLING_TOKEN),
            http::uri::PathAndQuery::from_static("/dds.gateway.v1.EngineVersionService/Nope"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_error(&status, Code::Unimplemented, "UNIMPLEMENTED");
    assert!(gw.sandbox.received().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_bytes_connection_floods_and_huge_headers_leave_others_served() {
    let gw = gateway("", &callers_toml()).await;
    // Connections that say nothing, and connections that send junk instead of HTTP/2.
    let mut idle = Vec::new();
    for i in 0..100 {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        if i % 2 == 0 {
            let _ = stream
                .write_all(b"\x16\x03\x01\x00\xffGET / HTTP/1.1\r\n\r\n\0\0\0garbage")
                .await;
        }
        idle.push(stream);
    }
    // Metadata far beyond the 16 KiB header limit: refused, whatever the transport says.
    let mut huge = with_token(validate_only("dds-sandbox01", "5.0"), BILLING_TOKEN);
    huge.metadata_mut()
        .insert("x-padding", "a".repeat(64 * 1024).parse().unwrap());
    let huge_client = EngineVersionServiceClient::new(common::channel(gw.addr).await);
    // hyper answers with GOAWAY (ENHANCE_YOUR_CALM) on that connection.
    let refused = call(&huge_client, huge).await;
    assert!(refused.is_err(), "{refused:?}");

    // Someone else, on a fresh connection, is served as usual.
    let client = EngineVersionServiceClient::new(common::channel(gw.addr).await);
    let answer = call(
        &client,
        with_token(request("dds-sandbox01", "5.0"), BILLING_TOKEN),
    )
    .await
    .unwrap();
    assert!(!answer.alibaba_request_id.is_empty());
    assert_eq!(
        gw.sandbox.calls(UPGRADE),
        1,
        "only the good call went upstream"
    );
    drop(idle);
}

/// A caller that sends its headers and then never finishes its message would hold a place among
/// the calls in flight for as long as it likes; the message must arrive in time.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_request_message_gives_its_place_back() {
    let gw = gateway(
        "max_in_flight = 1\nrequest_timeout = \"1s\"",
        &callers_toml(),
    )
    .await;
    // Headers go out at once; the message never comes (and no grpc-timeout is sent).
    let stall = || {
        let addr = gw.addr;
        tokio::spawn(async move {
            let mut grpc = tonic::client::Grpc::new(common::channel(addr).await);
            grpc.ready().await.unwrap();
            grpc.client_streaming::<_, _, pb::UpgradeEngineVersionResponse, _>(
                with_token(
                    tokio_stream::pending::<pb::UpgradeEngineVersionRequest>(),
                    BILLING_TOKEN,
                ),
                http::uri::PathAndQuery::from_static(
                    "/dds.gateway.v1.EngineVersionService/UpgradeEngineVersion",
                ),
                tonic_prost::ProstCodec::default(),
            )
            .await
        })
    };
    // Wait until the stalled call holds the only place, i.e. a probe is shed. A probe that is in
    // flight when the stalled call arrives sheds *it* instead: then start another one (and only
    // then: a stalled call still connecting must be given the chance to get in). The bound is
    // generous because under a loaded machine the two can keep colliding for a while.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut stalled = stall();
    loop {
        if stalled.is_finished() {
            stalled = stall();
        }
        let probe = call(
            &gw.client,
            with_token(validate_only("dds-sandbox01", "5.0"), BILLING_TOKEN),
        )
        .await;
        if probe.is_err_and(|s| s.code() == Code::Unavailable) && !stalled.is_finished() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled call never held the place"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A guard against hanging forever, not a timing assumption: the limit is 1 s.
    let status = tokio::time::timeout(Duration::from_secs(30), stalled)
        .await
        .expect("the stalled call is answered")
        .unwrap()
        .unwrap_err();
    assert_error(&status, Code::DeadlineExceeded, "REQUEST_INCOMPLETE");
    call(
        &gw.client,
        with_token(validate_only("dds-sandbox01", "5.0"), BILLING_TOKEN),
    )
    .await
    .unwrap();
    assert!(gw.sandbox.calls(UPGRADE) == 0);
}

// ---- TLS and mTLS ----

/// A CA, a server certificate for `localhost`, and client certificates, as PEM files.
struct Pki {
    dir: PathBuf,
    ca: String,
}

struct Pem {
    cert: String,
    key: String,
}

fn temp_dir(what: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "dds-gateway-test-{}-{what}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ca(name: &str) -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    (rcgen::Issuer::new(params, key), pem)
}

fn leaf(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    common_name: &str,
    sans: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> Pem {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(ToString::to_string).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).unwrap();
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

impl Pki {
    /// Writes the server's files and returns the `[server]` keys that use them.
    fn new(client_ca: bool) -> (Self, rcgen::Issuer<'static, rcgen::KeyPair>, String) {
        let dir = temp_dir("pki");
        let (issuer, ca) = ca("dds-gateway test ca");
        let server = leaf(
            &issuer,
            "gateway",
            &["localhost"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        std::fs::write(dir.join("server.pem"), &server.cert).unwrap();
        std::fs::write(dir.join("server.key"), &server.key).unwrap();
        std::fs::write(dir.join("ca.pem"), &ca).unwrap();
        let mut keys = format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            dir.join("server.pem"),
            dir.join("server.key")
        );
        if client_ca {
            keys += &format!("client_ca = {:?}\n", dir.join("ca.pem"));
        }
        (Self { dir, ca }, issuer, keys)
    }

    async fn client(
        &self,
        addr: std::net::SocketAddr,
        identity: Option<&Pem>,
    ) -> Result<EngineVersionServiceClient<Channel>, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name("localhost");
        if let Some(pem) = identity {
            tls = tls.identity(Identity::from_pem(&pem.cert, &pem.key));
        }
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(EngineVersionServiceClient::new(channel))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
    let callers = format!(
        "{}\n[[callers]]\nname = \"cert-only\"\nmtls = true\nregions = [\"cn-hangzhou\"]\ninstances = [\"*\"]\n",
        callers_toml().replacen(
            "name = \"billing\"\n",
            "name = \"billing\"\nmtls = true\n",
            1
        )
    );
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
    let callers = format!(
        "{}\n[[callers]]\nname = \"cert-only\"\nmtls = true\nregions = [\"cn-hangzhou\"]\ninstances = [\"*\"]\n",
        callers_toml()
    );
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
    let callers = format!(
        "{}\n[[callers]]\nname = \"cert-only\"\nmtls = true\nregions = [\"cn-hangzhou\"]\ninstances = [\"*\"]\n",
        callers_toml()
    );
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
// ---- reload ----

/// Polls a gRPC condition (the `wait_until` helper takes only plain closures).
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn one_caller(token: &str) -> String {
    format!(
        "[[callers]]\nname = \"billing\"\ntoken_sha256 = \"{}\"\nregions = [\"cn-hangzhou\"]\ninstances = [\"dds-sandbox0*\"]\n",
        hash_token(token)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_file_reloads_callers_without_dropping_calls() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = temp_dir("reload");
    let file = dir.join("gateway.toml");
    let head = format!(
        "[server]\nreload_interval = \"50ms\"\n[alibaba]\nendpoint = \"{}\"\n",
        sandbox.endpoint()
    );
    std::fs::write(&file, format!("{head}{}", one_caller("old-token"))).unwrap();
    let config = Config::load(Some(&file), |_| None, &Overrides::default()).unwrap();
    let credentials = common::credentials_of(&sandbox);
    let gw = Gateway::serve(config, credentials, sandbox).await;

    // A call in flight while the callers change.
    gw.sandbox.push_fault(Fault::Delay(Duration::from_secs(2)));
    let in_flight = tokio::spawn({
        let client = gw.client.clone();
        async move {
            call(
                &client,
                with_token(request("dds-sandbox01", "5.0"), "old-token"),
            )
            .await
        }
    });
    let sandbox = &gw.sandbox;
    wait_until("the call reaches the upstream", || {
        sandbox.calls(UPGRADE) == 1
    })
    .await;

    std::fs::write(&file, format!("{head}{}", one_caller("new-token"))).unwrap();
    let client = gw.client.clone();
    eventually("the new token is accepted", || {
        let client = client.clone();
        async move {
            call(
                &client,
                with_token(validate_only("dds-sandbox02", "5.0"), "new-token"),
            )
            .await
            .is_ok()
        }
    })
    .await;
    let old = call(
        &gw.client,
        with_token(validate_only("dds-sandbox02", "5.0"), "old-token"),
    )
    .await
    .unwrap_err();
    assert_error(&old, Code::Unauthenticated, "CALLER_CREDENTIALS_INVALID");

    let answer = in_flight
        .await
        .unwrap()
        .expect("the call in flight finishes");
    assert!(!answer.alibaba_request_id.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes `callers` the way the kubelet updates a mounted Secret: a new timestamped directory,
/// then an atomic swap of the `..data` link that `callers.toml` points through.
fn write_secret(dir: &std::path::Path, generation: u32, callers: &str) {
    let data = dir.join(format!("..gen{generation}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("callers.toml"), callers).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..gen{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("callers.toml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/callers.toml", &link).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_from_a_mounted_secret_reload_when_it_changes() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = temp_dir("reload-secret");
    let secret = dir.join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    write_secret(&secret, 1, &one_caller("old-token"));
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nreload_interval = \"50ms\"\ncallers_file = {:?}\n[alibaba]\nendpoint = \"{}\"\n",
            secret.join("callers.toml"),
            sandbox.endpoint()
        ),
    )
    .unwrap();
    let config = Config::load(Some(&file), |_| None, &Overrides::default()).unwrap();
    assert_eq!(config.callers.len(), 1);
    let credentials = common::credentials_of(&sandbox);
    let gw = Gateway::serve(config, credentials, sandbox).await;
    call(
        &gw.client,
        with_token(validate_only("dds-sandbox02", "5.0"), "old-token"),
    )
    .await
    .unwrap();

    write_secret(&secret, 2, &one_caller("new-token"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = call(
            &gw.client,
            with_token(validate_only("dds-sandbox02", "5.0"), "new-token"),
        )
        .await;
        let Err(status) = answer else { break };
        assert!(
            tokio::time::Instant::now() < deadline,
            "the token from the updated Secret is never accepted; last answer: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = call(
        &gw.client,
        with_token(validate_only("dds-sandbox02", "5.0"), "old-token"),
    )
    .await
    .unwrap_err();
    assert_error(&old, Code::Unauthenticated, "CALLER_CREDENTIALS_INVALID");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The file can change between the moment the configuration is read and the moment the reloader
/// starts watching it; that change must not be missed.
#[tokio::test(flavor = "multi_thread")]
async fn a_change_made_while_the_gateway_starts_is_picked_up() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = temp_dir("reload-start");
    let file = dir.join("gateway.toml");
    let head = format!(
        "[server]\nreload_interval = \"50ms\"\n[alibaba]\nendpoint = \"{}\"\n",
        sandbox.endpoint()
    );
    std::fs::write(&file, format!("{head}{}", one_caller("old-token"))).unwrap();
    let config = Config::load(Some(&file), |_| None, &Overrides::default()).unwrap();
    std::fs::write(&file, format!("{head}{}", one_caller("new-token"))).unwrap();
    let credentials = common::credentials_of(&sandbox);
    let gw = Gateway::serve(config, credentials, sandbox).await;
    let client = gw.client.clone();
    eventually("the token written during start-up is accepted", || {
        let client = client.clone();
        async move {
            call(
                &client,
                with_token(validate_only("dds-sandbox02", "5.0"), "new-token"),
            )
            .await
            .is_ok()
        }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_would_remove_every_caller_keeps_the_current_ones() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = temp_dir("reload-empty");
    let file = dir.join("gateway.toml");
    let head = format!("[alibaba]\nendpoint = \"{}\"\n", sandbox.endpoint());
    std::fs::write(&file, format!("{head}{}", one_caller("old-token"))).unwrap();
    let config = Config::load(Some(&file), |_| None, &Overrides::default()).unwrap();
    let callers = dds_gateway::api::auth::CallersHandle::new(dds_gateway::api::auth::Callers::new(
        &config.callers,
        None,
    ));

    std::fs::write(&file, &head).unwrap();
    dds_gateway::server::reload::reload(Some(&file), &callers, "test");
    assert_eq!(
        callers.current().len(),
        1,
        "no [[callers]] would open the gateway"
    );
    std::fs::write(
        &file,
        format!("{head}[[callers]]\nname = \"x\"\ntoken_sha256 = \"short\"\n"),
    )
    .unwrap();
    dds_gateway::server::reload::reload(Some(&file), &callers, "test");
    assert_eq!(
        callers.current().len(),
        1,
        "an invalid file changes nothing"
    );
    std::fs::write(
        &file,
        format!(
            "{head}{}{}",
            one_caller("a"),
            one_caller("b").replace("billing", "second")
        ),
    )
    .unwrap();
    dds_gateway::server::reload::reload(Some(&file), &callers, "test");
    assert_eq!(callers.current().len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upgrade_client_speaks_tls_and_mtls() {
    use dds_gateway::client::{Outcome, StatusArgs, Target, UpgradeArgs, status, upgrade};
    let (pki, issuer, server_keys) = Pki::new(true);
    let callers = format!(
        "{}\n[[callers]]\nname = \"cert-only\"\nmtls = true\nregions = [\"cn-hangzhou\"]\ninstances = [\"*\"]\n",
        callers_toml()
    );
    let gw = gateway(&server_keys, &callers).await;
    let identity = leaf(
        &issuer,
        "cert-only",
        &[],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    std::fs::write(pki.dir.join("client.pem"), &identity.cert).unwrap();
    std::fs::write(pki.dir.join("client.key"), &identity.key).unwrap();
    let target = |token: Option<&str>, mtls: bool| Target {
        url: format!("https://localhost:{}", gw.addr.port()),
        token: token.map(dds_gateway::alibaba::credentials::Secret::new),
        ca_cert: Some(pki.dir.join("ca.pem")),
        client_cert: mtls.then(|| (pki.dir.join("client.pem"), pki.dir.join("client.key"))),
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

// ---- reads: policy and the watch limit ----

fn watch_request(instance: &str, target: &str) -> pb::WatchUpgradeRequest {
    pb::WatchUpgradeRequest {
        db_instance_id: instance.into(),
        engine_version: target.into(),
        region_id: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_are_bounded_by_the_callers_policy() {
    let gw = gateway("", &callers_toml()).await;
    let mut client = gw.client.clone();
    // `billing` may not look at `secret-ops`'s region, whichever read it uses.
    let get = pb::GetEngineVersionRequest {
        db_instance_id: "dds-sandboxsz".into(),
        region_id: "cn-shenzhen".into(),
    };
    let denied = client
        .get_engine_version(with_token(get, BILLING_TOKEN))
        .await
        .unwrap_err();
    let metadata = assert_error(&denied, Code::PermissionDenied, "CALLER_NOT_PERMITTED");
    assert_eq!(metadata["rule"], "regions");
    // An empty region is the default region, which the policy sees as such.
    let denied = client
        .watch_upgrade(with_token(
            watch_request("dds-other1", "5.0"),
            BILLING_TOKEN,
        ))
        .await
        .unwrap_err();
    let metadata = assert_error(&denied, Code::PermissionDenied, "CALLER_NOT_PERMITTED");
    assert_eq!(metadata["rule"], "instances");
    let missing = client
        .watch_upgrade(tonic::Request::new(watch_request("dds-sandbox01", "5.0")))
        .await
        .unwrap_err();
    assert_error(
        &missing,
        Code::Unauthenticated,
        "CALLER_CREDENTIALS_MISSING",
    );
    assert!(
        gw.sandbox.received().is_empty(),
        "refused reads never reach Alibaba"
    );
    client
        .get_engine_version(with_token(
            pb::GetEngineVersionRequest {
                db_instance_id: "dds-sandbox01".into(),
                region_id: String::new(),
            },
            BILLING_TOKEN,
        ))
        .await
        .unwrap();
}

/// Watches last up to `watch.max_duration` (an hour by default) and poll Alibaba all along, so
/// they have a limit of their own: they must not hold `server.max_in_flight` places (that would
/// starve upgrades), nor be unbounded (that would spend the gateway's Alibaba quota).
#[tokio::test(flavor = "multi_thread")]
async fn watches_have_their_own_limit_and_leave_room_for_calls() {
    let gw = gateway(
        "max_in_flight = 1\n[watch]\nmax_active = 2\nmax_active_per_caller = 2\npoll_interval = \"50ms\"",
        &callers_toml(),
    )
    .await;
    let mut client = gw.client.clone();
    let open = |client: &mut EngineVersionServiceClient<Channel>| {
        let mut client = client.clone();
        async move {
            client
                .watch_upgrade(with_token(
                    watch_request("dds-sandbox02", "8.0"),
                    BILLING_TOKEN,
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let mut first = open(&mut client).await.unwrap();
    let _second = open(&mut client).await.unwrap();
    // Both watches are running (each has sent its first state).
    assert!(first.message().await.unwrap().is_some());

    let refused = open(&mut client).await.unwrap_err();
    let _ = assert_error(&refused, Code::ResourceExhausted, "WATCH_LIMIT_REACHED");
    assert!(refused.get_details_retry_info().is_some());

    // The running watches hold no place among the calls in flight.
    call(
        &gw.client,
        with_token(validate_only("dds-sandbox01", "5.0"), BILLING_TOKEN),
    )
    .await
    .unwrap();

    // A watch that ends gives its place back.
    drop(first);
    eventually("a new watch is accepted", || {
        let mut client = client.clone();
        async move { open(&mut client).await.is_ok() }
    })
    .await;
    assert_eq!(gw.sandbox.calls(UPGRADE), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_scoped_to_the_caller() {
    const OTHER_TOKEN: &str = "other-billing-token-0123456789";
    let callers = format!(
        "{}\n[[callers]]\nname = \"billing-eu\"\ntoken_sha256 = \"{}\"\nregions = [\"cn-hangzhou\"]\ninstances = [\"dds-sandbox0*\"]\n",
        callers_toml(),
        hash_token(OTHER_TOKEN)
    );
    let gw = gateway("", &callers).await;
    let key = "7d4e3a52-9a51-4f0e-8d6b-2a6c1f0b9e11".to_string();
    let keyed = |instance: &str| pb::UpgradeEngineVersionRequest {
        request_id: key.clone(),
        ..request(instance, "5.0")
    };
    // The same key from two callers names two different intended upgrades.
    call(
        &gw.client,
        with_token(keyed("dds-sandbox01"), BILLING_TOKEN),
    )
    .await
    .unwrap();
    call(&gw.client, with_token(keyed("dds-sandbox02"), OTHER_TOKEN))
        .await
        .unwrap();
    assert_eq!(gw.sandbox.calls(UPGRADE), 2);
    // Within one caller the key still means one upgrade: a replay, or a refusal.
    let replay = gw
        .client
        .clone()
        .upgrade_engine_version(with_token(keyed("dds-sandbox02"), OTHER_TOKEN))
        .await
        .unwrap();
    assert_eq!(
        replay
            .metadata()
            .get("dds-gateway-idempotent-replay")
            .unwrap(),
        "true"
    );
    let reused = call(
        &gw.client,
        with_token(keyed("dds-sandbox02"), BILLING_TOKEN),
    )
    .await
    .unwrap_err();
    assert_error(&reused, Code::InvalidArgument, "REQUEST_ID_REUSED");
    assert_eq!(gw.sandbox.calls(UPGRADE), 2);
}

/// A caller within its rate may still hold only its share of the places: with
/// `max_in_flight_per_caller` and `max_active_per_caller` at 1 of 2, a second call or watch of
/// the same caller is refused with the usual reasons while another caller is still served.
#[tokio::test(flavor = "multi_thread")]
async fn one_caller_cannot_hold_every_place() {
    let gw = gateway(
        "max_in_flight = 2\nmax_in_flight_per_caller = 1\n[watch]\nmax_active = 2\nmax_active_per_caller = 1\npoll_interval = \"50ms\"",
        &callers_toml(),
    )
    .await;
    gw.sandbox
        .push_fault_on(UPGRADE, Fault::Delay(Duration::from_secs(3)));
    let held = {
        let client = gw.client.clone();
        tokio::spawn(async move {
            call(
                &client,
                with_token(request("dds-sandbox01", "5.0"), BILLING_TOKEN),
            )
            .await
        })
    };
    let sandbox = &gw.sandbox;
    wait_until("billing's upgrade reaches the upstream", || {
        sandbox.calls(UPGRADE) == 1
    })
    .await;
    // A place is free, but not for billing.
    let refused = call(
        &gw.client,
        with_token(validate_only("dds-sandbox02", "5.0"), BILLING_TOKEN),
    )
    .await
    .unwrap_err();
    assert_error(&refused, Code::Unavailable, "GATEWAY_OVERLOADED");
    assert!(refused.get_details_retry_info().is_some());
    // Another caller takes it.
    let ops = pb::UpgradeEngineVersionRequest {
        region_id: "cn-shenzhen".into(),
        ..validate_only("dds-sandboxsz", "7.0")
    };
    call(&gw.client, with_token(ops, OPS_TOKEN)).await.unwrap();
    assert!(held.await.unwrap().is_ok());
    // Back under its share, billing is served again.
    call(
        &gw.client,
        with_token(validate_only("dds-sandbox02", "5.0"), BILLING_TOKEN),
    )
    .await
    .unwrap();

    // Watches: one for billing, and not a second, while ops still gets one.
    let mut client = gw.client.clone();
    let mut first = client
        .watch_upgrade(with_token(
            watch_request("dds-sandbox02", "8.0"),
            BILLING_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(first.message().await.unwrap().is_some());
    let refused = client
        .watch_upgrade(with_token(
            watch_request("dds-sandbox03", "8.0"),
            BILLING_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_error(&refused, Code::ResourceExhausted, "WATCH_LIMIT_REACHED");
    assert!(refused.get_details_retry_info().is_some());
    let ops_watch = pb::WatchUpgradeRequest {
        region_id: "cn-shenzhen".into(),
        ..watch_request("dds-sandboxsz", "8.0")
    };
    let mut other = client
        .watch_upgrade(with_token(ops_watch, OPS_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert!(other.message().await.unwrap().is_some());
}
