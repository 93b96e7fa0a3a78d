//! A source of stale credentials is asked with backoff and logged once per episode. Alone in its
//! test binary: the count of debug lines depends on `tracing`'s process-wide callsite interest,
//! which another test's subscriber registering at the same moment can leave stale for a few
//! events.
#![allow(clippy::unwrap_used)] // tests may panic

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dds_gateway::testing::alibaba::credentials::cache::{Fetch, RefreshPolicy, Refreshing};
use dds_gateway::testing::alibaba::credentials::{
    Credential, CredentialsError, CredentialsProvider,
};
use dds_gateway::testing::secret::Secret;
use dds_gateway::testing::telemetry::Metrics;

/// A source that answers credentials with the scripted lifetimes and counts how often it was
/// asked.
#[derive(Debug, Default)]
struct Script {
    lifetimes: Mutex<VecDeque<Duration>>,
    fetched: AtomicUsize,
}

/// The script as the cache holds it.
#[derive(Debug)]
struct Source(Arc<Script>);

#[async_trait::async_trait]
impl Fetch for Source {
    fn name(&self) -> &'static str {
        "script"
    }

    async fn fetch(&self) -> Result<Credential, CredentialsError> {
        let n = self.0.fetched.fetch_add(1, Ordering::SeqCst) + 1;
        let lifetime = self
            .0
            .lifetimes
            .lock()
            .unwrap()
            .pop_front()
            .ok_or_else(|| CredentialsError::Unavailable {
                provider: "script",
                reason: "script ran out".into(),
            })?;
        Ok(Credential::new(
            format!("STS.key{n}"),
            Secret::new("secret"),
            Some(Secret::new("token")),
            Some(SystemTime::now() + lifetime),
            "script",
        ))
    }
}

/// Log lines at every level, for what is logged and how often.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn count(&self, level: &str, message: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(level) && l.contains(message))
            .count()
    }
}

#[tokio::test(start_paused = true)]
async fn a_source_of_stale_credentials_is_asked_with_backoff_and_logged_once() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    for lifetime in [Duration::ZERO, Duration::from_secs(20)] {
        let script = Arc::new(Script::default());
        script.lifetimes.lock().unwrap().extend([lifetime; 1000]);
        let provider = Refreshing::new(
            Source(Arc::clone(&script)),
            RefreshPolicy::default(),
            Metrics::default(),
        );
        // A call every 100 ms for ten minutes.
        for _ in 0..6000 {
            let err = provider.credential().await.unwrap_err().to_string();
            assert!(err.contains("expires at"), "{err}");
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        // Up to 5, 10, 20, 40 s, then up to a minute (each wait at least half of that): a
        // dozen or two fetches, not thousands.
        let fetched = script.fetched.load(Ordering::SeqCst);
        assert!((10..=25).contains(&fetched), "{fetched} fetches");
    }
    // Once per episode as a warning; the others only at debug level.
    assert_eq!(lines.count("WARN", "credential fetch failed"), 2);
    assert!(lines.count("DEBUG", "credential fetch failed") >= 18);
}
