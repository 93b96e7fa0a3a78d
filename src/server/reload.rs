//! Reloading without a restart. On SIGHUP the gateway re-reads its credential files and, when it
//! was started with a config file or `server.callers_file`, its `[[callers]]`; both files are
//! also re-read when their content changes (a Kubernetes Secret mounted as a directory is
//! updated in place). New callers are built aside and swapped in whole; calls in flight keep the
//! table they started with. A file that does not load keeps what is current. SIGHUP also
//! reopens the audit file (after logrotate moved it). (Credential files are also polled by their
//! own provider, see `credentials::profile`.) Each reload of the callers counts in
//! `dds_gateway_config_reloads_total{file="callers",outcome}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::alibaba::credentials::CredentialsProvider;
use crate::api::auth::{Callers, CallersHandle};
use crate::audit::Audit;
use crate::config::{Config, Overrides};
use crate::telemetry::Metrics;

/// Reloads until the returned task is aborted: the callers from `file` and `callers_file` (if
/// any) on SIGHUP and when their content changes (checked every `interval`), the `credentials`
/// on SIGHUP, and the audit file on SIGHUP. Call within the runtime.
pub(crate) fn spawn(
    file: Option<PathBuf>,
    callers_file: Option<PathBuf>,
    interval: Duration,
    callers: CallersHandle,
    credentials: Arc<dyn CredentialsProvider>,
    metrics: Metrics,
    audit: Audit,
) -> tokio::task::JoinHandle<()> {
    // Registered before returning: a SIGHUP that arrives before the task first runs must not
    // meet the default action, which ends the process.
    let mut hangup = hangup_signal();
    tokio::spawn(async move {
        // Nothing seen yet, so the first tick (at once) reloads: the file may have changed since
        // the configuration the gateway started with was read, and that change must count.
        let mut seen: Option<Vec<u8>> = None;
        // The config file may name another callers file: the one of the last good load counts.
        let mut callers_file = callers_file;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let signalled = tokio::select! {
                _ = tick.tick(), if file.is_some() || callers_file.is_some() => false,
                Some(()) = next_hangup(&mut hangup) => true,
            };
            if signalled {
                tracing::info!("SIGHUP: re-reading credential files, reopening the audit file");
                audit.reopen();
                credentials.reload().await;
            }
            if file.is_none() && callers_file.is_none() {
                continue;
            }
            let now = contents(file.as_deref(), callers_file.as_deref());
            if signalled || now != seen {
                let trigger = match (signalled, &seen) {
                    (true, _) => "SIGHUP",
                    (false, None) => "start-up check",
                    (false, Some(_)) => "file changed",
                };
                seen = now;
                if let Some(loaded) = reload(file.as_deref(), &callers, trigger, &metrics) {
                    callers_file = loaded;
                }
            }
        }
    })
}

/// Both files' bytes, to notice a change in either; `None` when neither can be read.
fn contents(file: Option<&Path>, callers_file: Option<&Path>) -> Option<Vec<u8>> {
    let read = |path: Option<&Path>| path.and_then(|p| std::fs::read(p).ok());
    match (read(file), read(callers_file)) {
        (None, None) => None,
        (a, b) => {
            let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
            // The length keeps "ab" + "c" apart from "a" + "bc".
            let mut both = (a.len() as u64).to_le_bytes().to_vec();
            both.extend(a);
            both.extend(b);
            Some(both)
        }
    }
}

/// Loads the configuration (the file, if any, and the environment) and swaps in its callers, or
/// says in the log why not, and counts the outcome in `metrics`. Answers the loaded
/// `server.callers_file`, `None` when nothing loaded.
pub fn reload(
    file: Option<&Path>,
    callers: &CallersHandle,
    trigger: &str,
    metrics: &Metrics,
) -> Option<Option<PathBuf>> {
    let loaded = reload_callers(file, callers, trigger);
    metrics.config_reloaded("callers", loaded.is_some());
    loaded
}

fn reload_callers(
    file: Option<&Path>,
    callers: &CallersHandle,
    trigger: &str,
) -> Option<Option<PathBuf>> {
    let env = |key: &str| std::env::var(key).ok();
    let config = match Config::load(file, env, &Overrides::default()) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!(%trigger, error = %err, "config reload failed; keeping the current callers");
            return None;
        }
    };
    let current = callers.current();
    if config.callers.is_empty() && !current.is_open() {
        tracing::error!(
            %trigger,
            "config reload: the new file has no [[callers]], which would open the gateway to anyone; keeping the current callers (restart to serve without authentication)"
        );
        return None;
    }
    callers.replace(Callers::new(&config.callers, Some(&current)));
    tracing::info!(%trigger, callers = config.callers.len(), "callers reloaded");
    Some(config.server.callers_file)
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGHUP; files reload on change only");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(unix)]
async fn next_hangup(hangup: &mut Hangup) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangup) -> Option<()> {
    std::future::pending().await
}
