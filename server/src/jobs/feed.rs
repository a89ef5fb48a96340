//! Wakes the readers of a job when its log changes: a line committed, its end recorded, by this
//! origin's runner or (PostgreSQL's LISTEN/NOTIFY) by another replica's. A wake-up carries no data:
//! a reader reads the store again, so a missed or doubled one costs a read, never a line; readers
//! also read again after a bounded wait of their own ([`POLL`]) in case a notification was lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::JobId;

/// The longest a reader waits without a wake-up before it reads the store again.
pub const POLL: Duration = Duration::from_secs(1);

#[derive(Clone, Default)]
pub struct Feed {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// One channel per job that has readers; dropped at the next change once they are gone.
    jobs: Mutex<HashMap<JobId, watch::Sender<()>>>,
    /// Running jobs were handed back (a replica stopped): one may be taken over now.
    handback: Notify,
}

impl Feed {
    /// A receiver that wakes at the job's next change (not for those before this call).
    pub fn subscribe(&self, id: &JobId) -> watch::Receiver<()> {
        let mut jobs = self.lock();
        // Jobs whose readers all left, and that never changed since (they are over).
        jobs.retain(|_, sender| sender.receiver_count() > 0);
        jobs.entry(id.clone())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    /// The job changed.
    pub fn publish(&self, id: &JobId) {
        let mut jobs = self.lock();
        if let Some(sender) = jobs.get(id) {
            if sender.receiver_count() == 0 {
                jobs.remove(id);
            } else {
                sender.send_replace(());
            }
        }
    }

    /// Anything may have changed (the database connection was lost and made again).
    pub fn publish_all(&self) {
        let mut jobs = self.lock();
        jobs.retain(|_, sender| sender.receiver_count() > 0);
        for sender in jobs.values() {
            sender.send_replace(());
        }
        self.inner.handback.notify_one();
    }

    /// Running jobs have no owner any more.
    pub fn handed_back(&self) {
        self.inner.handback.notify_one();
    }

    /// Waits for [`Feed::handed_back`] (one call wakes one wait, even if it came first).
    pub async fn handback(&self) {
        self.inner.handback.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, watch::Sender<()>>> {
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> JobId {
        "00000000000000aa".parse().expect("a job id")
    }

    #[tokio::test]
    async fn a_subscriber_wakes_at_the_next_change_only() {
        let feed = Feed::default();
        feed.publish(&id());
        let mut changes = feed.subscribe(&id());
        assert!(
            !changes.has_changed().expect("open"),
            "woken by a change before it subscribed"
        );
        feed.publish(&id());
        assert!(changes.has_changed().expect("open"));
        changes.changed().await.expect("open");
        assert!(!changes.has_changed().expect("open"));
    }

    #[test]
    fn a_job_whose_readers_left_is_forgotten_at_its_next_change() {
        let feed = Feed::default();
        drop(feed.subscribe(&id()));
        feed.publish(&id());
        assert!(feed.lock().is_empty());
    }
}
