//! The audit trail: one event per request to upgrade or validate (who asked, which instance and
//! region, from which version to which, the outcome, the gRPC code, Alibaba's `RequestId`, the
//! trace id, the time), and before it a `sending` event for each upgrade request sent; and each
//! action on a fleet rollout (kind `rollout`: start, pause, resume, cancel, approve, retry, skip).
//!
//! Every event goes to the log target [`TARGET`] and, when `audit.file` is set, is appended to a
//! JSON-lines file and synced to disk before [`Audit::record`] returns. The file follows log
//! rotation: it is reopened on SIGHUP ([`Audit::reopen`]) and whenever `audit.file` no longer
//! names the open file (moved away or removed). Each event is one whole line or nothing: a write
//! that fails half-way is cut back off.
//!
//! Fail closed for what has not happened yet: an upgrade request leaves only once its `sending`
//! event is on disk (the upgrade's caller checks [`Audit::record`]'s result). Never lie about what
//! has: an outcome event that cannot be written is logged whole at ERROR on [`TARGET`] (and
//! counted, see [`Audit::counting_failures`]), and the caller still hears the truth.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use opentelemetry::metrics::Counter;
use serde::Serialize;

/// The log target of audit events.
pub(crate) const TARGET: &str = "dds_gateway::audit";

/// One audit event.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// `upgrade`, `validate_only` or `rollout`.
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
    /// The fleet rollout the event belongs to (a rollout's actions, and its instances' upgrades).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub rollout_id: String,
    /// The caller's reason for a rollout action (e.g. an approval's comment).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub comment: String,
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
    /// Adds one for each event that could not be written to the file.
    write_failures: Option<Counter<u64>>,
    recent: Option<Arc<dyn Recent>>,
}

/// Where audit events are also kept as a short list of recent activity (the state store's, see
/// `state::activity`), for the console. Never blocks and never fails the event: the file is the
/// record, the list a view.
pub trait Recent: Send + Sync + std::fmt::Debug {
    fn keep(&self, event: &AuditEvent);
}

#[derive(Debug)]
struct AuditFile {
    path: PathBuf,
    file: Option<OpenFile>,
}

/// The open audit file and the identity (device, inode) it had when opened, to notice when
/// `audit.file` names another file (rotated away, or removed).
#[derive(Debug)]
struct OpenFile {
    file: std::fs::File,
    identity: Identity,
}

type Identity = (u64, u64);

#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> Identity {
    use std::os::unix::fs::MetadataExt as _;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn identity(_: &std::fs::Metadata) -> Identity {
    (0, 0)
}

impl AuditFile {
    fn open(path: &Path) -> std::io::Result<OpenFile> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let identity = identity(&file.metadata()?);
        Ok(OpenFile { file, identity })
    }

    fn error(&self, source: std::io::Error) -> AuditError {
        AuditError {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// The open file, reopened first when the path names another file than the one open (a
    /// rotation moved it away, or it was removed): one `stat` per event.
    fn current(&mut self) -> std::io::Result<&mut OpenFile> {
        let moved = match (&self.file, std::fs::metadata(&self.path)) {
            (None, _) => true,
            (Some(open), Ok(meta)) => open.identity != identity(&meta),
            (Some(_), Err(err)) if err.kind() == std::io::ErrorKind::NotFound => true,
            (Some(_), Err(err)) => return Err(err),
        };
        if moved {
            if self.file.is_some() {
                tracing::info!(target: TARGET, path = %self.path.display(), "audit file moved or removed: reopening it");
            }
            self.file = None;
            self.file = Some(Self::open(&self.path)?);
        }
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("audit file not open"))
    }

    fn append(&mut self, line: &[u8]) -> Result<(), AuditError> {
        let result = self
            .current()
            .and_then(|open| append_whole(&mut open.file, line));
        result.map_err(|err| {
            // Reopen next time: the file may have been rotated away or its disk replaced.
            self.file = None;
            self.error(err)
        })
    }
}

/// Appends `line` (one whole event) to `file` and syncs it, or leaves the file as it was: a write
/// that fails half-way (a full disk) is cut back to the last whole line, so that the next event
/// is not glued to a torn one.
fn append_whole(file: &mut (impl Record + ?Sized), line: &[u8]) -> std::io::Result<()> {
    let good = file.size()?;
    let written = file.write_all(line).and_then(|()| file.sync_data());
    if let Err(err) = written {
        if let Err(cut) = file.set_len(good) {
            tracing::error!(target: TARGET, error = %cut, "cannot cut a torn audit line back off the audit file");
        }
        return Err(err);
    }
    Ok(())
}

/// What [`append_whole`] needs of a file (a trait so that a test can fail a write half-way).
trait Record: std::io::Write {
    fn size(&self) -> std::io::Result<u64>;
    fn set_len(&self, len: u64) -> std::io::Result<()>;
    fn sync_data(&self) -> std::io::Result<()>;
}

impl Record for std::fs::File {
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        std::fs::File::set_len(self, len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        std::fs::File::sync_data(self)
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
            write_failures: None,
            recent: None,
        })
    }

    /// Adds one to `write_failures` for each event that cannot be written to the file.
    pub fn counting_failures(mut self, write_failures: Counter<u64>) -> Self {
        self.write_failures = Some(write_failures);
        self
    }

    /// Closes the audit file, so that the next event opens whatever `audit.file` names then (on
    /// SIGHUP, after a rotation).
    pub fn reopen(&self) {
        if let Some(file) = &self.file {
            file.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .file = None;
            tracing::info!(target: TARGET, "audit file closed; the next event opens what audit.file names");
        }
    }

    /// Also keeps each event in `recent`.
    pub fn with_recent(mut self, recent: Arc<dyn Recent>) -> Self {
        self.recent = Some(recent);
        self
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
        if let Some(recent) = &self.recent {
            recent.keep(&event);
        }
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
            if let Some(failures) = &self.write_failures {
                failures.add(1, &[]);
            }
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
pub(crate) fn now() -> String {
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
            rollout_id: String::new(),
            comment: String::new(),
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

    /// A file that takes `room` more bytes, then fails the write (as a full disk does).
    struct FullDisk {
        bytes: std::cell::RefCell<Vec<u8>>,
        room: usize,
    }

    impl std::io::Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.bytes.get_mut().extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Record for FullDisk {
        fn size(&self) -> std::io::Result<u64> {
            Ok(self.bytes.borrow().len() as u64)
        }

        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.bytes.borrow_mut().truncate(len as usize);
            Ok(())
        }

        fn sync_data(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_record_that_fails_half_way_is_cut_back_off() {
        let first = b"{\"outcome\":\"accepted\"}\n";
        let mut disk = FullDisk {
            bytes: first.to_vec().into(),
            room: 10,
        };
        let line = b"{\"outcome\":\"sending\",\"request_id\":\"k\"}\n";
        assert!(append_whole(&mut disk, line).is_err());
        assert_eq!(disk.bytes.borrow().as_slice(), first);
        // Room again: the next event starts on a line of its own.
        disk.room = usize::MAX;
        append_whole(&mut disk, line).unwrap();
        let text = String::from_utf8(disk.bytes.take()).unwrap();
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
        assert_eq!(text.lines().count(), 2);
    }

    /// A small tmpfs in a temporary directory, unmounted when dropped (needs root, as CI has).
    struct SmallDisk {
        dir: tempfile::TempDir,
    }

    impl SmallDisk {
        fn mount() -> Option<Self> {
            let dir = tempfile::tempdir().unwrap();
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
                .arg(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            mounted.then_some(Self { dir })
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.dir.path())
                .status();
        }
    }

    /// The torn line of a full disk, on a real one: fill a 16 KiB tmpfs with events until one
    /// fails, free room, and the file still reads as whole JSON lines.
    #[tokio::test]
    async fn a_full_disk_leaves_no_torn_audit_line() {
        let Some(disk) = SmallDisk::mount() else {
            // Not root (a developer's machine): the test above covers the cut with a fake file.
            eprintln!("skipped: cannot mount a tmpfs here");
            return;
        };
        let filler = disk.dir.path().join("filler");
        std::fs::write(&filler, vec![b'x'; 4096]).unwrap();
        let path = disk.dir.path().join("audit.jsonl");
        let audit = Audit::open(&path).unwrap();
        let mut written = 0;
        while audit.record(event()).await.is_ok() {
            written += 1;
            assert!(written < 1000, "the disk never filled");
        }
        std::fs::remove_file(&filler).unwrap();
        audit.record(event()).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
            assert!(parsed.is_ok(), "a torn line: {line:?}");
        }
        assert_eq!(text.lines().count(), written + 1);
    }

    #[tokio::test]
    async fn a_rotated_or_removed_file_is_reopened_at_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rotated = dir.path().join("audit.jsonl.1");
        let audit = Audit::open(&path).unwrap();
        audit.record(event()).await.unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        audit.record(event()).await.unwrap();
        assert_eq!(read(&rotated), 1);
        assert_eq!(
            read(&path),
            1,
            "the event after the rotation is at the path"
        );
        std::fs::remove_file(&path).unwrap();
        audit.record(event()).await.unwrap();
        assert_eq!(read(&path), 1, "the event after the removal is at the path");
    }

    fn read(path: &Path) -> usize {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .count()
    }
}
