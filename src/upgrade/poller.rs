//! One look at an instance serves every watcher: a replica reads an instance that anyone follows
//! (`WatchUpgrade` streams, the rollout engine's instances under way) with one
//! `DescribeDBInstanceAttribute` per `watch.poll_interval`, whatever the number of followers, and
//! hands each look to all of them through a [`tokio::sync::watch`] channel. The first follower
//! of an instance starts its poll task; the task ends when the last follower leaves, or after a
//! failed read (which every follower is told, so a later follower starts afresh). Its reads are
//! in the background of the account's budget ([`in_background`]): they wait while any other call
//! waits, so following many instances never crowds out the calls that move upgrades on.
//!
//! [`in_background`]: crate::alibaba::quota::in_background

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;
use tracing::instrument::WithSubscriber as _;

use crate::alibaba::{Alibaba, InstanceAttribute};
use crate::upgrade::preflight;

/// One read of an instance: what Alibaba said, or the status the read failed with (retries
/// spent; an instance that is absent or in another region is NOT_FOUND).
pub(crate) type Look = Result<InstanceAttribute, Status>;

/// What followers receive: `None` until the first read answers.
pub(crate) type Looks = watch::Receiver<Option<Look>>;

/// (region, instance) → the sender of its poll task, while the task runs.
type Polls = HashMap<(String, String), watch::Sender<Option<Look>>>;

/// How long one read may take, retries included (a poll interval may be far shorter).
const READ_BUDGET: Duration = Duration::from_secs(30);

/// The instances polled on this replica. Cheap to clone; clones share the polls.
#[derive(Debug, Clone)]
pub struct Poller {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    alibaba: Alibaba,
    interval: Duration,
    polls: Mutex<Polls>,
    /// Poll tasks running now.
    running: AtomicUsize,
}

impl Poller {
    pub fn new(alibaba: Alibaba, interval: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                alibaba,
                interval,
                polls: Mutex::new(HashMap::new()),
                running: AtomicUsize::new(0),
            }),
        }
    }

    /// Follows an instance: the latest look at once when its poll is running, then each new one.
    /// The receiver is closed after a failed read (its last value is the failure). Dropping it
    /// leaves; the poll ends when nobody follows any more.
    pub fn follow(&self, region_id: &str, db_instance_id: &str) -> Looks {
        let key = (region_id.to_string(), db_instance_id.to_string());
        let mut polls = self.polls();
        if let Some(sender) = polls.get(&key) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(None);
        polls.insert(key.clone(), sender.clone());
        self.inner.running.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        tokio::spawn(
            async move {
                this.poll(&key, &sender).await;
                this.inner.running.fetch_sub(1, Ordering::Relaxed);
            }
            .with_current_subscriber(),
        );
        receiver
    }

    /// Poll tasks running now (instances followed on this replica).
    pub fn polls_running(&self) -> usize {
        self.inner.running.load(Ordering::Relaxed)
    }

    async fn poll(&self, key: &(String, String), sender: &watch::Sender<Option<Look>>) {
        let (region_id, db_instance_id) = key;
        loop {
            let started = Instant::now();
            // A follow-up poll gives way to every other call to Alibaba on this replica.
            let read = crate::alibaba::quota::in_background(preflight::describe(
                &self.inner.alibaba,
                region_id,
                db_instance_id,
                started + READ_BUDGET,
            ));
            let look = tokio::select! {
                read = read => read.map_err(Status::from),
                () = self.nobody_follows(key, sender) => return,
            };
            let failed = look.is_err();
            sender.send_replace(Some(look));
            if failed {
                // Followers see the failure, then the channel closes; the next follower polls
                // afresh.
                self.polls().remove(key);
                return;
            }
            let next = crate::deadline::later(started, self.inner.interval);
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = self.nobody_follows(key, sender) => return,
            }
        }
    }

    /// Resolves when the last follower has left, having removed the poll from the map (under
    /// the lock that new followers take, so none joins a poll that is ending).
    async fn nobody_follows(&self, key: &(String, String), sender: &watch::Sender<Option<Look>>) {
        loop {
            sender.closed().await;
            let mut polls = self.polls();
            if sender.receiver_count() == 0 {
                polls.remove(key);
                return;
            }
        }
    }

    fn polls(&self) -> MutexGuard<'_, Polls> {
        self.inner
            .polls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
