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

/// `serve --sandbox` with signature V3 end to end: the binary starts, the sandbox inside it
/// verifies V3, and the `upgrade` client gets Alibaba's answer.
#[tokio::test(flavor = "multi_thread")]
async fn serve_sandbox_with_signature_v3_upgrades() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut server = Command::new(env!("CARGO_BIN_EXE_dds-gateway"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DDS_GATEWAY_ALIBABA_SIGNATURE_VERSION", "v3")
        .env("NO_COLOR", "1")
        .args(["serve", "--sandbox", "--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The address is known once the gateway logs that it listens.
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("dds-gateway listening")
                && let Some(at) = line.find("local=")
            {
                let rest = &line[at + "local=".len()..];
                return rest.split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("the gateway exited before listening");
    })
    .await
    .expect("the gateway listens");

    let target = format!("http://{addr}");
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
    assert!(stdout.contains("engine_version: 4.4"), "{stdout}");
    server.start_kill().unwrap();
    server.wait().await.unwrap();
}
