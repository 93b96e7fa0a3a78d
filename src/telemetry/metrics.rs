//! The gateway's metrics: OpenTelemetry instruments (pushed over OTLP when configured), read on
//! demand into the Prometheus text format for the admin port.
//!
//! RPC metrics are recorded by [`rpc`](super::rpc)'s layer. Upstream calls, credential
//! refreshes and audit write failures are counted from the spans and events those modules
//! emit anyway (by their [`names`], never by message text), so they need no handle
//! to the metrics.

use std::fmt::Write as _;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, UpDownCounter};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::names::{self, upstream};

/// Bucket bounds (seconds) of the latency histograms: a few ms (validation failures) to a
/// minute (the longest sensible deadline).
const LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The gateway's instruments.
#[derive(Debug, Clone)]
pub struct Metrics {
    rpc_requests: Counter<u64>,
    rpc_duration: Histogram<f64>,
    rpc_in_flight: UpDownCounter<i64>,
    upstream_requests: Counter<u64>,
    upstream_duration: Histogram<f64>,
    credential_refreshes: Counter<u64>,
    audit_write_failures: Counter<u64>,
    rate_limit_fallbacks: Counter<u64>,
    connections_open: UpDownCounter<i64>,
    connections_closed: Counter<u64>,
    state_store_up: Gauge<u64>,
}

impl Metrics {
    pub(crate) fn new(meter: &Meter) -> Self {
        Self {
            rpc_requests: meter
                .u64_counter("dds_gateway.rpc.requests")
                .with_description("gRPC calls answered, by method and gRPC status code")
                .build(),
            rpc_duration: meter
                .f64_histogram("dds_gateway.rpc.duration")
                .with_unit("s")
                .with_description("Time from a gRPC call's arrival to its status")
                .with_boundaries(LATENCY_BOUNDS.to_vec())
                .build(),
            rpc_in_flight: meter
                .i64_up_down_counter("dds_gateway.rpc.in_flight")
                .with_description("gRPC calls being served")
                .build(),
            upstream_requests: meter
                .u64_counter("dds_gateway.upstream.requests")
                .with_description(
                    "Alibaba Cloud request attempts, by action, outcome and Alibaba error Code",
                )
                .build(),
            upstream_duration: meter
                .f64_histogram("dds_gateway.upstream.duration")
                .with_unit("s")
                .with_description("Time of one Alibaba Cloud request attempt")
                .with_boundaries(LATENCY_BOUNDS.to_vec())
                .build(),
            credential_refreshes: meter
                .u64_counter("dds_gateway.credentials.refreshes")
                .with_description("Credential fetches and refreshes, by outcome (ok, error)")
                .build(),
            audit_write_failures: meter
                .u64_counter("dds_gateway.audit.write_failures")
                .with_description("Audit events that could not be written to the audit file")
                .build(),
            rate_limit_fallbacks: meter
                .u64_counter("dds_gateway.rate_limit.local_fallbacks")
                .with_description(
                    "Calls rate-limited by this replica's bucket because the shared store could not be reached",
                )
                .build(),
            connections_open: meter
                .i64_up_down_counter("dds_gateway.connections.open")
                .with_description("Client connections open")
                .build(),
            connections_closed: meter
                .u64_counter("dds_gateway.connections.closed")
                .with_description(
                    "Client connections the gateway closed, by reason (max_connections, preface_timeout)",
                )
                .build(),
            state_store_up: meter
                .u64_gauge("dds_gateway.state_store.up")
                .with_description(
                    "Whether the state store could be reached at the last check (1) or not (0); always 1 for the memory store",
                )
                .build(),
        }
    }

    pub(crate) fn state_store_reachable(&self, reachable: bool) {
        self.state_store_up.record(u64::from(reachable), &[]);
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_open.add(1, &[]);
    }

    pub(crate) fn connection_ended(&self) {
        self.connections_open.add(-1, &[]);
    }

    pub(crate) fn connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .add(1, &[KeyValue::new("reason", reason)]);
    }

    /// `method` is one of a fixed set (see [`rpc::method_label`](super::rpc::method_label)), so
    /// the label's values are bounded whatever paths callers send.
    pub(crate) fn rpc_started(&self, method: &'static str) {
        self.rpc_in_flight
            .add(1, &[KeyValue::new("rpc.method", method)]);
    }

    pub(crate) fn rpc_finished(&self, method: &'static str, code: &'static str, elapsed: Duration) {
        self.rpc_in_flight
            .add(-1, &[KeyValue::new("rpc.method", method)]);
        let attributes = [
            KeyValue::new("rpc.method", method),
            KeyValue::new("rpc.response.status_code", code),
        ];
        self.rpc_requests.add(1, &attributes);
        self.rpc_duration.record(elapsed.as_secs_f64(), &attributes);
    }

    /// A call over JSON/HTTP: the RPC metrics, also labelled with its route.
    pub(crate) fn json_started(&self, method: &str, route: &str) {
        self.rpc_in_flight.add(1, &json_labels(method, route));
    }

    pub(crate) fn json_finished(
        &self,
        method: &str,
        route: &str,
        code: &'static str,
        elapsed: Duration,
    ) {
        let [method, route] = json_labels(method, route);
        self.rpc_in_flight.add(-1, &[method.clone(), route.clone()]);
        let attributes = [
            method,
            route,
            KeyValue::new("rpc.response.status_code", code),
        ];
        self.rpc_requests.add(1, &attributes);
        self.rpc_duration.record(elapsed.as_secs_f64(), &attributes);
    }

    fn upstream_finished(&self, attempt: &UpstreamAttempt, elapsed: Duration) {
        let mut attributes = vec![
            KeyValue::new("alibaba_cloud.action", attempt.action.clone()),
            KeyValue::new("outcome", attempt.outcome()),
        ];
        self.upstream_duration
            .record(elapsed.as_secs_f64(), &attributes);
        if let Some(code) = &attempt.error_code {
            attributes.push(KeyValue::new("alibaba_cloud.error_code", code.clone()));
        }
        self.upstream_requests.add(1, &attributes);
    }
}

fn json_labels(method: &str, route: &str) -> [KeyValue; 2] {
    [
        KeyValue::new("rpc.method", method.to_string()),
        KeyValue::new("http.route", route.to_string()),
    ]
}

/// Counts what other modules report through `tracing`: the CLIENT spans of upstream attempts
/// (duration, outcome, Alibaba `Code`), credential fetches and refreshes, audit write failures.
#[derive(Debug)]
pub(crate) struct EventCounter {
    metrics: Metrics,
}

impl EventCounter {
    pub(crate) fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

/// What an upstream attempt's span recorded.
#[derive(Debug, Default)]
struct UpstreamAttempt {
    started: Option<Instant>,
    action: String,
    http_status: Option<i64>,
    error_code: Option<String>,
    error_type: Option<String>,
}

impl UpstreamAttempt {
    fn outcome(&self) -> String {
        if self.error_code.is_some() {
            "alibaba_error".to_string()
        } else if let Some(error) = &self.error_type {
            error.clone()
        } else if self.http_status.is_some_and(|s| (200..300).contains(&s)) {
            "ok".to_string()
        } else {
            "unknown".to_string()
        }
    }
}

impl Visit for UpstreamAttempt {
    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == upstream::HTTP_STATUS {
            self.http_status = Some(value);
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_i64(field, i64::try_from(value).unwrap_or(i64::MAX));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            upstream::ACTION => self.action = value.to_string(),
            upstream::ERROR_CODE => self.error_code = Some(value.to_string()),
            upstream::ERROR_TYPE => self.error_type = Some(value.to_string()),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, format!("{value:?}").trim_matches('"'));
    }
}

/// The `message` of an event.
#[derive(Default)]
struct CredentialOutcome(Option<&'static str>);

impl Visit for CredentialOutcome {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == names::CREDENTIAL_OUTCOME {
            self.0 = match value {
                "ok" => Some("ok"),
                "error" => Some("error"),
                _ => None,
            };
        }
    }
    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

impl<S> tracing_subscriber::Layer<S> for EventCounter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != upstream::SPAN_NAME {
            return;
        }
        let mut attempt = UpstreamAttempt {
            started: Some(Instant::now()),
            ..UpstreamAttempt::default()
        };
        attrs.record(&mut attempt);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(attempt);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(attempt) = span.extensions_mut().get_mut::<UpstreamAttempt>()
        {
            values.record(attempt);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(attempt) = span.extensions_mut().remove::<UpstreamAttempt>() else {
            return;
        };
        let elapsed = attempt.started.map(|s| s.elapsed()).unwrap_or_default();
        self.metrics.upstream_finished(&attempt, elapsed);
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let target = event.metadata().target();
        if target == crate::limits::FALLBACK_TARGET {
            self.metrics.rate_limit_fallbacks.add(1, &[]);
            return;
        }
        if target == crate::audit::TARGET {
            if *event.metadata().level() == tracing::Level::ERROR {
                self.metrics.audit_write_failures.add(1, &[]);
            }
            return;
        }
        let mut outcome = CredentialOutcome::default();
        event.record(&mut outcome);
        let Some(outcome) = outcome.0 else { return };
        self.metrics
            .credential_refreshes
            .add(1, &[KeyValue::new("outcome", outcome)]);
    }
}

/// A manual reader the meter provider and the admin endpoint share.
#[derive(Debug, Clone)]
pub(crate) struct PrometheusReader(Arc<ManualReader>);

impl PrometheusReader {
    pub(crate) fn new() -> Self {
        Self(Arc::new(
            ManualReader::builder()
                .with_temporality(Temporality::Cumulative)
                .build(),
        ))
    }

    /// Collects every metric and encodes it in the Prometheus text format (0.0.4).
    pub(crate) fn render(&self) -> String {
        let mut collected = ResourceMetrics::default();
        if let Err(err) = self.0.collect(&mut collected) {
            tracing::warn!(error = %err, "cannot collect metrics");
            return String::new();
        }
        encode(&collected)
    }
}

impl MetricReader for PrometheusReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// The Prometheus name of an OpenTelemetry metric: dots become underscores, the unit a suffix,
/// counters end in `_total` (the OpenTelemetry-to-Prometheus compatibility rules).
fn prometheus_name(name: &str, unit: &str, counter: bool) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if unit == "s" && !out.ends_with("_seconds") {
        out.push_str("_seconds");
    }
    if counter {
        out.push_str("_total");
    }
    out
}

fn labels<'a>(
    attributes: impl Iterator<Item = &'a KeyValue>,
    extra: Option<(&str, &str)>,
) -> String {
    let mut pairs: Vec<(String, String)> = attributes
        .map(|kv| {
            (
                prometheus_name(kv.key.as_str(), "", false),
                kv.value.as_str().into_owned(),
            )
        })
        .collect();
    if let Some((k, v)) = extra {
        pairs.push((k.to_string(), v.to_string()));
    }
    if pairs.is_empty() {
        return String::new();
    }
    let body = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect::<Vec<_>>()
        .join(",");
    format!("{{{body}}}")
}

trait Number: Copy + std::fmt::Display {
    fn as_f64(self) -> f64;
}
impl Number for u64 {
    fn as_f64(self) -> f64 {
        self as f64
    }
}
impl Number for i64 {
    fn as_f64(self) -> f64 {
        self as f64
    }
}
impl Number for f64 {
    fn as_f64(self) -> f64 {
        self
    }
}

fn encode(metrics: &ResourceMetrics) -> String {
    let mut out = String::new();
    for scope in metrics.scope_metrics() {
        for metric in scope.metrics() {
            match metric.data() {
                AggregatedMetrics::U64(data) => encode_data(&mut out, metric, data),
                AggregatedMetrics::I64(data) => encode_data(&mut out, metric, data),
                AggregatedMetrics::F64(data) => encode_data(&mut out, metric, data),
            }
        }
    }
    out
}

fn encode_data<T: Number>(
    out: &mut String,
    metric: &opentelemetry_sdk::metrics::data::Metric,
    data: &MetricData<T>,
) {
    let help = metric.description().replace('\n', " ");
    match data {
        MetricData::Sum(sum) => {
            let counter = sum.is_monotonic();
            let name = prometheus_name(metric.name(), metric.unit(), counter);
            let kind = if counter { "counter" } else { "gauge" };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for point in sum.data_points() {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    labels(point.attributes(), None),
                    point.value()
                );
            }
        }
        MetricData::Gauge(gauge) => {
            let name = prometheus_name(metric.name(), metric.unit(), false);
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for point in gauge.data_points() {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    labels(point.attributes(), None),
                    point.value()
                );
            }
        }
        MetricData::Histogram(histogram) => {
            let name = prometheus_name(metric.name(), metric.unit(), false);
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for point in histogram.data_points() {
                let mut cumulative = 0;
                for (bound, count) in point.bounds().zip(point.bucket_counts()) {
                    cumulative += count;
                    let le = bound.to_string();
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {cumulative}",
                        labels(point.attributes(), Some(("le", &le)))
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    labels(point.attributes(), Some(("le", "+Inf"))),
                    point.count()
                );
                let plain = labels(point.attributes(), None);
                let _ = writeln!(out, "{name}_sum{plain} {}", point.sum().as_f64());
                let _ = writeln!(out, "{name}_count{plain} {}", point.count());
            }
        }
        // Not configured anywhere in the gateway.
        MetricData::ExponentialHistogram(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    #[test]
    fn names_follow_the_prometheus_compatibility_rules() {
        assert_eq!(
            prometheus_name("dds_gateway.rpc.requests", "", true),
            "dds_gateway_rpc_requests_total"
        );
        assert_eq!(
            prometheus_name("dds_gateway.rpc.duration", "s", false),
            "dds_gateway_rpc_duration_seconds"
        );
    }

    #[test]
    fn encodes_counters_gauges_and_cumulative_histograms() {
        let reader = PrometheusReader::new();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader.clone())
            .build();
        let metrics = Metrics::new(&provider.meter("test"));
        metrics.rpc_started("svc/M");
        metrics.rpc_finished("svc/M", "OK", Duration::from_millis(20));
        metrics.rpc_started("svc/M");
        metrics.rpc_finished("svc/M", "NOT_FOUND", Duration::from_secs(2));
        metrics.rpc_started("svc/\"quoted\"");
        let text = reader.render();
        assert!(
            text.contains("# TYPE dds_gateway_rpc_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains("dds_gateway_rpc_requests_total{rpc_method=\"svc/M\",rpc_response_status_code=\"OK\"} 1")
                || text.contains("dds_gateway_rpc_requests_total{rpc_response_status_code=\"OK\",rpc_method=\"svc/M\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE dds_gateway_rpc_in_flight gauge"),
            "{text}"
        );
        assert!(
            text.contains("dds_gateway_rpc_in_flight{rpc_method=\"svc/\\\"quoted\\\"\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dds_gateway_rpc_in_flight{rpc_method=\"svc/M\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE dds_gateway_rpc_duration_seconds histogram"),
            "{text}"
        );
        // 20 ms falls in the 0.025 bucket and every later one; 2 s only from 2.5 on.
        let bucket = |le: &str, code: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("dds_gateway_rpc_duration_seconds_bucket")
                        && l.contains(&format!("le=\"{le}\""))
                        && l.contains(&format!("\"{code}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_string)
        };
        assert_eq!(bucket("0.01", "OK").as_deref(), Some("0"));
        assert_eq!(bucket("0.025", "OK").as_deref(), Some("1"));
        assert_eq!(bucket("+Inf", "OK").as_deref(), Some("1"));
        assert_eq!(bucket("1", "NOT_FOUND").as_deref(), Some("0"));
        assert_eq!(bucket("2.5", "NOT_FOUND").as_deref(), Some("1"));
    }

    #[test]
    fn credential_refreshes_are_counted_from_a_field_not_from_message_text() {
        // Written as the emitters write it (an identifier): the layer must read the same name.
        use tracing_subscriber::layer::SubscriberExt as _;
        let reader = PrometheusReader::new();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader.clone())
            .build();
        let metrics = Metrics::new(&provider.meter("test"));
        let subscriber = tracing_subscriber::registry().with(EventCounter::new(metrics));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                provider = "x",
                credential_outcome = "ok",
                "credential fetched"
            );
            tracing::info!(credential_outcome = "ok", "anything at all");
            tracing::warn!(credential_outcome = "error", "credential refresh failed");
            tracing::info!(credential_outcome = "neither", "credential refreshed");
            // The old wording alone no longer counts.
            tracing::info!(target: "dds_gateway::alibaba::credentials::cache", "credential refreshed");
        });
        let text = reader.render();
        assert!(
            text.contains("dds_gateway_credentials_refreshes_total{outcome=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("dds_gateway_credentials_refreshes_total{outcome=\"error\"} 1"),
            "{text}"
        );
    }
}
