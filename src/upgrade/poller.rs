//! One look at an instance serves every watcher: a replica reads an instance that anyone follows
//! (`WatchUpgrade` streams, the rollout engine's instances under way) with one
//! `DescribeDBInstanceAttribute` per `watch.poll_interval`, whatever the number of followers, and
//! hands each look to all of them through a [`tokio::sync::watch`] channel. The first follower
//! of an instance starts its poll task; the task ends when the last follower leaves, or after a
//! failed read (which every follower is told, so a later follower starts afresh). Its reads are
//! in the background of the account's budget ([`in_background`]): they wait while any other call
//! waits, so following many instances never crowds out the calls that move upgrades on. A read
//! that found no room in the budget is no news about the instance: followers keep the last look
//! and the poll tries again at the next interval.
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

use crate::alibaba::{Alibaba, CallError, InstanceAttribute};
use crate::upgrade::error::Error;
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
    /// How long one read may take, retries and waiting for the budget included.
    read_budget: Duration,
    polls: Mutex<Polls>,
    /// Poll tasks running now.
    running: AtomicUsize,
}

impl Poller {
    pub fn new(alibaba: Alibaba, interval: Duration) -> Self {
        Self::with_read_budget(alibaba, interval, READ_BUDGET)
    }

    fn with_read_budget(alibaba: Alibaba, interval: Duration, read_budget: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                alibaba,
                interval,
                read_budget,
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
                started + self.inner.read_budget,
            ));
            let read = tokio::select! {
                read = read => read,
                () = self.nobody_follows(key, sender) => return,
            };
            match read {
                Err(err) if no_room(&err) => {
                    tracing::debug!(%db_instance_id, error = %err, "no room in the budget to look at a followed instance; trying again next interval");
                }
                Err(err) => {
                    // Followers see the failure, then the channel closes; the next follower
                    // polls afresh.
                    sender.send_replace(Some(Err(Status::from(err))));
                    self.polls().remove(key);
                    return;
                }
                Ok(attribute) => {
                    sender.send_replace(Some(Ok(attribute)));
                }
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

/// Whether a read failed for want of room in the account's budget, which says nothing about the
/// instance. A poll's reads are background calls, so a read that waited in line past its budget
/// hears `QuotaExhausted` too; any other failure (a deadline passing while Alibaba does not
/// answer, say) is news for the followers.
fn no_room(err: &Error) -> bool {
    matches!(err, Error::Call(CallError::QuotaExhausted { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alibaba::AlibabaClient;
    use crate::alibaba::credentials::credential::StaticProvider;
    use crate::alibaba::quota::{Quota, QuotaLimits};
    use crate::config::{Config, Overrides};
    use crate::sandbox::{FleetSpec, Sandbox, SandboxConfig};
    use crate::state::quota::MemoryQuota;

    const REGION: &str = "cn-hangzhou";
    const INSTANCE: &str = "dds-fleet000";

    /// While other calls hold every place in the budget, a poll's reads find no room; its
    /// followers keep following (before, they were told ALIBABA_QUOTA_EXHAUSTED or
    /// DEADLINE_EXCEEDED and their watches ended) and get a look once there is room.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_that_finds_no_room_in_the_budget_keeps_the_followers() {
        let sandbox = Sandbox::start(SandboxConfig {
            fleet: FleetSpec {
                count: 1,
                ..FleetSpec::default()
            },
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
        let mut config = Config::from_toml("", "t", |_| None, &Overrides::default()).unwrap();
        config.alibaba.endpoint = Some(sandbox.endpoint());
        let quota = Arc::new(Quota::new(
            Arc::new(MemoryQuota::new()),
            QuotaLimits {
                calls_per_second: 100,
                max_in_flight: 1,
            },
            Duration::from_secs(5),
        ));
        let client = AlibabaClient::new(
            &config.alibaba,
            Arc::new(StaticProvider::new(sandbox.credential())),
        )
        .unwrap()
        .with_quota(Arc::clone(&quota));
        let alibaba = Alibaba::new(Arc::new(client), config.alibaba.retry.into());
        let held = quota.acquire(REGION, None).await.unwrap();
        let budget = Duration::from_millis(100);
        let poller = Poller::with_read_budget(alibaba, Duration::from_millis(20), budget);
        let mut looks = poller.follow(REGION, INSTANCE);

        // Five read budgets with the only place held: nothing read, nothing told, still open.
        tokio::time::sleep(budget * 5).await;
        assert_eq!(
            sandbox.calls(crate::alibaba::action::DESCRIBE_DB_INSTANCE_ATTRIBUTE),
            0
        );
        assert!(
            looks.borrow().is_none(),
            "the follower was told {:?}",
            looks.borrow()
        );
        assert!(looks.has_changed().is_ok(), "the poll ended");

        drop(held);
        let look = tokio::time::timeout(Duration::from_secs(10), looks.wait_for(Option::is_some))
            .await
            .expect("a look once the place was given back")
            .unwrap()
            .clone();
        assert_eq!(look.unwrap().unwrap().status, "Running");
        assert_eq!(poller.polls_running(), 1);
    }
}
