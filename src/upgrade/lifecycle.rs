//! Engine versions against their end of life: one table of dates with their sources, and where
//! a version stands today (supported, near its end of life, past it). A rollout's reason to
//! exist is often that a version is going out of support; the console marks those versions.

use std::time::{Duration, SystemTime};

use crate::pb;

/// MongoDB's own lifecycle schedule; Alibaba's dates for 4.0 and later are not confirmed, and
/// Alibaba stopped selling 3.4 on 2023-01-01.
const MONGODB_LIFECYCLE: &str =
    "MongoDB Software Lifecycle Schedules, https://www.mongodb.com/legal/support-policy/lifecycles";

/// `(version, end of life, source)`, oldest first.
const END_OF_LIFE: &[(&str, &str, &str)] = &[
    ("3.4", "2020-01-31", MONGODB_LIFECYCLE),
    ("4.0", "2022-04-30", MONGODB_LIFECYCLE),
    ("4.2", "2023-04-30", MONGODB_LIFECYCLE),
    ("4.4", "2024-02-29", MONGODB_LIFECYCLE),
    ("5.0", "2024-10-31", MONGODB_LIFECYCLE),
    ("6.0", "2025-07-31", MONGODB_LIFECYCLE),
    ("7.0", "2027-08-31", MONGODB_LIFECYCLE),
    ("8.0", "2029-10-31", MONGODB_LIFECYCLE),
];

/// A version whose end of life is at most this far away is near it.
pub(crate) const NEAR: Duration = Duration::from_secs(180 * 24 * 3600);

/// The end of life of `version` and its source, when the table knows it. A version with a
/// patch level (`4.4.1`) has its major.minor's date.
pub(crate) fn end_of_life(version: &str) -> Option<(&'static str, &'static str)> {
    let major_minor = version.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
    END_OF_LIFE
        .iter()
        .find(|(v, _, _)| *v == major_minor)
        .map(|(_, date, source)| (*date, *source))
}

/// Where a version whose support ends at the end of `date` (`YYYY-MM-DD`) stands at `now`.
pub(crate) fn lifecycle(date: &str, now: SystemTime) -> pb::Lifecycle {
    // The last day is still supported: the end is the next midnight, UTC.
    let Ok(end) = humantime::parse_rfc3339(&format!("{date}T00:00:00Z"))
        .map(|day| day + Duration::from_secs(24 * 3600))
    else {
        return pb::Lifecycle::Unspecified;
    };
    if now >= end {
        pb::Lifecycle::EndOfLife
    } else if now + NEAR >= end {
        pb::Lifecycle::NearEndOfLife
    } else {
        pb::Lifecycle::Supported
    }
}

/// The configured `versions` with what the table knows of them, at `now`.
pub(crate) fn describe(versions: &[String], now: SystemTime) -> Vec<pb::EngineVersionInfo> {
    versions
        .iter()
        .map(|version| {
            let (date, source) = end_of_life(version).unwrap_or_default();
            pb::EngineVersionInfo {
                engine_version: version.clone(),
                end_of_life: date.to_string(),
                source: source.to_string(),
                lifecycle: if date.is_empty() {
                    pb::Lifecycle::Unspecified
                } else {
                    lifecycle(date, now)
                } as i32,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn the_last_day_is_still_supported() {
        assert_eq!(
            lifecycle("2024-02-29", at("2024-02-29T23:59:59Z")),
            pb::Lifecycle::NearEndOfLife
        );
        assert_eq!(
            lifecycle("2024-02-29", at("2024-03-01T00:00:00Z")),
            pb::Lifecycle::EndOfLife
        );
    }

    #[test]
    fn near_is_within_180_days() {
        // 2027-08-31 ends at 2027-09-01T00:00Z; 180 days before is 2027-03-05T00:00Z.
        assert_eq!(
            lifecycle("2027-08-31", at("2027-03-04T23:59:59Z")),
            pb::Lifecycle::Supported
        );
        assert_eq!(
            lifecycle("2027-08-31", at("2027-03-05T00:00:00Z")),
            pb::Lifecycle::NearEndOfLife
        );
    }

    #[test]
    fn every_default_version_has_a_date_and_a_source() {
        let versions: Vec<String> = crate::config::alibaba::DEFAULT_ENGINE_VERSIONS
            .iter()
            .map(|v| v.to_string())
            .collect();
        let described = describe(&versions, at("2026-01-01T00:00:00Z"));
        assert_eq!(described.len(), versions.len());
        for info in &described {
            assert!(
                !info.end_of_life.is_empty() && !info.source.is_empty(),
                "{info:?}"
            );
        }
        let four_four = described
            .iter()
            .find(|i| i.engine_version == "4.4")
            .unwrap();
        assert_eq!(four_four.end_of_life, "2024-02-29");
        assert_eq!(four_four.lifecycle, pb::Lifecycle::EndOfLife as i32);
        let eight = described
            .iter()
            .find(|i| i.engine_version == "8.0")
            .unwrap();
        assert_eq!(eight.lifecycle, pb::Lifecycle::Supported as i32);
        assert_eq!(end_of_life("4.4.1").map(|e| e.0), Some("2024-02-29"));
        assert_eq!(end_of_life("9.9"), None);
    }
}
