//! The `dds.gateway.v1.EngineVersionService` implementation: validate, then call Alibaba Cloud
//! within the caller's deadline, and answer with the result or the mapped error.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::alibaba::AlibabaClient;
use crate::auth::Caller;
use crate::deadline;
use crate::error::Error;
use crate::pb;
use crate::validation::{ValidUpgradeRequest, Validator};

/// The gateway's gRPC service.
#[derive(Debug, Clone)]
pub struct EngineVersionService {
    validator: Validator,
    client: Arc<AlibabaClient>,
    request_timeout: Duration,
}

impl EngineVersionService {
    pub fn new(
        validator: Validator,
        client: Arc<AlibabaClient>,
        request_timeout: Duration,
    ) -> Self {
        Self {
            validator,
            client,
            request_timeout,
        }
    }

    async fn upgrade(
        &self,
        request: pb::UpgradeEngineVersionRequest,
        deadline: Instant,
        caller: Option<&Caller>,
    ) -> Result<pb::UpgradeEngineVersionResponse, Error> {
        let request = self.validator.validate(request)?;
        // The gate admitted the caller; its policy decides before anything reaches Alibaba.
        if let Some(caller) = caller {
            caller.policy().check(caller.name(), &request)?;
        }
        if request.validate_only() {
            return Ok(response(&request, String::new()));
        }
        let call = self.client.upgrade_db_instance_engine_version(
            request.region_id(),
            request.db_instance_id(),
            request.engine_version(),
            request.switch_mode().map(|m| m.as_param()),
        );
        let alibaba_request_id = tokio::time::timeout_at(deadline, call)
            .await
            .map_err(|_| Error::DeadlineExceeded)??;
        Ok(response(&request, alibaba_request_id))
    }
}

fn response(
    request: &ValidUpgradeRequest,
    alibaba_request_id: String,
) -> pb::UpgradeEngineVersionResponse {
    pb::UpgradeEngineVersionResponse {
        alibaba_request_id,
        db_instance_id: request.db_instance_id().to_string(),
        engine_version: request.engine_version().to_string(),
        previous_engine_version: String::new(),
        validate_only: request.validate_only(),
    }
}

#[tonic::async_trait]
impl pb::engine_version_service_server::EngineVersionService for EngineVersionService {
    async fn upgrade_engine_version(
        &self,
        request: Request<pb::UpgradeEngineVersionRequest>,
    ) -> Result<Response<pb::UpgradeEngineVersionResponse>, Status> {
        let deadline = deadline::effective(request.extensions().get(), self.request_timeout);
        let caller = request
            .extensions()
            .get::<crate::gate::Admitted>()
            .map(|a| std::sync::Arc::clone(&a.0));
        let caller_name = caller.as_ref().map_or("", |c| c.name()).to_string();
        let message = request.into_inner();
        let (instance, version, region) = (
            message.db_instance_id.clone(),
            message.engine_version.clone(),
            message.region_id.clone(),
        );
        match self.upgrade(message, deadline, caller.as_deref()).await {
            Ok(answer) => {
                tracing::info!(
                    caller = %caller_name,
                    db_instance_id = %answer.db_instance_id,
                    engine_version = %answer.engine_version,
                    validate_only = answer.validate_only,
                    alibaba_request_id = %answer.alibaba_request_id,
                    "upgrade accepted"
                );
                Ok(Response::new(answer))
            }
            Err(err) => {
                let alibaba_code = err.alibaba_code().unwrap_or_default().to_string();
                let detail = err.to_string();
                // The code logged is the one the caller gets: `error.rs` decides it, once.
                let status = Status::from(err);
                tracing::warn!(
                    caller = %caller_name,
                    db_instance_id = %short(&instance),
                    engine_version = %short(&version),
                    region_id = %short(&region),
                    grpc_code = ?status.code(),
                    alibaba_code = %alibaba_code,
                    error = %detail,
                    "upgrade failed"
                );
                Err(status)
            }
        }
    }
}

/// A caller-supplied value cut for a log line.
fn short(value: &str) -> &str {
    match value.char_indices().nth(80) {
        Some((i, _)) => &value[..i],
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_cuts_on_a_char_boundary() {
        let long = "中".repeat(100);
        assert_eq!(short(&long).chars().count(), 80);
        assert_eq!(short("abc"), "abc");
    }
}
