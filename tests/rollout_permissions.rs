//! Who may do what with fleet rollouts: planning, starting and controlling need the caller's
//! `rollouts = true`; reading a rollout (and its actions in the recent-activity list) needs read
//! permission for every one of its instances.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::Gateway;
use common::callers::with_token;
use dds_gateway::pb;
use dds_gateway::pb::rollout_service_client::RolloutServiceClient;
use dds_gateway::testing::api::auth::hash_token;
use dds_gateway::testing::sandbox::{FleetSpec, SandboxConfig};
use tonic::Code;
use tonic::transport::Channel;

const FLEET: &str = "fleet-token-0123456789";
const READER: &str = "reader-token-0123456789";
const OUTSIDER: &str = "outsider-token-0123456789";

async fn gateway() -> Gateway {
    let sandbox = SandboxConfig {
        fleet: FleetSpec {
            count: 3,
            engine_versions: vec!["4.4".to_string()],
            upgrade_time: Duration::from_millis(200),
            ..FleetSpec::default()
        },
        ..SandboxConfig::default()
    };
    let callers = format!(
        r#"
[[callers]]
name = "fleet"
token_sha256 = "{}"
regions = ["cn-hangzhou"]
instances = ["dds-fleet*"]
rollouts = true

[[callers]]
name = "reader"
token_sha256 = "{}"
regions = ["cn-hangzhou"]
instances = ["dds-fleet*"]

[[callers]]
name = "outsider"
token_sha256 = "{}"
regions = ["cn-hangzhou"]
instances = ["dds-elsewhere*"]
rollouts = true
"#,
        hash_token(FLEET),
        hash_token(READER),
        hash_token(OUTSIDER)
    );
    Gateway::from_toml(sandbox, &callers).await
}

fn rollouts(gw: &Gateway) -> RolloutServiceClient<Channel> {
    RolloutServiceClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", gw.addr))
            .unwrap()
            .connect_lazy(),
    )
}

fn selector() -> pb::Selector {
    pb::Selector {
        instance_patterns: vec!["dds-fleet*".to_string()],
        ..Default::default()
    }
}

fn plan() -> pb::PlanRolloutRequest {
    pb::PlanRolloutRequest {
        selector: Some(selector()),
        target_engine_version: "5.0".to_string(),
    }
}

fn start() -> pb::StartRolloutRequest {
    pb::StartRolloutRequest {
        selector: Some(selector()),
        target_engine_version: "5.0".to_string(),
        approval_required: true,
        waves: vec![
            pb::WaveSpec {
                size_or_percent: Some(pb::wave_spec::SizeOrPercent::Size(1)),
            },
            pb::WaveSpec {
                size_or_percent: Some(pb::wave_spec::SizeOrPercent::Size(2)),
            },
        ],
        ..Default::default()
    }
}

fn control(id: &str) -> pb::RolloutControlRequest {
    pb::RolloutControlRequest {
        rollout_id: id.to_string(),
        comment: "test".to_string(),
    }
}

fn denied(status: &tonic::Status, rule: &str) {
    let metadata = common::assert_error(status, Code::PermissionDenied, "CALLER_NOT_PERMITTED");
    assert_eq!(metadata["rule"], rule, "{status:?}");
}

#[tokio::test]
async fn planning_starting_and_controlling_need_the_rollouts_permission() {
    let gw = gateway().await;
    let mut c = rollouts(&gw);

    // Without `rollouts = true`: refused before anything is listed or sent.
    let err = c
        .plan_rollout(with_token(plan(), READER))
        .await
        .unwrap_err();
    denied(&err, "rollouts");
    let err = c
        .start_rollout(with_token(start(), READER))
        .await
        .unwrap_err();
    denied(&err, "rollouts");
    assert!(gw.sandbox.received().is_empty(), "nothing reached Alibaba");

    // With it: served.
    let planned = c
        .plan_rollout(with_token(plan(), FLEET))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(planned.eligible.len(), 3, "{planned:#?}");
    let started = c
        .start_rollout(with_token(start(), FLEET))
        .await
        .unwrap()
        .into_inner();
    let id = started.rollout_id.clone();

    // The reader may read it (every instance is its to read), not control it.
    let read = c
        .get_rollout(with_token(
            pb::GetRolloutRequest {
                rollout_id: id.clone(),
            },
            READER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.rollout_id, id);
    let err = c
        .pause_rollout(with_token(control(&id), READER))
        .await
        .unwrap_err();
    denied(&err, "rollouts");
    let err = c
        .approve_rollout(with_token(control(&id), READER))
        .await
        .unwrap_err();
    denied(&err, "rollouts");

    // A caller whose instances are elsewhere may neither read nor control it, even with
    // `rollouts = true`, and does not see it listed.
    let get = pb::GetRolloutRequest {
        rollout_id: id.clone(),
    };
    let err = c.get_rollout(with_token(get, OUTSIDER)).await.unwrap_err();
    denied(&err, "instances");
    let err = c
        .pause_rollout(with_token(control(&id), OUTSIDER))
        .await
        .unwrap_err();
    denied(&err, "instances");
    let listed = c
        .list_rollouts(with_token(pb::ListRolloutsRequest::default(), OUTSIDER))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.rollouts.is_empty(), "{listed:#?}");

    // The fleet caller controls it.
    let paused = c
        .pause_rollout(with_token(control(&id), FLEET))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paused.rollout_id, id);
}

#[tokio::test]
async fn a_rollouts_activity_shows_only_to_callers_who_may_read_it() {
    let gw = gateway().await;
    let mut c = rollouts(&gw);
    let id = c
        .start_rollout(with_token(start(), FLEET))
        .await
        .unwrap()
        .into_inner()
        .rollout_id;
    let activity = |token: &'static str| {
        let mut client = gw.client.clone();
        async move {
            client
                .list_activity(with_token(pb::ListActivityRequest::default(), token))
                .await
                .unwrap()
                .into_inner()
                .activities
        }
    };
    let rollout_entries = |entries: &[pb::Activity]| {
        entries
            .iter()
            .filter(|e| e.rollout_id == id && e.db_instance_id.is_empty())
            .map(|e| e.action.clone())
            .collect::<Vec<_>>()
    };
    let seen = rollout_entries(&activity(FLEET).await);
    assert!(seen.contains(&"rollout.start".to_string()), "{seen:?}");
    let seen = rollout_entries(&activity(READER).await);
    assert!(seen.contains(&"rollout.start".to_string()), "{seen:?}");
    let seen = activity(OUTSIDER).await;
    assert!(
        seen.iter().all(|e| e.rollout_id != id),
        "the outsider sees a rollout it may not read: {seen:?}"
    );
}
