//! Recent activity: the last upgrades and rollout actions, newest first, in a bounded list. The
//! audit trail is a file per replica; this list is what the console shows, shared by the
//! replicas when the state store is Redis (a capped list: `LPUSH` then `LTRIM`, in one
//! transaction), else kept in this process. It is a view, never the record: an entry that
//! cannot be kept is logged and dropped, and the audit file still has it. Entries go to Redis
//! from one writer task, which takes whatever arrived within [`LINGER`] of the first in one
//! round trip, so that a busy replica does not add a round trip per upgrade.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use prost::Message as _;
use redis::aio::ConnectionManager;

use crate::audit::{AuditEvent, Recent};
use crate::pb;
use crate::state::redis::RedisStore;
use crate::state::store::StoreError;

/// How many entries the list keeps.
pub const CAPACITY: usize = 500;

/// How long the writer waits for more entries after the first before it writes them.
const LINGER: std::time::Duration = std::time::Duration::from_millis(50);
/// Entries waiting for the writer; beyond it, an entry is dropped (and logged).
const QUEUE: usize = 1000;

/// The list of recent activity. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Activity {
    place: Place,
}

#[derive(Clone)]
enum Place {
    Memory(Arc<Mutex<VecDeque<pb::Activity>>>),
    Redis {
        connection: ConnectionManager,
        key: String,
        /// To the writer task.
        queue: tokio::sync::mpsc::Sender<pb::Activity>,
    },
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory(_) => f.write_str("Memory"),
            Self::Redis { key, .. } => f
                .debug_struct("Redis")
                .field("key", key)
                .finish_non_exhaustive(),
        }
    }
}

impl Activity {
    /// In this process.
    pub fn memory() -> Self {
        Self {
            place: Place::Memory(Arc::default()),
        }
    }

    /// In `store`'s Redis, under the gateway's key prefix. Starts the writer task, which ends
    /// with the last clone.
    pub fn redis(store: &RedisStore) -> Self {
        let (queue, entries) = tokio::sync::mpsc::channel(QUEUE);
        let (connection, key) = (store.connection(), store.key("activity", ":recent"));
        tokio::spawn(write(connection.clone(), key.clone(), entries));
        Self {
            place: Place::Redis {
                connection,
                key,
                queue,
            },
        }
    }

    /// The list `state` keeps: in its Redis when it has one.
    pub fn of(state: &crate::state::State) -> Self {
        match &state.redis {
            Some(redis) => Self::redis(redis),
            None => Self::memory(),
        }
    }

    /// Adds `entry` at the head now, dropping the oldest beyond [`CAPACITY`].
    pub async fn push(&self, entry: pb::Activity) -> Result<(), StoreError> {
        match &self.place {
            Place::Memory(list) => {
                push_front(list, entry);
                Ok(())
            }
            Place::Redis {
                connection, key, ..
            } => write_batch(connection, key, vec![entry]).await,
        }
    }

    /// The entries, newest first.
    pub async fn recent(&self) -> Result<Vec<pb::Activity>, StoreError> {
        match &self.place {
            Place::Memory(list) => Ok(list
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .cloned()
                .collect()),
            Place::Redis {
                connection, key, ..
            } => {
                let mut connection = connection.clone();
                let raw: Vec<Vec<u8>> = redis::cmd("LRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(CAPACITY as isize - 1)
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                // An entry another version wrote and this one cannot read is skipped.
                Ok(raw
                    .iter()
                    .filter_map(|bytes| pb::Activity::decode(bytes.as_slice()).ok())
                    .collect())
            }
        }
    }

    /// Keeps `entry` without waiting: in memory at once (so a caller reads its own action
    /// back), in Redis by the writer task, within [`LINGER`].
    pub fn keep_entry(&self, entry: pb::Activity) {
        match &self.place {
            Place::Memory(list) => push_front(list, entry),
            Place::Redis { queue, .. } => {
                if queue.try_send(entry).is_err() {
                    tracing::warn!(
                        "recent activity not kept: too many entries wait for Redis (the audit trail has it)"
                    );
                }
            }
        }
    }
}

/// Writes the entries `entries` brings to the head of `key`, all those that arrived within
/// [`LINGER`] of the first in one transaction, oldest first (so the newest ends at the head).
async fn write(
    connection: ConnectionManager,
    key: String,
    mut entries: tokio::sync::mpsc::Receiver<pb::Activity>,
) {
    while let Some(batch) = next_batch(&mut entries).await {
        if let Err(err) = write_batch(&connection, &key, batch).await {
            tracing::warn!(error = %err, "recent activity not kept (the audit trail has it)");
        }
    }
}

/// Pushes `batch` (oldest first) to the head of `key` and trims it, in one transaction.
async fn write_batch(
    connection: &ConnectionManager,
    key: &str,
    batch: Vec<pb::Activity>,
) -> Result<(), StoreError> {
    let batch: Vec<Vec<u8>> = batch.iter().map(prost::Message::encode_to_vec).collect();
    let mut connection = connection.clone();
    redis::pipe()
        .atomic()
        .lpush(key, batch)
        .ignore()
        .ltrim(key, 0, CAPACITY as isize - 1)
        .ignore()
        .query_async::<()>(&mut connection)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// The next entries to write: the first to arrive and those that follow within [`LINGER`] (at
/// most [`CAPACITY`]), oldest first. `None` once every sender is gone.
async fn next_batch(
    entries: &mut tokio::sync::mpsc::Receiver<pb::Activity>,
) -> Option<Vec<pb::Activity>> {
    let mut batch = vec![entries.recv().await?];
    let until = tokio::time::Instant::now() + LINGER;
    while batch.len() < CAPACITY {
        match tokio::time::timeout_at(until, entries.recv()).await {
            Ok(Some(entry)) => batch.push(entry),
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
}

fn push_front(list: &Mutex<VecDeque<pb::Activity>>, entry: pb::Activity) {
    let mut list = list
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    list.push_front(entry);
    list.truncate(CAPACITY);
}

impl Recent for Activity {
    fn keep(&self, event: &AuditEvent) {
        // `sending` is followed by the outcome; a validation changes nothing.
        if event.outcome == "sending" || event.kind == "validate_only" {
            return;
        }
        // A rollout's action is recorded with the action as its outcome; as activity it is the
        // action `rollout.<action>`, done.
        let (action, outcome) = if event.kind == "rollout" {
            (format!("rollout.{}", event.outcome), "done")
        } else {
            (event.kind.to_string(), event.outcome)
        };
        self.keep_entry(pb::Activity {
            time: event.time.clone(),
            caller: event.caller.clone(),
            action,
            db_instance_id: event.db_instance_id.clone(),
            region_id: event.region_id.clone(),
            rollout_id: event.rollout_id.clone(),
            from_engine_version: event.from_version.clone(),
            to_engine_version: event.to_version.clone(),
            outcome: outcome.to_string(),
            grpc_code: event.grpc_code.to_string(),
            alibaba_code: event.alibaba_code.clone(),
            comment: event.comment.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> pb::Activity {
        pb::Activity {
            db_instance_id: format!("dds-{n}"),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_memory_list_is_newest_first_and_bounded() {
        let activity = Activity::memory();
        for n in 0..CAPACITY + 3 {
            activity.keep_entry(entry(n));
        }
        let recent = activity.recent().await.unwrap();
        assert_eq!(recent.len(), CAPACITY);
        assert_eq!(recent[0].db_instance_id, format!("dds-{}", CAPACITY + 2));
        assert_eq!(recent[CAPACITY - 1].db_instance_id, "dds-3");
    }

    #[tokio::test(start_paused = true)]
    async fn entries_within_the_linger_are_written_together() {
        let (queue, mut entries) = tokio::sync::mpsc::channel(QUEUE);
        for n in 0..3 {
            queue.try_send(entry(n)).unwrap();
        }
        let late = tokio::spawn({
            let queue = queue.clone();
            async move {
                tokio::time::sleep(LINGER / 2).await;
                queue.send(entry(3)).await.unwrap();
                tokio::time::sleep(LINGER).await;
                queue.send(entry(4)).await.unwrap();
            }
        });
        let names = |batch: Vec<pb::Activity>| -> Vec<String> {
            batch.into_iter().map(|e| e.db_instance_id).collect()
        };
        let first = names(next_batch(&mut entries).await.unwrap());
        assert_eq!(first, ["dds-0", "dds-1", "dds-2", "dds-3"]);
        assert_eq!(names(next_batch(&mut entries).await.unwrap()), ["dds-4"]);
        late.await.unwrap();
        drop(queue);
        assert!(next_batch(&mut entries).await.is_none());
    }

    #[tokio::test]
    async fn sending_and_validations_are_not_activity() {
        let activity = Activity::memory();
        let mut event = AuditEvent {
            time: crate::audit::now(),
            kind: "upgrade",
            caller: "ops".into(),
            db_instance_id: "dds-a".into(),
            region_id: "cn-hangzhou".into(),
            from_version: "4.2".into(),
            to_version: "4.4".into(),
            outcome: "sending",
            grpc_code: "OK",
            alibaba_request_id: String::new(),
            alibaba_code: String::new(),
            request_id: String::new(),
            trace_id: String::new(),
            rollout_id: String::new(),
            comment: String::new(),
        };
        activity.keep(&event);
        event.kind = "validate_only";
        event.outcome = "validated";
        activity.keep(&event);
        assert!(activity.recent().await.unwrap().is_empty());
        event.kind = "upgrade";
        event.outcome = "accepted";
        activity.keep(&event);
        let recent = activity.recent().await.unwrap();
        assert_eq!(recent.len(), 1);
        assert_eq!(
            (
                recent[0].action.as_str(),
                recent[0].outcome.as_str(),
                recent[0].caller.as_str()
            ),
            ("upgrade", "accepted", "ops")
        );
        event.kind = "rollout";
        event.outcome = "approve";
        event.rollout_id = "r-1".into();
        event.comment = "canary looks healthy".into();
        activity.keep(&event);
        let approval = &activity.recent().await.unwrap()[0];
        assert_eq!(
            (approval.action.as_str(), approval.outcome.as_str()),
            ("rollout.approve", "done")
        );
        assert_eq!(approval.rollout_id, "r-1");
        assert_eq!(approval.comment, "canary looks healthy");
    }
}
