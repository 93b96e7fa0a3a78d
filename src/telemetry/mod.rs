//! Telemetry: OpenTelemetry traces exported over OTLP, metrics (OTLP and Prometheus text on the
//! admin port), and structured logs carrying `trace_id` and `span_id`.
//!
//! One [`Telemetry`] per gateway holds its own tracer and meter providers and its own
//! `tracing` dispatcher, so two gateways in one process (tests) never share spans or counters.
//! The binary installs that dispatcher globally; [`rpc`]'s layer also enters it for every call,
//! because tonic runs connections on tasks that know no dispatcher of their own.
//!
//! - [`config::telemetry`](crate::config::telemetry): `[telemetry]` / `[audit]` and the standard
//!   `OTEL_*` variables.
//! - [`rpc`]: the SERVER span, metrics and access log line of every gRPC call.
//! - [`alibaba::trace`](crate::alibaba::trace): the CLIENT span of every Alibaba Cloud request
//!   attempt.
//! - [`metrics`]: the instruments, one handle passed to whoever counts.
//! - [`process`]: build information and the process's CPU, memory and file descriptors.
//! - [`prometheus`]: the Prometheus text of every metric.
//! - [`export`]: OTLP export failures, counted and logged once per episode.
//! - [`logs`]: JSON or text log lines with trace ids.
//! - [`admin`]: the admin HTTP server (`GET /metrics`).

pub(crate) mod admin;
pub(crate) mod export;
pub(crate) mod logs;
pub(crate) mod metrics;
pub(crate) mod process;
pub(crate) mod prometheus;
pub(crate) mod rpc;

use std::sync::{Arc, OnceLock};

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Dispatch;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

pub(crate) use crate::config::telemetry::{Otlp, Protocol, TelemetryConfig};
pub(crate) use logs::LogOutput;
pub(crate) use metrics::Metrics;

/// The instrumentation scope of the gateway's spans and metrics.
pub(crate) const SCOPE: &str = "dds-gateway";

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP {signal} exporter for {endpoint}: {reason}")]
    Exporter {
        signal: &'static str,
        endpoint: String,
        reason: String,
    },
}

/// A gateway's telemetry pipeline. Cheap to clone; [`Telemetry::shutdown`] flushes it.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    dispatch: Dispatch,
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    metrics: Metrics,
    prometheus: prometheus::PrometheusReader,
    admin_addr: OnceLock<std::net::SocketAddr>,
    config: TelemetryConfig,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Builds the pipeline `config` describes; logs go to `logs`, filtered by `log_filter`
    /// (`RUST_LOG` syntax). Exporters start lazily: nothing here connects anywhere.
    ///
    /// Call it inside a multi-thread Tokio runtime: the gRPC exporter's batch thread needs one.
    pub fn new(
        config: &TelemetryConfig,
        logs: LogOutput,
        log_filter: EnvFilter,
    ) -> Result<Self, TelemetryError> {
        crate::tls::install_crypto_provider();
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();

        // The exporters learn where to count and log their failures once the pipeline exists.
        let reporter = export::Reporter::default();
        // With no exporter the provider still makes spans, so that logs carry trace ids and
        // the caller's trace continues through the gateway; they are just not sent anywhere.
        let mut tracer_provider = SdkTracerProvider::builder().with_resource(resource.clone());
        if let Some(otlp) = &config.traces {
            let exporter = reporter.watch("traces", &otlp.endpoint, span_exporter(otlp)?);
            tracer_provider = tracer_provider.with_batch_exporter(exporter);
        }
        let tracer_provider = tracer_provider.build();

        let prometheus = prometheus::PrometheusReader::new();
        let mut meter_provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(prometheus.clone());
        if let Some(otlp) = &config.metrics {
            let exporter = reporter.watch("metrics", &otlp.endpoint, metric_exporter(otlp)?);
            let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
                .with_interval(config.metrics_interval)
                .build();
            meter_provider = meter_provider.with_reader(reader);
        }
        let meter_provider = meter_provider.build();
        let meter = opentelemetry::metrics::MeterProvider::meter(&meter_provider, SCOPE);
        let metrics = Metrics::new(&meter);
        process::register(&meter);

        // Only the gateway's own spans become OpenTelemetry spans: the HTTP and gRPC stacks
        // (including the exporter's own) must not feed back into the export.
        let otel = tracing_opentelemetry::layer()
            .with_tracer(tracer_provider.tracer(SCOPE))
            .with_filter(Targets::new().with_target("dds_gateway", LevelFilter::INFO));
        let log_layer = logs::layer(logs, config.log_format).with_filter(log_filter);
        let subscriber = tracing_subscriber::registry().with(otel).with(log_layer);
        let dispatch = Dispatch::new(subscriber);
        reporter.connect(metrics.clone(), dispatch.downgrade());
        Ok(Self {
            inner: Arc::new(Inner {
                dispatch,
                tracer_provider,
                meter_provider,
                metrics,
                prometheus,
                admin_addr: OnceLock::new(),
                config: config.clone(),
            }),
        })
    }

    /// A pipeline with no exporter and no logs (spans and metrics still work locally).
    #[expect(
        clippy::expect_used,
        reason = "without exporters or logs, building the pipeline cannot fail"
    )]
    pub fn quiet() -> Self {
        Self::new(
            &TelemetryConfig::default(),
            LogOutput::Off,
            EnvFilter::new("off"),
        )
        .expect("a pipeline without exporters or logs has nothing that can fail to build")
    }

    /// The `tracing` dispatcher of this pipeline.
    pub fn dispatch(&self) -> &Dispatch {
        &self.inner.dispatch
    }

    /// The gateway's instruments.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The configuration this pipeline was built from.
    pub fn config(&self) -> &TelemetryConfig {
        &self.inner.config
    }

    /// Every metric in the Prometheus text exposition format.
    pub fn prometheus_text(&self) -> String {
        self.inner.prometheus.render()
    }

    /// Where the admin server listens, once it does.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.admin_addr.get().copied()
    }

    pub(crate) fn set_admin_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.inner.admin_addr.set(addr);
    }

    /// Flushes and stops the exporters; spans ended before this are sent (graceful shutdown).
    pub async fn shutdown(&self) {
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = this.inner.tracer_provider.shutdown();
            let _ = this.inner.meter_provider.shutdown();
        })
        .await;
    }
}

fn exporter_error(
    signal: &'static str,
    otlp: &Otlp,
    err: impl std::fmt::Display,
) -> TelemetryError {
    TelemetryError::Exporter {
        signal,
        endpoint: otlp.endpoint.clone(),
        reason: err.to_string(),
    }
}

fn span_exporter(otlp: &Otlp) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    match otlp.protocol {
        Protocol::Grpc => builder.with_tonic().with_endpoint(&otlp.endpoint).build(),
        Protocol::HttpProtobuf => builder.with_http().with_endpoint(&otlp.endpoint).build(),
    }
    .map_err(|e| exporter_error("traces", otlp, e))
}

fn metric_exporter(otlp: &Otlp) -> Result<opentelemetry_otlp::MetricExporter, TelemetryError> {
    let builder = opentelemetry_otlp::MetricExporter::builder();
    match otlp.protocol {
        Protocol::Grpc => builder.with_tonic().with_endpoint(&otlp.endpoint).build(),
        Protocol::HttpProtobuf => builder.with_http().with_endpoint(&otlp.endpoint).build(),
    }
    .map_err(|e| exporter_error("metrics", otlp, e))
}

/// The trace id of the current span, as 32 hex digits; empty when there is none.
pub(crate) fn current_trace_id() -> String {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    if span_context.is_valid() {
        span_context.trace_id().to_string()
    } else {
        String::new()
    }
}
