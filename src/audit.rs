//! The audit trail: one event per request to upgrade or validate (who asked, which instance and
//! region, from which version to which, the outcome, the gRPC code, Alibaba's `RequestId`, the
//! trace id, the time), and before it a `sending` event for each upgrade request sent.
//!
//! Every event goes to the log target [`TARGET`] and, when `audit.file` is set, is appended to a
//! JSON-lines file and synced to disk before [`Audit::record`] returns.
//!
//! Fail closed for what has not happened yet: an upgrade request leaves only once its `sending`
//! event is on disk (the upgrade's caller checks [`Audit::record`]'s result). Never lie about what
//! has: an outcome event that cannot be written is logged whole at ERROR on [`TARGET`] (and
//! counted), and the caller still hears the truth.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// The log target of audit events.
pub const TARGET: &str = "dds_gateway::audit";

/// One audit event.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// `upgrade` or `validate_only`.
    pub kind: &'static str,
    /// The authenticated caller; empty on a gateway without `[[callers]]`.
    pub caller: String,
    pub db_instance_id: String,
    pub region_id: String,
    /// The version before the upgrade, when the gateway looked it up.
    pub from_version: String,
    pub to_version: String,
    /// `sending` (written before an upgrade request leaves; the outcome follows), `accepted`,
    /// `reconciled` (seen under way, RequestId unknown), `replayed` (an earlier call's answer for
    /// the same request_id: nothing was sent), `validated`, `failed`, or `abandoned` (the
    /// gateway shut down before the upgrade's outcome was known: it may have been sent).
    pub outcome: &'static str,
    /// The gRPC code of the outcome, e.g. `OK`, `FAILED_PRECONDITION` (`OK` on `sending`). A
    /// caller whose deadline passed first got `DEADLINE_EXCEEDED` instead.
    pub grpc_code: &'static str,
    pub alibaba_request_id: String,
    /// Alibaba's error `Code`, when it answered with one.
    pub alibaba_code: String,
    /// The caller's idempotency key.
    pub request_id: String,
    pub trace_id: String,
}

/// Why an audit event could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the audit file {path}: {source}")]
pub struct AuditError {
    path: String,
    #[source]
    source: std::io::Error,
}

/// The audit trail. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    file: Option<Arc<Mutex<AuditFile>>>,
}

#[derive(Debug)]
struct AuditFile {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl AuditFile {
    fn open(path: &Path) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    }

    fn error(&self, source: std::io::Error) -> AuditError {
        AuditError {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn append(&mut self, line: &[u8]) -> Result<(), AuditError> {
        let result = (|| {
            if self.file.is_none() {
                self.file = Some(Self::open(&self.path)?);
            }
            let file = self
                .file
                .as_mut()
                .ok_or_else(|| std::io::Error::other("audit file not open"))?;
            file.write_all(line)?;
            file.sync_data()
        })();
        result.map_err(|err| {
            // Reopen next time: the file may have been rotated away or its disk replaced.
            self.file = None;
            self.error(err)
        })
    }
}

impl Audit {
    /// Audit events go to the log target only.
    pub fn log_only() -> Self {
        Self::default()
    }

    /// Opens (creating it if needed) the audit file at `path`: at start-up, so that a gateway
    /// that cannot keep its audit trail does not start.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let file = AuditFile::open(path).map_err(|source| AuditError {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            file: Some(Arc::new(Mutex::new(AuditFile {
                path: path.to_path_buf(),
                file: Some(file),
            }))),
        })
    }

    /// Records `event`: logs it and, with a file, appends and syncs it before returning.
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        tracing::info!(
            target: TARGET,
            kind = event.kind,
            caller = %event.caller,
            db_instance_id = %event.db_instance_id,
            region_id = %event.region_id,
            from_version = %event.from_version,
            to_version = %event.to_version,
            outcome = event.outcome,
            grpc_code = event.grpc_code,
            alibaba_request_id = %event.alibaba_request_id,
            alibaba_code = %event.alibaba_code,
            request_id = %event.request_id,
            "audit"
        );
        let Some(file) = self.file.clone() else {
            return Ok(());
        };
        let mut line = match serde_json::to_vec(&event) {
            Ok(line) => line,
            Err(err) => {
                return Err(AuditError {
                    path: String::new(),
                    source: std::io::Error::other(err),
                });
            }
        };
        line.push(b'\n');
        let result = blocking(move || {
            file.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .append(&line)
        })
        .await;
        if let Err(err) = &result {
            // The event still exists in the logs, whole.
            tracing::error!(
                target: TARGET,
                error = %err,
                event = %serde_json::to_string(&event).unwrap_or_default(),
                "audit event not written to the audit file"
            );
        }
        result
    }
}

/// Runs file I/O off the async workers.
async fn blocking(
    f: impl FnOnce() -> Result<(), AuditError> + Send + 'static,
) -> Result<(), AuditError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|join| {
        Err(AuditError {
            path: String::new(),
            source: std::io::Error::other(join.to_string()),
        })
    })
}

/// The current time as an audit event spells it.
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AuditEvent {
        AuditEvent {
            time: now(),
            kind: "upgrade",
            caller: "billing".into(),
            db_instance_id: "dds-bp1".into(),
            region_id: "cn-hangzhou".into(),
            from_version: "4.2".into(),
            to_version: "4.4".into(),
            outcome: "accepted",
            grpc_code: "OK",
            alibaba_request_id: "R-1".into(),
            alibaba_code: String::new(),
            request_id: String::new(),
            trace_id: String::new(),
        }
    }

    #[tokio::test]
    async fn appends_one_synced_json_line_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::open(&path).unwrap();
        audit.record(event()).await.unwrap();
        audit.record(event()).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["outcome"], "accepted");
        assert_eq!(lines[1]["to_version"], "4.4");
    }

    #[tokio::test]
    async fn a_failed_write_is_an_error_and_the_next_write_reopens_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::open(&path).unwrap();
        // Make the next write fail: the file is gone and a directory stands in its place.
        audit.file.as_ref().unwrap().lock().unwrap().file = None;
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(audit.record(event()).await.is_err());
        assert!(audit.record(event()).await.is_err());
        std::fs::remove_dir(&path).unwrap();
        audit.record(event()).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }
}
