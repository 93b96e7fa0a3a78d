//! The `dds-gateway` binary: the `upgrade` client against a running gateway, and start-up errors
//! that name what to fix.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::Gateway;
use tokio::process::Command;

/// Runs the binary with only `PATH` and `env` set; returns its exit code, stdout and stderr.
async fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dds-gateway"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .args(args)
        .output()
        .await
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_prints_the_answer_and_exits_zero() {
    let gw = Gateway::start().await;
    let target = format!("http://{}", gw.addr);
    let args = [
        "upgrade",
        "--target",
        &target,
        "--instance",
        "dds-sandbox01",
        "--version",
        "4.4",
    ];
    let (code, stdout, stderr) = run(&args, &[]).await;
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    assert!(
        stdout.contains("engine_version: 4.4") && stdout.contains("alibaba_request_id: "),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_prints_the_error_with_its_details_and_exits_non_zero() {
    let gw = Gateway::start().await;
    let target = format!("http://{}", gw.addr);
    let args = [
        "upgrade",
        "--target",
        &target,
        "--instance",
        "nope",
        "--version",
        "4.4",
    ];
    let (code, _, stderr) = run(&args, &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("field db_instance_id"),
        "{stderr}"
    );
    assert!(stderr.contains("reason: INVALID_REQUEST"), "{stderr}");
}

#[tokio::test]
async fn serve_without_credentials_refuses_to_start_and_says_what_to_set() {
    let (code, _, stderr) = run(&["serve", "--listen", "127.0.0.1:0"], &[]).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("ALIBABA_CLOUD_ACCESS_KEY_ID") && stderr.contains("--sandbox"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_with_a_bad_config_value_names_the_key() {
    let env = [("DDS_GATEWAY_ALIBABA_SIGNATURE_VERSION", "v9")];
    let (code, _, stderr) = run(&["serve", "--sandbox"], &env).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("alibaba.signature_version"), "{stderr}");
}

#[tokio::test]
async fn serve_refuses_signature_v3_until_it_is_implemented() {
    let env = [("DDS_GATEWAY_ALIBABA_SIGNATURE_VERSION", "v3")];
    let (code, _, stderr) = run(&["serve", "--sandbox", "--listen", "127.0.0.1:0"], &env).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("alibaba.signature_version") && stderr.contains("not implemented"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_watch_print_the_instance_and_its_changes() {
    let gw = Gateway::start_with(common::Options {
        sandbox: dds_gateway::sandbox::SandboxConfig {
            upgrade_duration: std::time::Duration::from_millis(300),
            ..Default::default()
        },
        configure: Some(|config| {
            config.watch.poll_interval = std::time::Duration::from_millis(20);
        }),
        ..Default::default()
    })
    .await;
    let target = format!("http://{}", gw.addr);
    let (code, stdout, stderr) = run(
        &["status", "--target", &target, "--instance", "dds-sandbox01"],
        &[],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("status: Running")
            && stdout.contains("engine_version: 4.2")
            && stdout.contains("available_engine_versions: 4.4, 5.0"),
        "{stdout}"
    );

    gw.upgrade(common::request("dds-sandbox01", "4.4"))
        .await
        .unwrap();
    let args = [
        "watch",
        "--target",
        &target,
        "--instance",
        "dds-sandbox01",
        "--version",
        "4.4",
    ];
    let (code, stdout, stderr) = run(&args, &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"dds-sandbox01 Running engine_version 4.4 (target 4.4): done"),
        "{stdout}"
    );
    assert!(
        lines.iter().all(|l| l.starts_with("dds-sandbox01 ")),
        "{stdout}"
    );
}
