//! Recent activity: the last upgrades and rollout actions, newest first, in a bounded list. The
//! audit trail is a file per replica; this list is what the console shows, shared by the
//! replicas when the state store is Redis (a capped list: `LPUSH` then `LTRIM`, in one
//! transaction), else kept in this process. It is a view, never the record: an entry that
//! cannot be kept is logged and dropped, and the audit file still has it.

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
    },
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory(_) => f.write_str("Memory"),
            Self::Redis { key, .. } => f.debug_struct("Redis").field("key", key).finish(),
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

    /// In `store`'s Redis, under the gateway's key prefix.
    pub fn redis(store: &RedisStore) -> Self {
        Self {
            place: Place::Redis {
                connection: store.connection(),
                key: store.key("activity", ":recent"),
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

    /// Adds `entry` at the head, dropping the oldest beyond [`CAPACITY`].
    pub async fn push(&self, entry: pb::Activity) -> Result<(), StoreError> {
        match &self.place {
            Place::Memory(list) => {
                push_front(list, entry);
                Ok(())
            }
            Place::Redis { connection, key } => {
                let mut connection = connection.clone();
                redis::pipe()
                    .atomic()
                    .lpush(key, entry.encode_to_vec())
                    .ignore()
                    .ltrim(key, 0, CAPACITY as isize - 1)
                    .ignore()
                    .query_async::<()>(&mut connection)
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))
            }
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
            Place::Redis { connection, key } => {
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
    /// back), in Redis from a task of its own.
    pub fn keep_entry(&self, entry: pb::Activity) {
        if let Place::Memory(list) = &self.place {
            push_front(list, entry);
            return;
        }
        let list = self.clone();
        tokio::spawn(async move {
            if let Err(err) = list.push(entry).await {
                tracing::warn!(error = %err, "recent activity not kept (the audit trail has it)");
            }
        });
    }
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
