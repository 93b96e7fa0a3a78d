//! Logs and the audit trail end to end: access lines (and SERVER spans) naming the admitted
//! caller, the audit file's line per upgrade attempt, and an unwritable audit file refusing new
//! upgrades before sending.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::otlp::{attributes, grpc_receiver, named};
use common::request;
use common::traced::{REPORTING_TOKEN, TRACE_ID, Traced, grpc_traces, reporting_caller, sample};
use dds_gateway::pb;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_and_server_spans_name_the_admitted_caller() {
    let (received, receiver) = grpc_receiver().await;
    let gateway = Traced::start(|config| {
        grpc_traces(config, receiver);
        reporting_caller(config, "validate_only = true\n");
    })
    .await;
    let mut admitted = tonic::Request::new(pb::GetEngineVersionRequest {
        db_instance_id: "dds-sandbox01".into(),
        region_id: String::new(),
    });
    admitted.metadata_mut().insert(
        "authorization",
        format!("Bearer {REPORTING_TOKEN}").parse().unwrap(),
    );
    gateway
        .client
        .clone()
        .get_engine_version(admitted)
        .await
        .unwrap();
    let refused = gateway
        .client
        .clone()
        .get_engine_version(pb::GetEngineVersionRequest {
            db_instance_id: "dds-sandbox01".into(),
            region_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let logs = gateway.log_lines();
    gateway.shutdown().await;

    let callers: Vec<&str> = logs
        .iter()
        .filter(|l| l["target"] == "dds_gateway::access")
        .map(|l| l["caller"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(callers, ["reporting", ""], "{logs:#?}");
    let spans = received.spans();
    let servers = named(
        &spans,
        "dds.gateway.v1.EngineVersionService/GetEngineVersion",
    );
    assert_eq!(servers.len(), 2, "{spans:#?}");
    // Only the admitted call's span names a caller.
    let named_callers: Vec<String> = servers
        .iter()
        .filter_map(|s| match attributes(s).get("enduser.id") {
            Some(Value::StringValue(caller)) => Some(caller.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(named_callers, ["reporting"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_file_holds_one_line_per_upgrade_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let file = path.clone();
    let gateway = Traced::start(move |config| config.audit.file = Some(file)).await;
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    let key = uuid::Uuid::new_v4().to_string();
    let keyed = pb::UpgradeEngineVersionRequest {
        request_id: key.clone(),
        ..request("dds-sandbox01", "4.4")
    };
    let answer = gateway.upgrade(keyed.clone()).await.unwrap().into_inner();
    // On disk before the answer came back, after the `sending` event written before the send.
    let lines = read();
    assert_eq!(lines.len(), 2);
    let sending = &lines[0];
    assert_eq!(sending["outcome"], "sending");
    assert_eq!(sending["from_version"], "4.2");
    assert_eq!(sending["alibaba_request_id"], "");
    assert_eq!(sending["request_id"], key.as_str());
    assert_eq!(sending["trace_id"], TRACE_ID);
    let first = &lines[1];
    assert_eq!(first["kind"], "upgrade");
    assert_eq!(first["outcome"], "accepted");
    assert_eq!(first["grpc_code"], "OK");
    assert_eq!(first["db_instance_id"], "dds-sandbox01");
    assert_eq!(first["region_id"], "cn-hangzhou");
    assert_eq!(first["from_version"], "4.2");
    assert_eq!(first["to_version"], "4.4");
    assert_eq!(
        first["alibaba_request_id"],
        answer.alibaba_request_id.as_str()
    );
    assert_eq!(first["request_id"], key.as_str());
    assert_eq!(first["trace_id"], TRACE_ID);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));

    // A replay says so, and names the first call's RequestId.
    let replay = gateway.upgrade(keyed).await.unwrap();
    assert_eq!(
        replay
            .metadata()
            .get(dds_gateway::testing::api::service::REPLAYED_HEADER)
            .unwrap(),
        "true"
    );
    let validate = pb::UpgradeEngineVersionRequest {
        validate_only: true,
        ..request("dds-sandbox02", "5.0")
    };
    gateway.upgrade(validate).await.unwrap();
    gateway
        .upgrade(request("dds-sandboxforbidden", "5.0"))
        .await
        .unwrap_err();

    let lines = read();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert_eq!(lines[2]["outcome"], "replayed");
    assert_eq!(
        lines[2]["alibaba_request_id"],
        answer.alibaba_request_id.as_str()
    );
    assert_eq!(lines[3]["kind"], "validate_only");
    assert_eq!(lines[3]["outcome"], "validated");
    assert_eq!(lines[3]["from_version"], "4.4");
    assert_eq!(lines[4]["outcome"], "failed");
    assert_eq!(lines[4]["grpc_code"], "PERMISSION_DENIED");
    assert_eq!(lines[4]["alibaba_code"], "Forbidden.RAM");
    assert_eq!(
        gateway.sandbox.upgrades_started("dds-sandbox01"),
        1,
        "the replay sent nothing"
    );
    // The audit target reaches the logs too.
    let audited = gateway
        .log_lines()
        .iter()
        .filter(|l| l["target"] == "dds_gateway::audit")
        .count();
    assert_eq!(audited, 5);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_audit_file_refuses_new_upgrades_before_sending() {
    // Every write to /dev/full fails (ENOSPC), as on a full disk.
    let gateway = Traced::start(|config| config.audit.file = Some("/dev/full".into())).await;
    // The `sending` event could not be written, so the upgrade was not sent...
    let refused = gateway
        .upgrade(request("dds-sandbox01", "4.4"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(
        tonic_types::StatusExt::get_details_error_info(&refused)
            .unwrap()
            .reason,
        "AUDIT_UNAVAILABLE"
    );
    assert_eq!(
        gateway
            .sandbox
            .calls(dds_gateway::testing::alibaba::action::UPGRADE_DB_INSTANCE_ENGINE_VERSION),
        0
    );
    // ...and the events that missed the file are in the logs, whole, at ERROR: the `sending`
    // event and the refusal.
    let lost: Vec<String> = gateway
        .log_lines()
        .iter()
        .filter(|l| l["target"] == "dds_gateway::audit" && l["level"] == "ERROR")
        .map(|l| l["event"].as_str().unwrap().to_string())
        .collect();
    assert!(
        lost.iter().any(|e| e.contains(r#""outcome":"sending""#)),
        "{lost:#?}"
    );
    assert!(
        lost.iter()
            .any(|e| e.contains(r#""grpc_code":"UNAVAILABLE""#)),
        "{lost:#?}"
    );
    // Validation still works.
    let validate = pb::UpgradeEngineVersionRequest {
        validate_only: true,
        ..request("dds-sandbox03", "6.0")
    };
    gateway.upgrade(validate).await.unwrap();
    let failures = gateway.metrics().await;
    assert!(
        sample(&failures, "dds_gateway_audit_write_failures_total", &[]).is_some_and(|n| n >= 2.0),
        "{failures}"
    );
    gateway.shutdown().await;
}

/// A caller's invalid request is the caller's business: logged at info, while a refusal that
/// is no mistake of the caller's stays a warning. Every line spells the gRPC code the same way
/// (`INVALID_ARGUMENT`, as the access line and the audit do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_invalid_request_is_logged_at_info_with_one_spelling_of_its_code() {
    let gateway = Traced::start(|_| {}).await;
    let invalid = gateway.upgrade(request("nope", "4.4")).await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    let busy = gateway
        .upgrade(request("dds-sandboxbusy", "4.4"))
        .await
        .unwrap_err();
    assert_eq!(busy.code(), tonic::Code::FailedPrecondition);
    let logs = gateway.log_lines();
    gateway.shutdown().await;

    let failed: Vec<(&str, &str)> = logs
        .iter()
        .filter(|l| l["message"] == "upgrade failed")
        .map(|l| {
            (
                l["level"].as_str().unwrap(),
                l["grpc_code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        failed,
        [
            ("INFO", "INVALID_ARGUMENT"),
            ("WARN", "FAILED_PRECONDITION")
        ],
        "{logs:#?}"
    );
    let access: Vec<&str> = logs
        .iter()
        .filter(|l| l["target"] == "dds_gateway::access")
        .map(|l| l["grpc_code"].as_str().unwrap())
        .collect();
    assert_eq!(access, ["INVALID_ARGUMENT", "FAILED_PRECONDITION"]);
}

/// A fatal start-up error is a log line like every other: JSON when standard error is no
/// terminal (as here), text when `telemetry.log_format = "text"` says so, for `serve` and for
/// the client commands alike, with the exit code in it.
#[tokio::test(flavor = "multi_thread")]
async fn fatal_errors_are_log_lines_in_the_configured_format() {
    // Before the configuration is read: the default format (JSON off a terminal).
    let (code, _, stderr) = common::run_cli(
        &["serve", "--sandbox"],
        &[("DDS_GATEWAY_ALIBABA_SIGNATURE_VERSION", "v9")],
    )
    .await;
    assert_eq!(code, Some(78), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let fatal = lines.last().unwrap();
    assert_eq!(fatal["level"], "ERROR", "{stderr}");
    assert_eq!(fatal["exit_code"], 78, "{stderr}");
    assert!(
        fatal["message"]
            .as_str()
            .unwrap()
            .contains("alibaba.signature_version"),
        "{stderr}"
    );

    // After it: the configured format, the same as the lines before it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, stderr) = common::run_cli(
        &["serve", "--sandbox", "--listen", &addr],
        &[("DDS_GATEWAY_TELEMETRY_LOG_FORMAT", "text")],
    )
    .await;
    assert_eq!(code, Some(69), "{stderr}");
    assert!(stderr.lines().all(|l| !l.starts_with('{')), "{stderr}");
    let fatal = stderr.lines().last().unwrap();
    assert!(
        fatal.contains("ERROR")
            && fatal.contains("server.listen")
            && fatal.contains("exit_code=69"),
        "{stderr}"
    );

    // A client command logs its failure the same way.
    drop(taken);
    let target = format!("http://{addr}");
    let (code, _, stderr) = common::run_cli(
        &["status", "--target", &target, "--instance", "dds-sandbox01"],
        &[],
    )
    .await;
    assert_eq!(code, Some(69), "{stderr}");
    let fatal: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    assert_eq!(fatal["level"], "ERROR", "{stderr}");
    assert!(
        fatal["message"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{stderr}"
    );
}

/// A value that is absent is left out of the line, never written as `"None"`: a credential that
/// does not expire has no `expiration`.
#[tokio::test(flavor = "multi_thread")]
async fn absent_values_are_left_out_not_written_as_none() {
    let server = common::ServingBinary::start(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "testid"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "testsecret"),
        ],
    )
    .await;
    let resolved: serde_json::Value = server
        .startup_log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "credentials resolved")
        .unwrap_or_else(|| panic!("{}", server.startup_log));
    assert_eq!(resolved["provider"], "environment", "{resolved}");
    assert!(resolved.get("expiration").is_none(), "{resolved}");
    assert!(
        !server.startup_log.contains("None"),
        "{}",
        server.startup_log
    );
}
