//! An instant stand-in for the Dds API, for load tests of the gateway (`scripts/bench`): answers
//! every action with fixed JSON at once, checking no signature (unlike the sandbox) so that its
//! own cost stays negligible. Instance `dds-bp1234567890ab` is always `Running` on 4.4 in
//! `cn-hangzhou`, 5.0 is always offered, and every upgrade is accepted, so each call finds a
//! fresh state. Loopback only; prints `listening on ADDR` once it accepts connections.
//! `GET /stats` answers `describe_calls N`: the `DescribeDBInstanceAttribute` calls so far (the
//! load tool's `--watch` mode reads it to count reads per poll interval).
//!
//! ```sh
//! cargo run --release --example instant_upstream -- [--listen 127.0.0.1:0]
//! ```
//!
//! Calling it directly with `--direct URL --concurrency N --requests M` sends signed-looking V2
//! `UpgradeDBInstanceEngineVersion` posts the way the gateway does (pooled HTTP/1.1 over
//! reqwest) and prints the latency percentiles: the baseline for the gateway's added latency.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

const UPGRADE: &str = r#"{"RequestId":"5A8B1E52-0000-4000-8000-000000000001"}"#;
const DESCRIBE: &str = r#"{"RequestId":"5A8B1E52-0000-4000-8000-000000000002","DBInstances":{"DBInstance":[{"DBInstanceId":"dds-bp1234567890ab","DBInstanceStatus":"Running","EngineVersion":"4.4","Engine":"MongoDB","DBInstanceType":"replicate","RegionId":"cn-hangzhou","ZoneId":"cn-hangzhou-b","LockMode":"Unlock","StorageEngine":"WiredTiger"}]}}"#;
const OFFERED: &str = r#"{"RequestId":"5A8B1E52-0000-4000-8000-000000000003","EngineVersions":{"EngineVersion":["5.0","6.0","7.0","8.0"]}}"#;
const UNKNOWN: &str = r#"{"RequestId":"5A8B1E52-0000-4000-8000-000000000004","Code":"InvalidAction.NotFound","Message":"Specified api is not found, please check your url and method."}"#;

/// `DescribeDBInstanceAttribute` calls answered so far.
static DESCRIBE_CALLS: AtomicU64 = AtomicU64::new(0);

/// The most calls one `--direct` run may make.
const MAX_DIRECT_REQUESTS: u64 = 1_000_000;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let result = match arg("--direct") {
        Some(url) => {
            let concurrency = arg("--concurrency").map_or(Ok(64), |s| s.parse());
            let requests = arg("--requests").map_or(Ok(20_000), |s| s.parse());
            match (concurrency, requests) {
                (Ok(c), Ok(r)) if c > 0 && c <= 10_000 && r > 0 && r <= MAX_DIRECT_REQUESTS => {
                    direct(&url, c, r).await
                }
                _ => Err(format!(
                    "--concurrency must be 1..=10000 and --requests 1..={MAX_DIRECT_REQUESTS}"
                )),
            }
        }
        None => serve(arg("--listen").as_deref().unwrap_or("127.0.0.1:0")).await,
    };
    if let Err(problem) = result {
        eprintln!("instant_upstream: {problem}");
        std::process::exit(2);
    }
}

async fn serve(listen: &str) -> Result<(), String> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|err| format!("--listen {listen:?}: {err}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("--listen {listen:?}: loopback addresses only"));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| format!("--listen {listen:?}: {err}"))?;
    let local = listener.local_addr().map_err(|err| err.to_string())?;
    println!("listening on {local}");
    let app = axum::Router::new()
        .route(
            "/stats",
            axum::routing::get(|| async {
                format!(
                    "describe_calls {}\n",
                    DESCRIBE_CALLS.load(Ordering::Relaxed)
                )
            }),
        )
        .fallback(answer);
    axum::serve(listener, app)
        .await
        .map_err(|err| err.to_string())
}

/// The action from `x-acs-action` (signature V3) or the form body's `Action=` (signature V2).
async fn answer(headers: HeaderMap, body: Bytes) -> Response {
    let action = match headers.get("x-acs-action") {
        Some(value) => value.as_bytes().to_vec(),
        None => form_value(&body, b"Action").unwrap_or_default().to_vec(),
    };
    let (status, body) = match action.as_slice() {
        b"UpgradeDBInstanceEngineVersion" => (StatusCode::OK, Cow::Borrowed(UPGRADE)),
        b"DescribeDBInstanceAttribute" => {
            DESCRIBE_CALLS.fetch_add(1, Ordering::Relaxed);
            // The instance asked about, whatever its id: every instance is the same one.
            let id = form_value(&body, b"DBInstanceId")
                .and_then(|id| std::str::from_utf8(id).ok())
                .filter(|id| id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
                .unwrap_or("dds-bp1234567890ab");
            (
                StatusCode::OK,
                Cow::Owned(DESCRIBE.replace("dds-bp1234567890ab", id)),
            )
        }
        b"DescribeAvailableEngineVersion" => (StatusCode::OK, Cow::Borrowed(OFFERED)),
        _ => (StatusCode::NOT_FOUND, Cow::Borrowed(UNKNOWN)),
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The raw value of `name` in an `application/x-www-form-urlencoded` body.
fn form_value<'a>(body: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    body.split(|&b| b == b'&').find_map(|pair| {
        let rest = pair.strip_prefix(name)?;
        rest.strip_prefix(b"=")
    })
}

/// Calls the upstream directly, as the gateway would, and prints `p50_us p90_us p99_us calls/s`.
async fn direct(url: &str, concurrency: usize, requests: u64) -> Result<(), String> {
    let parsed: axum::http::Uri = url.parse().map_err(|err| format!("--direct: {err}"))?;
    let host_is_loopback = parsed.host().is_some_and(|h| {
        h == "localhost"
            || h.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    if !host_is_loopback {
        return Err("--direct: loopback targets only".to_string());
    }
    dds_gateway::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|err| err.to_string())?;
    // A V2 body of the gateway's size; the instant upstream reads only `Action`.
    let body = "AccessKeyId=testid&Action=UpgradeDBInstanceEngineVersion&DBInstanceId=dds-bp1234567890ab&EngineVersion=5.0&Format=JSON&RegionId=cn-hangzhou&SignatureMethod=HMAC-SHA1&SignatureNonce=3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf&SignatureVersion=1.0&Timestamp=2026-11-26T12%3A46%3A24Z&Version=2015-12-01&Signature=OLeaidS1JvxuMvnyHOwuJ%2BuX5qY%3D";
    let issued = Arc::new(AtomicU64::new(0));
    let run = |count: u64| {
        let issued = issued.clone();
        let client = client.clone();
        let url = url.to_string();
        async move {
            issued.store(0, Ordering::Relaxed);
            let mut workers = Vec::new();
            for _ in 0..concurrency {
                let (issued, client, url) = (issued.clone(), client.clone(), url.clone());
                workers.push(tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while issued.fetch_add(1, Ordering::Relaxed) < count {
                        let started = Instant::now();
                        let ok = client
                            .post(&url)
                            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                            .body(body)
                            .send()
                            .await
                            .and_then(|r| r.error_for_status())
                            .is_ok();
                        if ok {
                            latencies.push(started.elapsed());
                        }
                    }
                    latencies
                }));
            }
            let mut all = Vec::new();
            for worker in workers {
                if let Ok(latencies) = worker.await {
                    all.extend(latencies);
                }
            }
            all
        }
    };
    run(concurrency as u64 * 10).await;
    let started = Instant::now();
    let mut latencies = run(requests).await;
    let elapsed = started.elapsed();
    if latencies.is_empty() {
        return Err(format!("no call to {url} succeeded"));
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_micros();
    println!(
        "{} {} {} {:.0}",
        at(0.5),
        at(0.9),
        at(0.99),
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
