//! The web console under `/ui/`: its embedded files and their headers (a strict
//! Content-Security-Policy, `nosniff`, no referrer, ETags and revalidation), off unless
//! `server.console` turns it on, and no power of its own: the files are public, but every API
//! call the page makes goes through the gate like any other (no token, no answer). Also the
//! routes the console reads: `/v1/caller`, `/v1/engineVersions` and `/v1/activity`, the latter
//! filtered by the caller's policy.

mod common;

use common::callers::{BILLING_TOKEN, OPS_TOKEN, callers_toml, gateway};
use common::http_client::http1;
use dds_gateway::testing::server::console::{CONTENT_SECURITY_POLICY, asset_names};

fn url(gw: &common::Gateway, path: &str) -> String {
    format!("http://{}{path}", gw.addr)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_files_are_embedded_and_served_with_strict_headers() {
    let gw = gateway("console = true", &callers_toml()).await;
    // No token needed for the files: they hold no data.
    let page = http1("GET", &url(&gw, "/ui/"), &[], None).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        page.header("content-security-policy"),
        Some(CONTENT_SECURITY_POLICY)
    );
    assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self';"));
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
    assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    let body = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(body.contains(r#"<script type="module" src="app.js"></script>"#));

    // Every embedded file, with its type and an ETag that revalidates to 304.
    for name in asset_names() {
        let answer = http1("GET", &url(&gw, &format!("/ui/{name}")), &[], None).await;
        assert_eq!(answer.status, 200, "{name}");
        assert!(!answer.body.is_empty(), "{name} is empty");
        let expected = match name.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            _ => "text/html; charset=utf-8",
        };
        assert_eq!(answer.header("content-type"), Some(expected), "{name}");
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        let etag = answer.header("etag").unwrap().to_string();
        let again = http1(
            "GET",
            &url(&gw, &format!("/ui/{name}")),
            &[("if-none-match", &etag)],
            None,
        )
        .await;
        assert_eq!(again.status, 304, "{name}");
        assert!(again.body.is_empty());
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        assert_eq!(
            again.header("content-security-policy"),
            Some(CONTENT_SECURITY_POLICY)
        );
    }

    // HEAD: the headers without the body.
    let head = http1("HEAD", &url(&gw, "/ui/app.js"), &[], None).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(head.header("etag").is_some());

    // `/ui` moves to `/ui/`; unknown files and other methods are refused, with the same headers.
    let bare = http1("GET", &url(&gw, "/ui"), &[], None).await;
    assert_eq!(bare.status, 200, "reqwest follows the redirect to the page");
    let missing = http1("GET", &url(&gw, "/ui/secrets.txt"), &[], None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.header("content-security-policy"),
        Some(CONTENT_SECURITY_POLICY)
    );
    let post = http1("POST", &url(&gw, "/ui/app.js"), &[], Some("x")).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_adds_no_power() {
    let gw = gateway("console = true", &callers_toml()).await;
    // The page is public; the API it calls is not, whoever asks and from wherever.
    assert_eq!(http1("GET", &url(&gw, "/ui/"), &[], None).await.status, 200);
    for path in [
        "/v1/caller",
        "/v1/activity",
        "/v1/engineVersions",
        "/v1/instances/dds-sandbox01/engineVersion",
    ] {
        let refused = http1(
            "GET",
            &url(&gw, path),
            &[
                ("origin", &url(&gw, "")),
                ("referer", &url(&gw, "/ui/")),
                ("cookie", "session=whatever"),
            ],
            None,
        )
        .await;
        refused.assert_error(401, 16, "CALLER_CREDENTIALS_MISSING");
    }
    // With a token, the caller's own policy still decides.
    let denied = http1(
        "GET",
        &url(
            &gw,
            "/v1/instances/dds-sandboxsz/engineVersion?regionId=cn-shenzhen",
        ),
        &[("authorization", &bearer(BILLING_TOKEN))],
        None,
    )
    .await;
    denied.assert_error(403, 7, "CALLER_NOT_PERMITTED");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_is_off_unless_configured() {
    let gw = gateway("", "").await;
    let answer = http1("GET", &url(&gw, "/ui/"), &[], None).await;
    answer.assert_error(404, 5, "ROUTE_NOT_FOUND");
    let gw = gateway("console = false", "").await;
    let answer = http1("GET", &url(&gw, "/ui/app.js"), &[], None).await;
    answer.assert_error(404, 5, "ROUTE_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_caller_learns_what_it_may_do() {
    let gw = gateway("", &callers_toml()).await;
    let billing = http1(
        "GET",
        &url(&gw, "/v1/caller"),
        &[("authorization", &bearer(BILLING_TOKEN))],
        None,
    )
    .await;
    assert_eq!(billing.status, 200);
    let json = billing.json();
    assert_eq!(json["name"], "billing");
    assert_eq!(json["authenticated"], true);
    assert_eq!(json["mayUpgrade"], true);
    assert_eq!(json["regionIds"], serde_json::json!(["cn-hangzhou"]));
    assert_eq!(
        json["instancePatterns"],
        serde_json::json!(["dds-sandbox0*"])
    );
    assert_eq!(json["engineVersions"], serde_json::json!(["5.0", "6.0"]));

    let ops = http1(
        "GET",
        &url(&gw, "/v1/caller"),
        &[("authorization", &bearer(OPS_TOKEN))],
        None,
    )
    .await
    .json();
    assert_eq!(ops["name"], "secret-ops");
    assert_eq!(ops["mayUpgrade"], false, "{ops}");
    assert_eq!(ops["mayRollOut"], false, "{ops}");

    // Without callers (loopback): no sign-in, every configured version.
    let open = gateway("", "").await;
    let json = http1("GET", &url(&open, "/v1/caller"), &[], None)
        .await
        .json();
    assert_eq!(json["authenticated"], false, "{json}");
    assert_eq!(json["mayUpgrade"], true);
    assert_eq!(json["engineVersions"].as_array().unwrap().len(), 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_versions_come_with_their_end_of_life_and_source() {
    let gw = gateway("", "").await;
    let answer = http1("GET", &url(&gw, "/v1/engineVersions"), &[], None).await;
    assert_eq!(answer.status, 200);
    let versions = answer.json()["engineVersions"].as_array().unwrap().clone();
    let names: Vec<&str> = versions
        .iter()
        .map(|v| v["engineVersion"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["3.4", "4.0", "4.2", "4.4", "5.0", "6.0", "7.0", "8.0"]
    );
    let v42 = &versions[2];
    assert_eq!(v42["endOfLife"], "2023-04-30");
    assert_eq!(v42["lifecycle"], "LIFECYCLE_END_OF_LIFE");
    assert!(v42["source"].as_str().unwrap().contains("mongodb.com"));
    let v80 = &versions[7];
    assert_eq!(v80["endOfLife"], "2029-10-31");
}

#[tokio::test(flavor = "multi_thread")]
async fn activity_lists_upgrades_for_the_instances_the_caller_may_read() {
    dds_gateway::testing::tls::install_crypto_provider();
    let gw = gateway("", &callers_toml()).await;
    // billing upgrades one of its instances; the sandbox accepts it.
    let upgrade = common::http_client::post(
        &url(&gw, "/v1/instances/dds-sandbox02:upgradeEngineVersion"),
        &[("authorization", &bearer(BILLING_TOKEN))],
        r#"{"engineVersion": "5.0"}"#,
    )
    .await;
    assert_eq!(upgrade.status, 200, "{:?}", upgrade.body);
    // A refusal is activity too (the audit records it).
    let refused = common::http_client::post(
        &url(&gw, "/v1/instances/dds-sandbox03:upgradeEngineVersion"),
        &[("authorization", &bearer(BILLING_TOKEN))],
        r#"{"engineVersion": "8.0"}"#,
    )
    .await;
    refused.assert_error(403, 7, "CALLER_NOT_PERMITTED");

    let seen = http1(
        "GET",
        &url(&gw, "/v1/activity"),
        &[("authorization", &bearer(BILLING_TOKEN))],
        None,
    )
    .await;
    assert_eq!(seen.status, 200);
    let activities = seen.json()["activities"].as_array().unwrap().clone();
    assert_eq!(activities.len(), 2, "{activities:?}");
    // Newest first.
    assert_eq!(activities[0]["dbInstanceId"], "dds-sandbox03");
    assert_eq!(activities[0]["outcome"], "failed");
    assert_eq!(activities[0]["grpcCode"], "PERMISSION_DENIED");
    assert_eq!(activities[1]["dbInstanceId"], "dds-sandbox02");
    assert_eq!(activities[1]["caller"], "billing");
    assert_eq!(activities[1]["action"], "upgrade");
    assert_eq!(activities[1]["outcome"], "accepted");
    assert_eq!(activities[1]["toEngineVersion"], "5.0");

    // secret-ops may read only dds-sandboxsz in cn-shenzhen: it sees none of billing's.
    let other = http1(
        "GET",
        &url(&gw, "/v1/activity"),
        &[("authorization", &bearer(OPS_TOKEN))],
        None,
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.json()["activities"], serde_json::json!([]));

    let page = http1(
        "GET",
        &url(&gw, "/v1/activity?pageSize=1"),
        &[("authorization", &bearer(BILLING_TOKEN))],
        None,
    )
    .await;
    assert_eq!(page.json()["activities"].as_array().unwrap().len(), 1);
    let bad = http1(
        "GET",
        &url(&gw, "/v1/activity?pageSize=-1"),
        &[("authorization", &bearer(BILLING_TOKEN))],
        None,
    )
    .await;
    let json = bad.assert_error(400, 3, "INVALID_REQUEST");
    assert!(json.to_string().contains("page_size"), "{json}");
}

#[tokio::test(flavor = "multi_thread")]
async fn activity_is_shared_by_replicas_through_redis_and_capped() {
    use dds_gateway::testing::sandbox::SandboxConfig;
    use dds_gateway::testing::state::activity::{Activity, CAPACITY};

    dds_gateway::testing::tls::install_crypto_provider();
    let redis = common::redis::RedisServer::start().await;
    let toml = format!(
        "[state]\nstore = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    );
    let a = common::Gateway::from_toml(SandboxConfig::default(), &toml).await;
    let b = common::Gateway::from_toml(SandboxConfig::default(), &toml).await;
    let upgrade = common::http_client::post(
        &url(&a, "/v1/instances/dds-sandbox01:upgradeEngineVersion"),
        &[],
        r#"{"engineVersion": "4.4"}"#,
    )
    .await;
    assert_eq!(upgrade.status, 200, "{:?}", upgrade.body);
    // Replica b never saw the call; it lists it from the shared list.
    common::eventually("replica b lists replica a's upgrade", || async {
        let answer = http1("GET", &url(&b, "/v1/activity"), &[], None).await;
        answer.json()["activities"]
            .as_array()
            .is_some_and(|list| list.iter().any(|e| e["dbInstanceId"] == "dds-sandbox01"))
    })
    .await;

    // The list keeps the newest CAPACITY entries.
    let store = dds_gateway::testing::state::redis::RedisStore::open(
        &dds_gateway::testing::config::RedisUrl::parse(&redis.url()).unwrap(),
        None,
        "dds-gateway:",
        dds_gateway::testing::state::store::StoreLimits::from_config(&common::default_config()),
    )
    .unwrap();
    let list = Activity::redis(&store);
    for n in 0..CAPACITY + 5 {
        list.push(dds_gateway::pb::Activity {
            db_instance_id: format!("dds-n{n}"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let recent = list.recent().await.unwrap();
    assert_eq!(recent.len(), CAPACITY);
    assert_eq!(recent[0].db_instance_id, format!("dds-n{}", CAPACITY + 4));
}
