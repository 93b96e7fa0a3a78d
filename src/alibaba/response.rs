//! Alibaba Cloud API answers: the success bodies of `UpgradeDBInstanceEngineVersion`,
//! `DescribeDBInstanceAttribute` and `DescribeAvailableEngineVersion`, and the error body
//! (`Code`, `Message`, `RequestId`, `HostId`, `Recommend`) in JSON or XML.

use std::time::Duration;

use serde::Deserialize;

use super::credentials::credential::CredentialsError;

/// An error answer from the Alibaba Cloud API. `message` is Alibaba's text: for signature errors
/// it echoes the server's string to sign (AccessKeyId, security token), so `Debug` leaves it out
/// and the gateway passes it to callers only for codes that cannot carry one.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamError {
    pub http_status: u16,
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
    pub host_id: Option<String>,
    pub recommend: Option<String>,
    /// From `x-acs-retry-after` (milliseconds), when Alibaba said when to retry.
    pub retry_after: Option<Duration>,
}

impl std::fmt::Debug for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamError")
            .field("http_status", &self.http_status)
            .field("code", &self.code)
            .field("message", &format_args!("<{} bytes>", self.message.len()))
            .field("request_id", &self.request_id)
            .field("retry_after", &self.retry_after)
            .finish_non_exhaustive()
    }
}

/// `{"RequestId": ...}`: the answer of `UpgradeDBInstanceEngineVersion`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RequestIdBody {
    #[serde(rename = "RequestId")]
    pub request_id: String,
}

/// What `DescribeDBInstanceAttribute` says about one instance (the fields the gateway uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceAttribute {
    pub db_instance_id: String,
    /// `DBInstanceStatus`, e.g. `Running`, `EngineVersionUpgrading`.
    pub status: String,
    /// The major engine version, e.g. `4.4`.
    pub engine_version: String,
    /// The instance's region; empty when the answer did not say.
    pub region_id: String,
    /// The `RequestId` of the describe call.
    pub request_id: String,
}

#[derive(Deserialize)]
struct AttributeBody {
    #[serde(rename = "RequestId", default)]
    request_id: String,
    #[serde(rename = "DBInstances")]
    instances: AttributeInstances,
}

#[derive(Deserialize)]
struct AttributeInstances {
    #[serde(rename = "DBInstance", default)]
    instance: Vec<AttributeInstance>,
}

#[derive(Deserialize)]
struct AttributeInstance {
    #[serde(rename = "DBInstanceId")]
    db_instance_id: String,
    #[serde(rename = "DBInstanceStatus")]
    status: String,
    #[serde(rename = "EngineVersion")]
    engine_version: String,
    #[serde(rename = "RegionId", default)]
    region_id: String,
}

/// Parses a `DescribeDBInstanceAttribute` answer. `Ok(None)` when it lists no instance with
/// that id; `Err(())` when the body is not the documented shape.
#[allow(clippy::result_unit_err)]
pub(crate) fn parse_instance_attribute(
    body: &[u8],
    db_instance_id: &str,
) -> Result<Option<InstanceAttribute>, ()> {
    let parsed: AttributeBody = serde_json::from_slice(body).map_err(|_| ())?;
    Ok(parsed
        .instances
        .instance
        .into_iter()
        .find(|i| i.db_instance_id == db_instance_id)
        .map(|i| InstanceAttribute {
            db_instance_id: i.db_instance_id,
            status: i.status,
            engine_version: i.engine_version,
            region_id: i.region_id,
            request_id: parsed.request_id.clone(),
        }))
}

/// What `DescribeAvailableEngineVersion` offers an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvailableEngineVersions {
    /// The versions the instance can be upgraded to; empty when it runs the latest.
    pub versions: Vec<String>,
    pub request_id: String,
}

/// Parses a `DescribeAvailableEngineVersion` answer. Alibaba documents an empty string when the
/// instance runs the latest version, so `EngineVersions` may be `""`, absent, an object with a
/// list, or an object with one string; all of those are read. `Err(())` for anything else.
#[allow(clippy::result_unit_err)]
pub(crate) fn parse_available_engine_versions(body: &[u8]) -> Result<AvailableEngineVersions, ()> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| ())?;
    let object = value.as_object().ok_or(())?;
    let request_id = object
        .get("RequestId")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    let strings = |v: &serde_json::Value| -> Result<Vec<String>, ()> {
        match v {
            serde_json::Value::Null => Ok(Vec::new()),
            serde_json::Value::String(s) if s.is_empty() => Ok(Vec::new()),
            serde_json::Value::String(s) => Ok(vec![s.clone()]),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string).ok_or(()))
                .collect(),
            _ => Err(()),
        }
    };
    let versions = match object.get("EngineVersions") {
        None => Vec::new(),
        Some(serde_json::Value::Object(inner)) => strings(
            inner
                .get("EngineVersion")
                .unwrap_or(&serde_json::Value::Null),
        )?,
        Some(other) => strings(other)?,
    };
    Ok(AvailableEngineVersions {
        versions,
        request_id,
    })
}

/// The error body's fields; darabonba also reads lower-case variants, so do we.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(rename = "Code", alias = "code")]
    code: Option<String>,
    #[serde(rename = "Message", alias = "message")]
    message: Option<String>,
    #[serde(rename = "RequestId", alias = "requestId")]
    request_id: Option<String>,
    #[serde(rename = "HostId", alias = "hostId")]
    host_id: Option<String>,
    #[serde(rename = "Recommend", alias = "recommend")]
    recommend: Option<String>,
}

/// Parses an error body (JSON, or the XML `<Error>` form). `None` when it carries no `Code`.
pub(crate) fn parse_error(
    http_status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> Option<UpstreamError> {
    let text = std::str::from_utf8(body).ok()?.trim();
    let parsed = if text.starts_with('{') {
        serde_json::from_str::<ErrorBody>(text).ok()?
    } else if text.starts_with('<') {
        ErrorBody {
            code: xml_element(text, "Code"),
            message: xml_element(text, "Message"),
            request_id: xml_element(text, "RequestId"),
            host_id: xml_element(text, "HostId"),
            recommend: xml_element(text, "Recommend"),
        }
    } else {
        return None;
    };
    let code = parsed.code.filter(|c| !c.is_empty())?;
    Some(UpstreamError {
        http_status,
        code,
        message: parsed.message.unwrap_or_default(),
        request_id: parsed.request_id.filter(|r| !r.is_empty()),
        host_id: parsed.host_id,
        recommend: parsed.recommend,
        retry_after,
    })
}

/// The text of the first `<name>…</name>` element, with the five predefined XML entities
/// decoded. Alibaba's `<Error>` body is flat, so this needs no XML parser.
fn xml_element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    let raw = &xml[start..end];
    let raw = raw
        .strip_prefix("<![CDATA[")
        .and_then(|r| r.strip_suffix("]]>"))
        .map_or_else(
            || {
                raw.replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&quot;", "\"")
                    .replace("&apos;", "'")
                    .replace("&amp;", "&")
            },
            str::to_string,
        );
    Some(raw)
}

/// `x-acs-retry-after`: a positive number of milliseconds.
pub(crate) fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value?
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// Why a call produced no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Alibaba answered with an error `Code`.
    #[error("alibaba cloud answered {}: {}", .0.http_status, .0.code)]
    Upstream(UpstreamError),
    /// The request was never sent (connection refused, DNS, TLS handshake): safe to retry.
    #[error("alibaba cloud unreachable: {0}")]
    Unreachable(String),
    /// The request may have been sent but no answer came back (timeout, reset): the outcome
    /// is unknown.
    #[error("no answer from alibaba cloud: {0}")]
    OutcomeUnknown(String),
    /// An answer came back that the gateway cannot read.
    #[error("unreadable answer from alibaba cloud (http {http_status})")]
    Unreadable { http_status: u16 },
    /// The gateway has no usable credential.
    #[error("no credentials: {0}")]
    Credentials(#[from] CredentialsError),
    /// The gateway cannot send what was asked (e.g. a signature version it does not speak).
    #[error("{0}")]
    Unsupported(&'static str),
    /// The account's budget of calls to Alibaba in the region (`[alibaba.quota]`) has no place
    /// before the caller's deadline: nothing was sent.
    #[error("the account's budget of calls to alibaba cloud is spent until after the deadline")]
    QuotaExhausted { retry_after: Duration },
    /// The caller's deadline passed while the call waited for its place in this replica's line
    /// of calls to Alibaba (`[alibaba.quota] max_in_flight`): nothing was sent.
    #[error("the caller's deadline passed while the call waited for a place; nothing was sent")]
    DeadlinePassed,
}

/// A successful answer's status and body.
#[derive(Debug)]
pub struct Answer {
    pub http_status: u16,
    pub bytes: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_json_error() {
        let body = br#"{"RequestId":"6BE56E05","HostId":"mongodb.aliyuncs.com","Code":"InvalidInstanceId.NotFound","Message":"The InstanceId provided does not exist in our records.","Recommend":"https://api.alibabacloud.com/troubleshoot?q=x"}"#;
        let err = parse_error(404, body, None).unwrap();
        assert_eq!(err.code, "InvalidInstanceId.NotFound");
        assert_eq!(err.request_id.as_deref(), Some("6BE56E05"));
        assert_eq!(err.host_id.as_deref(), Some("mongodb.aliyuncs.com"));
        assert!(err.recommend.unwrap().starts_with("https://"));
        assert_eq!(err.http_status, 404);
    }

    #[test]
    fn parses_lower_case_and_xml_errors() {
        let err = parse_error(
            400,
            br#"{"code":"Throttling.User","message":"slow down","requestId":"r1"}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            (err.code.as_str(), err.request_id.as_deref()),
            ("Throttling.User", Some("r1"))
        );
        let xml = b"<?xml version='1.0' encoding='UTF-8'?><Error><RequestId>r2</RequestId><HostId>h</HostId><Code>SignatureDoesNotMatch</Code><Message>a &amp; b &lt;c&gt;</Message></Error>";
        let err = parse_error(400, xml, None).unwrap();
        assert_eq!(err.code, "SignatureDoesNotMatch");
        assert_eq!(err.message, "a & b <c>");
        assert_eq!(err.request_id.as_deref(), Some("r2"));
    }

    #[test]
    fn debug_leaves_out_alibabas_message() {
        let body = br#"{"Code":"SignatureDoesNotMatch","Message":"server string to sign is:POST&%2F&SecurityToken%3Dsecret-token"}"#;
        let printed = format!("{:?}", parse_error(400, body, None).unwrap());
        assert!(printed.contains("SignatureDoesNotMatch"), "{printed}");
        assert!(!printed.contains("secret-token"), "{printed}");
    }

    #[test]
    fn unreadable_bodies_are_none() {
        for body in [
            &b""[..],
            b"<html>502 Bad Gateway</html>",
            b"{\"RequestId\":\"x\"}",
            b"not json",
            b"{",
            &[0xff, 0xfe],
        ] {
            assert!(parse_error(502, body, None).is_none(), "{body:?}");
        }
    }

    #[test]
    fn parses_the_documented_instance_attribute() {
        let body = br#"{"RequestId":"A935","DBInstances":{"DBInstance":[{"DBInstanceId":"dds-bp1","DBInstanceStatus":"Running","EngineVersion":"4.4","Engine":"MongoDB","RegionId":"cn-hangzhou","ReplicaSets":{"ReplicaSet":[]}}]}}"#;
        let attribute = parse_instance_attribute(body, "dds-bp1").unwrap().unwrap();
        assert_eq!(
            attribute,
            InstanceAttribute {
                db_instance_id: "dds-bp1".into(),
                status: "Running".into(),
                engine_version: "4.4".into(),
                region_id: "cn-hangzhou".into(),
                request_id: "A935".into(),
            }
        );
        assert_eq!(parse_instance_attribute(body, "dds-other").unwrap(), None);
        let empty = br#"{"RequestId":"x","DBInstances":{"DBInstance":[]}}"#;
        assert_eq!(parse_instance_attribute(empty, "dds-bp1").unwrap(), None);
        for bad in [
            &b"{}"[..],
            b"not json",
            br#"{"DBInstances":{"DBInstance":[{"DBInstanceId":"dds-bp1"}]}}"#,
        ] {
            assert!(parse_instance_attribute(bad, "dds-bp1").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_every_documented_form_of_available_versions() {
        let cases: &[(&[u8], &[&str])] = &[
            (
                br#"{"RequestId":"52","EngineVersions":{"EngineVersion":["4.0","4.4"]}}"#,
                &["4.0", "4.4"],
            ),
            (
                br#"{"RequestId":"52","EngineVersions":{"EngineVersion":"5.0"}}"#,
                &["5.0"],
            ),
            (br#"{"RequestId":"52","EngineVersions":""}"#, &[]),
            (
                br#"{"RequestId":"52","EngineVersions":{"EngineVersion":[]}}"#,
                &[],
            ),
            (br#"{"RequestId":"52"}"#, &[]),
        ];
        for (body, expected) in cases {
            let parsed = parse_available_engine_versions(body).unwrap();
            assert_eq!(
                parsed.versions,
                *expected,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(parsed.request_id, "52");
        }
        for bad in [
            &b"[]"[..],
            b"{",
            br#"{"EngineVersions":{"EngineVersion":[4]}}"#,
            br#"{"EngineVersions":7}"#,
        ] {
            assert!(parse_available_engine_versions(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn retry_after_is_positive_milliseconds() {
        assert_eq!(
            parse_retry_after(Some("1500")),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after(Some("0")), None);
        assert_eq!(parse_retry_after(Some("-3")), None);
        assert_eq!(parse_retry_after(Some("soon")), None);
        assert_eq!(parse_retry_after(None), None);
    }
}
