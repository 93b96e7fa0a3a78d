//! The fleet inventory: every instance that matches a filter, from `DescribeDBInstances`.
//! Alibaba lists one region and one `DBInstanceType` per call (`replicate` unless asked), a page
//! at a time (`PageNumber` from 1, `PageSize` 30, 50 or 100, `TotalCount`; no `NextToken`), so a
//! listing asks each region for each type, page after page, and keeps each instance once.
//! Filters Alibaba takes (one engine version, one instance id, the resource group, up to 20
//! tags) go in the request; the rest (several versions, ids, id patterns) are applied here, and
//! the ones sent are checked again on the answer.

use serde::Deserialize;

/// `PageSize` of a listing: the largest Alibaba takes.
pub(crate) const PAGE_SIZE: usize = 100;
/// The most `Tag.N` pairs `DescribeDBInstances` takes.
pub(crate) const MAX_TAGS: usize = 20;
/// The most pages of one region and type a listing reads: 100,000 instances, far beyond any
/// account, so a misbehaving answer (a `TotalCount` that keeps growing) cannot loop forever.
const MAX_PAGES: usize = 1000;

/// `DBInstanceType`: a replica set or a sharded cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InstanceType {
    Replicate,
    Sharding,
}

impl InstanceType {
    /// Both types, which a listing asks for when the filter names none.
    pub const ALL: [Self; 2] = [Self::Replicate, Self::Sharding];

    /// Alibaba's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replicate => "replicate",
            Self::Sharding => "sharding",
        }
    }

    /// The type Alibaba names `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// A tag condition: the instance has tag `key`, with `value` when given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagFilter {
    pub key: String,
    pub value: Option<String>,
}

/// Which instances to list; every condition given must hold (AND), an empty list is no
/// condition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceFilter {
    /// Regions to list (at least one: Alibaba lists one region per call).
    pub region_ids: Vec<String>,
    /// Current engine versions (any of them).
    pub engine_versions: Vec<String>,
    /// Instance types; empty means both.
    pub instance_types: Vec<InstanceType>,
    /// Tags (all of them).
    pub tags: Vec<TagFilter>,
    pub resource_group_id: Option<String>,
    /// Instance ids and id patterns (`*`, `?`): an instance must be named by one of either
    /// list when either is given.
    pub instance_ids: Vec<String>,
    pub instance_patterns: Vec<String>,
}

impl InstanceFilter {
    /// The types to ask Alibaba for.
    pub fn types(&self) -> Vec<InstanceType> {
        if self.instance_types.is_empty() {
            InstanceType::ALL.to_vec()
        } else {
            self.instance_types.clone()
        }
    }

    /// The request parameters of one page of `region_id` and `instance_type`.
    pub fn params(
        &self,
        region_id: &str,
        instance_type: InstanceType,
        page_number: usize,
    ) -> Vec<(&'static str, String)> {
        let mut params = vec![
            ("RegionId", region_id.to_string()),
            ("DBInstanceType", instance_type.as_str().to_string()),
            ("PageNumber", page_number.to_string()),
            ("PageSize", PAGE_SIZE.to_string()),
        ];
        if let [version] = self.engine_versions.as_slice() {
            params.push(("EngineVersion", version.clone()));
        }
        if let ([id], []) = (
            self.instance_ids.as_slice(),
            self.instance_patterns.as_slice(),
        ) {
            params.push(("DBInstanceId", id.clone()));
        }
        if let Some(group) = &self.resource_group_id {
            params.push(("ResourceGroupId", group.clone()));
        }
        // Parameter names are `&'static str`: Tag.1 to Tag.20, as Alibaba numbers them.
        for (tag, (key_name, value_name)) in self.tags.iter().zip(TAG_PARAMS) {
            params.push((key_name, tag.key.clone()));
            if let Some(value) = &tag.value {
                params.push((value_name, value.clone()));
            }
        }
        params
    }

    /// Whether `instance` meets every condition (those sent to Alibaba too).
    pub fn matches(&self, instance: &InstanceSummary) -> bool {
        let any_or_empty =
            |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        let named = (self.instance_ids.is_empty() && self.instance_patterns.is_empty())
            || self.instance_ids.contains(&instance.db_instance_id)
            || self
                .instance_patterns
                .iter()
                .any(|p| glob_match(p, &instance.db_instance_id));
        named
            && any_or_empty(&self.region_ids, &instance.region_id)
            && any_or_empty(&self.engine_versions, &instance.engine_version)
            && self
                .types()
                .iter()
                .any(|t| t.as_str() == instance.instance_type)
            && self
                .resource_group_id
                .as_ref()
                .is_none_or(|g| *g == instance.resource_group_id)
            && self.tags.iter().all(|want| {
                instance
                    .tags
                    .iter()
                    .any(|(k, v)| *k == want.key && want.value.as_ref().is_none_or(|w| w == v))
            })
    }
}

/// `Tag.N.Key` and `Tag.N.Value` for N = 1..=20.
const TAG_PARAMS: [(&str, &str); MAX_TAGS] = [
    ("Tag.1.Key", "Tag.1.Value"),
    ("Tag.2.Key", "Tag.2.Value"),
    ("Tag.3.Key", "Tag.3.Value"),
    ("Tag.4.Key", "Tag.4.Value"),
    ("Tag.5.Key", "Tag.5.Value"),
    ("Tag.6.Key", "Tag.6.Value"),
    ("Tag.7.Key", "Tag.7.Value"),
    ("Tag.8.Key", "Tag.8.Value"),
    ("Tag.9.Key", "Tag.9.Value"),
    ("Tag.10.Key", "Tag.10.Value"),
    ("Tag.11.Key", "Tag.11.Value"),
    ("Tag.12.Key", "Tag.12.Value"),
    ("Tag.13.Key", "Tag.13.Value"),
    ("Tag.14.Key", "Tag.14.Value"),
    ("Tag.15.Key", "Tag.15.Value"),
    ("Tag.16.Key", "Tag.16.Value"),
    ("Tag.17.Key", "Tag.17.Value"),
    ("Tag.18.Key", "Tag.18.Value"),
    ("Tag.19.Key", "Tag.19.Value"),
    ("Tag.20.Key", "Tag.20.Value"),
];

/// One instance as `DescribeDBInstances` lists it (the fields a fleet needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSummary {
    pub db_instance_id: String,
    pub region_id: String,
    pub zone_id: String,
    /// The major engine version, e.g. `4.4`.
    pub engine_version: String,
    /// `DBInstanceStatus`, e.g. `Running`.
    pub status: String,
    /// `DBInstanceType`: `replicate` or `sharding`.
    pub instance_type: String,
    /// `LockMode`: `Unlock`, `ManualLock`, `LockByExpiration`, …
    pub lock_mode: String,
    pub resource_group_id: String,
    /// `(key, value)` pairs.
    pub tags: Vec<(String, String)>,
}

/// One page of `DescribeDBInstances`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub instances: Vec<InstanceSummary>,
    pub total_count: usize,
}

#[derive(Deserialize)]
struct PageBody {
    #[serde(rename = "TotalCount")]
    total_count: usize,
    #[serde(rename = "DBInstances", default)]
    instances: Option<PageInstances>,
}

#[derive(Deserialize)]
struct PageInstances {
    #[serde(rename = "DBInstance", default)]
    instance: Vec<PageInstance>,
}

#[derive(Deserialize)]
struct PageInstance {
    #[serde(rename = "DBInstanceId")]
    db_instance_id: String,
    #[serde(rename = "RegionId", default)]
    region_id: String,
    #[serde(rename = "ZoneId", default)]
    zone_id: String,
    #[serde(rename = "EngineVersion", default)]
    engine_version: String,
    #[serde(rename = "DBInstanceStatus", default)]
    status: String,
    #[serde(rename = "DBInstanceType", default)]
    instance_type: String,
    #[serde(rename = "LockMode", default)]
    lock_mode: String,
    #[serde(rename = "ResourceGroupId", default)]
    resource_group_id: String,
    #[serde(rename = "Tags", default)]
    tags: Option<PageTags>,
}

#[derive(Deserialize)]
struct PageTags {
    #[serde(rename = "Tag", default)]
    tag: Vec<PageTag>,
}

#[derive(Deserialize)]
struct PageTag {
    #[serde(rename = "Key", default)]
    key: String,
    #[serde(rename = "Value", default)]
    value: String,
}

/// Parses a `DescribeDBInstances` answer; `Err(())` when it is not the documented shape.
/// Items without a region or type get the ones asked for.
#[allow(clippy::result_unit_err)]
pub(crate) fn parse_page(
    body: &[u8],
    region_id: &str,
    instance_type: InstanceType,
) -> Result<Page, ()> {
    let parsed: PageBody = serde_json::from_slice(body).map_err(|_| ())?;
    let or = |value: String, default: &str| {
        if value.is_empty() {
            default.to_string()
        } else {
            value
        }
    };
    Ok(Page {
        total_count: parsed.total_count,
        instances: parsed
            .instances
            .map(|i| i.instance)
            .unwrap_or_default()
            .into_iter()
            .map(|i| InstanceSummary {
                db_instance_id: i.db_instance_id,
                region_id: or(i.region_id, region_id),
                zone_id: i.zone_id,
                engine_version: i.engine_version,
                status: i.status,
                instance_type: or(i.instance_type, instance_type.as_str()),
                lock_mode: i.lock_mode,
                resource_group_id: i.resource_group_id,
                tags: i
                    .tags
                    .map(|t| t.tag)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| (t.key, t.value))
                    .collect(),
            })
            .collect(),
    })
}

/// Whether another page of a listing is worth reading after `pages` pages that held `seen`
/// items in all, the last one `last` items, of `total` Alibaba counted.
pub(crate) fn more_pages(pages: usize, seen: usize, last: usize, total: usize) -> bool {
    last > 0 && seen < total && pages < MAX_PAGES
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters (also none) and
/// `?` for exactly one; everything else matches itself. Linear time: the classic greedy matcher
/// that backtracks only to the most recent `*`.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more character and try again from there.
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_page() {
        let body = br#"{"RequestId":"r","TotalCount":2,"PageNumber":1,"PageSize":30,"DBInstances":{"DBInstance":[
            {"DBInstanceId":"dds-a","RegionId":"cn-hangzhou","ZoneId":"cn-hangzhou-b","EngineVersion":"4.4","DBInstanceStatus":"Running","DBInstanceType":"sharding","LockMode":"ManualLock","ResourceGroupId":"rg-1","Tags":{"Tag":[{"Key":"env","Value":"prod"}]}},
            {"DBInstanceId":"dds-b","EngineVersion":"5.0","DBInstanceStatus":"Running"}]}}"#;
        let page = parse_page(body, "cn-shenzhen", InstanceType::Replicate).unwrap();
        assert_eq!(page.total_count, 2);
        assert_eq!(page.instances[0].instance_type, "sharding");
        assert_eq!(page.instances[0].lock_mode, "ManualLock");
        assert_eq!(page.instances[0].tags, [("env".into(), "prod".into())]);
        // What the item leaves out is what was asked for.
        assert_eq!(page.instances[1].region_id, "cn-shenzhen");
        assert_eq!(page.instances[1].instance_type, "replicate");
        let empty = parse_page(
            br#"{"TotalCount":0,"DBInstances":{"DBInstance":[]}}"#,
            "x",
            InstanceType::Sharding,
        )
        .unwrap();
        assert!(empty.instances.is_empty());
        for bad in [
            &b"[]"[..],
            b"{",
            br#"{"DBInstances":{"DBInstance":[{"EngineVersion":"4.4"}]}}"#,
        ] {
            assert!(parse_page(bad, "x", InstanceType::Replicate).is_err());
        }
    }

    #[test]
    fn sends_what_alibaba_filters_and_numbers_tags() {
        let filter = InstanceFilter {
            region_ids: vec!["cn-hangzhou".into()],
            engine_versions: vec!["4.4".into()],
            tags: vec![
                TagFilter {
                    key: "env".into(),
                    value: Some("prod".into()),
                },
                TagFilter {
                    key: "team".into(),
                    value: None,
                },
            ],
            resource_group_id: Some("rg-1".into()),
            instance_ids: vec!["dds-a".into()],
            ..InstanceFilter::default()
        };
        let params = filter.params("cn-hangzhou", InstanceType::Sharding, 3);
        let get = |n: &str| {
            params
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("DBInstanceType"), Some("sharding"));
        assert_eq!(get("PageNumber"), Some("3"));
        assert_eq!(get("PageSize"), Some("100"));
        assert_eq!(get("EngineVersion"), Some("4.4"));
        assert_eq!(get("DBInstanceId"), Some("dds-a"));
        assert_eq!(get("Tag.1.Key"), Some("env"));
        assert_eq!(get("Tag.1.Value"), Some("prod"));
        assert_eq!(get("Tag.2.Key"), Some("team"));
        assert_eq!(get("Tag.2.Value"), None);
        // Several versions, or ids with patterns, are filtered here, not sent.
        let wider = InstanceFilter {
            engine_versions: vec!["4.4".into(), "5.0".into()],
            instance_patterns: vec!["dds-b*".into()],
            ..filter
        };
        let params = wider.params("cn-hangzhou", InstanceType::Replicate, 1);
        assert!(
            !params
                .iter()
                .any(|(k, _)| *k == "EngineVersion" || *k == "DBInstanceId")
        );
    }

    #[test]
    fn matches_every_condition() {
        let instance = InstanceSummary {
            db_instance_id: "dds-fleet001".into(),
            region_id: "cn-hangzhou".into(),
            zone_id: String::new(),
            engine_version: "4.4".into(),
            status: "Running".into(),
            instance_type: "sharding".into(),
            lock_mode: "Unlock".into(),
            resource_group_id: "rg-1".into(),
            tags: vec![("env".into(), "prod".into())],
        };
        let all = InstanceFilter::default();
        assert!(all.matches(&instance));
        let cases = [
            (
                InstanceFilter {
                    instance_patterns: vec!["dds-fleet00*".into()],
                    ..all.clone()
                },
                true,
            ),
            (
                InstanceFilter {
                    instance_patterns: vec!["dds-x*".into()],
                    instance_ids: vec!["dds-fleet001".into()],
                    ..all.clone()
                },
                true,
            ),
            (
                InstanceFilter {
                    instance_ids: vec!["dds-fleet002".into()],
                    ..all.clone()
                },
                false,
            ),
            (
                InstanceFilter {
                    engine_versions: vec!["4.2".into(), "4.4".into()],
                    ..all.clone()
                },
                true,
            ),
            (
                InstanceFilter {
                    engine_versions: vec!["5.0".into()],
                    ..all.clone()
                },
                false,
            ),
            (
                InstanceFilter {
                    instance_types: vec![InstanceType::Replicate],
                    ..all.clone()
                },
                false,
            ),
            (
                InstanceFilter {
                    tags: vec![TagFilter {
                        key: "env".into(),
                        value: None,
                    }],
                    ..all.clone()
                },
                true,
            ),
            (
                InstanceFilter {
                    tags: vec![TagFilter {
                        key: "env".into(),
                        value: Some("staging".into()),
                    }],
                    ..all.clone()
                },
                false,
            ),
            (
                InstanceFilter {
                    resource_group_id: Some("rg-2".into()),
                    ..all.clone()
                },
                false,
            ),
            (
                InstanceFilter {
                    region_ids: vec!["cn-shenzhen".into()],
                    ..all
                },
                false,
            ),
        ];
        for (filter, expected) in cases {
            assert_eq!(filter.matches(&instance), expected, "{filter:?}");
        }
    }

    #[test]
    fn pages_stop_at_the_total_an_empty_page_or_the_cap() {
        assert!(more_pages(1, 100, 100, 250));
        assert!(!more_pages(3, 250, 50, 250));
        assert!(!more_pages(2, 100, 0, 250), "an empty page ends it");
        assert!(!more_pages(MAX_PAGES, 100, 100, usize::MAX));
    }

    #[test]
    fn glob_matches_stars_and_question_marks() {
        let cases = [
            ("dds-bp1*", "dds-bp1abc", true),
            ("dds-bp1*", "dds-bp1", true),
            ("dds-bp1*", "dds-bp2abc", false),
            ("*", "", true),
            ("*", "dds-x", true),
            ("dds-?", "dds-a", true),
            ("dds-?", "dds-ab", false),
            ("dds-*-x*y", "dds-a-xzzy", true),
            ("dds-*-x*y", "dds-a-xzzyz", false),
            ("dds-sandbox01", "dds-sandbox01", true),
            ("dds-sandbox01", "dds-sandbox011", false),
            ("**a", "bbba", true),
            ("", "", true),
            ("", "a", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(glob_match(pattern, text), expected, "{pattern} {text}");
        }
    }
}
