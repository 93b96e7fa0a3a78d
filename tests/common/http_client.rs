//! Plain HTTP clients of the gateway's JSON routes for tests: HTTP/1.1 (reqwest), HTTP/2 with
//! prior knowledge over any connection (hyper; TLS included), and raw bytes over TCP for
//! clients that misbehave.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

/// An HTTP answer, read to its end.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The `google.rpc.Status` detail of `type` (e.g. `ErrorInfo`).
    pub fn detail(&self, kind: &str) -> Option<serde_json::Value> {
        let json = self.json();
        json["details"]
            .as_array()?
            .iter()
            .find(|d| d["@type"] == format!("type.googleapis.com/google.rpc.{kind}"))
            .cloned()
    }

    /// Asserts an error answer: HTTP status, gRPC code and `ErrorInfo` reason (domain
    /// `dds-gateway`); returns the body.
    pub fn assert_error(&self, http: u16, code: i64, reason: &str) -> serde_json::Value {
        let json = self.json();
        assert_eq!(self.status, http, "{json}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_eq!(json["code"], code, "{json}");
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{json}"
        );
        let info = self
            .detail("ErrorInfo")
            .expect("every error carries ErrorInfo");
        assert_eq!(info["domain"], "dds-gateway");
        assert_eq!(info["reason"], reason, "{json}");
        json
    }
}

/// One HTTP/1.1 request; `headers` are name and value pairs.
pub async fn http1(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    // reqwest is built without a default crypto provider; whichever test runs first installs it.
    dds_gateway::testing::tls::install_crypto_provider();
    let mut request = reqwest::Client::new().request(method.parse().unwrap(), url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

/// A JSON POST over HTTP/1.1.
pub async fn post(url: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    http1("POST", url, &all, Some(body)).await
}

/// One HTTP/2 request (prior knowledge, or ALPN `h2` on a TLS `io`) to `uri`'s path.
pub async fn http2<IO>(
    io: IO,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// Sends `request` as raw bytes on a new connection; returns the connection.
pub async fn raw(addr: std::net::SocketAddr, request: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Reads from `stream` until `needle` has arrived (or the stream ends); returns what was read.
pub async fn read_until(stream: &mut tokio::net::TcpStream, needle: &str) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut text = String::new();
    let mut buffer = [0u8; 4096];
    while !text.contains(needle) {
        let n = stream.read(&mut buffer).await.unwrap();
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    text
}
