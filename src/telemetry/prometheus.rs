//! The Prometheus text exposition format (0.0.4) of the gateway's OpenTelemetry metrics, read on
//! demand by the admin endpoint. Hand-written because the OpenTelemetry Prometheus exporter is
//! discontinued, and a second set of instruments (`prometheus-client`) for the same facts would
//! have to be kept in step with the OTLP ones.

use std::fmt::Write as _;
use std::sync::{Arc, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};

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
    let suffix = match unit {
        "s" => "_seconds",
        "By" => "_bytes",
        _ => "",
    };
    if !out.ends_with(suffix) {
        out.push_str(suffix);
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
    use crate::telemetry::metrics::Metrics;
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
        assert_eq!(
            prometheus_name("process.resident_memory", "By", false),
            "process_resident_memory_bytes"
        );
        assert_eq!(
            prometheus_name("process.cpu", "s", true),
            "process_cpu_seconds_total"
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
}
