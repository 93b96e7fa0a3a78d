//! Callers' identity and policy over loopback: bearer tokens (missing, malformed, unknown),
//! each policy rule for calls and reads, and request ids scoped to the caller. Each refusal is
//! checked to reach no upstream (the sandbox records every call).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::callers::{
    BILLING_TOKEN, OPS_TOKEN, UPGRADE, call, callers_toml, gateway, validate_only, watch_request,
    with_token,
};
use common::{assert_error, request};
use dds_gateway::pb;
use dds_gateway::testing::api::auth::hash_token;
use tonic::Code;

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
