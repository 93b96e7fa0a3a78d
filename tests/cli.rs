//! The `dds-gateway` binary: the `upgrade` client against a running gateway, and start-up errors
//! that name what to fix.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::Gateway;
use tokio::process::Command;

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
    let (code, stdout, stderr) = common::run_cli(&args, &[]).await;
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
    let (code, _, stderr) = common::run_cli(&args, &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("field db_instance_id"),
        "{stderr}"
    );
    assert!(stderr.contains("reason: INVALID_REQUEST"), "{stderr}");
}

#[tokio::test]
async fn serve_without_credentials_refuses_to_start_and_says_what_to_set() {
    let (code, _, stderr) = common::run_cli(&["serve", "--listen", "127.0.0.1:0"], &[]).await;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("ALIBABA_CLOUD_ACCESS_KEY_ID") && stderr.contains("--sandbox"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_with_a_bad_config_value_names_the_key() {
    let env = [("DDS_GATEWAY_ALIBABA_SIGNATURE_VERSION", "v9")];
    let (code, _, stderr) = common::run_cli(&["serve", "--sandbox"], &env).await;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("alibaba.signature_version"), "{stderr}");
}

/// A misspelt `DDS_GATEWAY_*` variable is refused like a misspelt key in the file, naming it
/// and the variable it was probably meant to be, by every command that reads the configuration.
#[tokio::test]
async fn a_misspelt_variable_is_refused_naming_it() {
    let env = [("DDS_GATEWAY_SERVER_MAX_INFLIGHT", "10")];
    for args in [
        &["serve", "--sandbox", "--listen", "127.0.0.1:0"][..],
        &["check-credentials"][..],
    ] {
        // Without the check, `serve` would start and never return.
        let (code, _, stderr) = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            common::run_cli(args, &env),
        )
        .await
        .expect("the gateway refuses to start instead of serving");
        assert_eq!(code, Some(78), "{args:?}: {stderr}");
        assert!(
            stderr.contains("unknown environment variable DDS_GATEWAY_SERVER_MAX_INFLIGHT")
                && stderr.contains("did you mean DDS_GATEWAY_SERVER_MAX_IN_FLIGHT"),
            "{args:?}: {stderr}"
        );
    }
}

/// The same cause gives the same exit code in every command: an address in use is
/// "unavailable" (69), a file the configuration names that cannot be read is "config" (78).
#[tokio::test]
async fn exit_codes_follow_sysexits() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, stderr) = common::run_cli(&["serve", "--sandbox", "--listen", &addr], &[]).await;
    assert_eq!(code, Some(69), "{stderr}");
    assert!(stderr.contains("server.listen"), "{stderr}");

    let (code, _, stderr) = common::run_cli(
        &["serve", "--sandbox", "--listen", "127.0.0.1:0"],
        &[
            ("DDS_GATEWAY_SERVER_TLS_CERT", "/nonexistent/cert.pem"),
            ("DDS_GATEWAY_SERVER_TLS_KEY", "/nonexistent/key.pem"),
        ],
    )
    .await;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("server.tls_cert"), "{stderr}");

    let (code, _, stderr) = common::run_cli(
        &["check-credentials", "--config", "/nonexistent/gateway.toml"],
        &[],
    )
    .await;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("/nonexistent/gateway.toml"), "{stderr}");

    // A client that cannot reach the gateway: unavailable too.
    drop(taken);
    let target = format!("http://{addr}");
    let args = ["status", "--target", &target, "--instance", "dds-sandbox01"];
    let (code, _, stderr) = common::run_cli(&args, &[]).await;
    assert_eq!(code, Some(69), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");

    // A watch whose --timeout is absurdly long waits "forever", it does not overflow.
    let args = [
        "watch",
        "--target",
        &target,
        "--instance",
        "dds-sandbox01",
        "--version",
        "4.4",
        "--timeout",
        "580000000000years",
    ];
    let (code, _, stderr) = common::run_cli(&args, &[]).await;
    assert_eq!(code, Some(69), "{stderr}");
    assert!(!stderr.contains("overflow"), "{stderr}");
}

/// A credentials URI that answers 503 for a while (a sidecar still starting) is asked again
/// with backoff: the gateway starts once it answers, instead of exiting at once.
#[tokio::test(flavor = "multi_thread")]
async fn serve_waits_for_a_credential_source_that_answers_late() {
    use common::fake_cloud::Fake;
    let fake = Fake::start().await;
    fake.state().uri_failures = 3;
    let uri = format!("{}creds?token=uri-canary", fake.url());
    let server = common::ServingBinary::start(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("DDS_GATEWAY_CREDENTIALS_PROVIDER", "credentials_uri"),
            ("DDS_GATEWAY_CREDENTIALS_CREDENTIALS_URI", uri.as_str()),
            ("DDS_GATEWAY_CREDENTIALS_STARTUP_TIMEOUT", "20s"),
        ],
    )
    .await;
    assert_eq!(fake.state().uri_calls, 4, "{}", server.startup_log);
    assert_eq!(fake.state().uri_failures, 0);
    // Said once, at warn, naming the source; never the URI's token.
    let waiting: Vec<&str> = server
        .startup_log
        .lines()
        .filter(|l| l.contains("not answering yet"))
        .collect();
    assert!(
        waiting.len() == 1 && waiting[0].contains("WARN") && waiting[0].contains("credentials_uri"),
        "{}",
        server.startup_log
    );
    assert!(
        !server.startup_log.contains("uri-canary"),
        "{}",
        server.startup_log
    );
}

/// A credential source that never answers: the gateway gives up after
/// `credentials.startup_timeout` with "unavailable" (69), naming the source.
#[tokio::test(flavor = "multi_thread")]
async fn serve_gives_up_on_a_credential_source_that_never_answers() {
    use common::fake_cloud::Fake;
    let fake = Fake::start().await;
    fake.state().uri_failures = usize::MAX;
    let uri = format!("{}creds?token=uri-canary", fake.url());
    let started = std::time::Instant::now();
    let (code, _, stderr) = common::run_cli(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("DDS_GATEWAY_CREDENTIALS_PROVIDER", "credentials_uri"),
            ("DDS_GATEWAY_CREDENTIALS_CREDENTIALS_URI", uri.as_str()),
            ("DDS_GATEWAY_CREDENTIALS_STARTUP_TIMEOUT", "2s"),
        ],
    )
    .await;
    assert_eq!(code, Some(69), "{stderr}");
    assert!(
        stderr.contains("credentials.startup_timeout")
            && stderr.contains("credentials_uri")
            && stderr.contains("503"),
        "{stderr}"
    );
    assert!(!stderr.contains("uri-canary"), "{stderr}");
    // Asked more than once, and not given up before the bound.
    assert!(fake.state().uri_calls >= 2, "{stderr}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
}

/// A read timeout longer than the shutdown grace is worth a warning at start-up: an upgrade
/// waiting on Alibaba at shutdown would be cut off.
#[tokio::test(flavor = "multi_thread")]
async fn serve_warns_when_the_read_timeout_exceeds_the_shutdown_grace() {
    let args = ["serve", "--sandbox", "--listen", "127.0.0.1:0"];
    let warned = |log: &str| {
        log.lines().any(|l| {
            l.contains("WARN") && l.contains("alibaba.read_timeout exceeds server.shutdown_grace")
        })
    };
    let server = common::ServingBinary::start(
        &args,
        &[
            ("DDS_GATEWAY_ALIBABA_READ_TIMEOUT", "60s"),
            ("DDS_GATEWAY_SERVER_SHUTDOWN_GRACE", "10s"),
        ],
    )
    .await;
    assert!(warned(&server.startup_log), "{}", server.startup_log);
    let server = common::ServingBinary::start(&args, &[]).await;
    assert!(!warned(&server.startup_log), "{}", server.startup_log);
}

/// `serve --sandbox` with signature V3 end to end: the binary starts, the sandbox inside it
/// verifies V3, and the `upgrade` client gets Alibaba's answer.
#[tokio::test(flavor = "multi_thread")]
async fn serve_sandbox_with_signature_v3_upgrades() {
    let server = common::ServingBinary::start(
        &["serve", "--sandbox", "--listen", "127.0.0.1:0"],
        &[("DDS_GATEWAY_ALIBABA_SIGNATURE_VERSION", "v3")],
    )
    .await;
    let addr = &server.addr;

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
    let (code, stdout, stderr) = common::run_cli(&args, &[]).await;
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    assert!(stdout.contains("engine_version: 4.4"), "{stdout}");
}

// ---- callers ----

#[tokio::test]
async fn hash_token_prints_the_sha256_of_the_token_on_stdin() {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_dds-gateway"))
        .arg("hash-token")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"abc\n")
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );

    let (code, stdout, _) = common::run_cli(&["hash-token", "--generate"], &[]).await;
    assert_eq!(code, Some(0));
    let value = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .map(str::trim)
            .unwrap()
            .to_string()
    };
    let token = value("token:");
    assert_eq!(
        value("token_sha256:"),
        dds_gateway::testing::api::auth::hash_token(&token)
    );
}

/// A gateway binary in a child process, serving the sandbox with a config file.
/// A gateway binary in a child process, serving the sandbox with a config file.
struct Child(common::ServingBinary);

impl Child {
    async fn serve(config: &std::path::Path) -> Self {
        let config = config.to_str().unwrap();
        let args = [
            "serve",
            "--sandbox",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config,
        ];
        Self(common::ServingBinary::start(&args, &[("RUST_LOG", "info")]).await)
    }

    async fn validate(&self, token: &str) -> (Option<i32>, String, String) {
        let target = format!("http://{}", self.0.addr);
        let args = [
            "upgrade",
            "--target",
            &target,
            "--instance",
            "dds-sandbox01",
            "--version",
            "5.0",
            "--validate-only",
            "--token",
            token,
        ];
        common::run_cli(&args, &[]).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_callers_and_upgrade_sends_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    let caller = |token: &str| {
        format!(
            "[server]\nreload_interval = \"1h\"\n[[callers]]\nname = \"ci\"\ntoken_sha256 = \"{}\"\nregions = [\"cn-hangzhou\"]\ninstances = [\"dds-sandbox*\"]\n",
            dds_gateway::testing::api::auth::hash_token(token)
        )
    };
    std::fs::write(&file, caller("first-token")).unwrap();
    let mut gateway = Child::serve(&file).await;

    let (code, stdout, stderr) = gateway.validate("first-token").await;
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    let (code, _, stderr) = gateway.validate("second-token").await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("Unauthenticated"), "{stderr}");

    // With a one-hour poll, only the signal can make the new file count.
    std::fs::write(&file, caller("second-token")).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    gateway.0.hang_up().await;
    loop {
        if gateway.validate("second-token").await.0 == Some(0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (code, _, stderr) = gateway.validate("first-token").await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        gateway.0.process.try_wait().unwrap().is_none(),
        "SIGHUP reloads, it does not stop the gateway"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_watch_print_the_instance_and_its_changes() {
    let gw = Gateway::start_with(common::Options {
        sandbox: dds_gateway::testing::sandbox::SandboxConfig {
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
    let (code, stdout, stderr) = common::run_cli(
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
    let (code, stdout, stderr) = common::run_cli(&args, &[]).await;
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

/// A gateway with one caller whose token is `token`, in front of a fresh sandbox.
async fn gateway_with_caller(token: &str) -> Gateway {
    let sandbox = dds_gateway::testing::sandbox::Sandbox::start(Default::default())
        .await
        .unwrap();
    let toml = format!(
        "[alibaba]\nendpoint = \"{}\"\n[[callers]]\nname = \"ci\"\ntoken_sha256 = \"{}\"\nregions = [\"cn-hangzhou\"]\ninstances = [\"dds-sandbox*\"]\n",
        sandbox.endpoint(),
        dds_gateway::testing::api::auth::hash_token(token)
    );
    let config = dds_gateway::testing::config::Config::from_toml(
        &toml,
        "test",
        |_| None,
        &dds_gateway::testing::config::Overrides::default(),
    )
    .unwrap();
    let credentials = common::credentials_of(&sandbox);
    Gateway::serve(config, credentials, sandbox).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_comes_from_a_file_or_the_environment_and_the_flag_warns() {
    const TOKEN: &str = "cli-token-canary-0123456789";
    let gw = gateway_with_caller(TOKEN).await;
    let target = format!("http://{}", gw.addr);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let file = file.to_str().unwrap();
    let validate = |extra: &'static [&'static str]| {
        let mut args = vec![
            "upgrade",
            "--target",
            &target,
            "--instance",
            "dds-sandbox01",
            "--version",
            "5.0",
            "--validate-only",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>, env: &'static [(&'static str, &'static str)]| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::run_cli(&args, env).await
    };

    // From a file: accepted, no warning.
    let mut args = validate(&[]);
    args.extend(["--token-file".to_string(), file.to_string()]);
    let (code, stdout, stderr) = run(args, &[]).await;
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    assert!(!stderr.contains("WARN"), "{stderr}");

    // From the environment: accepted, no warning.
    let (code, stdout, stderr) = run(validate(&[]), &[("DDS_GATEWAY_TOKEN", TOKEN)]).await;
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    assert!(!stderr.contains("WARN"), "{stderr}");

    // On the command line: still accepted (the CLI is a contract), with a warning that never
    // repeats the token.
    let (code, stdout, stderr) = run(validate(&["--token", TOKEN]), &[]).await;
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    assert!(
        stderr.contains("WARN")
            && stderr.contains("--token puts the bearer token on the command line")
            && stderr.contains("--token-file"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "{stderr}");

    // The file wins over the environment.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let mut args = validate(&[]);
    args.extend([
        "--token-file".to_string(),
        wrong.to_str().unwrap().to_string(),
    ]);
    let (code, _, stderr) = run(args, &[("DDS_GATEWAY_TOKEN", TOKEN)]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("Unauthenticated"), "{stderr}");

    // A missing or empty file is a usage error naming the file.
    for (name, content) in [("missing", None), ("empty", Some("\n"))] {
        let path = dir.path().join(name);
        if let Some(content) = content {
            std::fs::write(&path, content).unwrap();
        }
        let mut args = validate(&[]);
        args.extend([
            "--token-file".to_string(),
            path.to_str().unwrap().to_string(),
        ]);
        let (code, _, stderr) = run(args, &[]).await;
        assert_eq!(code, Some(64), "{stderr}");
        assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
    }
    // Both flags at once are refused.
    let mut args = validate(&["--token", TOKEN]);
    args.extend(["--token-file".to_string(), file.to_string()]);
    let (code, _, stderr) = run(args, &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(gw.sandbox.calls("UpgradeDBInstanceEngineVersion"), 0);
}

/// A duration that would overflow every deadline computed from it is refused at start-up,
/// naming the key, instead of panicking each call later.
#[tokio::test]
async fn serve_refuses_an_overflowing_duration_at_start_up() {
    let env = [("DDS_GATEWAY_SERVER_REQUEST_TIMEOUT", "300000000000y")];
    let args = ["serve", "--sandbox", "--listen", "127.0.0.1:0"];
    let (code, _, stderr) = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        common::run_cli(&args, &env),
    )
    .await
    .expect("the gateway refuses to start instead of serving");
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("server.request_timeout"), "{stderr}");
}
