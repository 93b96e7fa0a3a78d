//! Log lines: one JSON object per line or human-readable text (by default text on a terminal,
//! JSON otherwise), each carrying the
//! `trace_id` and `span_id` of the span it was logged in, so a line leads to its trace.
//!
//! A layer of its own rather than `tracing_subscriber::fmt`: the formatter needs the
//! OpenTelemetry context of the current span, which only the dispatcher can give, and a
//! formatter never sees the dispatcher.

use std::io::Write as _;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::trace::TraceContextExt as _;
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::config::telemetry::LogFormat;

/// Where log lines go.
#[derive(Debug, Clone, Default)]
pub enum LogOutput {
    /// Nowhere.
    #[default]
    Off,
    /// Standard error (the binary).
    Stderr,
    /// A shared buffer (tests read it).
    Buffer(Arc<Mutex<Vec<u8>>>),
    /// Hands each event, as it is, to another dispatcher: the one that was in place before
    /// this pipeline (so that [`serve`](crate::server::serve) keeps logging where its caller
    /// logs). That subscriber filters and formats; it sees no spans, so no trace ids.
    Forward(Dispatch),
}

/// The log layer for `output` (one that writes nothing when logs are off: an `Option` of a
/// layer would not pass the dispatcher on).
pub(crate) fn layer(output: LogOutput, format: LogFormat) -> LogLayer {
    // Text only for people: a terminal, never a buffer or a pipe.
    let format = match format {
        LogFormat::Auto
            if matches!(output, LogOutput::Stderr)
                && std::io::IsTerminal::is_terminal(&std::io::stderr()) =>
        {
            LogFormat::Text
        }
        LogFormat::Auto => LogFormat::Json,
        chosen => chosen,
    };
    LogLayer {
        output,
        format,
        dispatch: OnceLock::new(),
    }
}

/// Writes each event as one line.
#[derive(Debug)]
pub(crate) struct LogLayer {
    output: LogOutput,
    format: LogFormat,
    /// The dispatcher this layer is part of, to ask the OpenTelemetry layer for span contexts.
    dispatch: OnceLock<WeakDispatch>,
}

/// An event's fields in order, message apart. Each value is kept already written as JSON (which
/// is also how text lines show it: strings quoted and escaped, so a caller's value cannot forge
/// a line) in one buffer, so an event costs no allocation per field.
#[derive(Default)]
struct Fields {
    message: String,
    /// Every value's JSON, back to back; `fields` holds each one's name and range.
    values: Vec<u8>,
    fields: Vec<(&'static str, Range<usize>)>,
}

impl Fields {
    fn push(&mut self, field: &Field, value: impl serde::Serialize) {
        let start = self.values.len();
        push_json(&mut self.values, value);
        self.fields.push((field.name(), start..self.values.len()));
    }
}

/// Appends `value` as JSON, exactly as `serde_json` prints it (strings escaped, a non-finite
/// float as `null`).
fn push_json(out: &mut Vec<u8>, value: impl serde::Serialize) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(out, &value);
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.push(field, value);
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, value);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, value);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            // Escaped as it is formatted: no string in between.
            self.push(field, AsJsonString(value));
        }
    }
}

/// A `Debug` value serialized as a JSON string of its `{:?}` text.
struct AsJsonString<'a>(&'a dyn std::fmt::Debug);

impl serde::Serialize for AsJsonString<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{:?}", self.0))
    }
}

/// Writes one JSON object with the keys in byte order and, for a key given twice, the last
/// value: the same bytes as building a `serde_json::Map` (a `BTreeMap`) and printing it.
fn write_json_object(line: &mut Vec<u8>, entries: &mut [(&str, &[u8])]) {
    // A stable sort keeps equal keys in the order given, so the last of a run wins.
    entries.sort_by(|a, b| a.0.cmp(b.0));
    line.push(b'{');
    let mut first = true;
    for (i, (key, value)) in entries.iter().enumerate() {
        if entries.get(i + 1).is_some_and(|next| next.0 == *key) {
            continue;
        }
        if !first {
            line.push(b',');
        }
        first = false;
        push_json(line, key);
        line.push(b':');
        line.extend_from_slice(value);
    }
    line.push(b'}');
}

impl<S> tracing_subscriber::Layer<S> for LogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        match &self.output {
            LogOutput::Off => return,
            LogOutput::Forward(ambient) => {
                if ambient.enabled(event.metadata()) {
                    ambient.event(event);
                }
                return;
            }
            LogOutput::Stderr | LogOutput::Buffer(_) => {}
        }
        let metadata = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let span = ctx.event_span(event);
        let span_name = span.as_ref().map(|s| s.name());
        // No extension of the span is held here, as `get_otel_context` requires.
        let ids = span.as_ref().and_then(|span| {
            let dispatch = self.dispatch.get()?.upgrade()?;
            let context = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
            let otel_span = context.span();
            let span_context = otel_span.span_context();
            span_context.is_valid().then(|| {
                (
                    span_context.trace_id().to_string(),
                    span_context.span_id().to_string(),
                )
            })
        });
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let mut line = Vec::with_capacity(256 + fields.values.len());
        match self.format {
            // `Auto` was decided in `layer`.
            LogFormat::Json | LogFormat::Auto => {
                // Each value as JSON, then the keys in the order that decides which of two equal
                // keys wins: the event's own fields after the standard ones, span ids last.
                let mut scalars = Vec::with_capacity(160);
                let mut at = |value: &str| {
                    let start = scalars.len();
                    push_json(&mut scalars, value);
                    start..scalars.len()
                };
                let time_at = at(&time.to_string());
                let level_at = at(metadata.level().as_str());
                let target_at = at(metadata.target());
                let message_at = at(&fields.message);
                let span_at = span_name.map(&mut at);
                let ids_at = ids
                    .as_ref()
                    .map(|(trace_id, span_id)| (at(trace_id), at(span_id)));
                let mut entries: Vec<(&str, &[u8])> = Vec::with_capacity(fields.fields.len() + 7);
                entries.push(("timestamp", &scalars[time_at]));
                entries.push(("level", &scalars[level_at]));
                entries.push(("target", &scalars[target_at]));
                entries.push(("message", &scalars[message_at]));
                for (name, range) in &fields.fields {
                    entries.push((name, &fields.values[range.clone()]));
                }
                if let Some(range) = span_at {
                    entries.push(("span", &scalars[range]));
                }
                if let Some((trace_at, span_id_at)) = ids_at {
                    entries.push(("trace_id", &scalars[trace_at]));
                    entries.push(("span_id", &scalars[span_id_at]));
                }
                write_json_object(&mut line, &mut entries);
            }
            LogFormat::Text => {
                let _ = write!(
                    line,
                    "{time} {:>5} {}: {}",
                    metadata.level().as_str(),
                    metadata.target(),
                    fields.message.escape_debug()
                );
                for (name, range) in &fields.fields {
                    line.push(b' ');
                    line.extend_from_slice(name.as_bytes());
                    line.push(b'=');
                    line.extend_from_slice(&fields.values[range.clone()]);
                }
                if let Some((trace_id, span_id)) = ids {
                    let _ = write!(line, " trace_id={trace_id} span_id={span_id}");
                }
            }
        }
        line.push(b'\n');
        match &self.output {
            LogOutput::Off | LogOutput::Forward(_) => {}
            LogOutput::Stderr => {
                let _ = std::io::stderr().lock().write_all(&line);
            }
            LogOutput::Buffer(buffer) => {
                if let Ok(mut buffer) = buffer.lock() {
                    buffer.extend_from_slice(&line);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    fn one_line(format: LogFormat, emit: impl FnOnce()) -> String {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let subscriber =
            tracing_subscriber::registry().with(layer(LogOutput::Buffer(buffer.clone()), format));
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = buffer.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap().trim_end().to_string()
    }

    #[test]
    fn json_lines_are_exactly_what_serde_json_prints_for_the_same_object() {
        let line = one_line(LogFormat::Json, || {
            tracing::info!(
                target: "dds_gateway::access",
                quote = "a\"b\\\n\u{7}中",
                n = -3i64,
                u = 7u64,
                ok = true,
                nan = f64::NAN,
                half = 1.5,
                debug = ?Some("x"),
                level = "shadowed",
                "hello {}", 1
            );
        });
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        // serde_json prints a map with sorted keys: the same bytes mean the same order and escapes.
        assert_eq!(value.to_string(), line);
        assert_eq!(
            value["level"], "shadowed",
            "a field wins over the standard key"
        );
        assert_eq!(value["message"], "hello 1");
        assert_eq!(value["target"], "dds_gateway::access");
        assert_eq!(value["quote"], "a\"b\\\n\u{7}中");
        assert_eq!(value["nan"], serde_json::Value::Null);
        assert_eq!(value["debug"], "Some(\"x\")");
        assert_eq!(value["u"], 7);
        assert_eq!(value["n"], -3);
        assert_eq!(value["half"], 1.5);
        assert_eq!(value["ok"], true);
    }

    #[test]
    fn text_lines_quote_string_fields() {
        let line = one_line(LogFormat::Text, || {
            tracing::warn!(target: "t", who = "a\"\nb", n = 2u64, "said");
        });
        assert!(
            line.ends_with(" WARN t: said who=\"a\\\"\\nb\" n=2"),
            "{line}"
        );
    }
}
