//! JSON over HTTP on the gateway's port, with real HTTP clients over loopback: every route over
//! HTTP/1.1 and HTTP/2, a watch streamed to its end, every class of error as a JSON
//! `google.rpc.Status` with its HTTP status (and nothing sent to Alibaba for a bad request),
//! idempotency across HTTP and gRPC, and clients that stall or vanish giving their place back.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::http_client::{Answer, http1, http2, post, raw, read_until};
use common::{Gateway, wait_until};
use dds_gateway::pb;
use dds_gateway::testing::api::auth::hash_token;
use dds_gateway::testing::sandbox::{Fault, SandboxConfig};
use tokio::io::AsyncReadExt as _;

const UPGRADE: &str = "UpgradeDBInstanceEngineVersion";
const DESCRIBE: &str = "DescribeDBInstanceAttribute";
const TOKEN: &str = "billing-token-0123456789";
const SLOW_TOKEN: &str = "slow-token-0123456789";
const REQUEST_ID: &str = "5f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f";

/// The gateway in front of a sandbox whose upgrades take `upgrade_duration`; `alibaba` are
/// extra `[alibaba]` keys, `rest` further tables.
async fn gateway(upgrade_duration: Duration, alibaba: &str, rest: &str) -> Gateway {
    let sandbox = SandboxConfig {
        upgrade_duration,
        ..SandboxConfig::default()
    };
    Gateway::from_toml(sandbox, &format!("{alibaba}\n{rest}")).await
}

/// `billing` may upgrade the sandbox's instances; `slow` may make one call, then waits long.
fn callers() -> String {
    format!(
        r#"
[[callers]]
name = "billing"
token_sha256 = "{}"
regions = ["cn-hangzhou"]
instances = ["dds-sandbox0*", "dds-sandboxbusy", "dds-sandboxnone"]
# Refusals of a malformed request are counted after authentication, like any call.
rate_per_second = 1000.0
burst = 1000

[[callers]]
name = "slow"
token_sha256 = "{}"
regions = ["cn-hangzhou"]
instances = ["dds-sandbox0*"]
rate_per_second = 0.01
burst = 1
"#,
        hash_token(TOKEN),
        hash_token(SLOW_TOKEN)
    )
}

fn url(gw: &Gateway, path: &str) -> String {
    format!("http://{}{path}", gw.addr)
}

fn upgrade_path(instance: &str) -> String {
    format!("/v1/instances/{instance}:upgradeEngineVersion")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn h2(
    gw: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    http2(tcp, method, &url(gw, path), headers, body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_over_http1_and_http2() {
    let gw = gateway(Duration::from_secs(20), "", "").await;

    // The issue's command: upgrade the sandbox's instance with a JSON POST over HTTP/1.1.
    let body = format!(r#"{{"engineVersion":"4.4","requestId":"{REQUEST_ID}"}}"#);
    let answer = post(&url(&gw, &upgrade_path("dds-sandbox01")), &[], &body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let json = answer.json();
    assert_eq!(json["dbInstanceId"], "dds-sandbox01");
    assert_eq!(json["engineVersion"], "4.4");
    assert_eq!(json["previousEngineVersion"], "4.2");
    assert_eq!(json["validateOnly"], false);
    assert!(
        json["alibabaRequestId"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    assert_eq!(gw.sandbox.upgrades_started("dds-sandbox01"), 1);

    // Reads over HTTP/2, the region in the query (either name).
    for query in ["regionId=cn-hangzhou", "region_id=cn-hangzhou"] {
        let path = format!("/v1/instances/dds-sandbox01/engineVersion?{query}");
        let read = h2(&gw, "GET", &path, &[], None).await;
        assert_eq!(read.status, 200, "{:?}", read.body);
        let json = read.json();
        assert_eq!(json["dbInstanceId"], "dds-sandbox01");
        assert_eq!(json["regionId"], "cn-hangzhou");
        assert_eq!(json["engineVersion"], "4.2");
        assert_eq!(json["status"], "EngineVersionUpgrading");
        assert!(json["availableEngineVersions"].is_array());
    }

    // An upgrade over HTTP/2, original field names and an enum by name.
    let check = h2(
        &gw,
        "POST",
        &upgrade_path("dds-sandbox02"),
        &[("content-type", "application/json; charset=utf-8")],
        Some(r#"{"engine_version":"5.0","validate_only":true,"switch_mode":"SWITCH_MODE_IMMEDIATE"}"#),
    )
    .await;
    assert_eq!(check.status, 200, "{:?}", check.body);
    assert_eq!(check.json()["validateOnly"], true);
    assert_eq!(check.json()["alibabaRequestId"], "");
    assert_eq!(gw.sandbox.upgrades_started("dds-sandbox02"), 0);

    // gRPC on the same port is unchanged.
    let grpc = gw
        .upgrade(pb::UpgradeEngineVersionRequest {
            validate_only: true,
            ..common::request("dds-sandbox03", "6.0")
        })
        .await
        .unwrap();
    assert!(grpc.validate_only);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_streams_json_lines_to_the_end() {
    let gw = gateway(
        Duration::from_secs(1),
        "",
        "[watch]\npoll_interval = \"20ms\"",
    )
    .await;
    let started = post(
        &url(&gw, &upgrade_path("dds-sandbox01")),
        &[],
        r#"{"engineVersion":"4.4"}"#,
    )
    .await;
    assert_eq!(started.status, 200);

    let mut response = reqwest::get(url(
        &gw,
        "/v1/instances/dds-sandbox01/engineVersion:watch?engineVersion=4.4&timeout=30s",
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    // The first message comes on its own, as soon as it is known, not with the rest at the end.
    let first = response.chunk().await.unwrap().unwrap();
    let first = std::str::from_utf8(&first).unwrap();
    assert_eq!(first.matches('\n').count(), 1, "{first}");
    let first: serde_json::Value = serde_json::from_str(first).unwrap();
    assert_eq!(first["done"], false);
    assert_eq!(first["status"], "EngineVersionUpgrading");
    assert_eq!(first["targetEngineVersion"], "4.4");

    let mut rest = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(rest.ends_with('\n'), "{rest}");
    let lines: Vec<serde_json::Value> = rest
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true, "{rest}");
    assert_eq!(last["status"], "Running");
    assert_eq!(last["engineVersion"], "4.4");
    assert!(lines[..lines.len() - 1].iter().all(|l| l["done"] == false));

    // A watch that ends without reaching the target says why in a last `error` line.
    let mut ended = reqwest::get(url(
        &gw,
        "/v1/instances/dds-sandbox02/engineVersion:watch?engineVersion=5.0&timeout=300ms",
    ))
    .await
    .unwrap();
    assert_eq!(ended.status(), 200);
    let mut text = String::new();
    while let Some(chunk) = ended.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], 4, "{text}");
    assert_eq!(
        last["error"]["details"][0]["reason"], "DEADLINE_EXCEEDED",
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn service_errors_are_json_statuses_with_googles_http_status() {
    let gw = gateway(Duration::from_secs(20), "max_attempts = 1", &callers()).await;
    let auth = bearer(TOKEN);
    let with_token = [("authorization", auth.as_str())];
    let upgrade = |instance: &str| url(&gw, &upgrade_path(instance));

    // UNAUTHENTICATED 401, with a Bearer challenge.
    let missing = post(&upgrade("dds-sandbox01"), &[], r#"{"engineVersion":"4.4"}"#).await;
    missing.assert_error(401, 16, "CALLER_CREDENTIALS_MISSING");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    let wrong = bearer("not-a-token");
    post(
        &upgrade("dds-sandbox01"),
        &[("authorization", wrong.as_str())],
        r#"{"engineVersion":"4.4"}"#,
    )
    .await
    .assert_error(401, 16, "CALLER_CREDENTIALS_INVALID");

    // PERMISSION_DENIED 403: the policy does not name the instance.
    post(
        &upgrade("dds-sandboxsz"),
        &with_token,
        r#"{"engineVersion":"7.0"}"#,
    )
    .await
    .assert_error(403, 7, "CALLER_NOT_PERMITTED");

    // INVALID_ARGUMENT 400, every violation in a BadRequest.
    let invalid = post(
        &upgrade("dds-sandbox01"),
        &with_token,
        r#"{"engineVersion":"9.9","requestId":"not-a-uuid"}"#,
    )
    .await;
    invalid.assert_error(400, 3, "INVALID_REQUEST");
    let violations = invalid.detail("BadRequest").unwrap()["fieldViolations"].clone();
    let fields: Vec<&str> = violations
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["engine_version", "request_id"]);
    assert_eq!(gw.sandbox.received().len(), 0, "nothing reached Alibaba");

    // NOT_FOUND 404 and FAILED_PRECONDITION 400 (with a PreconditionFailure), from preflight.
    post(
        &upgrade("dds-sandboxnone"),
        &with_token,
        r#"{"engineVersion":"4.4"}"#,
    )
    .await
    .assert_error(404, 5, "INSTANCE_NOT_FOUND");
    let busy = post(
        &upgrade("dds-sandboxbusy"),
        &with_token,
        r#"{"engineVersion":"5.0"}"#,
    )
    .await;
    busy.assert_error(400, 9, "INSTANCE_STATE_INCORRECT");
    assert!(busy.detail("PreconditionFailure").is_some());
    assert_eq!(gw.sandbox.calls(UPGRADE), 0);

    // RESOURCE_EXHAUSTED 429 with Retry-After and RetryInfo: `slow` has one call.
    let slow = bearer(SLOW_TOKEN);
    let read = url(&gw, "/v1/instances/dds-sandbox01/engineVersion");
    assert_eq!(
        http1("GET", &read, &[("authorization", slow.as_str())], None)
            .await
            .status,
        200
    );
    let limited = http1("GET", &read, &[("authorization", slow.as_str())], None).await;
    limited.assert_error(429, 8, "CALLER_RATE_LIMITED");
    assert!(
        limited
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert!(limited.detail("RetryInfo").is_some());

    // UNAVAILABLE 503 with Retry-After: Alibaba is unavailable.
    gw.sandbox.push_fault_on(
        DESCRIBE,
        Fault::Error {
            status: 503,
            code: "ServiceUnavailable",
            retry_after_ms: Some(2500),
        },
    );
    let unavailable = http1("GET", &read, &with_token, None).await;
    unavailable.assert_error(503, 14, "UPSTREAM_UNAVAILABLE");
    assert_eq!(unavailable.header("retry-after"), Some("3"));

    // INTERNAL 500: Alibaba rejects the gateway's own signature.
    gw.sandbox.push_fault_on(
        DESCRIBE,
        Fault::Error {
            status: 400,
            code: "SignatureDoesNotMatch",
            retry_after_ms: None,
        },
    );
    http1("GET", &read, &with_token, None).await.assert_error(
        500,
        13,
        "GATEWAY_CREDENTIALS_REJECTED",
    );

    // DEADLINE_EXCEEDED 504: the caller's `timeout` (query or header) passes first.
    for (query, header) in [("?timeout=200ms", None), ("", Some("200ms"))] {
        gw.sandbox
            .push_fault_on(DESCRIBE, Fault::Delay(Duration::from_secs(10)));
        let mut headers = with_token.to_vec();
        if let Some(timeout) = header {
            headers.push(("timeout", timeout));
        }
        http1("GET", &format!("{read}{query}"), &headers, None)
            .await
            .assert_error(504, 4, "DEADLINE_EXCEEDED");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_http_requests_are_precise_errors_and_reach_nobody() {
    let gw = gateway(Duration::from_secs(20), "", &callers()).await;
    let auth = bearer(TOKEN);
    let json = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];
    let upgrade = url(&gw, &upgrade_path("dds-sandbox01"));

    // Malformed JSON, an unknown field, a wrong type, an unknown enum name.
    for body in [
        r#"{"engineVersion":"4.4""#,
        r#"{"engineVersion":"4.4","colour":"red"}"#,
        r#"{"engineVersion":4.4}"#,
        r#"{"engineVersion":"4.4","switchMode":"SOMETIMES"}"#,
    ] {
        let answer = http1("POST", &upgrade, &json, Some(body)).await;
        let status = answer.assert_error(400, 3, "INVALID_JSON");
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .contains("invalid JSON body"),
            "{status}"
        );
    }
    // The path's instance, contradicted by the body.
    http1(
        "POST",
        &upgrade,
        &json,
        Some(r#"{"dbInstanceId":"dds-sandbox02","engineVersion":"4.4"}"#),
    )
    .await
    .assert_error(400, 3, "INVALID_PARAMETER");

    // A wrong or missing content type.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend(content_type.map(|c| ("content-type", c)));
        http1(
            "POST",
            &upgrade,
            &headers,
            Some(r#"{"engineVersion":"4.4"}"#),
        )
        .await
        .assert_error(415, 3, "UNSUPPORTED_MEDIA_TYPE");
    }

    // A body over server.max_request_bytes (64 KiB by default), announced or sent in chunks.
    let big = format!(
        r#"{{"engineVersion":"4.4","requestId":"{}"}}"#,
        "x".repeat(70_000)
    );
    let too_large = http1("POST", &upgrade, &json, Some(&big)).await;
    too_large.assert_error(413, 11, "REQUEST_TOO_LARGE");
    let chunk = "x".repeat(70_000);
    let mut stream = raw(
        gw.addr,
        &format!(
            "POST {} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\nauthorization: {auth}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            upgrade_path("dds-sandbox01"),
            chunk.len()
        ),
    )
    .await;
    let answer = read_until(&mut stream, "}}]}").await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("REQUEST_TOO_LARGE"), "{answer}");

    // Query parameters: unknown, in the path already, a bad timeout; a body route takes none.
    let read = url(&gw, "/v1/instances/dds-sandbox01/engineVersion");
    let token = [("authorization", auth.as_str())];
    for (query, field, says) in [
        ("colour=red", "colour", "unknown query parameter"),
        (
            "dbInstanceId=dds-sandbox02",
            "dbInstanceId",
            "given by the path",
        ),
        ("timeout=soon", "timeout", "not a duration"),
        ("timeout=0s", "timeout", "more than zero"),
        ("timeout=1s&timeout=2s", "timeout", "more than once"),
    ] {
        let answer = http1("GET", &format!("{read}?{query}"), &token, None).await;
        answer.assert_error(400, 3, "INVALID_PARAMETER");
        let violation = answer.detail("BadRequest").unwrap()["fieldViolations"][0].clone();
        assert_eq!(violation["field"], field, "{query}");
        assert!(
            violation["description"].as_str().unwrap().contains(says),
            "{query}: {violation}"
        );
    }
    http1(
        "POST",
        &format!("{upgrade}?engineVersion=4.4"),
        &json,
        Some("{}"),
    )
    .await
    .assert_error(400, 3, "INVALID_PARAMETER");

    // Unknown routes and methods, before any caller check.
    for path in [
        "/",
        "/v1/instances/dds-sandbox01",
        "/v1/instances/dds-sandbox01/engineVersion:stop",
    ] {
        let answer = http1("GET", &url(&gw, path), &[], None).await;
        let status = answer.assert_error(404, 5, "ROUTE_NOT_FOUND");
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .contains("/v1/instances/{db_instance_id}/engineVersion"),
            "the error lists the routes: {status}"
        );
    }
    let wrong_method = http1("GET", &upgrade, &[], None).await;
    wrong_method.assert_error(405, 12, "METHOD_NOT_ALLOWED");
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    http1("DELETE", &read, &[], None)
        .await
        .assert_error(405, 12, "METHOD_NOT_ALLOWED");
    // The same over HTTP/2.
    h2(&gw, "PUT", "/v1/instances/x/engineVersion", &[], None)
        .await
        .assert_error(405, 12, "METHOD_NOT_ALLOWED");

    assert_eq!(gw.sandbox.received().len(), 0, "nothing reached Alibaba");
}

/// Retries of one intended upgrade may come over either protocol: one upgrade, one answer.
#[tokio::test(flavor = "multi_thread")]
async fn duplicates_over_http_and_grpc_upgrade_once() {
    let gw = gateway(Duration::from_secs(20), "", "").await;
    // Slow enough that the duplicates arrive while the first is still in flight.
    gw.sandbox
        .push_fault_on(UPGRADE, Fault::Delay(Duration::from_millis(500)));
    let body = format!(r#"{{"engineVersion":"4.4","requestId":"{REQUEST_ID}"}}"#);
    let mut http_calls = Vec::new();
    let mut grpc_calls = Vec::new();
    for _ in 0..3 {
        let url = url(&gw, &upgrade_path("dds-sandbox01"));
        let body = body.clone();
        http_calls.push(tokio::spawn(async move { post(&url, &[], &body).await }));
        let client = gw.client.clone();
        grpc_calls.push(tokio::spawn(async move {
            client
                .clone()
                .upgrade_engine_version(pb::UpgradeEngineVersionRequest {
                    request_id: REQUEST_ID.to_string(),
                    ..common::request("dds-sandbox01", "4.4")
                })
                .await
        }));
    }
    let mut ids = Vec::new();
    let mut replays = 0;
    for call in http_calls {
        let answer = call.await.unwrap();
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        replays += usize::from(answer.header("dds-gateway-idempotent-replay") == Some("true"));
        ids.push(
            answer.json()["alibabaRequestId"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for call in grpc_calls {
        let answer = call.await.unwrap().unwrap();
        replays += usize::from(
            answer
                .metadata()
                .get("dds-gateway-idempotent-replay")
                .is_some(),
        );
        ids.push(answer.into_inner().alibaba_request_id);
    }
    assert_eq!(gw.sandbox.calls(UPGRADE), 1, "one upstream upgrade");
    assert_eq!(gw.sandbox.upgrades_started("dds-sandbox01"), 1);
    assert!(
        ids.iter().all(|id| !id.is_empty() && *id == ids[0]),
        "{ids:?}"
    );
    assert_eq!(replays, 5, "every answer but the first is a replay");

    // The same key for a different request is refused over HTTP too.
    post(
        &url(&gw, &upgrade_path("dds-sandbox01")),
        &[],
        &format!(r#"{{"engineVersion":"5.0","requestId":"{REQUEST_ID}"}}"#),
    )
    .await
    .assert_error(400, 3, "REQUEST_ID_REUSED");
}

/// A caller that sends its headers and then stalls its body holds a place among the calls in
/// flight only until the call's deadline, as over gRPC.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_json_body_gives_its_place_back() {
    let gw = gateway(
        Duration::from_secs(20),
        "",
        &format!(
            "[server]\nmax_in_flight = 1\nrequest_timeout = \"1s\"\n{}",
            callers()
        ),
    )
    .await;
    let auth = bearer(TOKEN);
    let probe = async || {
        post(
            &url(&gw, &upgrade_path("dds-sandbox01")),
            &[("authorization", auth.as_str())],
            r#"{"engineVersion":"5.0","validateOnly":true}"#,
        )
        .await
    };
    let stall = async || {
        raw(
            gw.addr,
            &format!(
                "POST {} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\nauthorization: {auth}\r\ncontent-length: 100\r\n\r\n{{\"engineVersion\":",
                upgrade_path("dds-sandbox01")
            ),
        )
        .await
    };
    // Wait until the stalled call holds the only place (a probe is shed); a probe that got in
    // first sheds the stalled call instead, which then answers at once: stall again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut stalled = stall().await;
    loop {
        let answer = probe().await;
        if answer.status == 503 {
            answer.assert_error(503, 14, "GATEWAY_OVERLOADED");
            assert_eq!(answer.header("retry-after"), Some("1"));
            break;
        }
        stalled = stall().await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled call never held the place"
        );
    }
    let answer = tokio::time::timeout(Duration::from_secs(30), read_until(&mut stalled, "}}]}"))
        .await
        .expect("the stalled call is answered");
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("REQUEST_INCOMPLETE"), "{answer}");
    assert_eq!(probe().await.status, 200);
    assert_eq!(gw.sandbox.calls(UPGRADE), 0);
}

/// A caller that goes away mid-call (the connection closed) frees its place among the calls in
/// flight at once, and a watcher that goes away frees its watch.
#[tokio::test(flavor = "multi_thread")]
async fn a_vanished_http_client_gives_its_places_back() {
    let gw = gateway(
        Duration::from_secs(20),
        "",
        "[server]\nmax_in_flight = 1\n[watch]\nmax_active = 1\npoll_interval = \"20ms\"",
    )
    .await;
    // The upgrade would hang upstream for a minute.
    gw.sandbox
        .push_fault_on(UPGRADE, Fault::Delay(Duration::from_secs(60)));
    let body = r#"{"engineVersion":"4.4"}"#;
    let gone = raw(
        gw.addr,
        &format!(
            "POST {} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            upgrade_path("dds-sandbox01"),
            body.len()
        ),
    )
    .await;
    let sandbox = &gw.sandbox;
    wait_until("the upgrade reaches the upstream", || {
        sandbox.calls(UPGRADE) == 1
    })
    .await;
    let read = url(&gw, "/v1/instances/dds-sandbox02/engineVersion");
    http1("GET", &read, &[], None)
        .await
        .assert_error(503, 14, "GATEWAY_OVERLOADED");
    drop(gone);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while http1("GET", &read, &[], None).await.status != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A watch whose reader goes away.
    let watch = "/v1/instances/dds-sandbox02/engineVersion:watch?engineVersion=5.0";
    let mut watcher = raw(
        gw.addr,
        &format!("GET {watch} HTTP/1.1\r\nhost: gw\r\n\r\n"),
    )
    .await;
    let first = read_until(&mut watcher, "\"done\":false}").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let second = http1("GET", &url(&gw, watch), &[], None).await;
    second.assert_error(429, 8, "WATCH_LIMIT_REACHED");
    drop(watcher);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut again = raw(
            gw.addr,
            &format!("GET {watch} HTTP/1.1\r\nhost: gw\r\n\r\n"),
        )
        .await;
        let mut head = [0u8; 12];
        again.read_exact(&mut head).await.unwrap();
        if &head == b"HTTP/1.1 200" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watch never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `curl`, as the README shows it: the token from a file, never on the command line.
#[tokio::test(flavor = "multi_thread")]
async fn curl_upgrades_the_sandbox_instance() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: curl is not installed");
        return;
    }
    let gw = gateway(Duration::from_secs(20), "", &callers()).await;
    let dir = tempfile::tempdir().unwrap();
    let header_file = dir.path().join("auth-header");
    std::fs::write(&header_file, format!("Authorization: Bearer {TOKEN}\n")).unwrap();
    let auth = format!("@{}", header_file.display());
    let curl = |args: Vec<String>| async move {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "30"])
            .args(&args)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!args.iter().any(|a| a.contains(TOKEN)));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let upgraded = curl(vec![
        "-X".into(),
        "POST".into(),
        "-H".into(),
        "content-type: application/json".into(),
        "-H".into(),
        auth.clone(),
        "-d".into(),
        format!(r#"{{"engineVersion":"4.4","requestId":"{REQUEST_ID}"}}"#),
        url(&gw, &upgrade_path("dds-sandbox01")),
    ])
    .await;
    assert_eq!(upgraded["engineVersion"], "4.4", "{upgraded}");
    assert_eq!(gw.sandbox.upgrades_started("dds-sandbox01"), 1);
    let read = curl(vec![
        "--http2-prior-knowledge".into(),
        "-H".into(),
        auth,
        url(&gw, "/v1/instances/dds-sandbox01/engineVersion"),
    ])
    .await;
    assert_eq!(read["status"], "EngineVersionUpgrading", "{read}");
}

/// The edges of issues 20 and 23: a field named twice, an empty body, one header limit for both
/// protocols, authentication before the content type and size, and an unknown parameter's
/// message listing every accepted one.
#[tokio::test(flavor = "multi_thread")]
async fn json_edges_refuse_duplicates_and_strangers_first() {
    let gw = gateway(Duration::from_secs(20), "", &callers()).await;
    let auth = bearer(TOKEN);
    let json = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];
    let upgrade = url(&gw, &upgrade_path("dds-sandbox01"));

    // A field under both its names, or the same key twice: refused, naming the field.
    for body in [
        r#"{"engineVersion":"4.4","engine_version":"5.0"}"#,
        r#"{"engineVersion":"4.4","engineVersion":"5.0"}"#,
    ] {
        let answer = http1("POST", &upgrade, &json, Some(body)).await;
        let status = answer.assert_error(400, 3, "INVALID_JSON");
        let message = status["message"].as_str().unwrap();
        assert!(message.contains("engineVersion"), "{status}");
    }
    assert_eq!(gw.sandbox.calls(UPGRADE), 0);

    // An empty body is the empty message: the service says what is missing.
    http1("POST", &upgrade, &json, Some(""))
        .await
        .assert_error(400, 3, "INVALID_REQUEST");

    // Headers over 16 KiB: 431 over HTTP/1.1 as over HTTP/2's own limit.
    let big = "x".repeat(20_000);
    let answer = http1(
        "GET",
        &url(&gw, "/v1/instances/dds-sandbox01/engineVersion"),
        &[("authorization", auth.as_str()), ("x-big", big.as_str())],
        None,
    )
    .await;
    assert_eq!(answer.status, 431, "{:?}", answer.body);

    // No token: 401 before the content type (415) or the size (413) is looked at.
    let huge = format!(
        r#"{{"engineVersion":"4.4","requestId":"{}"}}"#,
        "x".repeat(70_000)
    );
    for (headers, body) in [
        (
            vec![("content-type", "text/plain")],
            r#"{"engineVersion":"4.4"}"#,
        ),
        (vec![("content-type", "application/json")], huge.as_str()),
    ] {
        http1("POST", &upgrade, &headers, Some(body))
            .await
            .assert_error(401, 16, "CALLER_CREDENTIALS_MISSING");
    }

    // An unknown query parameter: the message names every accepted one, timeout included.
    let answer = http1(
        "GET",
        &url(&gw, "/v1/instances/dds-sandbox01/engineVersion?colour=red"),
        &[("authorization", auth.as_str())],
        None,
    )
    .await;
    let status = answer.assert_error(400, 3, "INVALID_PARAMETER");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("regionId") && message.contains("timeout"),
        "{status}"
    );
}

/// A watch whose first poll fails answers with the error's HTTP status and the JSON
/// `google.rpc.Status`, as a unary call does, not 200 with one error line (issue 23).
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_whose_first_poll_fails_is_an_http_error() {
    dds_gateway::install_crypto_provider();
    let gw = gateway(Duration::from_secs(20), "max_attempts = 1", &callers()).await;
    let auth = bearer(TOKEN);
    let with_token = [("authorization", auth.as_str())];
    for answer in [
        http1(
            "GET",
            &url(
                &gw,
                "/v1/instances/dds-sandboxnone/engineVersion:watch?engineVersion=4.4",
            ),
            &with_token,
            None,
        )
        .await,
        h2(
            &gw,
            "GET",
            "/v1/instances/dds-sandboxnone/engineVersion:watch?engineVersion=4.4",
            &with_token,
            None,
        )
        .await,
    ] {
        answer.assert_error(404, 5, "INSTANCE_NOT_FOUND");
    }
}

/// `HEAD` on a GET route answers as GET does without the body (RFC 9110 9.3.2); an empty POST
/// body is the empty message.
#[tokio::test(flavor = "multi_thread")]
async fn head_answers_like_get_without_a_body() {
    dds_gateway::install_crypto_provider();
    let gw = gateway(Duration::from_secs(20), "", "").await;
    let read = "/v1/instances/dds-sandbox01/engineVersion";
    let get = http1("GET", &url(&gw, read), &[], None).await;
    assert_eq!(get.status, 200, "{:?}", get.body);
    for head in [
        http1("HEAD", &url(&gw, read), &[], None).await,
        h2(&gw, "HEAD", read, &[], None).await,
    ] {
        assert_eq!(head.status, 200, "{:?}", head.body);
        assert_eq!(head.header("content-type"), Some("application/json"));
        assert!(head.body.is_empty(), "{:?}", head.body);
    }
    // An error as for GET, without its body.
    let missing = http1(
        "HEAD",
        &url(&gw, "/v1/instances/dds-sandboxnone/engineVersion"),
        &[],
        None,
    )
    .await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.is_empty());
    // HEAD where no GET route is: 405 naming what is allowed.
    let upgrade = http1("HEAD", &url(&gw, &upgrade_path("dds-sandbox01")), &[], None).await;
    assert_eq!(upgrade.status, 405);
    assert_eq!(upgrade.header("allow"), Some("POST"));

    // An empty POST body is the empty message.
    let empty = http1(
        "POST",
        &url(&gw, &upgrade_path("dds-sandbox01")),
        &[("content-type", "application/json")],
        None,
    )
    .await;
    empty.assert_error(400, 3, "INVALID_REQUEST");
}
