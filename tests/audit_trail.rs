//! The audit trail tells the truth, over loopback against the sandbox: an upgrade that ends after
//! its caller's deadline (or after the caller went away) is audited with its true outcome by the
//! task that learns it; no upgrade leaves without its `sending` event on disk, however many are
//! sent at once while the audit file fails; and the caller's deadline is checked after the
//! credential is fetched, immediately before the request would leave.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::Gateway;
use common::fake_cloud;
use dds_gateway::pb;
use dds_gateway::testing::alibaba::action::{
    DESCRIBE_DB_INSTANCE_ATTRIBUTE as DESCRIBE, UPGRADE_DB_INSTANCE_ENGINE_VERSION as UPGRADE,
};
use dds_gateway::testing::alibaba::credentials::CredentialsProvider;
use dds_gateway::testing::api::service::REPLAYED_HEADER;
use dds_gateway::testing::config::{Config, Overrides};
use dds_gateway::testing::sandbox::{Fault, Sandbox, SandboxConfig};
use serde_json::Value;
use tonic::Code;
use tonic_types::StatusExt;

const INSTANCE: &str = "dds-sandbox01"; // Running, 4.2

/// An audit file in a temporary directory, removed when dropped.
struct AuditFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl AuditFile {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        Self { _dir: dir, path }
    }

    fn lines(&self) -> Vec<Value> {
        read_lines(&self.path)
    }

    /// The outcomes recorded for one idempotency key, in order.
    fn outcomes(&self, key: &str) -> Vec<String> {
        self.lines()
            .iter()
            .filter(|l| l["request_id"] == key)
            .map(|l| l["outcome"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits (bounded) for the first event of `key` that is not `sending`: the outcome.
    async fn outcome_of(&self, key: &str) -> Value {
        let found = || {
            self.lines()
                .into_iter()
                .find(|l| l["request_id"] == key && l["outcome"] != "sending")
        };
        common::wait_until("the upgrade's outcome is audited", || found().is_some()).await;
        found().unwrap()
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The gateway in front of `sandbox`, auditing to `audit`, with preflight as asked.
async fn gateway(
    sandbox: Sandbox,
    credentials: Arc<dyn CredentialsProvider>,
    audit: &Path,
    preflight: bool,
) -> Gateway {
    let mut config = common::default_config();
    config.alibaba.endpoint = Some(sandbox.endpoint());
    config.alibaba.preflight = preflight;
    config.audit.file = Some(audit.to_path_buf());
    Gateway::serve(config, credentials, sandbox).await
}

async fn sandboxed(audit: &Path, preflight: bool) -> Gateway {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let credentials = common::credentials_of(&sandbox);
    gateway(sandbox, credentials, audit, preflight).await
}

fn keyed(key: &str) -> pb::UpgradeEngineVersionRequest {
    pb::UpgradeEngineVersionRequest {
        request_id: key.to_string(),
        ..common::request(INSTANCE, "4.4")
    }
}

/// Calls with a deadline that passes before the upgrade ends; the caller hears it passed.
async fn call_with_deadline(gw: &Gateway, key: &str, timeout: Duration) {
    let mut request = tonic::Request::new(keyed(key));
    request.set_timeout(timeout);
    let status = gw
        .client
        .clone()
        .upgrade_engine_version(request)
        .await
        .unwrap_err();
    // The gateway answers DEADLINE_EXCEEDED; a tonic client may report its own CANCELLED first.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_answered_after_the_callers_deadline_is_audited_accepted() {
    let audit = AuditFile::new();
    // Without preflight the upgrade is sent at once, well before the caller's deadline.
    let gw = sandboxed(&audit.path, false).await;
    gw.sandbox
        .push_fault_on(UPGRADE, Fault::Delay(Duration::from_millis(1500)));
    let key = uuid::Uuid::new_v4().to_string();
    call_with_deadline(&gw, &key, Duration::from_millis(500)).await;

    let outcome = audit.outcome_of(&key).await;
    assert_eq!(outcome["outcome"], "accepted", "{outcome}");
    assert_eq!(outcome["grpc_code"], "OK");
    assert!(!outcome["alibaba_request_id"].as_str().unwrap().is_empty());
    assert_eq!(audit.outcomes(&key), ["sending", "accepted"]);
    assert_eq!(gw.sandbox.upgrades_started(INSTANCE), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_whose_answer_is_lost_after_the_deadline_is_audited_reconciled() {
    let audit = AuditFile::new();
    // Without preflight the only look is the one after the lost answer: it comes late.
    let gw = sandboxed(&audit.path, false).await;
    gw.sandbox
        .push_fault_on(UPGRADE, Fault::AfterActing(Box::new(Fault::Drop)));
    gw.sandbox
        .push_fault_on(DESCRIBE, Fault::Delay(Duration::from_millis(1500)));
    let key = uuid::Uuid::new_v4().to_string();
    call_with_deadline(&gw, &key, Duration::from_millis(500)).await;

    let outcome = audit.outcome_of(&key).await;
    assert_eq!(outcome["outcome"], "reconciled", "{outcome}");
    assert_eq!(outcome["grpc_code"], "OK");
    assert_eq!(audit.outcomes(&key), ["sending", "reconciled"]);
    assert_eq!(gw.sandbox.upgrades_started(INSTANCE), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_whose_caller_went_away_is_audited_accepted() {
    let audit = AuditFile::new();
    let gw = sandboxed(&audit.path, false).await;
    gw.sandbox
        .push_fault_on(UPGRADE, Fault::Delay(Duration::from_millis(1500)));
    let key = uuid::Uuid::new_v4().to_string();
    // No deadline: the caller gives up on its own and cancels the call.
    let mut client = gw.client.clone();
    let call = client.upgrade_engine_version(keyed(&key));
    let waited = tokio::time::timeout(Duration::from_millis(500), call).await;
    assert!(waited.is_err(), "the call was still under way: {waited:?}");

    let outcome = audit.outcome_of(&key).await;
    assert_eq!(outcome["outcome"], "accepted", "{outcome}");
    assert_eq!(audit.outcomes(&key), ["sending", "accepted"]);
    assert_eq!(gw.sandbox.upgrades_started(INSTANCE), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_audit_file_failing_concurrent_upgrades_send_nothing() {
    // Every write to /dev/full fails (ENOSPC), as on a full disk.
    let gw = sandboxed(Path::new("/dev/full"), true).await;
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let mut client = gw.client.clone();
            tokio::spawn(async move {
                client
                    .upgrade_engine_version(common::request(INSTANCE, "4.4"))
                    .await
            })
        })
        .collect();
    let mut audit_unavailable = 0;
    for call in calls {
        let status = call.await.unwrap().unwrap_err();
        let reason = status.get_details_error_info().unwrap().reason;
        // One upgrade of the instance is in flight at a time: the others may be refused for that.
        match reason.as_str() {
            "AUDIT_UNAVAILABLE" => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                audit_unavailable += 1;
            }
            "UPGRADE_IN_PROGRESS" => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
            other => panic!("{other}: {status:?}"),
        }
    }
    assert!(audit_unavailable >= 1);
    assert_eq!(gw.sandbox.calls(UPGRADE), 0, "nothing reached Alibaba");
    // Reads and validate-only checks do not need the audit file to send nothing.
    let validate = pb::UpgradeEngineVersionRequest {
        validate_only: true,
        ..common::request(INSTANCE, "4.4")
    };
    gw.upgrade(validate).await.unwrap();
    assert_eq!(gw.sandbox.calls(UPGRADE), 0);
}

/// The credential takes longer to arrive than the caller waits: the upgrade must not leave once
/// it is signed. The retry with the same key waits for the first call's task, then finds the key
/// free (nothing was sent, so nothing to replay) and upgrades.
#[tokio::test(flavor = "multi_thread")]
async fn a_credential_that_arrives_after_the_deadline_sends_nothing() {
    let fake = fake_cloud::Fake::start().await;
    fake.state().uri_delay = Some(Duration::from_millis(800));
    let toml = format!(
        "[credentials]\nprovider = \"credentials_uri\"\ncredentials_uri = \"{}creds?token=uri-canary\"\n",
        fake.url()
    );
    let config = Config::from_toml(&toml, "test", |_| None, &Overrides::default()).unwrap();
    let credentials = dds_gateway::testing::alibaba::credentials::build(
        &config.credentials,
        &|_| None,
        &dds_gateway::testing::telemetry::Metrics::default(),
    )
    .unwrap();
    let sandbox = Sandbox::start(SandboxConfig {
        extra_keys: vec![fake_cloud::issued_credential(1)],
        ..Default::default()
    })
    .await
    .unwrap();
    let audit = AuditFile::new();
    // Without preflight the upgrade itself is the first call that needs the credential.
    let gw = gateway(sandbox, credentials, &audit.path, false).await;
    let key = uuid::Uuid::new_v4().to_string();
    call_with_deadline(&gw, &key, Duration::from_millis(300)).await;

    let retry = gw
        .client
        .clone()
        .upgrade_engine_version(keyed(&key))
        .await
        .unwrap();
    assert!(
        retry.metadata().get(REPLAYED_HEADER).is_none(),
        "the late call sent nothing, so there is nothing to replay"
    );
    assert_eq!(fake.state().uri_calls, 1);
    assert_eq!(gw.sandbox.calls(UPGRADE), 1, "only the retry's upgrade");
    let lines: Vec<Value> = audit
        .lines()
        .into_iter()
        .filter(|l| l["request_id"] == key.as_str())
        .collect();
    let outcomes: Vec<&str> = lines
        .iter()
        .map(|l| l["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "sending", "accepted"], "{lines:#?}");
    assert_eq!(lines[0]["grpc_code"], "DEADLINE_EXCEEDED");
}

/// The audit trail follows log rotation, on the binary: after `mv` and SIGHUP (as logrotate
/// does), and after `rm` without a signal, events go to the file `audit.file` names, and an
/// upgrade's `sending` line is in that file.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn the_audit_file_follows_rotation_and_removal() {
    let audit = AuditFile::new();
    let rotated = audit.path.with_extension("jsonl.1");
    let mut gateway = common::ServingBinary::start(
        &["serve", "--sandbox", "--listen", "127.0.0.1:0"],
        &[
            ("DDS_GATEWAY_AUDIT_FILE", audit.path.to_str().unwrap()),
            ("RUST_LOG", "info"),
        ],
    )
    .await;
    let target = format!("http://{}", gateway.addr);
    let validate = |version: &'static str| {
        let target = target.clone();
        async move {
            let args = [
                "upgrade",
                "--target",
                &target,
                "--instance",
                INSTANCE,
                "--version",
                version,
                "--validate-only",
            ];
            let (code, stdout, stderr) = common::run_cli(&args, &[]).await;
            assert_eq!(code, Some(0), "{stdout} {stderr}");
        }
    };
    validate("4.4").await;
    assert_eq!(audit.lines().len(), 1);

    std::fs::rename(&audit.path, &rotated).unwrap();
    gateway.hang_up().await;
    gateway.wait_for_log("SIGHUP").await;
    validate("5.0").await;
    let lines = audit.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["to_version"], "5.0");
    assert_eq!(
        read_lines(&rotated).len(),
        1,
        "the rotated file is left alone"
    );

    // Removed, with no signal: the next event still lands at the path, and an upgrade too.
    std::fs::remove_file(&audit.path).unwrap();
    let args = [
        "upgrade",
        "--target",
        &target,
        "--instance",
        INSTANCE,
        "--version",
        "4.4",
    ];
    let (code, stdout, stderr) = common::run_cli(&args, &[]).await;
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    let outcomes: Vec<Value> = audit.lines().iter().map(|l| l["outcome"].clone()).collect();
    assert_eq!(outcomes, ["sending", "accepted"]);
}
