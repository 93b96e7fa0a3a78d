//! The fleet inventory end to end: the sandbox's generated fleet and its `DescribeDBInstances`
//! (filters, pages, refusals as Alibaba's), and `ListInstances` reading every page of both
//! instance types, filtering, and showing a caller only what its policy lets it read.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::Gateway;
use common::callers::with_token;
use dds_gateway::pb;
use dds_gateway::testing::alibaba::credentials::StaticProvider;
use dds_gateway::testing::alibaba::{AlibabaClient, CallError, action};
use dds_gateway::testing::api::auth::hash_token;
use dds_gateway::testing::sandbox::{
    Failure, FailureRule, FleetSpec, Instance, Sandbox, SandboxConfig,
};

const DESCRIBE: &str = action::DESCRIBE_DB_INSTANCES;

fn fleet(count: usize) -> FleetSpec {
    FleetSpec {
        count,
        seed: 42,
        regions: vec!["cn-hangzhou".into(), "cn-shenzhen".into()],
        engine_versions: vec!["4.2".into(), "4.4".into(), "5.0".into()],
        sharding_percent: 40,
        tags: vec![
            ("env".into(), vec!["prod".into(), "staging".into()]),
            ("team".into(), vec!["payments".into(), "search".into()]),
        ],
        resource_groups: vec!["rg-a".into(), "rg-b".into()],
        locked: vec!["dds-fleet01?".into()],
        upgrade_time: Duration::from_millis(300),
        failures: Vec::new(),
    }
}

fn sandbox_with(spec: FleetSpec) -> SandboxConfig {
    SandboxConfig {
        fleet: spec,
        ..SandboxConfig::default()
    }
}

async fn list(
    gw: &Gateway,
    request: pb::ListInstancesRequest,
) -> Result<Vec<pb::InstanceSummary>, tonic::Status> {
    gw.client
        .clone()
        .list_instances(request)
        .await
        .map(|r| r.into_inner().instances)
}

fn ids(list: &[pb::InstanceSummary]) -> BTreeSet<String> {
    list.iter().map(|i| i.db_instance_id.clone()).collect()
}

fn expected(sandbox: &Sandbox, keep: impl Fn(&Instance) -> bool) -> BTreeSet<String> {
    sandbox
        .instances()
        .into_iter()
        .filter(|i| keep(i))
        .map(|i| i.db_instance_id)
        .collect()
}

fn both_regions() -> Vec<String> {
    vec!["cn-hangzhou".into(), "cn-shenzhen".into()]
}

/// Pages a listing of `n` instances takes at 100 a page (at least one, to learn there are none).
fn pages(n: usize) -> usize {
    n.div_ceil(100).max(1)
}

#[tokio::test]
async fn a_listing_reads_every_page_of_both_types_in_every_region() {
    let gw = Gateway::start_with(common::Options {
        sandbox: sandbox_with(fleet(430)),
        ..Default::default()
    })
    .await;
    let listed = list(
        &gw,
        pb::ListInstancesRequest {
            region_ids: both_regions(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let everything = expected(&gw.sandbox, |_| true);
    assert_eq!(ids(&listed), everything, "every instance, once");
    assert_eq!(listed.len(), everything.len());
    assert!(listed.iter().any(|i| i.instance_type == "sharding"));
    assert!(listed.iter().any(|i| i.instance_type == "replicate"));

    // One call per page of each region and type, nothing more.
    let mut want = 0;
    for region in both_regions() {
        for kind in ["replicate", "sharding"] {
            let n = gw
                .sandbox
                .instances()
                .iter()
                .filter(|i| i.region_id == region && i.db_instance_type == kind)
                .count();
            want += pages(n);
        }
    }
    assert!(want > 4, "the fleet spans several pages somewhere");
    assert_eq!(gw.sandbox.calls(DESCRIBE), want);
    let sizes: BTreeSet<String> = gw
        .sandbox
        .received()
        .iter()
        .filter(|r| r.action == DESCRIBE)
        .map(|r| r.params["PageSize"].clone())
        .collect();
    assert_eq!(sizes, BTreeSet::from(["100".to_string()]));

    // What the summary carries is what the sandbox holds.
    let one = listed
        .iter()
        .find(|i| i.db_instance_id == "dds-fleet013")
        .unwrap();
    let held = gw.sandbox.instance("dds-fleet013").unwrap();
    assert_eq!(one.lock_mode, "ManualLock");
    assert_eq!(
        (
            one.region_id.as_str(),
            one.engine_version.as_str(),
            one.instance_type.as_str(),
            one.resource_group_id.as_str(),
            one.zone_id.as_str(),
            one.status.as_str()
        ),
        (
            held.region_id.as_str(),
            held.engine_version.as_str(),
            held.db_instance_type.as_str(),
            held.resource_group_id.as_str(),
            held.zone_id.as_str(),
            "Running"
        )
    );
    let tags: Vec<(String, String)> = one
        .tags
        .iter()
        .map(|t| (t.key.clone(), t.value.clone()))
        .collect();
    assert_eq!(tags, held.tags);
}

#[tokio::test]
async fn filters_by_tag_version_type_group_and_id() {
    let gw = Gateway::start_with(common::Options {
        sandbox: sandbox_with(fleet(120)),
        ..Default::default()
    })
    .await;
    let has = |i: &Instance, k: &str, v: &str| i.tags.iter().any(|(a, b)| a == k && b == v);
    let tag = |k: &str, v: &str| pb::Tag {
        key: k.into(),
        value: v.into(),
    };
    type Keep = Box<dyn Fn(&Instance) -> bool>;
    let cases: Vec<(pb::ListInstancesRequest, Keep)> = vec![
        (
            pb::ListInstancesRequest {
                tags: vec![tag("env", "prod"), tag("team", "search")],
                ..Default::default()
            },
            Box::new(move |i| has(i, "env", "prod") && has(i, "team", "search")),
        ),
        (
            pb::ListInstancesRequest {
                tags: vec![tag("team", "")],
                ..Default::default()
            },
            Box::new(|i| i.tags.iter().any(|(k, _)| k == "team")),
        ),
        (
            pb::ListInstancesRequest {
                engine_versions: vec!["4.2".into(), "5.0".into()],
                ..Default::default()
            },
            Box::new(|i| ["4.2", "5.0"].contains(&i.engine_version.as_str())),
        ),
        (
            pb::ListInstancesRequest {
                engine_versions: vec!["4.4".into()],
                instance_types: vec!["sharding".into()],
                ..Default::default()
            },
            Box::new(|i| i.engine_version == "4.4" && i.db_instance_type == "sharding"),
        ),
        (
            pb::ListInstancesRequest {
                resource_group_id: "rg-b".into(),
                ..Default::default()
            },
            Box::new(|i| i.resource_group_id == "rg-b"),
        ),
        (
            pb::ListInstancesRequest {
                instance_ids: vec!["dds-fleet003".into()],
                instance_patterns: vec!["dds-fleet1?0".into()],
                ..Default::default()
            },
            Box::new(|i| {
                ["dds-fleet003", "dds-fleet100", "dds-fleet110"]
                    .contains(&i.db_instance_id.as_str())
            }),
        ),
    ];
    for (request, keep) in cases {
        let request = pb::ListInstancesRequest {
            region_ids: both_regions(),
            ..request
        };
        let want = expected(&gw.sandbox, |i| keep(i));
        assert!(!want.is_empty(), "{request:?} selects something");
        let got = ids(&list(&gw, request.clone()).await.unwrap());
        assert_eq!(got, want, "{request:?}");
    }
    // Only replica sets asked for: sharded clusters are never asked about.
    let before = gw.sandbox.received().len();
    list(
        &gw,
        pb::ListInstancesRequest {
            region_ids: vec!["cn-hangzhou".into()],
            instance_types: vec!["replicate".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let asked: Vec<String> = gw.sandbox.received()[before..]
        .iter()
        .map(|r| r.params["DBInstanceType"].clone())
        .collect();
    assert_eq!(asked, ["replicate"]);
}

#[tokio::test]
async fn bad_filters_are_refused_before_any_call() {
    let gw = Gateway::start().await;
    let err = list(
        &gw,
        pb::ListInstancesRequest {
            engine_versions: vec!["9.9".into()],
            instance_types: vec!["serverless".into()],
            tags: (0..21)
                .map(|i| pb::Tag {
                    key: format!("k{i}"),
                    value: String::new(),
                })
                .collect(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(gw.sandbox.received().len(), 0);
}

#[tokio::test]
async fn a_caller_sees_only_what_its_policy_lets_it_read() {
    let toml = format!(
        r#"
[server]
[[callers]]
name = "payments"
token_sha256 = "{}"
regions = ["cn-hangzhou"]
instances = ["dds-fleet0*"]
engine_versions = ["4.4"]
"#,
        hash_token("payments-token-0123456789")
    );
    let gw = Gateway::from_toml(sandbox_with(fleet(150)), &toml).await;
    let token = "payments-token-0123456789";
    let listed = gw
        .client
        .clone()
        .list_instances(with_token(pb::ListInstancesRequest::default(), token))
        .await
        .unwrap()
        .into_inner()
        .instances;
    let want = expected(&gw.sandbox, |i| {
        i.region_id == "cn-hangzhou" && i.db_instance_id.starts_with("dds-fleet0")
    });
    assert!(!want.is_empty());
    assert_eq!(
        ids(&listed),
        want,
        "its region by default, its instances only"
    );
    // Instances of every version: the policy bounds targets, and a 4.2 instance is exactly
    // what a caller allowed to upgrade to 4.4 must see.
    assert!(listed.iter().any(|i| i.engine_version != "4.4"));
    let regions: BTreeSet<String> = gw
        .sandbox
        .received()
        .iter()
        .map(|r| r.params["RegionId"].clone())
        .collect();
    assert_eq!(regions, BTreeSet::from(["cn-hangzhou".to_string()]));

    let before = gw.sandbox.received().len();
    let err = gw
        .client
        .clone()
        .list_instances(with_token(
            pb::ListInstancesRequest {
                region_ids: both_regions(),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("cn-shenzhen"), "{}", err.message());
    assert_eq!(gw.sandbox.received().len(), before, "nothing sent");
}

/// A Dds client of `sandbox`, for calls the gateway would never make.
fn client(sandbox: &Sandbox) -> AlibabaClient {
    let mut config = common::default_config();
    config.alibaba.endpoint = Some(sandbox.endpoint());
    AlibabaClient::new(
        &config.alibaba,
        Arc::new(StaticProvider::new(sandbox.credential())),
    )
    .unwrap()
}

fn code(result: Result<dds_gateway::testing::alibaba::response::Answer, CallError>) -> String {
    match result {
        Err(CallError::Upstream(e)) => e.code,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_sandbox_lists_pages_and_refuses_as_alibaba_does() {
    let sandbox = Sandbox::start(sandbox_with(fleet(80))).await.unwrap();
    let dds = client(&sandbox);
    let call = |params: Vec<(&'static str, &str)>| {
        let params = params
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        dds.call(DESCRIBE, "cn-hangzhou", params)
    };
    let page = |answer: dds_gateway::testing::alibaba::response::Answer| -> serde_json::Value {
        serde_json::from_slice(&answer.bytes).unwrap()
    };
    // Defaults: replica sets only, page 1 of 30.
    let first = page(call(vec![("RegionId", "cn-hangzhou")]).await.unwrap());
    let replicas = sandbox
        .instances()
        .iter()
        .filter(|i| i.region_id == "cn-hangzhou" && i.db_instance_type == "replicate")
        .count();
    assert_eq!(first["TotalCount"], replicas);
    assert_eq!(first["PageSize"], 30);
    assert_eq!(first["PageNumber"], 1);
    let items = first["DBInstances"]["DBInstance"].as_array().unwrap();
    assert_eq!(items.len(), replicas.min(30));
    assert!(items.iter().all(|i| i["DBInstanceType"] == "replicate"));
    let second = page(
        call(vec![("RegionId", "cn-hangzhou"), ("PageNumber", "2")])
            .await
            .unwrap(),
    );
    let later = second["DBInstances"]["DBInstance"].as_array().unwrap();
    assert_eq!(later.len(), (replicas - 30).min(30));
    assert!(
        later.iter().all(|i| !items.contains(i)),
        "pages do not overlap"
    );

    for (params, want) in [
        (
            vec![("RegionId", "cn-hangzhou"), ("PageSize", "20")],
            "InvalidParameter",
        ),
        (
            vec![("RegionId", "cn-hangzhou"), ("PageSize", "101")],
            "InvalidParameter",
        ),
        (
            vec![("RegionId", "cn-hangzhou"), ("PageNumber", "0")],
            "InvalidParameter",
        ),
        (
            vec![
                ("RegionId", "cn-hangzhou"),
                ("DBInstanceType", "standalone"),
            ],
            "InvalidParameter",
        ),
        (
            vec![("RegionId", "cn-hangzhou"), ("Tag.21.Key", "env")],
            "InvalidParameter",
        ),
        (vec![], "MissingRegionId"),
    ] {
        assert_eq!(code(call(params.clone()).await), want, "{params:?}");
    }
}

#[tokio::test]
async fn fleet_instances_upgrade_one_major_at_a_time_and_fail_by_pattern() {
    let spec = FleetSpec {
        failures: vec![
            FailureRule {
                pattern: "dds-fleet002".into(),
                failure: Failure::Answer("InternalError".into()),
            },
            FailureRule {
                pattern: "dds-fleet003".into(),
                failure: Failure::Abnormal,
            },
            FailureRule {
                pattern: "dds-fleet004".into(),
                failure: Failure::RolledBack,
            },
        ],
        ..fleet(20)
    };
    let sandbox = Sandbox::start(sandbox_with(spec)).await.unwrap();
    let dds = &client(&sandbox);
    let upgrade = |id: &str, version: &str| {
        let region = sandbox.instance(id).unwrap().region_id;
        let params = vec![
            ("RegionId", region.clone()),
            ("DBInstanceId", id.to_string()),
            ("EngineVersion", version.to_string()),
        ];
        async move {
            dds.call(action::UPGRADE_DB_INSTANCE_ENGINE_VERSION, &region, params)
                .await
        }
    };
    let next = |v: &str| match v {
        "4.2" => "4.4",
        "4.4" => "5.0",
        _ => "6.0",
    };
    let after_next = |v: &str| match v {
        "4.2" => "5.0",
        "4.4" => "6.0",
        _ => "7.0",
    };
    // Only the next major version is offered, and a jump is refused.
    let plain = "dds-fleet005";
    let version = sandbox.instance(plain).unwrap().engine_version;
    let offered = dds
        .describe_available_engine_version(&sandbox.instance(plain).unwrap().region_id, plain)
        .await
        .unwrap();
    assert_eq!(offered.versions, [next(&version)]);
    assert_eq!(
        code(upgrade(plain, after_next(&version)).await),
        "InvalidEngineVersion"
    );
    upgrade(plain, next(&version)).await.unwrap();
    // A locked instance is refused.
    assert_eq!(
        sandbox.instance("dds-fleet010").unwrap().lock_mode,
        "ManualLock"
    );
    let locked = sandbox.instance("dds-fleet010").unwrap().engine_version;
    assert_eq!(
        code(upgrade("dds-fleet010", next(&locked)).await),
        "IncorrectDBInstanceLockMode"
    );
    assert!(sandbox.set_lock_mode("dds-fleet010", "Unlock"));
    upgrade("dds-fleet010", next(&locked)).await.unwrap();
    // Failures by pattern: an error answer, nothing started; or accepted, then rolled back
    // or abnormal on the old version.
    let v2 = sandbox.instance("dds-fleet002").unwrap().engine_version;
    assert_eq!(
        code(upgrade("dds-fleet002", next(&v2)).await),
        "InternalError"
    );
    assert_eq!(sandbox.upgrades_started("dds-fleet002"), 0);
    let v3 = sandbox.instance("dds-fleet003").unwrap().engine_version;
    upgrade("dds-fleet003", next(&v3)).await.unwrap();
    let v4 = sandbox.instance("dds-fleet004").unwrap().engine_version;
    upgrade("dds-fleet004", next(&v4)).await.unwrap();
    common::wait_until("the upgrades to end", || {
        sandbox.instance(plain).unwrap().status == "Running"
            && sandbox.instance("dds-fleet003").unwrap().status != "EngineVersionUpgrading"
            && sandbox.instance("dds-fleet004").unwrap().status != "EngineVersionUpgrading"
    })
    .await;
    assert_eq!(
        sandbox.instance(plain).unwrap().engine_version,
        next(&version)
    );
    let abnormal = sandbox.instance("dds-fleet003").unwrap();
    assert_eq!(
        (abnormal.status.as_str(), abnormal.engine_version.as_str()),
        ("Abnormal", v3.as_str())
    );
    let rolled = sandbox.instance("dds-fleet004").unwrap();
    assert_eq!(
        (rolled.status.as_str(), rolled.engine_version.as_str()),
        ("Running", v4.as_str())
    );
}
