//! `ListInstances`: the wire request checked into an [`InstanceFilter`] (every violation at
//! once, before any call), and the listing itself within the caller's deadline.

use tokio::time::Instant;

use super::error::Error;
use super::validation::{FieldViolation, ValidationError, Validator, check_instance_id, quoted};
use crate::alibaba::inventory::{
    InstanceFilter, InstanceSummary, InstanceType, MAX_TAGS, TagFilter,
};
use crate::alibaba::{Alibaba, endpoint};
use crate::pb;

/// The most region ids, versions, ids or patterns one listing takes, so that a request cannot
/// fan out into thousands of calls.
const MAX_LIST: usize = 100;
/// The longest tag key or value, resource group id or pattern accepted (Alibaba's tags take
/// 128 characters).
const MAX_TEXT: usize = 128;

impl Validator {
    /// Checks a `ListInstancesRequest`. The filter's regions are empty when the request names
    /// none: the API fills them in from the caller's policy.
    pub fn validate_list(
        &self,
        request: pb::ListInstancesRequest,
    ) -> Result<InstanceFilter, ValidationError> {
        let mut violations = Vec::new();
        let mut violate = |field: &'static str, description: String| {
            violations.push(FieldViolation { field, description });
        };
        for (field, len) in [
            ("region_ids", request.region_ids.len()),
            ("engine_versions", request.engine_versions.len()),
            ("instance_ids", request.instance_ids.len()),
            ("instance_patterns", request.instance_patterns.len()),
        ] {
            if len > MAX_LIST {
                violate(field, format!("at most {MAX_LIST} values, got {len}"));
            }
        }
        for region in &request.region_ids {
            if let Err(problem) = endpoint::check_region(region, self.explicit_endpoint()) {
                violate("region_ids", problem);
            }
        }
        for version in &request.engine_versions {
            if !self.engine_versions().contains(version) {
                violate(
                    "engine_versions",
                    format!(
                        "must be one of {}, got {}",
                        self.engine_versions().join(", "),
                        quoted(version)
                    ),
                );
            }
        }
        let mut instance_types = Vec::new();
        for name in &request.instance_types {
            match InstanceType::parse(name) {
                Some(t) if !instance_types.contains(&t) => instance_types.push(t),
                Some(_) => {}
                None => violate(
                    "instance_types",
                    format!(
                        "must be \"replicate\" or \"sharding\", got {}",
                        quoted(name)
                    ),
                ),
            }
        }
        if request.tags.len() > MAX_TAGS {
            violate(
                "tags",
                format!(
                    "at most {MAX_TAGS} tags (Alibaba's limit), got {}",
                    request.tags.len()
                ),
            );
        }
        for tag in &request.tags {
            if tag.key.is_empty() || tag.key.chars().count() > MAX_TEXT {
                violate(
                    "tags",
                    format!(
                        "a tag key is required, at most {MAX_TEXT} characters, got {}",
                        quoted(&tag.key)
                    ),
                );
            }
            if tag.value.chars().count() > MAX_TEXT {
                violate(
                    "tags",
                    format!("a tag value has at most {MAX_TEXT} characters"),
                );
            }
        }
        if request.resource_group_id.chars().count() > MAX_TEXT
            || !request
                .resource_group_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            violate(
                "resource_group_id",
                format!(
                    "must be letters, digits, '-' and '_', at most {MAX_TEXT} characters, got {}",
                    quoted(&request.resource_group_id)
                ),
            );
        }
        for id in &request.instance_ids {
            if let Err(problem) = check_instance_id(id) {
                violate("instance_ids", problem);
            }
        }
        for pattern in &request.instance_patterns {
            let valid = !pattern.is_empty()
                && pattern.len() <= MAX_TEXT
                && pattern.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'*' | b'?')
                });
            if !valid {
                violate(
                    "instance_patterns",
                    format!(
                        "must be lowercase letters, digits, '-', '*' and '?', at most {MAX_TEXT} characters, got {}",
                        quoted(pattern)
                    ),
                );
            }
        }
        if !violations.is_empty() {
            return Err(ValidationError { violations });
        }
        let nonempty = |s: String| Some(s).filter(|s| !s.is_empty());
        Ok(InstanceFilter {
            region_ids: dedup(request.region_ids),
            engine_versions: dedup(request.engine_versions),
            instance_types,
            tags: request
                .tags
                .into_iter()
                .map(|t| TagFilter {
                    key: t.key,
                    value: nonempty(t.value),
                })
                .collect(),
            resource_group_id: nonempty(request.resource_group_id),
            instance_ids: dedup(request.instance_ids),
            instance_patterns: dedup(request.instance_patterns),
        })
    }
}

/// `list` without repeats, in first-seen order.
fn dedup(list: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for item in list {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// Lists the instances `filter` selects (its regions filled in) within `deadline`.
pub(crate) async fn list(
    alibaba: &Alibaba,
    filter: &InstanceFilter,
    deadline: Instant,
) -> Result<Vec<InstanceSummary>, Error> {
    tokio::time::timeout_at(deadline, alibaba.list_instances(filter, deadline))
        .await
        .map_err(|_| Error::DeadlineExceeded)?
        .map_err(Error::from)
}

/// An instance summary on the wire.
pub(crate) fn to_pb(instance: InstanceSummary) -> pb::InstanceSummary {
    pb::InstanceSummary {
        db_instance_id: instance.db_instance_id,
        region_id: instance.region_id,
        zone_id: instance.zone_id,
        engine_version: instance.engine_version,
        status: instance.status,
        instance_type: instance.instance_type,
        lock_mode: instance.lock_mode,
        resource_group_id: instance.resource_group_id,
        tags: instance
            .tags
            .into_iter()
            .map(|(key, value)| pb::Tag { key, value })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn validator() -> Validator {
        let config = Config::from_toml("", "t", |_| None, &Overrides::default()).unwrap();
        Validator::new(&config)
    }

    #[test]
    fn a_valid_request_becomes_a_filter() {
        let filter = validator()
            .validate_list(pb::ListInstancesRequest {
                region_ids: vec!["cn-hangzhou".into(), "cn-hangzhou".into()],
                engine_versions: vec!["4.2".into()],
                instance_types: vec!["sharding".into()],
                tags: vec![
                    pb::Tag {
                        key: "env".into(),
                        value: "prod".into(),
                    },
                    pb::Tag {
                        key: "team".into(),
                        value: String::new(),
                    },
                ],
                resource_group_id: "rg-acfm2".into(),
                instance_ids: vec!["dds-bp1".into()],
                instance_patterns: vec!["dds-fleet0*".into()],
            })
            .unwrap();
        assert_eq!(filter.region_ids, ["cn-hangzhou"]);
        assert_eq!(filter.instance_types, [InstanceType::Sharding]);
        assert_eq!(
            filter.tags[1],
            TagFilter {
                key: "team".into(),
                value: None
            }
        );
        assert_eq!(filter.resource_group_id.as_deref(), Some("rg-acfm2"));
        // Nothing named: no conditions, regions left to the policy.
        let all = validator()
            .validate_list(pb::ListInstancesRequest::default())
            .unwrap();
        assert_eq!(all, InstanceFilter::default());
    }

    #[test]
    fn every_violation_is_listed() {
        let err = validator()
            .validate_list(pb::ListInstancesRequest {
                region_ids: vec!["Mars".into()],
                engine_versions: vec!["9.9".into()],
                instance_types: vec!["serverless".into()],
                tags: (0..21)
                    .map(|i| pb::Tag {
                        key: format!("k{i}"),
                        value: String::new(),
                    })
                    .chain([pb::Tag::default()])
                    .collect(),
                resource_group_id: "rg x".into(),
                instance_ids: vec!["DDS-1".into()],
                instance_patterns: vec!["dds-[a]".into()],
            })
            .unwrap_err();
        let fields: Vec<&str> = err.violations.iter().map(|v| v.field).collect();
        for field in [
            "region_ids",
            "engine_versions",
            "instance_types",
            "tags",
            "resource_group_id",
            "instance_ids",
            "instance_patterns",
        ] {
            assert!(fields.contains(&field), "{field}: {fields:?}");
        }
    }
}
