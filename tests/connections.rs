//! Connections over loopback: one that never sends the HTTP/2 preface is closed after
//! `server.preface_timeout`, and beyond `server.max_connections` a new connection is closed as
//! it is accepted while the open ones keep working.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::{Gateway, Options, request};
use dds_gateway::pb;
use dds_gateway::pb::engine_version_service_client::EngineVersionServiceClient;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

fn validate_only() -> pb::UpgradeEngineVersionRequest {
    pb::UpgradeEngineVersionRequest {
        validate_only: true,
        ..request("dds-sandbox01", "5.0")
    }
}

/// Reads until the gateway closes the connection; `false` if it is still open after ten
/// seconds (far beyond any timeout these tests configure).
async fn closed_by_the_gateway(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                // The gateway's own SETTINGS frame may come first.
                Ok(n) if n > 0 => continue,
                _ => return,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_to_end)
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_without_the_preface_is_closed_and_others_are_served() {
    let gw = Gateway::start_with(Options {
        configure: Some(|config| {
            config.server.preface_timeout = Duration::from_millis(200);
        }),
        ..Options::default()
    })
    .await;
    // A client that speaks HTTP/2 at once is served, and stays connected past the timeout.
    let mut client = EngineVersionServiceClient::new(common::channel(gw.addr).await);
    client
        .upgrade_engine_version(validate_only())
        .await
        .unwrap();

    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    // Fewer bytes than the preface's 24 do not count as the preface.
    tokio::io::AsyncWriteExt::write_all(&mut silent, b"PRI * HTTP/2.0")
        .await
        .unwrap();
    assert!(
        closed_by_the_gateway(&mut silent).await,
        "a connection that never completed the preface is still open"
    );

    // Well past the timeout, the connection that sent its preface still works.
    client
        .upgrade_engine_version(validate_only())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_max_connections_new_connections_are_closed_and_open_ones_work() {
    let gw = Gateway::start_with(Options {
        configure: Some(|config| {
            config.server.max_connections = 2;
        }),
        ..Options::default()
    })
    .await;
    let mut first = EngineVersionServiceClient::new(common::channel(gw.addr).await);
    let mut second = EngineVersionServiceClient::new(common::channel(gw.addr).await);
    first.upgrade_engine_version(validate_only()).await.unwrap();
    second
        .upgrade_engine_version(validate_only())
        .await
        .unwrap();

    // The third is closed at once (the preface deadline is ten seconds away).
    let mut third = TcpStream::connect(gw.addr).await.unwrap();
    assert!(
        closed_by_the_gateway(&mut third).await,
        "a connection beyond server.max_connections is still open"
    );
    first.upgrade_engine_version(validate_only()).await.unwrap();
    second
        .upgrade_engine_version(validate_only())
        .await
        .unwrap();

    // When one closes, a new connection is served again.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let connected = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.addr))
            .unwrap()
            .connect()
            .await;
        if let Ok(channel) = connected
            && EngineVersionServiceClient::new(channel)
                .upgrade_engine_version(validate_only())
                .await
                .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection accepted after one closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second
        .upgrade_engine_version(validate_only())
        .await
        .unwrap();
}
