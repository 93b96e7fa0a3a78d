//! The gateway's instruments: one [`Metrics`] handle, cheap to clone, handed to whoever counts
//! (the RPC layer, the connection listener, the Alibaba client, the credential cache, the
//! reloader, the state store's health probe, the exporters), which counts where the thing
//! happens. Nothing is derived from log lines: a log level never changes a metric.
//!
//! Recorded into the pipeline's meter provider: pushed over OTLP when configured, and read on
//! demand as Prometheus text ([`prometheus`](super::prometheus)). The audit trail and the rate
//! limits sit below telemetry, so they are handed their one counter each rather than the handle.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, MeterProvider as _, UpDownCounter};

/// Bucket bounds (seconds) of the latency histograms: a few ms (validation failures) to a
/// minute (the longest sensible deadline).
const LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The gateway's instruments. [`Metrics::default`] records nothing (for tools and tests that
/// have no pipeline).
#[derive(Debug, Clone)]
pub struct Metrics {
    rpc_requests: Counter<u64>,
    rpc_duration: Histogram<f64>,
    rpc_in_flight: UpDownCounter<i64>,
    upstream_requests: Counter<u64>,
    upstream_duration: Histogram<f64>,
    quota_wait: Histogram<f64>,
    credential_refreshes: Counter<u64>,
    audit_write_failures: Counter<u64>,
    rate_limit_fallbacks: Counter<u64>,
    connections_open: UpDownCounter<i64>,
    connections_closed: Counter<u64>,
    export_failures: Counter<u64>,
    http_route_misses: Counter<u64>,
    rollouts: Gauge<u64>,
    rollout_instances: Gauge<u64>,
    state_store_up: Gauge<u64>,
    config_reloads: Counter<u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&opentelemetry::metrics::NoopMeterProvider::new().meter("noop"))
    }
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
            quota_wait: meter
                .f64_histogram("dds_gateway.alibaba.quota_wait")
                .with_unit("s")
                .with_description(
                    "Time a call to Alibaba Cloud waited for its place in the account's budget ([alibaba.quota]), by outcome (granted, deadline, exhausted)",
                )
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
            export_failures: meter
                .u64_counter("dds_gateway.telemetry.export_failures")
                .with_description(
                    "OTLP exports (batches of spans or metrics) that failed, by signal (traces, metrics)",
                )
                .build(),
            http_route_misses: meter
                .u64_counter("dds_gateway.http.route_misses")
                .with_description("HTTP requests that matched no JSON route")
                .build(),
            rollouts: meter
                .u64_gauge("dds_gateway.rollouts")
                .with_description("Fleet rollouts in the state store, by state")
                .build(),
            rollout_instances: meter
                .u64_gauge("dds_gateway.rollout.instances")
                .with_description("Instances of unfinished fleet rollouts, by state")
                .build(),
            state_store_up: meter
                .u64_gauge("dds_gateway.state_store.up")
                .with_description(
                    "Whether the state store could be reached at the last check (1) or not (0); always 1 for the memory store",
                )
                .build(),
            config_reloads: meter
                .u64_counter("dds_gateway.config.reloads")
                .with_description(
                    "Reloads of [[callers]] (file=callers) and credential files (file=credentials), by outcome (ok, error)",
                )
                .build(),
        }
    }

    /// How many rollouts and instances of unfinished rollouts are in each state now (every
    /// state named, with 0 for none, so that a gauge falls back when its last one moves on).
    pub(crate) fn rollout_states(
        &self,
        rollouts: &[(&'static str, u64)],
        instances: &[(&'static str, u64)],
    ) {
        for (state, count) in rollouts {
            self.rollouts
                .record(*count, &[KeyValue::new("state", *state)]);
        }
        for (state, count) in instances {
            self.rollout_instances
                .record(*count, &[KeyValue::new("state", *state)]);
        }
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_open.add(1, &[]);
    }

    pub(crate) fn connection_ended(&self) {
        self.connections_open.add(-1, &[]);
    }

    /// An HTTP request that matched no JSON route.
    pub(crate) fn route_missed(&self) {
        self.http_route_misses.add(1, &[]);
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

    /// One Alibaba Cloud request attempt: `outcome` is `ok`, `alibaba_error` (with Alibaba's
    /// error `Code`) or the kind of failure (`unreachable`, `no_answer`, `unreadable`, ...).
    pub(crate) fn upstream_attempt(
        &self,
        action: &'static str,
        outcome: &'static str,
        error_code: Option<&str>,
        elapsed: Duration,
    ) {
        let mut attributes = vec![
            KeyValue::new("alibaba_cloud.action", action),
            KeyValue::new("outcome", outcome),
        ];
        self.upstream_duration
            .record(elapsed.as_secs_f64(), &attributes);
        if let Some(code) = error_code {
            attributes.push(KeyValue::new("alibaba_cloud.error_code", code.to_string()));
        }
        self.upstream_requests.add(1, &attributes);
    }

    /// How long a call waited for its place in the account's budget: `granted`, or refused
    /// because the caller's deadline passed in line (`deadline`) or the budget's rate could not
    /// start it in time (`exhausted`).
    pub(crate) fn quota_wait(&self, outcome: &'static str, waited: Duration) {
        self.quota_wait
            .record(waited.as_secs_f64(), &[KeyValue::new("outcome", outcome)]);
    }

    /// A credential fetch or refresh that succeeded (`ok`) or failed.
    pub(crate) fn credential_fetched(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.credential_refreshes
            .add(1, &[KeyValue::new("outcome", outcome)]);
    }

    /// The counter the audit trail adds to when an event cannot be written to its file.
    pub(crate) fn audit_write_failures(&self) -> Counter<u64> {
        self.audit_write_failures.clone()
    }

    /// The counter the rate limits add to when a call is limited locally because the shared
    /// store cannot be reached.
    pub(crate) fn rate_limit_fallbacks(&self) -> Counter<u64> {
        self.rate_limit_fallbacks.clone()
    }

    /// An OTLP export of `signal` (`traces`, `metrics`) that failed.
    pub(crate) fn export_failed(&self, signal: &'static str) {
        self.export_failures
            .add(1, &[KeyValue::new("signal", signal)]);
    }

    /// What the last health probe of the shared state store found.
    pub(crate) fn state_store_reachable(&self, reachable: bool) {
        self.state_store_up.record(u64::from(reachable), &[]);
    }

    /// A reload of `file` (`callers`, `credentials`) that took effect (`ok`) or was refused.
    pub(crate) fn config_reloaded(&self, file: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.config_reloads.add(
            1,
            &[
                KeyValue::new("file", file),
                KeyValue::new("outcome", outcome),
            ],
        );
    }
}

fn json_labels(method: &str, route: &str) -> [KeyValue; 2] {
    [
        KeyValue::new("rpc.method", method.to_string()),
        KeyValue::new("http.route", route.to_string()),
    ]
}
