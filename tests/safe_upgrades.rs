//! Safe upgrades end to end, against the sandbox over loopback: idempotency by `request_id`
//! (sequential and concurrent duplicates, reuse for another request), preflight answers, and the
//! fault cases (throttling with `x-acs-retry-after`, dropped connections, 5xx, malformed bodies,
//! timeouts after sending), each checked for the caller's code and for how many upgrades the
//! upstream started: never more than one per intended upgrade.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::{Gateway, Options, request};
use dds_gateway::pb;
use dds_gateway::testing::alibaba::action::{
    DESCRIBE_AVAILABLE_ENGINE_VERSION as AVAILABLE, DESCRIBE_DB_INSTANCE_ATTRIBUTE as DESCRIBE,
    UPGRADE_DB_INSTANCE_ENGINE_VERSION as UPGRADE,
};
use dds_gateway::testing::api::service::{RECONCILED_HEADER, REPLAYED_HEADER};
use dds_gateway::testing::sandbox::Fault;
use tonic::Code;
use tonic_types::StatusExt;

const INSTANCE: &str = "dds-sandbox01"; // Running, 4.2

fn keyed(instance: &str, version: &str, key: &str) -> pb::UpgradeEngineVersionRequest {
    pb::UpgradeEngineVersionRequest {
        request_id: key.to_string(),
        ..request(instance, version)
    }
}

fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The answer with its response metadata.
async fn call(
    gw: &Gateway,
    req: pb::UpgradeEngineVersionRequest,
) -> Result<tonic::Response<pb::UpgradeEngineVersionResponse>, tonic::Status> {
    gw.client.clone().upgrade_engine_version(req).await
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .expect("every error carries ErrorInfo")
        .reason
}

fn metadata(status: &tonic::Status, key: &str) -> String {
    status
        .get_details_error_info()
        .unwrap()
        .metadata
        .get(key)
        .cloned()
        .unwrap_or_default()
}

fn throttled(ms: u64) -> Fault {
    Fault::Error {
        status: 400,
        code: "Throttling.User",
        retry_after_ms: Some(ms),
    }
}

// ---- idempotency ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_request_id_replays_the_first_answer_without_calling_again() {
    let gw = Gateway::start().await;
    let key = new_key();
    let first = call(&gw, keyed(INSTANCE, "4.4", &key)).await.unwrap();
    assert!(first.metadata().get(REPLAYED_HEADER).is_none());
    let calls_after_first = gw.sandbox.received().len();

    let again = call(&gw, keyed(INSTANCE, "4.4", &key)).await.unwrap();
    assert_eq!(again.metadata().get(REPLAYED_HEADER).unwrap(), "true");
    assert_eq!(
        again.get_ref(),
        first.get_ref(),
        "the first answer, exactly"
    );
    assert_eq!(
        gw.sandbox.received().len(),
        calls_after_first,
        "nothing upstream"
    );
    assert_eq!(gw.sandbox.upgrades_started(INSTANCE), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_duplicates_wait_for_the_first_and_upgrade_once() {
    let gw = Gateway::start().await;
    // The upgrade call hangs a while, so every duplicate arrives while the first is in flight.
    gw.sandbox
        .push_fault_on(UPGRADE, Fault::Delay(Duration::from_millis(400)));
    let key = new_key();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut client = gw.client.clone();
            let req = keyed(INSTANCE, "5.0", &key);
            tokio::spawn(async move { client.upgrade_engine_version(req).await })
        })
        .collect();
    let mut request_ids = std::collections::HashSet::new();
    let mut replays = 0;
    for answer in calls {
        let answer = answer.await.unwrap().unwrap();
        replays += usize::from(answer.metadata().get(REPLAYED_HEADER).is_some());
        request_ids.insert(answer.into_inner().alibaba_request_id);
    }
    assert_eq!(request_ids.len(), 1, "one answer for all: {request_ids:?}");
    assert!(!request_ids.iter().next().unwrap().is_empty());
    assert_eq!(replays, 7);
    assert_eq!(gw.sandbox.calls(UPGRADE), 1);
    assert_eq!(gw.sandbox.upgrades_started(INSTANCE), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_id_reused_for_another_request_is_refused() {
    let gw = Gateway::start().await;
    let key = new_key();
    call(&gw, keyed(INSTANCE, "4.4", &key)).await.unwrap();
    for other in [
        keyed(INSTANCE, "5.0", &key),
        keyed("dds-sandbox02", "5.0", &key),
        pb::UpgradeEngineVersionRequest {
            switch_mode: pb::SwitchMode::MaintenanceWindow as i32,
            ..keyed(INSTANCE, "4.4", &key)
        },
    ] {
        let status = call(&gw, other).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(reason(&status), "REQUEST_ID_REUSED");
        let bad = status.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations[0].field, "request_id");
    }
    assert_eq!(gw.sandbox.calls(UPGRADE), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_that_upgraded_nothing_is_not_the_keys_answer() {
    let gw = Gateway::start_with(Options {
        configure: Some(|config| config.alibaba.retry.max_attempts = 1),
        ..Default::default()
    })
    .await;
    gw.sandbox.push_fault_on(UPGRADE, throttled(10));
    let key = new_key();
    let status = call(&gw, keyed(INSTANCE, "4.4", &key)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    // The retry with the same key does the upgrade.
    let answer = call(&gw, keyed(INSTANCE, "4.4", &key)).await.unwrap();
    assert!(answer.metadata().get(REPLAYED_HEADER).is_none());
    assert!(!answer.get_ref().alibaba_request_id.is_empty());
    assert_eq!(gw.sandbox.upgrades_started(INSTANCE), 1);
}

// ---- preflight --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn preflight_refuses_with_the_state_and_version_it_saw() {
    let gw = Gateway::start().await;
    let cases = [
        (
            "dds-sandboxbusy",
            "5.0",
            "INSTANCE_STATE_INCORRECT",
            "Rebooting",
            "4.4",
        ),
        (
            "dds-sandbox03",
            "4.4",
            "ENGINE_VERSION_NOT_LATER",
            "Running",
            "5.0",
        ),
        (
            "dds-sandbox03",
            "5.0",
            "ENGINE_VERSION_NOT_LATER",
            "Running",
            "5.0",
        ),
    ];
    for (instance, target, expected, state, version) in cases {
        for validate_only in [false, true] {
            let req = pb::UpgradeEngineVersionRequest {
                validate_only,
                ..request(instance, target)
            };
            let status = call(&gw, req).await.unwrap_err();
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert_eq!(reason(&status), expected);
            assert!(
                status.message().contains(state) && status.message().contains(version),
                "{}",
                status.message()
            );
            assert_eq!(metadata(&status, "instanceStatus"), state);
            assert_eq!(metadata(&status, "engineVersion"), version);
            assert!(!metadata(&status, "alibabaRequestId").is_empty());
            let failure = status.get_details_precondition_failure().unwrap();
            assert_eq!(
                failure.violations[0].subject,
                format!("dbinstance/{instance}")
            );
        }
    }
    assert_eq!(
        gw.sandbox.calls(UPGRADE),
        0,
        "never sent after a failed preflight"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn preflight_refuses_a_target_alibaba_does_not_offer() {
    let gw = Gateway::start().await;
    gw.sandbox.push_fault_on(
        AVAILABLE,
        Fault::Body {
            status: 200,
            body: r#"{"RequestId":"R-AV","EngineVersions":{"EngineVersion":["4.4"]}}"#,
        },
    );
    let status = call(&gw, request(INSTANCE, "5.0")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "ENGINE_VERSION_NOT_OFFERED");
    assert_eq!(metadata(&status, "availableEngineVersions"), "4.4");
    assert!(
        status.message().contains("offered: 4.4"),
        "{}",
        status.message()
    );
    assert_eq!(gw.sandbox.calls(UPGRADE), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_only_answers_the_preflight_and_upgrades_nothing() {
    let gw = Gateway::start().await;
    let req = pb::UpgradeEngineVersionRequest {
        validate_only: true,
        ..request(INSTANCE, "4.4")
    };
    let answer = call(&gw, req).await.unwrap().into_inner();
    assert!(answer.validate_only);
    assert_eq!(answer.previous_engine_version, "4.2");
    assert_eq!(answer.alibaba_request_id, "");
    assert_eq!(gw.sandbox.calls(DESCRIBE), 1);
    assert_eq!(gw.sandbox.calls(AVAILABLE), 1);
    assert_eq!(gw.sandbox.calls(UPGRADE), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn preflight_can_be_switched_off() {
    let gw = Gateway::start_with(Options {
        configure: Some(|config| config.alibaba.preflight = false),
        ..Default::default()
    })
    .await;
    let answer = call(&gw, request(INSTANCE, "4.4"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.previous_engine_version, "", "not looked up");
    let actions: Vec<String> = gw
        .sandbox
        .received()
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert_eq!(actions, [UPGRADE]);
}

// ---- retries and unknown outcomes -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn throttled_upgrades_are_retried_after_alibabas_delay_each_freshly_signed() {
    let gw = Gateway::start().await;
    gw.sandbox.push_fault_on(UPGRADE, throttled(30));
    gw.sandbox.push_fault_on(UPGRADE, throttled(30));
    let answer = call(&gw, request(INSTANCE, "4.4"))
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.alibaba_request_id.is_empty());
    let upgrades: Vec<_> = gw
        .sandbox
        .received()
        .into_iter()
        .filter(|r| r.action == UPGRADE)
        .collect();
    assert_eq!(upgrades.len(), 3);
    let nonces: std::collections::HashSet<_> = upgrades
        .iter()
        .map(|r| r.params["SignatureNonce"].clone())
        .collect();
    assert_eq!(nonces.len(), 3, "a new nonce for every attempt");
    assert_eq!(gw.sandbox.upgrades_started(INSTANCE), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_delay_beyond_the_callers_deadline_is_not_waited_for() {
    let gw = Gateway::start().await;
    gw.sandbox.push_fault_on(UPGRADE, throttled(120_000));
    let mut req = tonic::Request::new(request(INSTANCE, "4.4"));
    req.set_timeout(Duration::from_secs(20));
    let status = gw
        .client
        .clone()
        .upgrade_engine_version(req)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.get_details_retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(120))
    );
    assert_eq!(gw.sandbox.calls(UPGRADE), 1);
}

/// Every way an upgrade call can end without a definite answer, with Alibaba having acted on it
/// or not. Acted: the gateway sees the upgrade and answers success with an unknown RequestId.
/// Not acted: UNAVAILABLE with what it saw. Either way exactly one upgrade call.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_outcomes_are_reconciled_by_looking_never_by_sending_again() {
    let unknown = || {
        vec![
            Fault::Drop,
            Fault::Error {
                status: 503,
                code: "ServiceUnavailable",
                retry_after_ms: None,
            },
            Fault::Error {
                status: 500,
                code: "InternalError",
                retry_after_ms: None,
            },
            // Throttling in a 5xx answer: a server error first, so not "surely not applied".
            Fault::Error {
                status: 503,
                code: "Throttling",
                retry_after_ms: Some(10),
            },
            Fault::Body {
                status: 502,
                body: "<html>bad gateway</html>",
            },
            Fault::Body {
                status: 200,
                body: "{\"RequestId\": ",
            },
            // Longer than the gateway's read timeout (set below): a timeout after sending.
            Fault::Delay(Duration::from_secs(3)),
        ]
    };
    let configure: fn(&mut dds_gateway::testing::config::Config) = |config| {
        config.alibaba.read_timeout = Duration::from_millis(300);
        // The retry below comes after the settle window (see the settle window's own tests).
        config.idempotency.settle_window = Duration::ZERO;
    };
    for (i, fault) in unknown().into_iter().enumerate() {
        for acted in [false, true] {
            let gw = Gateway::start_with(Options {
                configure: Some(configure),
                ..Default::default()
            })
            .await;
            let injected = if acted {
                Fault::AfterActing(Box::new(fault.clone()))
            } else {
                fault.clone()
            };
            gw.sandbox.push_fault_on(UPGRADE, injected);
            let key = new_key();
            let result = call(&gw, keyed(INSTANCE, "4.4", &key)).await;
            let case = format!("case {i} {fault:?}, acted {acted}");
            assert_eq!(gw.sandbox.calls(UPGRADE), 1, "{case}");
            if acted {
                let answer = result.unwrap_or_else(|s| panic!("{case}: {s:?}"));
                assert_eq!(
                    answer.metadata().get(RECONCILED_HEADER).unwrap(),
                    "reconciled",
                    "{case}"
                );
                let answer = answer.into_inner();
                assert_eq!(answer.alibaba_request_id, "", "{case}: unknown");
                assert_eq!(answer.previous_engine_version, "4.2", "{case}");
                assert_eq!(gw.sandbox.upgrades_started(INSTANCE), 1, "{case}");
            } else {
                let status = result.unwrap_err();
                assert_eq!(status.code(), Code::Unavailable, "{case}: {status:?}");
                assert_eq!(reason(&status), "UPSTREAM_OUTCOME_UNKNOWN", "{case}");
                assert_eq!(metadata(&status, "instanceStatus"), "Running", "{case}");
                assert_eq!(metadata(&status, "engineVersion"), "4.2", "{case}");
                assert!(status.message().contains("same request_id"), "{case}");
                assert!(status.get_details_retry_info().is_some(), "{case}");
                assert_eq!(gw.sandbox.upgrades_started(INSTANCE), 0, "{case}");
                // The caller retries with the same key, as told: now it goes through, once.
                let answer = call(&gw, keyed(INSTANCE, "4.4", &key)).await.unwrap();
                assert!(!answer.get_ref().alibaba_request_id.is_empty(), "{case}");
                assert_eq!(gw.sandbox.upgrades_started(INSTANCE), 1, "{case}");
            }
        }
    }
}

/// The upgrade landed but neither its answer nor the gateway's look came back. The caller's
/// retry with the same key looks first, sees the upgrade, and does not send a second one.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_an_unresolved_outcome_looks_before_sending() {
    let gw = Gateway::start_with(Options {
        configure: Some(|config| config.alibaba.retry.max_attempts = 1),
        ..Default::default()
    })
    .await;
    gw.sandbox
        .push_fault_on(UPGRADE, Fault::AfterActing(Box::new(Fault::Drop)));
    // The preflight's describe passes; the reconcile's describe fails.
    gw.sandbox
        .push_fault_on(DESCRIBE, Fault::Delay(Duration::ZERO));
    gw.sandbox.push_fault_on(
        DESCRIBE,
        Fault::Error {
            status: 503,
            code: "ServiceUnavailable",
            retry_after_ms: None,
        },
    );
    let key = new_key();
    let status = call(&gw, keyed(INSTANCE, "4.4", &key)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(reason(&status), "UPSTREAM_OUTCOME_UNKNOWN");
    assert!(
        status.message().contains("could not look"),
        "{}",
        status.message()
    );

    let answer = call(&gw, keyed(INSTANCE, "4.4", &key)).await.unwrap();
    assert_eq!(
        answer.metadata().get(RECONCILED_HEADER).unwrap(),
        "reconciled"
    );
    assert_eq!(gw.sandbox.calls(UPGRADE), 1, "never a second upgrade call");
    assert_eq!(gw.sandbox.upgrades_started(INSTANCE), 1);
    // And from now on that is the key's answer.
    let replay = call(&gw, keyed(INSTANCE, "4.4", &key)).await.unwrap();
    assert_eq!(replay.metadata().get(REPLAYED_HEADER).unwrap(), "true");
}

/// Alibaba accepted the upgrade, the answer was lost, and its status still shows the instance
/// `Running` on the old version. Retries with the same key within the settle window only look:
/// UNAVAILABLE until the instance shows the upgrade, then success, and never a second send.
#[tokio::test(flavor = "multi_thread")]
async fn within_the_settle_window_a_retry_only_looks_while_the_status_lags() {
    let gw = Gateway::start().await;
    gw.sandbox.lag_status(Duration::from_secs(3600));
    gw.sandbox
        .push_fault_on(UPGRADE, Fault::AfterActing(Box::new(Fault::Drop)));
    let key = new_key();
    let status = call(&gw, keyed(INSTANCE, "4.4", &key)).await.unwrap_err();
    assert_eq!(reason(&status), "UPSTREAM_OUTCOME_UNKNOWN", "{status:?}");
    assert_eq!(gw.sandbox.upgrades_started(INSTANCE), 1);
    for attempt in 0..5 {
        let status = call(&gw, keyed(INSTANCE, "4.4", &key)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{attempt}: {status:?}");
        assert_eq!(reason(&status), "UPSTREAM_OUTCOME_UNKNOWN", "{attempt}");
        assert_eq!(metadata(&status, "instanceStatus"), "Running", "{attempt}");
        assert_eq!(metadata(&status, "engineVersion"), "4.2", "{attempt}");
        assert!(status.message().contains("settle_window"), "{status:?}");
        assert!(status.get_details_retry_info().is_some(), "{attempt}");
        assert_eq!(
            gw.sandbox.calls(UPGRADE),
            1,
            "{attempt}: nothing sent again"
        );
    }
    // Alibaba's view catches up: the retry sees the upgrade and answers success.
    gw.sandbox.lag_status(Duration::ZERO);
    let answer = call(&gw, keyed(INSTANCE, "4.4", &key)).await.unwrap();
    assert_eq!(
        answer.metadata().get(RECONCILED_HEADER).unwrap(),
        "reconciled"
    );
    assert_eq!(gw.sandbox.calls(UPGRADE), 1);
    assert_eq!(gw.sandbox.upgrades_started(INSTANCE), 1);
    let replay = call(&gw, keyed(INSTANCE, "4.4", &key)).await.unwrap();
    assert_eq!(replay.metadata().get(REPLAYED_HEADER).unwrap(), "true");
}

/// The settle window ends: a key whose send surely did not land (the instance never showed it)
/// may send again, once, after looking.
#[tokio::test(flavor = "multi_thread")]
async fn after_the_settle_window_the_same_key_may_send_again() {
    let gw = Gateway::start_with(Options {
        configure: Some(|config| config.idempotency.settle_window = Duration::from_millis(300)),
        ..Default::default()
    })
    .await;
    gw.sandbox.push_fault_on(UPGRADE, Fault::Drop);
    let key = new_key();
    let started = tokio::time::Instant::now();
    let status = call(&gw, keyed(INSTANCE, "4.4", &key)).await.unwrap_err();
    assert_eq!(reason(&status), "UPSTREAM_OUTCOME_UNKNOWN", "{status:?}");
    if started.elapsed() < Duration::from_millis(250) {
        let status = call(&gw, keyed(INSTANCE, "4.4", &key)).await.unwrap_err();
        assert!(status.message().contains("settle_window"), "{status:?}");
    }
    assert_eq!(gw.sandbox.calls(UPGRADE), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = call(&gw, keyed(INSTANCE, "4.4", &key)).await.unwrap();
    assert!(!answer.get_ref().alibaba_request_id.is_empty());
    assert_eq!(gw.sandbox.calls(UPGRADE), 2);
    assert_eq!(gw.sandbox.upgrades_started(INSTANCE), 1);
}

/// Failures that did nothing hold no key, and a caller holds at most its share of keys.
#[tokio::test(flavor = "multi_thread")]
async fn failed_requests_hold_no_key_and_a_caller_is_refused_beyond_its_share() {
    let gw = Gateway::start_with(Options {
        configure: Some(|config| config.idempotency.max_keys_per_caller = 2),
        ..Default::default()
    })
    .await;
    // Refused by preflight (the instance is not Running): nothing happened, nothing kept.
    for _ in 0..5 {
        let status = call(&gw, keyed("dds-sandboxbusy", "5.0", &new_key()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    }
    call(&gw, keyed("dds-sandbox01", "4.4", &new_key()))
        .await
        .unwrap();
    call(&gw, keyed("dds-sandbox02", "5.0", &new_key()))
        .await
        .unwrap();
    let status = call(&gw, keyed("dds-sandbox03", "6.0", &new_key()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "IDEMPOTENCY_STORE_FULL");
    assert_eq!(metadata(&status, "scope"), "caller");
    assert!(status.get_details_retry_info().is_some());
    assert_eq!(gw.sandbox.upgrades_started("dds-sandbox03"), 0);
}

/// Two upgrades of one instance at once, with different keys or none: one is sent, the other
/// refused with ABORTED at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_upgrade_of_an_instance_in_flight_is_aborted() {
    let gw = Gateway::start().await;
    gw.sandbox
        .push_fault_on(UPGRADE, Fault::Delay(Duration::from_secs(3600)));
    let first = tokio::spawn({
        let mut client = gw.client.clone();
        let req = keyed(INSTANCE, "4.4", &new_key());
        async move { client.upgrade_engine_version(req).await }
    });
    common::wait_until("the first upgrade is sent", || {
        gw.sandbox.calls(UPGRADE) == 1
    })
    .await;
    for other in [keyed(INSTANCE, "5.0", &new_key()), request(INSTANCE, "4.4")] {
        let status = call(&gw, other).await.unwrap_err();
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        assert_eq!(reason(&status), "UPGRADE_IN_PROGRESS");
        assert!(status.get_details_retry_info().is_some());
    }
    // Another instance is not held up.
    call(&gw, keyed("dds-sandbox02", "5.0", &new_key()))
        .await
        .unwrap();
    assert_eq!(gw.sandbox.calls(UPGRADE), 2);
    first.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_are_retried_through_transient_faults() {
    let gw = Gateway::start().await;
    gw.sandbox.push_fault_on(DESCRIBE, Fault::Drop);
    gw.sandbox.push_fault_on(
        AVAILABLE,
        Fault::Error {
            status: 503,
            code: "ServiceUnavailable",
            retry_after_ms: None,
        },
    );
    let answer = call(&gw, request(INSTANCE, "4.4"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.previous_engine_version, "4.2");
    assert_eq!(gw.sandbox.calls(DESCRIBE), 2);
    assert_eq!(gw.sandbox.calls(AVAILABLE), 2);
    assert_eq!(gw.sandbox.upgrades_started(INSTANCE), 1);
}

/// An upgrade for the maintenance window leaves the instance `Running` on its old version until
/// the window, accepted or not, so after an unknown outcome no look can tell, and a retry with the
/// same key must not send a second upgrade. (The sandbox starts at once whatever the switch mode;
/// here it never acted, which the gateway cannot tell from a scheduled upgrade either.)
#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_upgrade_with_an_unknown_outcome_is_never_sent_again_on_a_guess() {
    let gw = Gateway::start().await;
    gw.sandbox.push_fault_on(UPGRADE, Fault::Drop);
    let key = new_key();
    let scheduled = || pb::UpgradeEngineVersionRequest {
        switch_mode: pb::SwitchMode::MaintenanceWindow as i32,
        ..keyed(INSTANCE, "4.4", &key)
    };
    for attempt in 0..2 {
        let status = call(&gw, scheduled()).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{attempt}: {status:?}"
        );
        assert_eq!(reason(&status), "UPGRADE_OUTCOME_UNRESOLVED", "{attempt}");
        assert_eq!(metadata(&status, "instanceStatus"), "Running");
        assert_eq!(metadata(&status, "engineVersion"), "4.2");
        assert!(
            status.message().contains("new request_id"),
            "{}",
            status.message()
        );
        assert_eq!(gw.sandbox.calls(UPGRADE), 1, "{attempt}: never sent again");
    }
    // A new key is a new decision of the caller's: it is sent.
    let answer = call(
        &gw,
        pb::UpgradeEngineVersionRequest {
            request_id: new_key(),
            ..scheduled()
        },
    )
    .await
    .unwrap();
    assert!(!answer.get_ref().alibaba_request_id.is_empty());
    assert_eq!(gw.sandbox.upgrades_started(INSTANCE), 1);
}

/// A call whose deadline has passed by the time the upgrade would be sent (here: already on
/// arrival, with nothing to look up first) sends nothing. The service is driven directly so the
/// deadline is exact; a second call with the key waits for the first's task, and then does the
/// upgrade itself: the first left nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn no_upgrade_is_sent_after_the_callers_deadline() {
    use dds_gateway::pb::engine_version_service_server::EngineVersionService as _;
    use dds_gateway::testing::deadline::Deadline;

    let sandbox = dds_gateway::testing::sandbox::Sandbox::start(Default::default())
        .await
        .unwrap();
    let mut config = common::default_config();
    config.alibaba.endpoint = Some(sandbox.endpoint());
    config.alibaba.preflight = false;
    let client = dds_gateway::testing::alibaba::AlibabaClient::new(
        &config.alibaba,
        common::credentials_of(&sandbox),
    )
    .unwrap();
    let service = dds_gateway::testing::api::service::EngineVersionService::from_config(
        &config,
        std::sync::Arc::new(client),
        None,
    );
    let key = new_key();
    let mut late = tonic::Request::new(keyed(INSTANCE, "4.4", &key));
    late.extensions_mut()
        .insert(Deadline(tokio::time::Instant::now()));
    let status = service.upgrade_engine_version(late).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    let answer = service
        .upgrade_engine_version(tonic::Request::new(keyed(INSTANCE, "4.4", &key)))
        .await
        .unwrap();
    assert!(
        answer.metadata().get(REPLAYED_HEADER).is_none(),
        "the late call sent nothing, so there is nothing to replay"
    );
    assert_eq!(sandbox.calls(UPGRADE), 1);
    assert_eq!(sandbox.upgrades_started(INSTANCE), 1);
}

/// The caller's deadline passes while the upgrade call is in flight: the caller hears
/// DEADLINE_EXCEEDED, the upgrade's task finishes on its own and records the accepted answer
/// under the key, so the caller's retry gets that answer and nothing is sent again.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_answered_after_the_deadline_is_the_keys_answer() {
    let gw = Gateway::start().await;
    gw.sandbox
        .push_fault_on(UPGRADE, Fault::Delay(Duration::from_millis(800)));
    let key = new_key();
    let mut req = tonic::Request::new(keyed(INSTANCE, "4.4", &key));
    req.set_timeout(Duration::from_millis(300));
    let status = gw
        .client
        .clone()
        .upgrade_engine_version(req)
        .await
        .unwrap_err();
    // The gateway answers DEADLINE_EXCEEDED; a tonic client may report its own CANCELLED first.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // The retry waits for the task still holding the key, then gets its answer.
    let answer = call(&gw, keyed(INSTANCE, "4.4", &key)).await.unwrap();
    assert_eq!(answer.metadata().get(REPLAYED_HEADER).unwrap(), "true");
    assert!(!answer.get_ref().alibaba_request_id.is_empty());
    assert_eq!(gw.sandbox.calls(UPGRADE), 1);
    assert_eq!(gw.sandbox.upgrades_started(INSTANCE), 1);
}

/// Two callers split `idempotency.max_keys` between them: the noisy one is refused at its share
/// while the store still has room, and the quiet one still gets its keys.
#[tokio::test(flavor = "multi_thread")]
async fn a_noisy_caller_is_refused_at_its_share_while_others_are_served() {
    use sha2::Digest as _;
    let digest = |token: &str| -> String {
        sha2::Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let sandbox = dds_gateway::testing::sandbox::Sandbox::start(Default::default())
        .await
        .unwrap();
    let caller = |name: &str| {
        format!(
            "[[callers]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nregions = [\"cn-hangzhou\"]\ninstances = [\"dds-sandbox0*\"]\n",
            digest(&format!("{name}-token-0123456789"))
        )
    };
    let toml = format!(
        "[idempotency]\nmax_keys = 4\n[alibaba]\nendpoint = \"{}\"\n{}{}",
        sandbox.endpoint(),
        caller("noisy"),
        caller("quiet")
    );
    let config = dds_gateway::testing::config::Config::from_toml(
        &toml,
        "test",
        |_| None,
        &dds_gateway::testing::config::Overrides::default(),
    )
    .unwrap();
    assert_eq!(config.idempotency.max_keys_per_caller, 2, "a fair share");
    let credentials = common::credentials_of(&sandbox);
    let gw = Gateway::serve(config, credentials, sandbox).await;
    let as_caller = |name: &str, instance: &str, version: &str| {
        let mut request = tonic::Request::new(keyed(instance, version, &new_key()));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {name}-token-0123456789").parse().unwrap(),
        );
        let mut client = gw.client.clone();
        async move { client.upgrade_engine_version(request).await }
    };
    as_caller("noisy", "dds-sandbox01", "4.4").await.unwrap();
    as_caller("noisy", "dds-sandbox02", "5.0").await.unwrap();
    let status = as_caller("noisy", "dds-sandbox03", "6.0")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "IDEMPOTENCY_STORE_FULL");
    assert_eq!(metadata(&status, "scope"), "caller");
    assert_eq!(gw.sandbox.upgrades_started("dds-sandbox03"), 0);
    as_caller("quiet", "dds-sandbox03", "6.0").await.unwrap();
    assert_eq!(gw.sandbox.upgrades_started("dds-sandbox03"), 1);
}
