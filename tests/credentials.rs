//! The credential provider chain against real loopback servers: a fake STS that verifies
//! `AssumeRole` signatures and checks OIDC tokens, a fake ECS metadata service (IMDSv2 and v1),
//! and a credentials URI. Each provider resolves; temporary credentials refresh before expiry,
//! once under concurrency, and survive a failed refresh; file credentials rotate on change and
//! on reload (SIGHUP); `check-credentials` says which provider answered.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::fake_cloud::{
    self, BASE_ID, BASE_SECRET, Fake, IMDS_TOKEN, OIDC_PROVIDER_ARN, ROLE_ARN, ROLE_NAME, Scratch,
    issued,
};
use dds_gateway::testing::alibaba::credentials::{self, CredentialsProvider};
use dds_gateway::testing::config::{Config, Overrides};
use serde_json::json;

/// Builds the provider of a `[credentials]` section with only `env` as the environment.
fn provider(credentials_toml: &str, env: &[(&str, &str)]) -> Arc<dyn CredentialsProvider> {
    try_provider(credentials_toml, env).unwrap()
}

fn try_provider(
    credentials_toml: &str,
    env: &[(&str, &str)],
) -> Result<Arc<dyn CredentialsProvider>, credentials::CredentialsError> {
    counted_provider(
        credentials_toml,
        env,
        &dds_gateway::testing::telemetry::Metrics::default(),
    )
}

/// [`try_provider`] counting in `metrics`.
fn counted_provider(
    credentials_toml: &str,
    env: &[(&str, &str)],
    metrics: &dds_gateway::testing::telemetry::Metrics,
) -> Result<Arc<dyn CredentialsProvider>, credentials::CredentialsError> {
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let toml = format!("[credentials]\n{credentials_toml}\n");
    let config = Config::from_toml(&toml, "test", |_| None, &Overrides::default()).unwrap();
    credentials::build(&config.credentials, &|k: &str| env.get(k).cloned(), metrics)
}

/// Waits (bounded) until the provider hands out a credential with this AccessKeyId.
async fn wait_for_key(provider: &dyn CredentialsProvider, id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if provider.credential().await.unwrap().access_key_id() == id {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw AccessKeyId {id}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_environment_comes_first_in_the_default_chain() {
    let scratch = Scratch::new("env-first");
    scratch.write(
        ".alibabacloud/credentials.ini",
        "[default]\ntype = access_key\naccess_key_id = fromfile\naccess_key_secret = s\n",
    );
    let home = scratch.path().to_str().unwrap();
    let env = [
        ("HOME", home),
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", "fromenv"),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "s"),
        ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"),
    ];
    let chain = provider("", &env);
    assert_eq!(chain.credential().await.unwrap().access_key_id(), "fromenv");
    assert_eq!(chain.name(), "environment");

    // Without the variables the chain goes on to the credentials file under HOME.
    let chain = provider("", &env[..1]);
    assert_eq!(
        chain.credential().await.unwrap().access_key_id(),
        "fromfile"
    );
    assert_eq!(chain.name(), "profile");
}

#[tokio::test]
async fn when_nothing_answers_the_error_names_every_provider_and_no_secret() {
    let fake = Fake::start().await;
    let scratch = Scratch::new("nothing");
    let home = scratch.path().to_str().unwrap();
    // Only an ID (no secret) in the environment; the metadata service has no role.
    let env = [
        ("HOME", home),
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", "lonely-id-canary"),
    ];
    let chain = provider(&format!("imds_endpoint = \"{}nowhere/\"", fake.url()), &env);
    let err = chain.credential().await.unwrap_err().to_string();
    for named in [
        "environment",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
        "cli_profile",
        "profile",
        "ecs_ram_role",
    ] {
        assert!(err.contains(named), "{named} missing from: {err}");
    }
    assert!(!err.contains("lonely-id-canary"), "{err}");
}

#[tokio::test]
async fn oidc_role_rereads_the_token_file_and_refreshes_before_expiry() {
    let fake = Fake::start().await;
    // Issued credentials live 32 s; with the 30 s safety margin they are refreshed at once.
    fake.state().lifetime = Some(Duration::from_secs(32));
    let scratch = Scratch::new("oidc");
    let token_file = scratch.write("token", "oidc-token-one-canary\n");
    let env = [
        ("ALIBABA_CLOUD_ROLE_ARN", ROLE_ARN),
        ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", OIDC_PROVIDER_ARN),
        (
            "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
            token_file.to_str().unwrap(),
        ),
        ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"),
    ];
    let chain = provider(&format!("sts_endpoint = \"{}\"", fake.url()), &env);
    let first = chain.credential().await.unwrap();
    assert_eq!(first.access_key_id(), issued(1));
    assert!(first.security_token().is_some());
    assert_eq!(chain.name(), "oidc_role_arn");
    assert_eq!(fake.state().oidc_tokens, ["oidc-token-one-canary"]);

    // The kubelet rotates the token; the background refresh reads the new one.
    scratch.write("token", "oidc-token-two-canary\n");
    let state = Arc::clone(&fake.state);
    common::wait_until("a refresh with the new token", || {
        state
            .lock()
            .unwrap()
            .oidc_tokens
            .iter()
            .any(|t| t == "oidc-token-two-canary")
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while chain.credential().await.unwrap().access_key_id() == issued(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refreshed credential is served"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the ACK pod identity webhook (RRSA) injects, and nothing else: the chain assumes the role
/// at the STS endpoint it names, which wins over the region and VPC variables.
#[tokio::test]
async fn rrsa_webhook_variables_alone_assume_the_role_at_the_named_sts_endpoint() {
    let fake = Fake::start().await;
    let scratch = Scratch::new("rrsa");
    let token_file = scratch.write("token", "rrsa-token-canary\n");
    let sts = fake.url();
    let env = [
        ("ALIBABA_CLOUD_ROLE_ARN", ROLE_ARN),
        ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", OIDC_PROVIDER_ARN),
        (
            "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
            token_file.to_str().unwrap(),
        ),
        ("ALIBABA_CLOUD_STS_ENDPOINT", sts.as_str()),
        ("ALIBABA_CLOUD_STS_REGION", "cn-hangzhou"),
        ("ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED", "true"),
        ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"),
    ];
    let chain = provider("", &env);
    let credential = chain.credential().await.unwrap();
    assert_eq!(credential.access_key_id(), issued(1));
    assert_eq!(chain.name(), "oidc_role_arn");
    assert_eq!(fake.state().sts_actions, ["AssumeRoleWithOIDC"]);
    assert_eq!(fake.state().oidc_tokens, ["rrsa-token-canary"]);
}

#[tokio::test]
async fn concurrent_first_calls_assume_the_role_once() {
    let fake = Fake::start().await;
    let scratch = Scratch::new("concurrent");
    let token_file = scratch.write("token", "oidc-token-canary");
    let oidc = provider(
        &format!(
            "provider = \"oidc_role_arn\"\nrole_arn = \"{ROLE_ARN}\"\noidc_provider_arn = \"{OIDC_PROVIDER_ARN}\"\noidc_token_file = \"{}\"\nsts_endpoint = \"{}\"",
            token_file.display(),
            fake.url()
        ),
        &[],
    );
    let calls: Vec<_> = (0..24)
        .map(|_| {
            let oidc = Arc::clone(&oidc);
            tokio::spawn(async move { oidc.credential().await.unwrap() })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().access_key_id(), issued(1));
    }
    assert_eq!(fake.state().sts_actions, ["AssumeRoleWithOIDC"]);
}

#[tokio::test]
async fn a_failed_refresh_keeps_serving_the_cached_credential() {
    let fake = Fake::start().await;
    fake.state().lifetime = Some(Duration::from_secs(36));
    let scratch = Scratch::new("failed-refresh");
    let token_file = scratch.write("token", "oidc-token-canary");
    let oidc = provider(
        &format!(
            "provider = \"oidc_role_arn\"\nrole_arn = \"{ROLE_ARN}\"\noidc_provider_arn = \"{OIDC_PROVIDER_ARN}\"\noidc_token_file = \"{}\"\nsts_endpoint = \"{}\"\nrefresh_ahead = \"15m\"",
            token_file.display(),
            fake.url()
        ),
        &[],
    );
    assert_eq!(oidc.credential().await.unwrap().access_key_id(), issued(1));
    // STS now refuses; the refresh half-way through the ~6 s of validity fails...
    fake.state().sts_failures = 1;
    let state = Arc::clone(&fake.state);
    common::wait_until("a refresh attempt", || {
        state.lock().unwrap().sts_actions.len() == 2
    })
    .await;
    // ...and calls keep the cached credential, without asking STS themselves.
    assert_eq!(oidc.credential().await.unwrap().access_key_id(), issued(1));
    assert_eq!(fake.state().sts_actions.len(), 2);
}

#[tokio::test]
async fn ram_role_arn_profile_signs_assume_role_with_the_base_key() {
    let fake = Fake::start().await;
    let scratch = Scratch::new("ram-role");
    let file = scratch.write(
        "credentials.ini",
        &format!(
            "[default]\ntype = access_key\naccess_key_id = other\naccess_key_secret = other\n\n\
             [deploy]\ntype = ram_role_arn   # assumed with the key below\naccess_key_id = {BASE_ID}\n\
             access_key_secret = {BASE_SECRET}\nrole_arn = {ROLE_ARN}\nrole_session_name = gw\n"
        ),
    );
    let chosen = provider(
        &format!(
            "provider = \"profile\"\ncredentials_file = \"{}\"\nprofile = \"deploy\"\nsts_endpoint = \"{}\"",
            file.display(),
            fake.url()
        ),
        &[],
    );
    let credential = chosen.credential().await.unwrap();
    assert_eq!(credential.access_key_id(), issued(1));
    // The credential names what made it; the provider names where it was configured.
    assert_eq!(credential.provider(), "ram_role_arn");
    assert_eq!(chosen.name(), "profile");
    assert_eq!(fake.state().sts_actions, ["AssumeRole"]);
}

#[tokio::test]
async fn explicit_ram_role_arn_assumes_the_role_with_the_rest_of_the_chain() {
    let fake = Fake::start().await;
    let env = [
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", BASE_ID),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", BASE_SECRET),
    ];
    let role = provider(
        &format!(
            "provider = \"ram_role_arn\"\nrole_arn = \"{ROLE_ARN}\"\nsts_endpoint = \"{}\"",
            fake.url()
        ),
        &env,
    );
    let credential = role.credential().await.unwrap();
    assert_eq!(credential.access_key_id(), issued(1));
    assert_eq!(credential.provider(), "ram_role_arn");

    // A role ARN is required, and said so before anything is called.
    let err = try_provider("provider = \"ram_role_arn\"", &env).unwrap_err();
    assert!(err.to_string().contains("credentials.role_arn"), "{err}");
}

#[tokio::test]
async fn sts_refusals_name_the_code_but_never_echo_the_message() {
    let fake = Fake::start().await;
    fake.state().sts_failures = 1;
    let env = [
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", BASE_ID),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", BASE_SECRET),
        ("ALIBABA_CLOUD_SECURITY_TOKEN", "base-token-canary"),
    ];
    let role = provider(
        &format!(
            "provider = \"ram_role_arn\"\nrole_arn = \"{ROLE_ARN}\"\nsts_endpoint = \"{}\"",
            fake.url()
        ),
        &env,
    );
    let err = role.credential().await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("NoPermission") && text.contains("FAKE-REQUEST"),
        "{text}"
    );
    assert!(!text.contains("base-token-canary"), "{text}");
    assert!(!text.contains(BASE_SECRET), "{text}");
}

#[tokio::test]
async fn cli_profile_chainable_ram_role_arn() {
    let fake = Fake::start().await;
    let scratch = Scratch::new("cli");
    scratch.write(
        ".aliyun/config.json",
        &json!({
            "current": "Chained",
            "profiles": [
                {"name": "Base", "mode": "AK", "access_key_id": BASE_ID, "access_key_secret": BASE_SECRET},
                {"name": "Chained", "mode": "ChainableRamRoleArn", "source_profile": "Base",
                 "ram_role_arn": ROLE_ARN, "ram_session_name": "gw", "expired_seconds": 3600}
            ]
        })
        .to_string(),
    );
    let home = scratch.path().to_str().unwrap();
    let chain = provider(
        &format!("sts_endpoint = \"{}\"", fake.url()),
        &[
            ("HOME", home),
            ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"),
        ],
    );
    assert_eq!(chain.credential().await.unwrap().access_key_id(), issued(1));
    assert_eq!(chain.name(), "cli_profile");
    assert_eq!(fake.state().sts_actions, ["AssumeRole"]);
}

#[tokio::test]
async fn ecs_ram_role_uses_imdsv2_tokens_and_falls_back_to_v1_only_when_allowed() {
    let fake = Fake::start().await;
    let ecs = provider(
        &format!(
            "provider = \"ecs_ram_role\"\nimds_endpoint = \"{}\"",
            fake.url()
        ),
        &[],
    );
    let credential = ecs.credential().await.unwrap();
    assert_eq!(credential.access_key_id(), issued(1));
    assert_eq!(credential.provider(), "ecs_ram_role");
    // Role discovery and credentials, both with the session token.
    assert_eq!(
        fake.state().imds_token_seen,
        [Some(IMDS_TOKEN.to_string()), Some(IMDS_TOKEN.to_string())]
    );

    // A metadata service that refuses session tokens: IMDSv1...
    fake.state().imds_v1_only = true;
    let v1 = provider(
        &format!(
            "provider = \"ecs_ram_role\"\nimds_endpoint = \"{}\"\necs_role_name = \"{ROLE_NAME}\"",
            fake.url()
        ),
        &[],
    );
    assert_eq!(v1.credential().await.unwrap().access_key_id(), issued(2));
    // ...unless IMDSv1 is disabled.
    let hardened = provider(
        &format!(
            "provider = \"ecs_ram_role\"\nimds_endpoint = \"{}\"\nimdsv1_disabled = true",
            fake.url()
        ),
        &[],
    );
    let err = hardened.credential().await.unwrap_err().to_string();
    assert!(err.contains("IMDSv1 is disabled"), "{err}");
    assert!(!err.contains(IMDS_TOKEN), "{err}");
}

#[tokio::test]
async fn credentials_uri_answers_and_its_token_stays_out_of_errors() {
    let fake = Fake::start().await;
    let uri = format!("{}creds?token=uri-canary", fake.url());
    let from_uri = provider(
        "",
        &[
            ("ALIBABA_CLOUD_CREDENTIALS_URI", uri.as_str()),
            ("ALIBABA_CLOUD_CLI_PROFILE_DISABLED", "true"),
            ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"),
        ],
    );
    assert_eq!(
        from_uri.credential().await.unwrap().access_key_id(),
        issued(1)
    );
    assert_eq!(from_uri.name(), "credentials_uri");

    let wrong = format!("{}creds?token=wrong-canary", fake.url());
    let refused = provider(
        &format!("provider = \"credentials_uri\"\ncredentials_uri = \"{wrong}\""),
        &[],
    );
    let err = refused.credential().await.unwrap_err();
    let text = format!("{err} {err:?} {refused:?}");
    assert!(text.contains("401"), "{text}");
    assert!(!text.contains("wrong-canary"), "{text}");
}

#[tokio::test]
async fn a_changed_credentials_file_is_picked_up_without_restart() {
    let scratch = Scratch::new("rotation");
    let ini = |id: &str| {
        format!("[default]\ntype = access_key\naccess_key_id = {id}\naccess_key_secret = s-{id}\n")
    };
    let file = scratch.write("credentials.ini", &ini("first-key"));
    let polled = provider(
        &format!(
            "provider = \"profile\"\ncredentials_file = \"{}\"\nfile_poll_interval = \"20ms\"",
            file.display()
        ),
        &[],
    );
    let held = polled.credential().await.unwrap();
    assert_eq!(held.access_key_id(), "first-key");
    scratch.write("credentials.ini", &ini("second-key"));
    wait_for_key(polled.as_ref(), "second-key").await;
    // What a call in flight already holds is untouched.
    assert_eq!(held.access_key_id(), "first-key");
    assert_eq!(held.access_key_secret().expose(), "s-first-key");

    // A broken file keeps the last good credentials.
    scratch.write("credentials.ini", "[default]\ntype = access_key\n");
    polled.reload().await;
    assert_eq!(
        polled.credential().await.unwrap().access_key_id(),
        "second-key"
    );
}

#[tokio::test]
async fn reload_reads_the_file_at_once_and_counts_what_came_of_it() {
    let telemetry = dds_gateway::testing::telemetry::Telemetry::quiet();
    let reloads = |outcome: &str| {
        common::traced::sample(
            &telemetry.prometheus_text(),
            "dds_gateway_config_reloads_total",
            &[("file", "credentials"), ("outcome", outcome)],
        )
    };
    let scratch = Scratch::new("sighup");
    let ini = |id: &str| {
        format!("[default]\ntype = access_key\naccess_key_id = {id}\naccess_key_secret = s\n")
    };
    let file = scratch.write("credentials.ini", &ini("before-hup"));
    // Polling every hour: only the reload (what SIGHUP triggers) can pick the change up.
    let chain = counted_provider(
        &format!(
            "credentials_file = \"{}\"\nfile_poll_interval = \"1h\"",
            file.display()
        ),
        &[
            ("ALIBABA_CLOUD_CLI_PROFILE_DISABLED", "true"),
            ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"),
        ],
        telemetry.metrics(),
    )
    .unwrap();
    assert_eq!(
        chain.credential().await.unwrap().access_key_id(),
        "before-hup"
    );
    scratch.write("credentials.ini", &ini("after-hup"));
    assert_eq!(
        chain.credential().await.unwrap().access_key_id(),
        "before-hup"
    );
    chain.reload().await;
    assert_eq!(
        chain.credential().await.unwrap().access_key_id(),
        "after-hup"
    );
    assert_eq!(reloads("ok"), Some(1.0));
    // An unchanged file is no reload; a broken one is one that failed.
    chain.reload().await;
    assert_eq!(reloads("ok"), Some(1.0));
    assert_eq!(reloads("error"), None);
    scratch.write("credentials.ini", "[default]\ntype = access_key\n");
    chain.reload().await;
    assert_eq!(reloads("error"), Some(1.0));
    assert_eq!(
        chain.credential().await.unwrap().access_key_id(),
        "after-hup"
    );
}

#[tokio::test]
async fn check_credentials_says_which_provider_answered_and_why_none_did() {
    let fake = Fake::start().await;
    let scratch = Scratch::new("check");
    let token_file = scratch.write("token", "oidc-token-canary");
    let env = [
        ("ALIBABA_CLOUD_ROLE_ARN", ROLE_ARN),
        ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", OIDC_PROVIDER_ARN),
        (
            "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
            token_file.to_str().unwrap(),
        ),
        ("DDS_GATEWAY_CREDENTIALS_STS_ENDPOINT", &fake.url()),
        ("RUST_LOG", "trace"),
    ];
    let (code, stdout, stderr) = common::run_cli(&["check-credentials"], &env).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("provider oidc_role_arn") && stdout.contains("STS.****0001"),
        "{stdout}"
    );
    assert!(stdout.contains("temporary until"), "{stdout}");
    for canary in [
        "oidc-token-canary",
        "issued-secret-canary",
        "issued-token-canary",
    ] {
        assert!(
            !stdout.contains(canary) && !stderr.contains(canary),
            "{canary} leaked"
        );
    }

    let (code, _, stderr) = common::run_cli(
        &["check-credentials"],
        &[("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")],
    )
    .await;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("no usable Alibaba Cloud credentials")
            && stderr.contains("ALIBABA_CLOUD_ACCESS_KEY_ID"),
        "{stderr}"
    );

    // An explicitly chosen provider that cannot reach its source: unavailable (69).
    let (code, _, stderr) = common::run_cli(
        &["check-credentials"],
        &[
            ("DDS_GATEWAY_CREDENTIALS_PROVIDER", "ecs_ram_role"),
            (
                "DDS_GATEWAY_CREDENTIALS_IMDS_ENDPOINT",
                &format!("{}gone/", fake.url()),
            ),
        ],
    )
    .await;
    assert_eq!(code, Some(69), "{stderr}");
    assert!(
        stderr.contains("ecs_ram_role") && stderr.contains("404"),
        "{stderr}"
    );
}

/// An INI file holding one AccessKey.
fn access_key_ini(id: &str) -> String {
    format!("[default]\ntype = access_key\naccess_key_id = {id}\naccess_key_secret = secret-{id}\n")
}

fn plain_key(id: &str) -> dds_gateway::testing::alibaba::credentials::Credential {
    dds_gateway::testing::alibaba::credentials::Credential::new(
        id,
        dds_gateway::testing::alibaba::credentials::Secret::new(format!("secret-{id}")),
        None,
        None,
        "test",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_under_a_running_gateway_leaves_calls_in_flight_alone() {
    use dds_gateway::testing::sandbox::{Fault, Sandbox, SandboxConfig};
    let scratch = Scratch::new("gateway-rotation");
    let file = scratch.write("credentials.ini", &access_key_ini("old-key"));
    let rotating = provider(
        &format!(
            "provider = \"profile\"\ncredentials_file = \"{}\"\nfile_poll_interval = \"20ms\"",
            file.display()
        ),
        &[],
    );
    let sandbox = Sandbox::start(SandboxConfig {
        extra_keys: vec![plain_key("old-key"), plain_key("new-key")],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut config = common::default_config();
    config.alibaba.endpoint = Some(sandbox.endpoint());
    let gw = common::Gateway::serve(config, rotating, sandbox).await;

    // A call signed with the old key is held in flight while the file changes under it.
    gw.sandbox.push_fault_on(
        "UpgradeDBInstanceEngineVersion",
        Fault::Delay(Duration::from_millis(300)),
    );
    let held = {
        let client = gw.client.clone();
        tokio::spawn(async move {
            client
                .clone()
                .upgrade_engine_version(common::request("dds-sandbox01", "5.0"))
                .await
        })
    };
    let sandbox = &gw.sandbox;
    common::wait_until("the first upgrade reaches the upstream", || {
        sandbox.calls("UpgradeDBInstanceEngineVersion") == 1
    })
    .await;
    scratch.write("credentials.ini", &access_key_ini("new-key"));
    assert!(held.await.unwrap().is_ok(), "the call in flight finished");

    // New calls sign with the new key once the change is seen.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        gw.upgrade(common::request("dds-sandbox02", "5.0"))
            .await
            .ok();
        let last = gw.sandbox.received().last().unwrap().params["AccessKeyId"].clone();
        if last == "new-key" {
            break;
        }
        assert_eq!(last, "old-key");
        assert!(tokio::time::Instant::now() < deadline, "rotation not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = &gw.sandbox.received()[0];
    assert_eq!(first.params["AccessKeyId"], "old-key");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn sighup_makes_the_gateway_binary_reread_its_credentials_file() {
    use dds_gateway::testing::sandbox::{Sandbox, SandboxConfig};
    let scratch = Scratch::new("sighup-binary");
    let file = scratch.write("credentials.ini", &access_key_ini("before-hup"));
    let sandbox = Sandbox::start(SandboxConfig {
        extra_keys: vec![plain_key("before-hup"), plain_key("after-hup")],
        ..Default::default()
    })
    .await
    .unwrap();
    let file_env = file.to_str().unwrap();
    let endpoint = sandbox.endpoint().to_string();
    let mut child = common::ServingBinary::start(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("RUST_LOG", "info"),
            ("DDS_GATEWAY_CREDENTIALS_PROVIDER", "profile"),
            ("DDS_GATEWAY_CREDENTIALS_CREDENTIALS_FILE", file_env),
            // Only SIGHUP can pick up the change: the file is polled once an hour.
            ("DDS_GATEWAY_CREDENTIALS_FILE_POLL_INTERVAL", "1h"),
            ("DDS_GATEWAY_ALIBABA_ENDPOINT", &endpoint),
        ],
    )
    .await;
    assert!(
        child.startup_log.contains("credentials resolved")
            && child.startup_log.contains("provider"),
        "{}",
        child.startup_log
    );
    let addr = child.addr.clone();
    let upgrade = |instance: &'static str| {
        let target = format!("http://{addr}");
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_dds-gateway"))
                .env_clear()
                .args([
                    "upgrade",
                    "--target",
                    &target,
                    "--instance",
                    instance,
                    "--version",
                    "5.0",
                ])
                .output()
                .await
                .unwrap()
        }
    };
    assert!(upgrade("dds-sandbox01").await.status.success());
    assert_eq!(
        sandbox.received().last().unwrap().params["AccessKeyId"],
        "before-hup"
    );

    scratch.write("credentials.ini", &access_key_ini("after-hup"));
    child.hang_up().await;
    child.wait_for_log("new credentials loaded").await;
    assert!(upgrade("dds-sandbox02").await.status.success());
    assert_eq!(
        sandbox.received().last().unwrap().params["AccessKeyId"],
        "after-hup"
    );
    assert!(
        child.process.try_wait().unwrap().is_none(),
        "SIGHUP does not stop it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_credentials_calls_fail_unavailable_and_nothing_is_sent() {
    use tonic_types::StatusExt;
    let fake = Fake::start().await;
    fake.state().sts_failures = 100;
    let role = provider(
        &format!(
            "provider = \"ram_role_arn\"\nrole_arn = \"{ROLE_ARN}\"\nsts_endpoint = \"{}\"",
            fake.url()
        ),
        &[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", BASE_ID),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", BASE_SECRET),
        ],
    );
    let sandbox = dds_gateway::testing::sandbox::Sandbox::start(Default::default())
        .await
        .unwrap();
    let mut config = common::default_config();
    config.alibaba.endpoint = Some(sandbox.endpoint());
    let gw = common::Gateway::serve(config, role, sandbox).await;
    let status = gw
        .upgrade(common::request("dds-sandbox01", "5.0"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "CREDENTIALS_UNAVAILABLE");
    assert!(status.get_details_retry_info().is_some());
    assert!(gw.sandbox.received().is_empty(), "nothing reached Alibaba");
}

/// A credentials URI that hands out credentials expiring within the 30 s margin (or already
/// expired) is not asked again and again: after one fetch, calls fail at once with the reason
/// until the backoff has passed.
#[tokio::test]
async fn a_source_of_near_expired_credentials_is_not_asked_in_a_loop() {
    for lifetime in [Duration::ZERO, Duration::from_secs(20)] {
        let fake = Fake::start().await;
        fake.state().lifetime = Some(lifetime);
        let uri = format!("{}creds?token=uri-canary", fake.url());
        let from_uri = provider(
            &format!("provider = \"credentials_uri\"\ncredentials_uri = \"{uri}\""),
            &[],
        );
        for _ in 0..50 {
            let err = from_uri.credential().await.unwrap_err().to_string();
            assert!(err.contains("expires at"), "{err}");
            assert!(!err.contains("canary"), "{err}");
        }
        assert_eq!(fake.state().uri_calls, 1, "lifetime {lifetime:?}");
    }
}

/// Alibaba answers `InvalidSecurityToken.Expired` (its clock, not ours, says the STS token has
/// expired): the gateway fetches a new credential at once and sends the upgrade once more,
/// which is safe because Alibaba refused the first at authentication.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_answer_refreshes_and_the_upgrade_is_retried_once() {
    use dds_gateway::testing::sandbox::{Fault, Sandbox, SandboxConfig};
    const UPGRADE: &str = "UpgradeDBInstanceEngineVersion";
    let fake = Fake::start().await;
    let uri = format!("{}creds?token=uri-canary", fake.url());
    let from_uri = provider(
        &format!("provider = \"credentials_uri\"\ncredentials_uri = \"{uri}\""),
        &[],
    );
    let sandbox = Sandbox::start(SandboxConfig {
        extra_keys: (1..=3).map(fake_cloud::issued_credential).collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut config = common::default_config();
    config.alibaba.endpoint = Some(sandbox.endpoint());
    // Even with retries off: this one is a fresh signature, not a retry of a failure.
    config.alibaba.retry.max_attempts = 1;
    let gw = common::Gateway::serve(config, from_uri, sandbox).await;
    gw.sandbox.push_fault_on(
        UPGRADE,
        Fault::Error {
            status: 400,
            code: "InvalidSecurityToken.Expired",
            retry_after_ms: None,
        },
    );
    let answer = gw
        .upgrade(common::request("dds-sandbox01", "5.0"))
        .await
        .unwrap();
    assert!(!answer.alibaba_request_id.is_empty());
    let upgrades: Vec<String> = gw
        .sandbox
        .received()
        .iter()
        .filter(|r| r.action == UPGRADE)
        .map(|r| r.params["AccessKeyId"].clone())
        .collect();
    assert_eq!(
        upgrades,
        [issued(1), issued(2)],
        "refused, then sent with a new key"
    );
    assert_eq!(fake.state().uri_calls, 2);
    // The next call uses the new credential without asking again.
    gw.upgrade(common::request("dds-sandbox02", "5.0"))
        .await
        .unwrap();
    assert_eq!(fake.state().uri_calls, 2);
}
