//! Request validation: parses a wire `UpgradeEngineVersionRequest` into a
//! [`ValidUpgradeRequest`], reporting every violation at once, before any network I/O.

use crate::alibaba::endpoint;
use crate::config::Config;
use crate::pb;

/// The longest instance id accepted, `dds-` included.
pub(crate) const MAX_INSTANCE_ID_LEN: usize = 64;

/// One field violation, as it goes into `google.rpc.BadRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: &'static str,
    pub description: String,
}

/// Every violation of one request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request has {} invalid field(s)", .violations.len())]
pub struct ValidationError {
    pub violations: Vec<FieldViolation>,
}

/// Alibaba's `SwitchMode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SwitchMode {
    Immediate,
    MaintenanceWindow,
}

impl SwitchMode {
    /// The `SwitchMode` parameter: `0` now, `1` in the maintenance window.
    pub fn as_param(self) -> &'static str {
        match self {
            Self::Immediate => "0",
            Self::MaintenanceWindow => "1",
        }
    }
}

/// A request that passed validation; only [`Validator::validate`] builds one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ValidUpgradeRequest {
    db_instance_id: String,
    engine_version: String,
    region_id: String,
    switch_mode: Option<SwitchMode>,
    request_id: Option<uuid::Uuid>,
    validate_only: bool,
}

impl ValidUpgradeRequest {
    pub fn db_instance_id(&self) -> &str {
        &self.db_instance_id
    }
    pub fn engine_version(&self) -> &str {
        &self.engine_version
    }
    /// The request's region, or the gateway's default when it named none.
    pub fn region_id(&self) -> &str {
        &self.region_id
    }
    pub fn switch_mode(&self) -> Option<SwitchMode> {
        self.switch_mode
    }
    pub fn request_id(&self) -> Option<uuid::Uuid> {
        self.request_id
    }
    pub fn validate_only(&self) -> bool {
        self.validate_only
    }
}

/// Checks requests against the configured versions, regions and endpoint.
#[derive(Debug, Clone)]
pub struct Validator {
    engine_versions: Vec<String>,
    default_region: String,
    explicit_endpoint: bool,
}

impl Validator {
    pub fn new(config: &Config) -> Self {
        Self {
            engine_versions: config.alibaba.engine_versions.clone(),
            default_region: config.alibaba.region_id.clone(),
            explicit_endpoint: config.alibaba.endpoint.is_some(),
        }
    }

    /// Validates every field and reports all violations together.
    pub fn validate(
        &self,
        request: pb::UpgradeEngineVersionRequest,
    ) -> Result<ValidUpgradeRequest, ValidationError> {
        let mut violations = Vec::new();
        let mut violate = |field: &'static str, description: String| {
            violations.push(FieldViolation { field, description });
        };

        if let Err(problem) = check_instance_id(&request.db_instance_id) {
            violate("db_instance_id", problem);
        }
        if request.engine_version.is_empty() {
            violate("engine_version", "is required, e.g. \"4.4\"".to_string());
        } else if !self.engine_versions.contains(&request.engine_version) {
            violate(
                "engine_version",
                format!(
                    "must be one of {}, got {}",
                    self.engine_versions.join(", "),
                    quoted(&request.engine_version)
                ),
            );
        }
        let region_id = if request.region_id.is_empty() {
            self.default_region.clone()
        } else {
            if let Err(problem) = endpoint::check_region(&request.region_id, self.explicit_endpoint)
            {
                violate("region_id", problem);
            }
            request.region_id
        };
        let switch_mode = match pb::SwitchMode::try_from(request.switch_mode) {
            Ok(pb::SwitchMode::Unspecified) => None,
            Ok(pb::SwitchMode::Immediate) => Some(SwitchMode::Immediate),
            Ok(pb::SwitchMode::MaintenanceWindow) => Some(SwitchMode::MaintenanceWindow),
            Err(_) => {
                violate(
                    "switch_mode",
                    format!("unknown value {}", request.switch_mode),
                );
                None
            }
        };
        let request_id = if request.request_id.is_empty() {
            None
        } else {
            match uuid::Uuid::try_parse(&request.request_id) {
                Ok(id) => Some(id),
                Err(_) => {
                    violate(
                        "request_id",
                        format!(
                            "must be empty or a UUID, got {}",
                            quoted(&request.request_id)
                        ),
                    );
                    None
                }
            }
        };

        if !violations.is_empty() {
            return Err(ValidationError { violations });
        }
        Ok(ValidUpgradeRequest {
            db_instance_id: request.db_instance_id,
            engine_version: request.engine_version,
            region_id,
            switch_mode,
            request_id,
            validate_only: request.validate_only,
        })
    }
}

/// An instance a status request names: a valid id and its region (the default when empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRef {
    pub db_instance_id: String,
    pub region_id: String,
}

impl Validator {
    /// Validates the instance of `GetEngineVersion` and `WatchUpgrade`, and for the latter the
    /// target version (`Some`, then required and one of the configured versions).
    pub fn validate_instance(
        &self,
        db_instance_id: &str,
        region_id: &str,
        engine_version: Option<&str>,
    ) -> Result<InstanceRef, ValidationError> {
        let mut violations = Vec::new();
        if let Err(description) = check_instance_id(db_instance_id) {
            violations.push(FieldViolation {
                field: "db_instance_id",
                description,
            });
        }
        if let Some(version) = engine_version
            && !self.engine_versions.iter().any(|v| v == version)
        {
            violations.push(FieldViolation {
                field: "engine_version",
                description: format!(
                    "is required and must be one of {}, got {}",
                    self.engine_versions.join(", "),
                    quoted(version)
                ),
            });
        }
        if !region_id.is_empty()
            && let Err(description) = endpoint::check_region(region_id, self.explicit_endpoint)
        {
            violations.push(FieldViolation {
                field: "region_id",
                description,
            });
        }
        if !violations.is_empty() {
            return Err(ValidationError { violations });
        }
        Ok(InstanceRef {
            db_instance_id: db_instance_id.to_string(),
            region_id: if region_id.is_empty() {
                self.default_region.clone()
            } else {
                region_id.to_string()
            },
        })
    }
}

impl Validator {
    /// The engine versions the gateway accepts.
    pub(crate) fn engine_versions(&self) -> &[String] {
        &self.engine_versions
    }

    /// Whether an endpoint is configured, so regions outside the table are accepted.
    pub(crate) fn explicit_endpoint(&self) -> bool {
        self.explicit_endpoint
    }

    /// The region of requests that name none.
    pub(crate) fn default_region(&self) -> &str {
        &self.default_region
    }
}

/// `dds-` followed by lowercase ASCII letters and digits, at most 64 characters in all.
pub(crate) fn check_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("is required, e.g. \"dds-bp1234567890ab\"".to_string());
    }
    let valid = id.len() <= MAX_INSTANCE_ID_LEN
        && id.strip_prefix("dds-").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "must be \"dds-\" followed by lowercase letters and digits, at most {MAX_INSTANCE_ID_LEN} characters, got {}",
            quoted(id)
        ))
    }
}

/// A caller's value quoted for an error message, cut short so a huge field cannot bloat it.
pub(crate) fn quoted(value: &str) -> String {
    const MAX: usize = 80;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let cut: String = value.chars().take(MAX).collect();
        format!("{cut:?}… ({} characters)", value.chars().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn validator() -> Validator {
        let config = Config::from_toml("", "test", |_| None, &Overrides::default()).unwrap();
        Validator::new(&config)
    }

    fn request(id: &str, version: &str) -> pb::UpgradeEngineVersionRequest {
        pb::UpgradeEngineVersionRequest {
            db_instance_id: id.to_string(),
            engine_version: version.to_string(),
            ..Default::default()
        }
    }

    fn fields(err: ValidationError) -> Vec<&'static str> {
        err.violations.iter().map(|v| v.field).collect()
    }

    #[test]
    fn accepts_a_minimal_request_and_fills_the_default_region() {
        let valid = validator()
            .validate(request("dds-bp1234567890ab", "4.4"))
            .unwrap();
        assert_eq!(valid.region_id(), "cn-hangzhou");
        assert_eq!(valid.switch_mode(), None);
        assert_eq!(valid.request_id(), None);
    }

    #[test]
    fn accepts_every_optional_field() {
        let mut req = request("dds-a1", "8.0");
        req.region_id = "ap-southeast-1".into();
        req.switch_mode = pb::SwitchMode::MaintenanceWindow as i32;
        req.request_id = "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f".into();
        req.validate_only = true;
        let valid = validator().validate(req).unwrap();
        assert_eq!(valid.switch_mode().map(SwitchMode::as_param), Some("1"));
        assert!(valid.validate_only());
        assert!(valid.request_id().is_some());
    }

    #[test]
    fn rejects_bad_instance_ids() {
        let long = format!("dds-{}", "a".repeat(61));
        for id in [
            "",
            "dds-",
            "bp123",
            "DDS-abc",
            "dds-ABC",
            "dds-ab_c",
            "dds-ab c",
            "dds-ab/../c",
            "dds-中",
            long.as_str(),
        ] {
            let err = validator().validate(request(id, "4.4")).unwrap_err();
            assert_eq!(fields(err), ["db_instance_id"], "{id:?}");
        }
        let max = format!("dds-{}", "a".repeat(60));
        assert!(validator().validate(request(&max, "4.4")).is_ok());
    }

    #[test]
    fn reports_every_violation_at_once() {
        let req = pb::UpgradeEngineVersionRequest {
            db_instance_id: "nope".into(),
            engine_version: "9.9".into(),
            region_id: "Mars".into(),
            switch_mode: 42,
            request_id: "not-a-uuid".into(),
            validate_only: false,
        };
        let err = validator().validate(req).unwrap_err();
        assert_eq!(
            fields(err),
            [
                "db_instance_id",
                "engine_version",
                "region_id",
                "switch_mode",
                "request_id"
            ]
        );
    }

    #[test]
    fn rejects_regions_outside_the_table() {
        let mut req = request("dds-a1", "4.4");
        req.region_id = "xx-nowhere-1".into();
        let err = validator().validate(req).unwrap_err();
        assert!(err.violations[0].description.contains("endpoint table"));
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let err = validator()
            .validate(request(&"x".repeat(10_000), "4.4"))
            .unwrap_err();
        assert!(err.violations[0].description.len() < 300);
    }
}
