//! OTLP exports that fail are said once and counted: every failed export (a batch of spans, a
//! round of metrics) adds to `dds_gateway_telemetry_export_failures_total{signal}`; the first of
//! an episode is logged at WARN with the endpoint and the cause, a summary at INFO every
//! `SUMMARY_EVERY` (five minutes) while it lasts, and one at INFO when an export succeeds again. Without
//! this an unreachable collector is silent: the SDK reports export errors only through its own
//! internal logs, which the gateway does not build.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tracing::dispatcher::WeakDispatch;

use super::metrics::Metrics;

/// How often an episode that goes on is summarised in the log.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(5 * 60);

/// Where the exporters of one pipeline report: its metrics and its log dispatcher, known only
/// once the pipeline is built (after its exporters), hence set later. The dispatcher is held
/// weakly: it owns the exporters, through the tracer provider.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reporter(Arc<OnceLock<(Metrics, WeakDispatch)>>);

impl Reporter {
    /// Connects the exporters to the pipeline's metrics and log dispatcher.
    pub(crate) fn connect(&self, metrics: Metrics, dispatch: WeakDispatch) {
        let _ = self.0.set((metrics, dispatch));
    }

    /// Watches `exporter`, the exporter of `signal` to `endpoint`.
    pub(crate) fn watch<E>(&self, signal: &'static str, endpoint: &str, exporter: E) -> Watched<E> {
        Watched {
            exporter,
            watch: Arc::new(Watch {
                signal,
                endpoint: without_userinfo(endpoint),
                episode: Mutex::default(),
                reporter: self.clone(),
            }),
        }
    }
}

/// An exporter whose failures are counted and logged once per episode.
#[derive(Debug)]
pub(crate) struct Watched<E> {
    exporter: E,
    watch: Arc<Watch>,
}

#[derive(Debug)]
struct Watch {
    signal: &'static str,
    endpoint: String,
    episode: Mutex<Episode>,
    reporter: Reporter,
}

impl Watch {
    fn observe(&self, result: &OTelSdkResult) {
        let now = Instant::now();
        let said = {
            let mut episode = self.episode.lock().unwrap_or_else(PoisonError::into_inner);
            match result {
                Ok(()) => episode.succeeded(now),
                Err(_) => episode.failed(now),
            }
        };
        let connected = self.reporter.0.get();
        if result.is_err()
            && let Some((metrics, _)) = connected
        {
            metrics.export_failed(self.signal);
        }
        let dispatch = connected.and_then(|(_, dispatch)| dispatch.upgrade());
        let log = || self.log(said, result);
        match dispatch {
            Some(dispatch) => tracing::dispatcher::with_default(&dispatch, log),
            None => log(),
        }
    }

    fn log(&self, said: Say, result: &OTelSdkResult) {
        let (signal, endpoint) = (self.signal, self.endpoint.as_str());
        match said {
            Say::Nothing => {}
            Say::Failing => {
                let error = result.as_ref().err().map(ToString::to_string);
                tracing::warn!(
                    signal,
                    endpoint,
                    error = error.unwrap_or_default(),
                    "cannot export telemetry over OTLP; failures are counted in dds_gateway_telemetry_export_failures_total and summarised every 5 minutes until an export succeeds"
                );
            }
            Say::StillFailing { failures, since } => {
                tracing::info!(
                    signal,
                    endpoint,
                    failures,
                    failing_for = ?since,
                    "telemetry export over OTLP still failing"
                );
            }
            Say::Recovered { failures, lasted } => {
                tracing::info!(
                    signal,
                    endpoint,
                    failures,
                    failed_for = ?lasted,
                    "telemetry export over OTLP works again"
                );
            }
        }
    }
}

/// What to log about an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Say {
    Nothing,
    /// The first failure of an episode.
    Failing,
    /// A summary of an episode that goes on.
    StillFailing {
        failures: u64,
        since: Duration,
    },
    /// The first success after an episode.
    Recovered {
        failures: u64,
        lasted: Duration,
    },
}

/// A run of failed exports. Pure: the time is passed in.
#[derive(Debug, Default)]
struct Episode {
    /// When the episode started and when it was last logged; `None` while exports succeed.
    failing: Option<(Instant, Instant)>,
    failures: u64,
}

impl Episode {
    fn failed(&mut self, now: Instant) -> Say {
        self.failures += 1;
        match &mut self.failing {
            None => {
                self.failing = Some((now, now));
                Say::Failing
            }
            Some((started, said)) if now.duration_since(*said) >= SUMMARY_EVERY => {
                *said = now;
                Say::StillFailing {
                    failures: self.failures,
                    since: now.duration_since(*started),
                }
            }
            Some(_) => Say::Nothing,
        }
    }

    fn succeeded(&mut self, now: Instant) -> Say {
        let Some((started, _)) = self.failing.take() else {
            return Say::Nothing;
        };
        let failures = std::mem::take(&mut self.failures);
        Say::Recovered {
            failures,
            lasted: now.duration_since(started),
        }
    }
}

/// `endpoint` without a user or password, for the log.
fn without_userinfo(endpoint: &str) -> String {
    match reqwest::Url::parse(endpoint) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Err(_) => endpoint.to_string(),
    }
}

impl<E: SpanExporter> SpanExporter for Watched<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.exporter.export(batch).await;
        self.watch.observe(&result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.exporter.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Watched<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.exporter.export(metrics).await;
        self.watch.observe(&result);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.exporter.temporality()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_is_said_once_summarised_every_five_minutes_and_closed_once() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut episode = Episode::default();
        assert_eq!(episode.succeeded(at(0)), Say::Nothing);
        assert_eq!(episode.failed(at(1)), Say::Failing);
        for s in 2..300 {
            assert_eq!(episode.failed(at(s)), Say::Nothing);
        }
        assert_eq!(
            episode.failed(at(301)),
            Say::StillFailing {
                failures: 300,
                since: Duration::from_secs(300)
            }
        );
        assert_eq!(episode.failed(at(302)), Say::Nothing);
        assert_eq!(
            episode.succeeded(at(400)),
            Say::Recovered {
                failures: 301,
                lasted: Duration::from_secs(399)
            }
        );
        assert_eq!(episode.succeeded(at(401)), Say::Nothing);
        // The next failure starts a new episode.
        assert_eq!(episode.failed(at(402)), Say::Failing);
    }

    #[test]
    fn the_logged_endpoint_has_no_userinfo() {
        assert_eq!(
            without_userinfo("https://user:secret@collector:4317"),
            "https://collector:4317/"
        );
        assert_eq!(without_userinfo("not a url"), "not a url");
    }
}
