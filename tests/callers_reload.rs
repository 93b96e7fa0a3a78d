//! Reloading `[[callers]]` while serving: from the configuration file, from a mounted Secret
//! (kubelet-style symlink swaps), a change made while the gateway starts, and reloads that would
//! remove every caller or are invalid.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::callers::{UPGRADE, call, validate_only, with_token};
use common::{Gateway, assert_error, eventually, request, wait_until};
use dds_gateway::pb::engine_version_service_client::EngineVersionServiceClient;
use dds_gateway::testing::api::auth::hash_token;
use dds_gateway::testing::config::{Config, Overrides};
use dds_gateway::testing::sandbox::{Fault, Sandbox, SandboxConfig};
use tonic::Code;
use tonic::transport::Channel;

fn one_caller(token: &str) -> String {
    format!(
        "[[callers]]\nname = \"billing\"\ntoken_sha256 = \"{}\"\nregions = [\"cn-hangzhou\"]\ninstances = [\"dds-sandbox0*\"]\n",
        hash_token(token)
    )
}

/// Whether the gateway serves a validate-only call made with `token`.
async fn accepts(client: &EngineVersionServiceClient<Channel>, token: &str) -> bool {
    call(
        client,
        with_token(validate_only("dds-sandbox02", "5.0"), token),
    )
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_file_reloads_callers_without_dropping_calls() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
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
    eventually("the new token is accepted", || {
        accepts(&gw.client, "new-token")
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
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    write_secret(&secret, 1, &one_caller("old-token"));
    let file = dir.path().join("gateway.toml");
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
}

/// The file can change between the moment the configuration is read and the moment the reloader
/// starts watching it; that change must not be missed.
#[tokio::test(flavor = "multi_thread")]
async fn a_change_made_while_the_gateway_starts_is_picked_up() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    let head = format!(
        "[server]\nreload_interval = \"50ms\"\n[alibaba]\nendpoint = \"{}\"\n",
        sandbox.endpoint()
    );
    std::fs::write(&file, format!("{head}{}", one_caller("old-token"))).unwrap();
    let config = Config::load(Some(&file), |_| None, &Overrides::default()).unwrap();
    std::fs::write(&file, format!("{head}{}", one_caller("new-token"))).unwrap();
    let credentials = common::credentials_of(&sandbox);
    let gw = Gateway::serve(config, credentials, sandbox).await;
    eventually("the token written during start-up is accepted", || {
        accepts(&gw.client, "new-token")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_would_remove_every_caller_keeps_the_current_ones() {
    let telemetry = dds_gateway::testing::telemetry::Telemetry::quiet();
    let reloads = |outcome: &str| {
        common::traced::sample(
            &telemetry.prometheus_text(),
            "dds_gateway_config_reloads_total",
            &[("file", "callers"), ("outcome", outcome)],
        )
    };
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    let head = format!("[alibaba]\nendpoint = \"{}\"\n", sandbox.endpoint());
    std::fs::write(&file, format!("{head}{}", one_caller("old-token"))).unwrap();
    let config = Config::load(Some(&file), |_| None, &Overrides::default()).unwrap();
    let callers = dds_gateway::testing::api::auth::CallersHandle::new(
        dds_gateway::testing::api::auth::Callers::new(&config.callers, None),
    );

    std::fs::write(&file, &head).unwrap();
    dds_gateway::testing::server::reload::reload(
        Some(&file),
        &callers,
        "test",
        telemetry.metrics(),
    );
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
    dds_gateway::testing::server::reload::reload(
        Some(&file),
        &callers,
        "test",
        telemetry.metrics(),
    );
    assert_eq!(
        callers.current().len(),
        1,
        "an invalid file changes nothing"
    );
    assert_eq!(reloads("error"), Some(2.0));
    assert_eq!(reloads("ok"), None);
    std::fs::write(
        &file,
        format!(
            "{head}{}{}",
            one_caller("a"),
            one_caller("b").replace("billing", "second")
        ),
    )
    .unwrap();
    dds_gateway::testing::server::reload::reload(
        Some(&file),
        &callers,
        "test",
        telemetry.metrics(),
    );
    assert_eq!(callers.current().len(), 2);
    assert_eq!(reloads("ok"), Some(1.0));
    assert_eq!(reloads("error"), Some(2.0));
}
