//! Rollouts seen by a `RolloutService` client: one rollout read back, and a wait on it.

use std::time::Duration;

use dds_gateway::pb;
use dds_gateway::pb::rollout_service_client::RolloutServiceClient;
use tonic::transport::Channel;

/// The rollout `id` as it is now.
pub async fn get(c: &mut RolloutServiceClient<Channel>, id: &str) -> pb::Rollout {
    c.get_rollout(pb::GetRolloutRequest {
        rollout_id: id.to_string(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// Waits (at most two minutes) until the rollout satisfies `condition`, and returns it.
pub async fn until(
    c: &mut RolloutServiceClient<Channel>,
    id: &str,
    what: &str,
    condition: impl Fn(&pb::Rollout) -> bool,
) -> pb::Rollout {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let rollout = get(c, id).await;
        if condition(&rollout) {
            return rollout;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the rollout never got {what}: {rollout:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
