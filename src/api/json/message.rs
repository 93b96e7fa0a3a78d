//! Messages between JSON and the gRPC wire, by the proto3 JSON mapping (prost-reflect, from the
//! descriptor): a request from its path variables, query string and body, encoded as one gRPC
//! message frame; answers read from gRPC frames and written as JSON. Names go out in
//! lowerCamelCase with every field present; in, both lowerCamelCase and the proto's names are
//! accepted, enums by name, and an unknown field is an error.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use prost::Message as _;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
    Value,
};

use super::request_error::RequestError;

/// Length of a gRPC message frame's prefix: a compression flag and a 4-byte length.
const FRAME_PREFIX: usize = 5;

/// The request message of type `input`: the JSON `body` if the route takes one, else the query
/// `parameters`; then the path's `bound` variables, which a body may repeat but not contradict.
pub(crate) fn request(
    input: &MessageDescriptor,
    bound: Vec<(FieldDescriptor, String)>,
    parameters: &[(String, String)],
    body: Option<&[u8]>,
) -> Result<DynamicMessage, RequestError> {
    let mut message = match body {
        Some(body) => from_body(input, body)?,
        None => from_query(input, &bound, parameters)?,
    };
    for (field, value) in bound {
        if message.has_field(&field) && message.get_field(&field).as_str() != Some(&value) {
            return Err(RequestError::InvalidParameter {
                name: field.name().to_string(),
                detail: format!(
                    "the body says {:?} but the path says {value:?}; leave it out of the body",
                    message.get_field(&field).as_str().unwrap_or_default()
                ),
            });
        }
        message.set_field(&field, Value::String(value));
    }
    Ok(message)
}

fn from_body(input: &MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, RequestError> {
    // An empty body is the empty message, as in Google's HTTP transcoding for `body: "*"`.
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(input.clone()));
    }
    if let Some(field) = field_named_twice(input, body) {
        return Err(RequestError::InvalidJson {
            line: 1,
            column: 1,
            detail: format!(
                "the field {field} is given twice (under its JSON and its proto name, or repeated); give it once"
            ),
        });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    DynamicMessage::deserialize_with_options(
        input.clone(),
        &mut deserializer,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .and_then(|message| deserializer.end().map(|()| message))
    .map_err(|err| RequestError::InvalidJson {
        line: err.line(),
        column: err.column(),
        detail: err.to_string(),
    })
}

/// The first field of `input` that the top-level object of `body` names twice (as
/// `engineVersion` and `engine_version`, or the same key twice), which the JSON mapping would
/// otherwise take silently, the last one winning. `None` when the body is no object: the
/// parser says what is wrong with it.
fn field_named_twice(input: &MessageDescriptor, body: &[u8]) -> Option<String> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((key, serde::de::IgnoredAny)) = map.next_entry::<String, _>()? {
                        keys.push(key);
                    }
                    Ok(Keys(keys))
                }
            }
            deserializer.deserialize_map(Visitor)
        }
    }
    let Keys(keys) = serde_json::from_slice(body).ok()?;
    let mut seen = Vec::new();
    for key in keys {
        let Some(field) = input
            .get_field_by_json_name(&key)
            .or_else(|| input.get_field_by_name(&key))
        else {
            continue;
        };
        if seen.contains(&field) {
            return Some(field.json_name().to_string());
        }
        seen.push(field);
    }
    None
}

/// Each parameter names a field (either name) not bound by the path; a field takes one value
/// unless it is repeated. A field of a message is named by a dotted path (`selector.regionIds`,
/// as `google.api.http` maps query parameters); in a repeated message field (`tags.key=a&
/// tags.value=b&tags.key=c`) the parameters fill its elements in order, a new element starting
/// when the last one already has the field named. Values are read as the JSON mapping reads
/// strings (enums by name, numbers in strings); `true` and `false` for booleans.
fn from_query(
    input: &MessageDescriptor,
    bound: &[(FieldDescriptor, String)],
    parameters: &[(String, String)],
) -> Result<DynamicMessage, RequestError> {
    let takes = || {
        input
            .fields()
            .filter(|f| !bound.iter().any(|(b, _)| b == f))
            .map(|f| f.json_name().to_string())
            .chain(std::iter::once("timeout".to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Each top-level field with the first parameter that named it and its JSON value so far.
    let mut values: Vec<(FieldDescriptor, &str, serde_json::Value)> = Vec::new();
    for (name, value) in parameters {
        let invalid = |detail: String| RequestError::InvalidParameter {
            name: name.clone(),
            detail,
        };
        let mut path = name.split('.');
        let head = path.next().unwrap_or_default();
        let rest: Vec<&str> = path.collect();
        let field = field_named(input, head).ok_or_else(|| {
            invalid(format!(
                "unknown query parameter; this route takes: {}",
                takes()
            ))
        })?;
        if bound.iter().any(|(b, _)| *b == field) {
            return Err(invalid("is given by the path, not the query".to_string()));
        }
        let position = match values.iter().position(|(f, _, _)| *f == field) {
            Some(i) => i,
            None => {
                values.push((field.clone(), name, empty_json(&field)));
                values.len() - 1
            }
        };
        insert(&mut values[position].2, &field, &rest, value).map_err(invalid)?;
    }
    let mut message = DynamicMessage::new(input.clone());
    for (field, name, value) in values {
        let one = serde_json::Value::Object(
            [(field.json_name().to_string(), value)]
                .into_iter()
                .collect(),
        );
        let parsed = DynamicMessage::deserialize(input.clone(), one).map_err(|err| {
            RequestError::InvalidParameter {
                name: name.to_string(),
                detail: err.to_string(),
            }
        })?;
        message.set_field(&field, parsed.get_field(&field).into_owned());
    }
    Ok(message)
}

/// The field of `message` named `name`, by its JSON name or its proto name.
fn field_named(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_json_name(name)
        .or_else(|| message.get_field_by_name(name))
}

/// A field's JSON value before any parameter set it.
fn empty_json(field: &FieldDescriptor) -> serde_json::Value {
    if field.is_list() {
        serde_json::Value::Array(Vec::new())
    } else if matches!(field.kind(), Kind::Message(_)) {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        serde_json::Value::Null
    }
}

/// Puts the parameter `value` at `path` below `field` into `slot`, the field's JSON value.
fn insert(
    slot: &mut serde_json::Value,
    field: &FieldDescriptor,
    path: &[&str],
    value: &str,
) -> Result<(), String> {
    match (field.kind(), path) {
        (Kind::Message(_), _) if field.is_map() => {
            Err("is a map, which cannot be given as a query parameter".to_string())
        }
        (Kind::Message(message), []) => Err(format!(
            "is a message: name its fields, e.g. {}.{}",
            field.json_name(),
            message
                .fields()
                .next()
                .map(|f| f.json_name().to_string())
                .unwrap_or_default()
        )),
        (Kind::Message(message), [head, tail @ ..]) => {
            let sub = field_named(&message, head)
                .ok_or_else(|| format!("{} has no field {head:?}", message.name()))?;
            let object = match slot {
                serde_json::Value::Array(elements) => {
                    // A new element when the last one already has this field.
                    if elements.last().is_none_or(|last| is_set(last, &sub, tail)) {
                        elements.push(serde_json::Value::Object(serde_json::Map::new()));
                    }
                    elements.last_mut()
                }
                other => Some(other),
            };
            let Some(serde_json::Value::Object(object)) = object else {
                return Err("cannot be given as a query parameter".to_string());
            };
            let entry = object
                .entry(sub.json_name().to_string())
                .or_insert_with(|| empty_json(&sub));
            insert(entry, &sub, tail, value)
        }
        (_, [_, ..]) => Err(format!("{} is not a message", field.json_name())),
        (kind, []) => {
            let value = match kind {
                Kind::Bool => match value {
                    "true" => serde_json::Value::Bool(true),
                    "false" => serde_json::Value::Bool(false),
                    _ => return Err(format!("{value:?} is not true or false")),
                },
                _ => serde_json::Value::String(value.to_string()),
            };
            match slot {
                serde_json::Value::Array(list) => list.push(value),
                serde_json::Value::Null => *slot = value,
                _ => return Err("is given more than once".to_string()),
            }
            Ok(())
        }
    }
}

/// Whether `element` (an object) already has a value at `sub` and then `tail`, so that a
/// parameter naming it belongs to a new element of a repeated message. A repeated field takes
/// more values and is never "set".
fn is_set(element: &serde_json::Value, sub: &FieldDescriptor, tail: &[&str]) -> bool {
    let Some(value) = element.get(sub.json_name()) else {
        return false;
    };
    match (sub.kind(), tail) {
        _ if sub.is_list() => false,
        (Kind::Message(message), [head, rest @ ..]) => {
            field_named(&message, head).is_some_and(|next| is_set(value, &next, rest))
        }
        _ => !value.is_null(),
    }
}

/// `message` as one gRPC message frame (uncompressed).
pub(crate) fn frame(message: &DynamicMessage) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut frame = BytesMut::with_capacity(FRAME_PREFIX + encoded.len());
    frame.put_u8(0);
    // Within u32: requests are bounded by `server.max_request_bytes` before they are parsed.
    frame.put_u32(u32::try_from(encoded.len()).unwrap_or(u32::MAX));
    frame.extend_from_slice(&encoded);
    frame.freeze()
}

/// Takes the next whole message frame's payload off `buffer`, if it holds one.
pub(crate) fn next_frame(buffer: &mut BytesMut) -> Result<Option<Bytes>, String> {
    if buffer.len() < FRAME_PREFIX {
        return Ok(None);
    }
    if buffer[0] != 0 {
        return Err("a compressed gRPC message, which the gateway never sends".to_string());
    }
    let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    if buffer.len() < FRAME_PREFIX + length {
        return Ok(None);
    }
    buffer.advance(FRAME_PREFIX);
    Ok(Some(buffer.split_to(length).freeze()))
}

/// The JSON of one encoded answer of type `output`.
pub(crate) fn answer(output: &MessageDescriptor, payload: &[u8]) -> Result<Vec<u8>, String> {
    let message = DynamicMessage::decode(output.clone(), payload)
        .map_err(|e| format!("cannot decode the answer: {e}"))?;
    let mut out = Vec::new();
    message
        .serialize_with_options(
            &mut serde_json::Serializer::new(&mut out),
            &SerializeOptions::new().skip_default_fields(false),
        )
        .map_err(|e| format!("cannot write the answer as JSON: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use prost_reflect::DescriptorPool;

    use super::*;
    use crate::pb;

    fn descriptor(name: &str) -> MessageDescriptor {
        DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET)
            .unwrap()
            .get_message_by_name(&format!("dds.gateway.v1.{name}"))
            .unwrap()
    }

    fn bound(input: &MessageDescriptor, id: &str) -> Vec<(FieldDescriptor, String)> {
        vec![(
            input.get_field_by_name("db_instance_id").unwrap(),
            id.to_string(),
        )]
    }

    fn upgrade(body: &str) -> Result<pb::UpgradeEngineVersionRequest, RequestError> {
        let input = descriptor("UpgradeEngineVersionRequest");
        let message = request(&input, bound(&input, "dds-a1"), &[], Some(body.as_bytes()))?;
        Ok(pb::UpgradeEngineVersionRequest::decode(message.encode_to_vec().as_slice()).unwrap())
    }

    #[test]
    fn bodies_take_both_names_and_enums_by_name() {
        let camel = upgrade(
            r#"{"engineVersion":"4.4","regionId":"cn-hangzhou","switchMode":"SWITCH_MODE_MAINTENANCE_WINDOW","requestId":"r","validateOnly":true}"#,
        )
        .unwrap();
        let snake = upgrade(
            r#"{"engine_version":"4.4","region_id":"cn-hangzhou","switch_mode":"SWITCH_MODE_MAINTENANCE_WINDOW","request_id":"r","validate_only":true}"#,
        )
        .unwrap();
        assert_eq!(camel, snake);
        assert_eq!(camel.db_instance_id, "dds-a1");
        assert_eq!(camel.switch_mode, pb::SwitchMode::MaintenanceWindow as i32);
        assert!(camel.validate_only);
        // The path's id may be repeated in the body, not contradicted.
        assert!(upgrade(r#"{"dbInstanceId":"dds-a1","engineVersion":"4.4"}"#).is_ok());
        assert!(matches!(
            upgrade(r#"{"dbInstanceId":"dds-b2","engineVersion":"4.4"}"#),
            Err(RequestError::InvalidParameter { name, .. }) if name == "db_instance_id"
        ));
    }

    #[test]
    fn bad_bodies_say_what_and_where() {
        for (body, needle) in [
            (r#"{"engineVersion":"4.4","colour":"red"}"#, "colour"),
            (r#"{"engineVersion":4.4}"#, "invalid type"),
            (r#"{"switchMode":"SOMETIMES"}"#, "SOMETIMES"),
            (r#"{"engineVersion":"4.4""#, "EOF"),
            (r#"{"engineVersion":"4.4"} trailing"#, "trailing"),
            ("[]", "invalid type"),
        ] {
            match upgrade(body) {
                Err(RequestError::InvalidJson { detail, .. }) => {
                    assert!(detail.contains(needle), "{body}: {detail}");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn query_parameters_fill_the_unbound_fields() {
        let input = descriptor("WatchUpgradeRequest");
        let params = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let read = |list: &[(&str, &str)]| {
            request(&input, bound(&input, "dds-a1"), &params(list), None)
                .map(|m| pb::WatchUpgradeRequest::decode(m.encode_to_vec().as_slice()).unwrap())
        };
        let watch = read(&[("engineVersion", "4.4"), ("region_id", "cn-hangzhou")]).unwrap();
        assert_eq!(
            (
                watch.db_instance_id.as_str(),
                watch.engine_version.as_str(),
                watch.region_id.as_str()
            ),
            ("dds-a1", "4.4", "cn-hangzhou")
        );
        for (list, name) in [
            (&[("colour", "red")][..], "colour"),
            (&[("dbInstanceId", "dds-x")][..], "dbInstanceId"),
            (
                &[("engineVersion", "4.4"), ("engine_version", "5.0")][..],
                "engine_version",
            ),
        ] {
            match read(list) {
                Err(RequestError::InvalidParameter { name: got, .. }) => assert_eq!(got, name),
                other => panic!("{list:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn repeated_and_nested_query_parameters_fill_the_message() {
        let input = descriptor("ListInstancesRequest");
        let read = |list: &[(&str, &str)]| {
            let params: Vec<(String, String)> = list
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            request(&input, Vec::new(), &params, None)
                .map(|m| pb::ListInstancesRequest::decode(m.encode_to_vec().as_slice()).unwrap())
        };
        let list = read(&[
            ("regionIds", "cn-hangzhou"),
            ("region_ids", "cn-shenzhen"),
            ("tags.key", "env"),
            ("tags.value", "prod"),
            ("tags.key", "team"),
            ("tags.key", "tier"),
            ("tags.value", "gold"),
            ("resourceGroupId", "rg-1"),
        ])
        .unwrap();
        assert_eq!(list.region_ids, ["cn-hangzhou", "cn-shenzhen"]);
        let tag = |k: &str, v: &str| pb::Tag {
            key: k.into(),
            value: v.into(),
        };
        assert_eq!(
            list.tags,
            [tag("env", "prod"), tag("team", ""), tag("tier", "gold")],
            "a field already set in the last element starts the next one"
        );
        assert_eq!(list.resource_group_id, "rg-1");
        for (params, name, needle) in [
            (&[("tags", "env")][..], "tags", "tags.key"),
            (&[("tags.colour", "red")][..], "tags.colour", "no field"),
            (&[("regionIds.x", "y")][..], "regionIds.x", "not a message"),
            (
                &[("resourceGroupId", "a"), ("resourceGroupId", "b")][..],
                "resourceGroupId",
                "more than once",
            ),
        ] {
            match read(params) {
                Err(RequestError::InvalidParameter { name: got, detail }) => {
                    assert_eq!(got, name);
                    assert!(detail.contains(needle), "{params:?}: {detail}");
                }
                other => panic!("{params:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn answers_are_lower_camel_case_with_every_field() {
        let answer_type = descriptor("WatchUpgradeResponse");
        let encoded = pb::WatchUpgradeResponse {
            db_instance_id: "dds-a1".into(),
            status: "Running".into(),
            engine_version: "4.4".into(),
            target_engine_version: "4.4".into(),
            done: false,
        }
        .encode_to_vec();
        let mut buffer = BytesMut::new();
        let framed =
            frame(&DynamicMessage::decode(answer_type.clone(), encoded.as_slice()).unwrap());
        // Frames may arrive in pieces.
        buffer.extend_from_slice(&framed[..3]);
        assert_eq!(next_frame(&mut buffer).unwrap(), None);
        buffer.extend_from_slice(&framed[3..]);
        let payload = next_frame(&mut buffer).unwrap().unwrap();
        assert!(buffer.is_empty());
        let json: serde_json::Value =
            serde_json::from_slice(&answer(&answer_type, &payload).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "dbInstanceId": "dds-a1",
                "status": "Running",
                "engineVersion": "4.4",
                "targetEngineVersion": "4.4",
                "done": false
            })
        );
    }
}
