//! Reloading without a restart. On SIGHUP the gateway re-reads its credential files and, when it
//! was started with a config file, its `[[callers]]`; the config file is also re-read when its
//! content changes. New callers are built aside and swapped in whole; calls in flight keep the
//! table they started with. A file that does not load keeps what is current. (Credential files
//! are also polled by their own provider, see `credentials::profile`.)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{Callers, CallersHandle};
use crate::config::{Config, Overrides};
use crate::credentials::CredentialsProvider;

/// Reloads until the returned task is aborted: the callers from `file` (if any) on SIGHUP and
/// when its content changes (checked every `interval`), the `credentials` on SIGHUP. Call
/// within the runtime.
pub fn spawn(
    file: Option<PathBuf>,
    interval: Duration,
    callers: CallersHandle,
    credentials: Arc<dyn CredentialsProvider>,
) -> tokio::task::JoinHandle<()> {
    // Registered before returning: a SIGHUP that arrives before the task first runs must not
    // meet the default action, which ends the process.
    let mut hangup = hangup_signal();
    tokio::spawn(async move {
        // Nothing seen yet, so the first tick (at once) reloads: the file may have changed since
        // the configuration the gateway started with was read, and that change must count.
        let mut seen: Option<Vec<u8>> = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let signalled = tokio::select! {
                _ = tick.tick(), if file.is_some() => false,
                Some(()) = next_hangup(&mut hangup) => true,
            };
            if signalled {
                tracing::info!("SIGHUP: re-reading credential files");
                credentials.reload().await;
            }
            let Some(file) = &file else { continue };
            let now = std::fs::read(file).ok();
            if signalled || now != seen {
                let trigger = match (signalled, &seen) {
                    (true, _) => "SIGHUP",
                    (false, None) => "start-up check",
                    (false, Some(_)) => "file changed",
                };
                seen = now;
                reload(file, &callers, trigger);
            }
        }
    })
}

/// Loads the file and swaps in its callers, or says in the log why not.
pub fn reload(file: &std::path::Path, callers: &CallersHandle, trigger: &str) {
    let env = |key: &str| std::env::var(key).ok();
    let config = match Config::load(Some(file), env, &Overrides::default()) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!(%trigger, error = %err, "config reload failed; keeping the current callers");
            return;
        }
    };
    let current = callers.current();
    if config.callers.is_empty() && !current.is_open() {
        tracing::error!(
            %trigger,
            "config reload: the new file has no [[callers]], which would open the gateway to anyone; keeping the current callers (restart to serve without authentication)"
        );
        return;
    }
    callers.replace(Callers::new(&config.callers, Some(&current)));
    tracing::info!(%trigger, callers = config.callers.len(), "callers reloaded");
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
