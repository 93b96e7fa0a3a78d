//! End-to-end: the gateway on an ephemeral port in front of the sandbox Dds API, driven by the
//! generated gRPC client. Covers success, each error-table row this gateway can produce, "no
//! upstream call on invalid input", health, reflection, limits and graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::{Gateway, Options, assert_error, request, upgrade_in_flight};
use dds_gateway::pb;
use dds_gateway::testing::alibaba::action::{
    DESCRIBE_DB_INSTANCE_ATTRIBUTE as DESCRIBE, UPGRADE_DB_INSTANCE_ENGINE_VERSION as UPGRADE,
};
use dds_gateway::testing::alibaba::credentials::{Credential, Secret};
use dds_gateway::testing::sandbox::{Fault, SandboxConfig};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_is_signed_sent_once_and_answered_with_the_request_id() {
    let gw = Gateway::start().await;
    let mut req = request("dds-sandbox01", "4.4");
    req.switch_mode = pb::SwitchMode::MaintenanceWindow as i32;
    let answer = gw.upgrade(req).await.unwrap();

    assert_eq!(answer.db_instance_id, "dds-sandbox01");
    assert_eq!(answer.engine_version, "4.4");
    assert_eq!(answer.previous_engine_version, "4.2", "from the preflight");
    assert!(!answer.validate_only);
    let received = gw.sandbox.received();
    let actions: Vec<&str> = received.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "DescribeDBInstanceAttribute",
            "DescribeAvailableEngineVersion",
            UPGRADE
        ],
        "preflight, then one upgrade"
    );
    let sent = &received[2];
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.raw_query, None, "nothing travels in the URL");
    assert_eq!(sent.action, UPGRADE);
    for (name, value) in [
        ("Version", "2015-12-01"),
        ("Format", "JSON"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("DBInstanceId", "dds-sandbox01"),
        ("EngineVersion", "4.4"),
        ("RegionId", "cn-hangzhou"),
        ("SwitchMode", "1"),
        ("AccessKeyId", "testid"),
    ] {
        assert_eq!(
            sent.params.get(name).map(String::as_str),
            Some(value),
            "{name}"
        );
    }
    assert!(uuid::Uuid::try_parse(&sent.params["SignatureNonce"]).is_ok());
    assert!(!sent.params.contains_key("SecurityToken"));
    assert_eq!(sent.params["Timestamp"].len(), 20);
    let instance = gw.sandbox.instance("dds-sandbox01").unwrap();
    assert_eq!(instance.status, "EngineVersionUpgrading");
    assert!(!answer.alibaba_request_id.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn unspecified_switch_mode_sends_nothing_and_each_attempt_gets_a_fresh_nonce() {
    let gw = Gateway::start().await;
    gw.upgrade(request("dds-sandbox01", "5.0")).await.unwrap();
    gw.upgrade(request("dds-sandbox02", "5.0")).await.unwrap();
    let received = gw.sandbox.received();
    let nonces: std::collections::HashSet<&str> = received
        .iter()
        .map(|r| r.params["SignatureNonce"].as_str())
        .collect();
    assert_eq!(
        nonces.len(),
        received.len(),
        "every request has its own nonce"
    );
    let received: Vec<_> = received
        .into_iter()
        .filter(|r| r.action == UPGRADE)
        .collect();
    assert!(!received[0].params.contains_key("SwitchMode"));
    assert_ne!(
        received[0].params["SignatureNonce"],
        received[1].params["SignatureNonce"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn security_token_is_sent_and_signed() {
    let sandbox = SandboxConfig {
        security_token: Some("sts-token+/=".into()),
        ..Default::default()
    };
    let gw = Gateway::start_with(Options {
        sandbox,
        ..Default::default()
    })
    .await;
    gw.upgrade(request("dds-sandbox02", "6.0")).await.unwrap();
    assert_eq!(
        gw.sandbox.received()[0].params["SecurityToken"],
        "sts-token+/="
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_request_lists_every_violation_and_never_calls_alibaba() {
    let gw = Gateway::start().await;
    let status = gw
        .upgrade(pb::UpgradeEngineVersionRequest {
            db_instance_id: "DROP TABLE".into(),
            engine_version: "9.9".into(),
            region_id: "cn hangzhou".into(),
            switch_mode: 7,
            request_id: "123".into(),
            validate_only: false,
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_REQUEST");
    let fields: Vec<String> = status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "db_instance_id",
            "engine_version",
            "region_id",
            "switch_mode",
            "request_id"
        ]
    );
    assert!(gw.sandbox.received().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn region_outside_the_endpoint_table_is_refused_without_network() {
    // No explicit endpoint: the table decides, and an unknown region has no host at all.
    let sandbox = dds_gateway::testing::sandbox::Sandbox::start(SandboxConfig::default())
        .await
        .unwrap();
    let config = common::default_config();
    let credentials = common::credentials_of(&sandbox);
    let gw = Gateway::serve(config, credentials, sandbox).await;
    for region in ["xx-nowhere-1", "evil.example.com", "cn-hangzhou.attacker"] {
        let mut req = request("dds-sandbox01", "5.0");
        req.region_id = region.into();
        let status = gw.upgrade(req).await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_REQUEST");
    }
    assert!(gw.sandbox.received().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_only_upgrades_nothing() {
    let gw = Gateway::start().await;
    let mut req = request("dds-sandbox03", "6.0");
    req.validate_only = true;
    let answer = gw.upgrade(req).await.unwrap();
    assert!(answer.validate_only);
    assert_eq!(answer.alibaba_request_id, "");
    assert_eq!(gw.sandbox.calls(UPGRADE), 0);
    assert_eq!(
        gw.sandbox.instance("dds-sandbox03").unwrap().status,
        "Running"
    );
}

/// Without preflight, so the upgrade call itself meets each error (`tests/safe_upgrades.rs`
/// covers the preflight's own answers).
#[tokio::test(flavor = "multi_thread")]
async fn upstream_business_errors_map_to_precise_codes() {
    let gw = Gateway::start_with(Options {
        configure: Some(|config| config.alibaba.preflight = false),
        ..Default::default()
    })
    .await;
    let cases = [
        (
            "dds-nope1",
            "5.0",
            Code::NotFound,
            "INSTANCE_NOT_FOUND",
            "InvalidInstanceId.NotFound",
        ),
        (
            "dds-sandboxbusy",
            "5.0",
            Code::FailedPrecondition,
            "INSTANCE_STATE_INCORRECT",
            "IncorrectDBInstanceState",
        ),
        (
            "dds-sandbox03",
            "4.4",
            Code::FailedPrecondition,
            "ENGINE_VERSION_NOT_LATER",
            "EngineVersion.ERROR",
        ),
        (
            "dds-sandboxforbidden",
            "5.0",
            Code::PermissionDenied,
            "UPSTREAM_PERMISSION_DENIED",
            "Forbidden.RAM",
        ),
    ];
    for (instance, version, code, reason, alibaba_code) in cases {
        let status = gw.upgrade(request(instance, version)).await.unwrap_err();
        assert_error(&status, code, reason);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.metadata["alibabaCode"], alibaba_code);
        assert!(!info.metadata["alibabaRequestId"].is_empty());
        assert!(
            status
                .message()
                .contains(&info.metadata["alibabaRequestId"])
        );
    }
    let mut req = request("dds-sandboxsz", "7.0");
    req.region_id = "cn-beijing".into(); // known region, but the instance lives in cn-shenzhen
    assert_error(
        &gw.upgrade(req).await.unwrap_err(),
        Code::NotFound,
        "INSTANCE_NOT_FOUND",
    );
    let mut req = request("dds-sandboxsz", "7.0");
    req.region_id = "cn-shenzhen".into();
    gw.upgrade(req).await.unwrap();
}

/// Alibaba's `Message` reaches the caller only for the codes whose messages are known safe; any
/// other code's message could echo what was signed, so the gateway writes its own.
#[tokio::test(flavor = "multi_thread")]
async fn alibaba_messages_reach_callers_only_for_allow_listed_codes() {
    let gw = Gateway::start_with(Options {
        configure: Some(|config| config.alibaba.preflight = false),
        ..Default::default()
    })
    .await;
    let sandbox_message = "injected by the sandbox";
    let cases = [
        ("SomethingNew", Code::Unknown, "UPSTREAM_ERROR", false),
        (
            "InvalidParameter.Whatever",
            Code::InvalidArgument,
            "UPSTREAM_INVALID_ARGUMENT",
            false,
        ),
        (
            "IncorrectDBInstanceType",
            Code::FailedPrecondition,
            "UPSTREAM_FAILED_PRECONDITION",
            true,
        ),
    ];
    for (alibaba_code, code, reason, passed_on) in cases {
        gw.sandbox.push_fault_on(
            UPGRADE,
            Fault::Error {
                status: 400,
                code: alibaba_code,
                retry_after_ms: None,
            },
        );
        let status = gw
            .upgrade(request("dds-sandbox01", "5.0"))
            .await
            .unwrap_err();
        assert_error(&status, code, reason);
        assert!(status.message().contains(alibaba_code), "{status:?}");
        assert_eq!(
            status.message().contains(sandbox_message),
            passed_on,
            "{alibaba_code}: {}",
            status.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_is_resource_exhausted_with_alibabas_retry_delay() {
    // One attempt: the throttled answer reaches the caller (retries: `tests/safe_upgrades.rs`).
    let gw = Gateway::start_with(Options {
        configure: Some(|config| config.alibaba.retry.max_attempts = 1),
        ..Default::default()
    })
    .await;
    gw.sandbox.push_fault_on(
        UPGRADE,
        Fault::Error {
            status: 400,
            code: "Throttling.User",
            retry_after_ms: Some(1500),
        },
    );
    let status = gw
        .upgrade(request("dds-sandbox01", "5.0"))
        .await
        .unwrap_err();
    assert_error(&status, Code::ResourceExhausted, "UPSTREAM_THROTTLED");
    assert_eq!(
        status.get_details_retry_info().unwrap().retry_delay,
        Some(Duration::from_millis(1500))
    );
}

#[tokio::test(flavor = "multi_thread")]
/// On a read (the preflight's describe), where no outcome needs reconciling; one attempt, so the
/// fault reaches the caller. Upgrade calls meeting these: `tests/safe_upgrades.rs`.
async fn upstream_outages_are_unavailable_and_unreadable_answers_internal() {
    let gw = Gateway::start_with(Options {
        configure: Some(|config| config.alibaba.retry.max_attempts = 1),
        ..Default::default()
    })
    .await;
    let cases = [
        (
            Fault::Error {
                status: 503,
                code: "ServiceUnavailable",
                retry_after_ms: None,
            },
            Code::Unavailable,
            "UPSTREAM_UNAVAILABLE",
        ),
        (
            Fault::Body {
                status: 502,
                body: "<html>bad gateway</html>",
            },
            Code::Unavailable,
            "UPSTREAM_OUTCOME_UNKNOWN",
        ),
        (
            Fault::Body {
                status: 200,
                body: "{\"Unexpected\": true",
            },
            Code::Internal,
            "UPSTREAM_RESPONSE_UNREADABLE",
        ),
        (
            Fault::Body {
                status: 400,
                body: "no error body",
            },
            Code::Internal,
            "UPSTREAM_RESPONSE_UNREADABLE",
        ),
    ];
    for (fault, code, reason) in cases {
        gw.sandbox.push_fault_on(DESCRIBE, fault);
        let status = gw
            .upgrade(request("dds-sandbox01", "5.0"))
            .await
            .unwrap_err();
        assert_error(&status, code, reason);
        if code == Code::Unavailable {
            assert!(status.get_details_retry_info().is_some());
        }
    }
    assert_eq!(gw.sandbox.calls(UPGRADE), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_is_unavailable() {
    // A port that was free a moment ago and has no listener now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::start_with(Options {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..Default::default()
    })
    .await;
    let status = gw
        .upgrade(request("dds-sandbox01", "5.0"))
        .await
        .unwrap_err();
    assert_error(&status, Code::Unavailable, "UPSTREAM_UNREACHABLE");
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_gateway_credentials_are_internal_and_never_echoed() {
    let cases = [
        (
            Credential::new("testid", Secret::new("not-the-secret"), None, None, "test"),
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
            "InvalidAccessKeyId.NotFound",
        ),
    ];
    for (credential, alibaba_code) in cases {
        let key_id = credential.access_key_id().to_string();
        let gw = Gateway::start_with(Options {
            credential: Some(credential),
            ..Default::default()
        })
        .await;
        let status = gw
            .upgrade(request("dds-sandbox01", "5.0"))
            .await
            .unwrap_err();
        assert_error(&status, Code::Internal, "GATEWAY_CREDENTIALS_REJECTED");
        assert_eq!(
            status.get_details_error_info().unwrap().metadata["alibabaCode"],
            alibaba_code
        );
        // Alibaba's message echoes its string to sign (with the AccessKeyId); the caller never sees it.
        let message = status.message();
        assert!(
            !message.contains(&key_id) && !message.contains("string to sign"),
            "{message}"
        );
        assert_eq!(
            gw.sandbox.instance("dds-sandbox01").unwrap().status,
            "Running"
        );
    }
}

/// tonic and grpcio clients enforce `grpc-timeout` locally too, so the handler is called directly
/// here (with the deadline the edge layer would record) to see the gateway's own answer.
#[tokio::test(flavor = "multi_thread")]
async fn callers_deadline_is_answered_with_deadline_exceeded() {
    use dds_gateway::pb::engine_version_service_server::EngineVersionService as _;
    let sandbox = dds_gateway::testing::sandbox::Sandbox::start(SandboxConfig::default())
        .await
        .unwrap();
    let mut config = common::default_config();
    config.alibaba.endpoint = Some(sandbox.endpoint());
    let credentials = common::credentials_of(&sandbox);
    let client =
        dds_gateway::testing::alibaba::AlibabaClient::new(&config.alibaba, credentials).unwrap();
    let service = dds_gateway::testing::api::service::EngineVersionService::new(
        dds_gateway::testing::upgrade::validation::Validator::new(&config),
        std::sync::Arc::new(client),
        Duration::from_secs(60),
    );
    sandbox.push_fault(Fault::Delay(Duration::from_secs(30)));
    let mut req = tonic::Request::new(request("dds-sandbox01", "5.0"));
    let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    req.extensions_mut()
        .insert(dds_gateway::testing::deadline::Deadline(deadline));
    let status = service.upgrade_engine_version(req).await.unwrap_err();
    assert_error(&status, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    assert!(tokio::time::Instant::now() < deadline + Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_requests_are_refused_before_decoding() {
    let gw = Gateway::start().await;
    let status = gw
        .upgrade(request(&format!("dds-{}", "a".repeat(200_000)), "5.0"))
        .await
        .unwrap_err();
    assert_error(&status, Code::OutOfRange, "REQUEST_TOO_LARGE");
    assert!(gw.sandbox.received().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_serving_for_the_service_and_the_server() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let gw = Gateway::start().await;
    let mut health = HealthClient::new(common::channel(gw.addr).await);
    for service in ["", "dds.gateway.v1.EngineVersionService"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving, "{service:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_the_service_in_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let gw = Gateway::start().await;
    let channel = common::channel(gw.addr).await;

    let request = v1::ServerReflectionRequest {
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
        ..Default::default()
    };
    let mut stream = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"dds.gateway.v1.EngineVersionService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    let request = v1alpha::ServerReflectionRequest {
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "dds.gateway.v1.EngineVersionService".into(),
            ),
        ),
        ..Default::default()
    };
    let mut stream = v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a file descriptor");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_finishes_in_flight_calls_and_refuses_new_ones() {
    let mut gw = Gateway::start().await;
    gw.sandbox
        .push_fault(Fault::Delay(Duration::from_millis(500)));
    let in_flight = upgrade_in_flight(
        gw.client.clone(),
        &gw.sandbox,
        request("dds-sandbox01", "5.0"),
    )
    .await;
    let addr = gw.addr;
    gw.stop_signal();

    let answer = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completes");
    assert!(!answer.into_inner().alibaba_request_id.is_empty());
    gw.shutdown().await.unwrap();
    let refused = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    assert!(refused.is_err(), "the listener is closed after shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_gateway_refuses_a_non_loopback_listener() {
    let sandbox = dds_gateway::testing::sandbox::Sandbox::start(SandboxConfig::default())
        .await
        .unwrap();
    let config = common::default_config();
    let credentials = common::credentials_of(&sandbox);
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err =
        dds_gateway::testing::server::serve(config, credentials, listener, std::future::pending())
            .await
            .unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
}

/// A clock with one time and one nonce, so every signature it stamps is the same.
#[derive(Debug)]
struct FixedClock {
    time: std::time::SystemTime,
    nonce: uuid::Uuid,
}

impl dds_gateway::testing::alibaba::Clock for FixedClock {
    fn now(&self) -> std::time::SystemTime {
        self.time
    }
    fn nonce(&self) -> uuid::Uuid {
        self.nonce
    }
}

/// The client signs with the time and nonce of the clock it is given, and only with them: the
/// sandbox (checking like Alibaba) sees that clock's nonce, refuses it the second time, and
/// refuses a clock 20 minutes behind.
#[tokio::test(flavor = "multi_thread")]
async fn requests_are_signed_with_the_injected_clock() {
    for version in [
        dds_gateway::testing::config::SignatureVersion::V2,
        dds_gateway::testing::config::SignatureVersion::V3,
    ] {
        let sandbox = dds_gateway::testing::sandbox::Sandbox::start(SandboxConfig::default())
            .await
            .unwrap();
        let mut config = common::default_config();
        config.alibaba.endpoint = Some(sandbox.endpoint());
        config.alibaba.signature_version = version;
        let client = |clock: FixedClock| {
            dds_gateway::testing::alibaba::AlibabaClient::new(
                &config.alibaba,
                common::credentials_of(&sandbox),
            )
            .unwrap()
            .with_clock(std::sync::Arc::new(clock))
        };
        let nonce = uuid::Uuid::from_u128(0x5eed);
        let now = client(FixedClock {
            time: std::time::SystemTime::now(),
            nonce,
        });
        let found = now
            .describe_db_instance_attribute("cn-hangzhou", "dds-sandbox01")
            .await
            .unwrap();
        assert!(found.is_some(), "{version:?}");
        let received = sandbox.received();
        let sent_nonce = received[0]
            .params
            .get("SignatureNonce")
            .or_else(|| received[0].headers.get("x-acs-signature-nonce"))
            .unwrap();
        assert!(
            *sent_nonce == nonce.to_string() || *sent_nonce == nonce.simple().to_string(),
            "{version:?}: {sent_nonce}"
        );
        let again = now
            .describe_db_instance_attribute("cn-hangzhou", "dds-sandbox01")
            .await
            .unwrap_err();
        assert!(
            matches!(&again, dds_gateway::testing::alibaba::CallError::Upstream(e) if e.code == "SignatureNonceUsed"),
            "{version:?}: {again}"
        );
        let late = client(FixedClock {
            time: std::time::SystemTime::now() - Duration::from_secs(20 * 60),
            nonce: uuid::Uuid::from_u128(0x1a7e),
        })
        .describe_db_instance_attribute("cn-hangzhou", "dds-sandbox01")
        .await
        .unwrap_err();
        assert!(
            matches!(&late, dds_gateway::testing::alibaba::CallError::Upstream(e) if e.code.starts_with("InvalidTimeStamp")),
            "{version:?}: {late}"
        );
    }
}
