//! Callers known by bearer tokens: two `[[callers]]` with distinct policies, the gateway that
//! admits them, and gRPC calls made with a token.

use dds_gateway::pb;
use dds_gateway::pb::engine_version_service_client::EngineVersionServiceClient;
use dds_gateway::testing::api::auth::hash_token;
use dds_gateway::testing::sandbox::SandboxConfig;
use tonic::transport::Channel;

use super::{Gateway, request};

pub const UPGRADE: &str = "UpgradeDBInstanceEngineVersion";
pub const BILLING_TOKEN: &str = "billing-token-0123456789";
pub const OPS_TOKEN: &str = "ops-token-0123456789";

/// Two callers; `ops` has rules that must never show in `billing`'s errors.
pub fn callers_toml() -> String {
    format!(
        r#"
[[callers]]
name = "billing"
token_sha256 = "{}"
regions = ["cn-hangzhou"]
instances = ["dds-sandbox0*"]
engine_versions = ["5.0", "6.0"]

[[callers]]
name = "secret-ops"
token_sha256 = "{}"
regions = ["cn-shenzhen"]
instances = ["dds-sandboxsz"]
validate_only = true
"#,
        hash_token(BILLING_TOKEN),
        hash_token(OPS_TOKEN)
    )
}

/// The gateway in front of a fresh sandbox, with `server` keys and `callers` as TOML.
pub async fn gateway(server: &str, callers: &str) -> Gateway {
    Gateway::from_toml(
        SandboxConfig::default(),
        &format!("[server]\n{server}\n{callers}"),
    )
    .await
}

pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

pub async fn call(
    client: &EngineVersionServiceClient<Channel>,
    request: tonic::Request<pb::UpgradeEngineVersionRequest>,
) -> Result<pb::UpgradeEngineVersionResponse, tonic::Status> {
    client
        .clone()
        .upgrade_engine_version(request)
        .await
        .map(tonic::Response::into_inner)
}

pub fn validate_only(instance: &str, version: &str) -> pb::UpgradeEngineVersionRequest {
    pb::UpgradeEngineVersionRequest {
        validate_only: true,
        ..request(instance, version)
    }
}

pub fn watch_request(instance: &str, target: &str) -> pb::WatchUpgradeRequest {
    pb::WatchUpgradeRequest {
        db_instance_id: instance.into(),
        engine_version: target.into(),
        region_id: String::new(),
    }
}
