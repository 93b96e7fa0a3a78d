//! The `dds.gateway.v1.EngineVersionService` implementation: validate, then call Alibaba Cloud
//! within the caller's deadline, and answer with the result or the mapped error.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::alibaba::AlibabaClient;
use crate::error::Error;
use crate::pb;
use crate::validation::{ValidUpgradeRequest, Validator};

/// Time kept back from the caller's deadline so the handler answers DEADLINE_EXCEEDED itself:
/// tonic's own `grpc-timeout` enforcement, which runs outside the handler, answers CANCELLED.
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);

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

    /// The instant by which this call must have answered: the caller's `grpc-timeout` less a
    /// margin, bounded by the gateway's own request timeout.
    fn deadline(&self, metadata: &MetadataMap) -> Instant {
        let budget = match grpc_timeout(metadata) {
            Some(timeout) => timeout
                .saturating_sub(DEADLINE_MARGIN)
                .min(self.request_timeout),
            None => self.request_timeout,
        };
        Instant::now() + budget
    }

    async fn upgrade(
        &self,
        request: pb::UpgradeEngineVersionRequest,
        deadline: Instant,
    ) -> Result<pb::UpgradeEngineVersionResponse, Error> {
        let request = self.validator.validate(request)?;
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
        let deadline = self.deadline(request.metadata());
        let message = request.into_inner();
        let (instance, version, region) = (
            message.db_instance_id.clone(),
            message.engine_version.clone(),
            message.region_id.clone(),
        );
        match self.upgrade(message, deadline).await {
            Ok(answer) => {
                tracing::info!(
                    db_instance_id = %answer.db_instance_id,
                    engine_version = %answer.engine_version,
                    validate_only = answer.validate_only,
                    alibaba_request_id = %answer.alibaba_request_id,
                    "upgrade accepted"
                );
                Ok(Response::new(answer))
            }
            Err(err) => {
                let code = err.code();
                tracing::warn!(
                    db_instance_id = %short(&instance),
                    engine_version = %short(&version),
                    region_id = %short(&region),
                    grpc_code = ?code,
                    alibaba_code = err.alibaba_code().unwrap_or(""),
                    error = %err,
                    "upgrade failed"
                );
                Err(err.into())
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

/// Parses the `grpc-timeout` header: up to 8 digits and a unit (`H M S m u n`).
fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(value: &str) -> Option<Duration> {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&metadata)
    }

    #[test]
    fn parses_grpc_timeout_units() {
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(timeout("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(timeout("123456789S"), None);
        assert_eq!(timeout("S"), None);
        assert_eq!(timeout("5x"), None);
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }

    #[test]
    fn short_cuts_on_a_char_boundary() {
        let long = "中".repeat(100);
        assert_eq!(short(&long).chars().count(), 80);
        assert_eq!(short("abc"), "abc");
    }
}
