//! The `[telemetry]` and `[audit]` configuration sections, with the standard OpenTelemetry
//! variables (`OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`,
//! `OTEL_TRACES_EXPORTER`, ...) winning over the file, as operators expect of them.
//!
//! Nothing is exported unless an OTLP endpoint is configured (or `OTEL_*_EXPORTER=otlp` asks
//! for the default one): a gateway without a collector must neither export nor fail.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::value::ConfigError;

/// `service.name` when neither the file nor `OTEL_SERVICE_NAME` says otherwise.
pub(crate) const DEFAULT_SERVICE_NAME: &str = "dds-gateway";
/// The longest metrics push interval accepted (every duration key has a bound).
const MAX_METRICS_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// OTLP/gRPC's default endpoint (used when an exporter is asked for without an endpoint).
const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
/// OTLP/HTTP's default endpoint.
const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";

/// How telemetry is exported and logs are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Where spans go; `None`: nowhere (spans still exist, so logs carry trace ids).
    pub traces: Option<Otlp>,
    /// Where metrics are pushed; `None`: only the Prometheus endpoint (when configured).
    pub metrics: Option<Otlp>,
    /// How often metrics are pushed over OTLP.
    pub metrics_interval: Duration,
    /// Address of the admin HTTP server (`GET /metrics`); `None`: no admin server.
    pub admin_listen: Option<SocketAddr>,
    /// How log lines look.
    pub log_format: LogFormat,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            service_name: DEFAULT_SERVICE_NAME.to_string(),
            traces: None,
            metrics: None,
            metrics_interval: Duration::from_secs(60),
            admin_listen: None,
            log_format: LogFormat::Auto,
        }
    }
}

/// One OTLP destination: the full URL of the signal and the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Otlp {
    /// For gRPC the collector's address (`http://host:4317`); for HTTP the signal's full URL
    /// (`http://host:4318/v1/traces`).
    pub endpoint: String,
    pub protocol: Protocol,
}

/// The OTLP transports the gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `grpc` (tonic).
    Grpc,
    /// `http/protobuf` (reqwest, rustls).
    HttpProtobuf,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Text when the lines go to a terminal, else JSON (the default): people read the one and
    /// log pipelines parse the other.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// The `[audit]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditConfig {
    /// The JSON-lines file every audit event is appended to (and synced) before the answer.
    pub file: Option<PathBuf>,
}

/// `[telemetry]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTelemetry {
    service_name: Option<String>,
    otlp_endpoint: Option<String>,
    otlp_protocol: Option<String>,
    traces_exporter: Option<String>,
    metrics_exporter: Option<String>,
    metrics_interval: Option<String>,
    admin_listen: Option<String>,
    log_format: Option<String>,
}

/// `[audit]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    file: Option<String>,
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// A signal: traces or metrics.
#[derive(Clone, Copy)]
struct Signal {
    exporter_var: &'static str,
    endpoint_var: &'static str,
    protocol_var: &'static str,
    http_path: &'static str,
}

const TRACES: Signal = Signal {
    exporter_var: "OTEL_TRACES_EXPORTER",
    endpoint_var: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    protocol_var: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    http_path: "/v1/traces",
};
const METRICS: Signal = Signal {
    exporter_var: "OTEL_METRICS_EXPORTER",
    endpoint_var: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    protocol_var: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    http_path: "/v1/metrics",
};

impl RawTelemetry {
    /// Checks the section (`DDS_GATEWAY_TELEMETRY_*` already applied), applying the standard
    /// `OTEL_*` variables from `env`, which win over the file and `DDS_GATEWAY_*`.
    pub(crate) fn check(
        self,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<TelemetryConfig, ConfigError> {
        let var = |key: &str| env(key).filter(|v| !v.trim().is_empty());
        let service_name = var("OTEL_SERVICE_NAME")
            .or(self.service_name)
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
        let endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT").or(self.otlp_endpoint);
        let protocol = var("OTEL_EXPORTER_OTLP_PROTOCOL").or(self.otlp_protocol);
        let otlp = |signal: Signal, file_exporter: Option<String>, key: &str| {
            let exporter = var(signal.exporter_var).or(file_exporter);
            let protocol = var(signal.protocol_var)
                .or_else(|| protocol.clone())
                .map_or(Ok(Protocol::Grpc), |p| parse_protocol(&p))?;
            let endpoint = match var(signal.endpoint_var) {
                // The per-signal variable is the signal's full URL, used as is.
                Some(url) => Some(url),
                None => endpoint.as_deref().map(|base| match protocol {
                    Protocol::Grpc => base.to_string(),
                    Protocol::HttpProtobuf => {
                        format!("{}{}", base.trim_end_matches('/'), signal.http_path)
                    }
                }),
            };
            match exporter.as_deref().map(str::trim) {
                // Unset: export when an endpoint says where to.
                None => Ok(endpoint.map(|endpoint| Otlp { endpoint, protocol })),
                Some("none") => Ok(None),
                Some("otlp") => Ok(Some(Otlp {
                    endpoint: endpoint.unwrap_or_else(|| match protocol {
                        Protocol::Grpc => DEFAULT_GRPC_ENDPOINT.to_string(),
                        Protocol::HttpProtobuf => {
                            format!("{DEFAULT_HTTP_ENDPOINT}{}", signal.http_path)
                        }
                    }),
                    protocol,
                })),
                Some(other) => Err(invalid(
                    key,
                    format!(
                        "expected \"otlp\" or \"none\", got {other:?} (also from {})",
                        signal.exporter_var
                    ),
                )),
            }
        };
        let traces = otlp(TRACES, self.traces_exporter, "telemetry.traces_exporter")?;
        let metrics = otlp(METRICS, self.metrics_exporter, "telemetry.metrics_exporter")?;
        for target in traces.iter().chain(metrics.iter()) {
            if !(target.endpoint.starts_with("http://") || target.endpoint.starts_with("https://"))
            {
                return Err(invalid(
                    "telemetry.otlp_endpoint",
                    format!(
                        "expected an http:// or https:// URL, got {:?}",
                        target.endpoint
                    ),
                ));
            }
        }
        // OTEL_METRIC_EXPORT_INTERVAL is in milliseconds; the file key is a duration.
        let metrics_interval = match var("OTEL_METRIC_EXPORT_INTERVAL") {
            Some(ms) => ms
                .trim()
                .parse::<u64>()
                .ok()
                .map(Duration::from_millis)
                .filter(|d| !d.is_zero() && *d <= MAX_METRICS_INTERVAL)
                .ok_or_else(|| {
                    invalid(
                        "OTEL_METRIC_EXPORT_INTERVAL",
                        "expected milliseconds greater than zero, at most a day (86400000)",
                    )
                })?,
            None => match self.metrics_interval {
                Some(text) => humantime::parse_duration(&text)
                    .ok()
                    .filter(|d| !d.is_zero() && *d <= MAX_METRICS_INTERVAL)
                    .ok_or_else(|| {
                        invalid(
                            "telemetry.metrics_interval",
                            format!("expected a duration such as 60s, at most a day, got {text:?}"),
                        )
                    })?,
                None => TelemetryConfig::default().metrics_interval,
            },
        };
        let admin_listen = self
            .admin_listen
            .filter(|a| !a.trim().is_empty())
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|_| {
                    invalid(
                        "telemetry.admin_listen",
                        format!(
                            "expected an IP address and port such as 127.0.0.1:9090, got {a:?}"
                        ),
                    )
                })
            })
            .transpose()?;
        let log_format = match self.log_format.as_deref().map(str::trim) {
            None | Some("auto") => LogFormat::Auto,
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                return Err(invalid(
                    "telemetry.log_format",
                    format!("expected \"auto\", \"json\" or \"text\", got {other:?}"),
                ));
            }
        };
        Ok(TelemetryConfig {
            service_name,
            traces,
            metrics,
            metrics_interval,
            admin_listen,
            log_format,
        })
    }
}

impl RawAudit {
    /// Checks the section (`DDS_GATEWAY_AUDIT_FILE` already applied).
    pub(crate) fn check(self) -> AuditConfig {
        let file = self
            .file
            .filter(|f| !f.trim().is_empty())
            .map(PathBuf::from);
        AuditConfig { file }
    }
}

fn parse_protocol(text: &str) -> Result<Protocol, ConfigError> {
    match text.trim() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        other => Err(invalid(
            "telemetry.otlp_protocol",
            format!(
                "expected \"grpc\" or \"http/protobuf\", got {other:?} (also from OTEL_EXPORTER_OTLP_PROTOCOL)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str, vars: &[(&str, &str)]) -> Result<TelemetryConfig, ConfigError> {
        let raw: RawTelemetry = toml::from_str(toml_text).unwrap();
        let env = |key: &str| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        };
        raw.check(&env)
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        let config = check("", &[]).unwrap();
        assert_eq!(config, TelemetryConfig::default());
    }

    #[test]
    fn standard_variables_win_and_http_gets_signal_paths() {
        let config = check(
            "otlp_endpoint = \"http://file:4317\"\nservice_name = \"from-file\"",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_SERVICE_NAME", "gw-prod"),
            ],
        )
        .unwrap();
        assert_eq!(config.service_name, "gw-prod");
        assert_eq!(
            config.traces,
            Some(Otlp {
                endpoint: "http://collector:4318/v1/traces".into(),
                protocol: Protocol::HttpProtobuf
            })
        );
        assert_eq!(
            config.metrics.map(|m| m.endpoint),
            Some("http://collector:4318/v1/metrics".into())
        );
    }

    #[test]
    fn exporter_none_turns_a_signal_off_and_otlp_uses_the_default_endpoint() {
        let config = check(
            "otlp_endpoint = \"http://collector:4317\"",
            &[("OTEL_TRACES_EXPORTER", "none")],
        )
        .unwrap();
        assert_eq!(config.traces, None);
        assert!(config.metrics.is_some());
        let config = check("", &[("OTEL_TRACES_EXPORTER", "otlp")]).unwrap();
        assert_eq!(
            config.traces.map(|t| t.endpoint),
            Some(DEFAULT_GRPC_ENDPOINT.into())
        );
        assert_eq!(config.metrics, None);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, vars, key) in [
            (
                "otlp_protocol = \"udp\"",
                &[][..],
                "telemetry.otlp_protocol",
            ),
            (
                "",
                &[("OTEL_TRACES_EXPORTER", "jaeger")][..],
                "telemetry.traces_exporter",
            ),
            ("log_format = \"xml\"", &[][..], "telemetry.log_format"),
            ("admin_listen = \"9090\"", &[][..], "telemetry.admin_listen"),
            (
                "otlp_endpoint = \"collector:4317\"",
                &[][..],
                "telemetry.otlp_endpoint",
            ),
            (
                "",
                &[("OTEL_METRIC_EXPORT_INTERVAL", "soon")][..],
                "OTEL_METRIC_EXPORT_INTERVAL",
            ),
            (
                "",
                &[("OTEL_METRIC_EXPORT_INTERVAL", "86400001")][..],
                "OTEL_METRIC_EXPORT_INTERVAL",
            ),
            (
                "metrics_interval = \"300000000000y\"",
                &[][..],
                "telemetry.metrics_interval",
            ),
        ] {
            match check(text, vars) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
