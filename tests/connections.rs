//! Connections over loopback: one that never sends the HTTP/2 preface, or dribbles an HTTP/1.1
//! request head, is closed after `server.preface_timeout`, and beyond `server.max_connections` a new connection is closed as
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

/// An HTTP/1.1 request head dribbled a byte at a time is cut at `server.preface_timeout`, while
/// a whole request over HTTP/1.1 is served.
#[tokio::test(flavor = "multi_thread")]
async fn an_http1_request_head_dribbled_byte_by_byte_is_cut() {
    use tokio::io::AsyncWriteExt as _;
    let gw = Gateway::start_with(Options {
        configure: Some(|config| {
            config.server.preface_timeout = Duration::from_millis(300);
        }),
        ..Options::default()
    })
    .await;
    let mut whole = TcpStream::connect(gw.addr).await.unwrap();
    whole
        .write_all(b"GET /v1/instances/dds-sandbox01/engineVersion HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    whole.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");

    let mut dribble = TcpStream::connect(gw.addr).await.unwrap();
    // The request line at once (more bytes than the HTTP/2 preface), then a header a byte at a
    // time, each far inside hyper's own 30 s header timeout.
    dribble
        .write_all(b"GET /v1/instances/dds-sandbox01/engineVersion HTTP/1.1\r\nhost: gw\r\n")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut cut = false;
    for byte in b"x-slow: ".iter().chain(std::iter::repeat(&b'a')) {
        if dribble.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(50), dribble.read(&mut buf)).await
        {
            // Closed (0 bytes or an error), or an error answer before the close.
            assert!(!matches!(read, Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200")));
            cut = true;
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dribble was never cut"
        );
    }
    assert!(cut);
}

/// Connections with no request in flight for `server.idle_timeout` are closed: a client that
/// sends the HTTP/2 preface and SETTINGS and then nothing, and an HTTP/1.1 keep-alive connection
/// after its answer; a watch longer than the timeout is not cut (issue 20).
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_and_watches_are_not() {
    use tokio::io::AsyncWriteExt as _;
    let gw = Gateway::start_with(Options {
        configure: Some(|config| {
            config.server.idle_timeout = Duration::from_millis(300);
            config.watch.poll_interval = Duration::from_millis(50);
        }),
        ..Options::default()
    })
    .await;

    // The HTTP/2 preface and an empty SETTINGS frame, then silence.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(
        closed_by_the_gateway(&mut silent).await,
        "an idle HTTP/2 connection is still open"
    );

    // HTTP/1.1: a watch that runs past the idle timeout to its own deadline (1 s) is answered
    // whole, then the kept-alive connection is closed once idle.
    let mut kept = TcpStream::connect(gw.addr).await.unwrap();
    kept.write_all(
        b"GET /v1/instances/dds-sandbox02/engineVersion:watch?engineVersion=5.0&timeout=1s HTTP/1.1\r\nhost: gw\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read_whole = async {
        // The chunked body's last chunk.
        while !answer.ends_with(b"0\r\n\r\n") {
            let n = kept.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed mid-watch: {}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_whole)
        .await
        .expect("the watch never ended");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("DEADLINE_EXCEEDED"), "{text}");
    assert!(
        closed_by_the_gateway(&mut kept).await,
        "an idle HTTP/1.1 connection is still open"
    );

    // A client that keeps calling keeps its connection.
    let mut client = EngineVersionServiceClient::new(common::channel(gw.addr).await);
    client
        .upgrade_engine_version(validate_only())
        .await
        .unwrap();
}
