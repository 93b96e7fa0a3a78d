//! Alibaba Cloud API answers: the success body of `UpgradeDBInstanceEngineVersion`, and the
//! error body (`Code`, `Message`, `RequestId`, `HostId`, `Recommend`) in JSON or XML.

use std::time::Duration;

use serde::Deserialize;

/// An error answer from the Alibaba Cloud API. `message` is Alibaba's text: for signature errors
/// it echoes the server's string to sign (AccessKeyId, security token), so `Debug` leaves it out
/// and `error.rs` passes it to callers only for codes that cannot carry one.
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
pub struct RequestIdBody {
    #[serde(rename = "RequestId")]
    pub request_id: String,
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
pub fn parse_error(
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
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value?
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
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
