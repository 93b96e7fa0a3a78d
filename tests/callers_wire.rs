//! Callers' bad input on the wire: undecodable and oversized messages, unknown methods, garbage
//! bytes, connection floods and huge headers; and a gateway with callers listening beyond
//! loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::callers::{
    BILLING_TOKEN, UPGRADE, call, callers_toml, gateway, validate_only, with_token,
};
use common::{assert_error, request};
use dds_gateway::pb;
use dds_gateway::pb::engine_version_service_client::EngineVersionServiceClient;
use dds_gateway::testing::config::{Config, Overrides};
use dds_gateway::testing::sandbox::{Sandbox, SandboxConfig};
use tokio::io::AsyncWriteExt;
use tonic::Code;

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
    let task = tokio::spawn(dds_gateway::testing::server::serve(
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
