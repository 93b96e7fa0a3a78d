//! Log lines: one JSON object per line (default) or human-readable text, each carrying the
//! `trace_id` and `span_id` of the span it was logged in, so a line leads to its trace.
//!
//! A layer of its own rather than `tracing_subscriber::fmt`: the formatter needs the
//! OpenTelemetry context of the current span, which only the dispatcher can give, and a
//! formatter never sees the dispatcher.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::trace::TraceContextExt as _;
use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::LogFormat;

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

/// An event's fields in order, message apart.
#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(&'static str, Value)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.push((field.name(), Value::from(value)));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name(), Value::from(value)));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name(), Value::from(value)));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name(), Value::from(value)));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.push((field.name(), Value::from(value)));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .push((field.name(), Value::from(format!("{value:?}"))));
        }
    }
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
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let mut line = match self.format {
            LogFormat::Json => {
                let mut object = Map::new();
                object.insert("timestamp".into(), Value::from(time));
                object.insert("level".into(), Value::from(metadata.level().as_str()));
                object.insert("target".into(), Value::from(metadata.target()));
                object.insert("message".into(), Value::from(fields.message));
                for (name, value) in fields.fields {
                    object.insert(name.to_string(), value);
                }
                if let Some(name) = span_name {
                    object.insert("span".into(), Value::from(name));
                }
                if let Some((trace_id, span_id)) = ids {
                    object.insert("trace_id".into(), Value::from(trace_id));
                    object.insert("span_id".into(), Value::from(span_id));
                }
                Value::Object(object).to_string()
            }
            LogFormat::Text => {
                let mut line = format!(
                    "{time} {:>5} {}: {}",
                    metadata.level().as_str(),
                    metadata.target(),
                    fields.message.escape_debug()
                );
                for (name, value) in fields.fields {
                    // Strings are quoted and escaped: a caller's value cannot forge a line.
                    let _ = write!(line, " {name}={value}");
                }
                if let Some((trace_id, span_id)) = ids {
                    let _ = write!(line, " trace_id={trace_id} span_id={span_id}");
                }
                line
            }
        };
        line.push('\n');
        match &self.output {
            LogOutput::Off | LogOutput::Forward(_) => {}
            LogOutput::Stderr => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
            LogOutput::Buffer(buffer) => {
                if let Ok(mut buffer) = buffer.lock() {
                    buffer.extend_from_slice(line.as_bytes());
                }
            }
        }
    }
}
