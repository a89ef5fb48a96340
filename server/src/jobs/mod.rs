//! Durable jobs, the tutorial's "special measures": the poem as work that runs whether or not anybody
//! is connected, with every line committed to a log before it is streamed, so that a client cut off
//! by a balancer (or an origin that crashed) resumes where it was and loses nothing.
//!
//! [`Jobs`] owns the store and the jobs running in this process. A running job is a task that writes
//! its lines on the poem's clock and tells readers through a `watch` channel; readers always read the
//! lines themselves from the store, so a live reader and one resuming after a restart see the same
//! bytes. After a restart the origin resumes every job a previous run left running, from its last
//! committed line (nothing a client saw is ever rewritten; the job's `runs` counts the take-overs).
//! When the origin stops, [`Jobs::stop`] suspends the runners between two lines and leaves their jobs
//! `running` for the next start; a lock on the data directory keeps two origins from running one job.
//! Each client may run `SERVER_JOBS_PER_CLIENT` jobs at once ([`quota`]); jobs resumed after a
//! restart count against nobody's, as the store does not keep who started them.

pub mod quota;
pub mod range;
pub mod render;
pub mod routes;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use quota::Client;
pub use store::{Storage, Store, StoreError};

use quota::{Claim, Quota};

/// A job's name: 16 lowercase hex digits, random.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId(String);

impl JobId {
    fn random() -> Self {
        Self(format!("{:016x}", fastrand::u64(..)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for JobId {
    type Err = ();

    fn from_str(value: &str) -> Result<Self, ()> {
        let well_formed = value.len() == 16
            && value
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        well_formed.then(|| Self(value.to_owned())).ok_or(())
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a job was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSpec {
    pub sleep: Duration,
    /// Heartbeat period of the job's SSE streams while they wait for a line.
    pub heartbeat: Option<Duration>,
    pub lines: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    Completed,
    Cancelled,
    /// The log could not be written; the lines before the failure are kept.
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }

    pub fn is_finished(self) -> bool {
        self != Self::Running
    }
}

impl std::str::FromStr for JobState {
    type Err = ();

    fn from_str(value: &str) -> Result<Self, ()> {
        match value {
            "running" => Ok(Self::Running),
            "completed" => Ok(Self::Completed),
            "cancelled" => Ok(Self::Cancelled),
            "failed" => Ok(Self::Failed),
            _ => Err(()),
        }
    }
}

/// A job as the store knows it.
#[derive(Debug, Clone)]
pub struct JobInfo {
    pub id: JobId,
    pub spec: JobSpec,
    pub lines_written: u64,
    /// Length of the text rendering so far.
    pub bytes_written: u64,
    pub state: JobState,
    pub started_at: SystemTime,
    pub finished_at: Option<SystemTime>,
    /// 1, plus one for each restart of the origin that took the job over.
    pub runs: u64,
}

/// One committed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub number: u64,
    /// Offset just past this line in the text rendering.
    pub end_offset: u64,
    pub text: String,
}

/// How often finished jobs past retention are looked for, besides at start and at each new job.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How long a reader waits for a job that is `running` in the store but has no runner here (its end
/// is being recorded, or could not be) before it gives up on it.
pub const STALLED_AFTER: Duration = Duration::from_secs(1);

/// How long finished jobs are kept, and how many jobs at most.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_jobs: u64,
}

/// Why a job was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0} jobs are running, the most SERVER_JOB_MAX allows")]
    TooMany(u64),
    #[error("{client} already runs {limit} jobs, the most SERVER_JOBS_PER_CLIENT allows")]
    TooManyForClient { client: Client, limit: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The jobs of this origin: the store, and a progress channel and a cancel switch per running job.
#[derive(Clone)]
pub struct Jobs {
    store: Store,
    epoch: Arc<str>,
    retention: Retention,
    quota: Quota,
    running: Arc<Mutex<HashMap<JobId, Running>>>,
    /// Suspends every runner when the origin stops.
    stopping: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("epoch", &self.epoch)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

struct Running {
    /// Lines committed so far; closed when the job ends.
    progress: watch::Receiver<u64>,
    cancel: CancellationToken,
}

impl Jobs {
    /// The store at `storage`; each client may run `per_client` jobs at once.
    pub fn open(
        storage: &Storage,
        retention: Retention,
        per_client: u64,
    ) -> Result<Self, StoreError> {
        let (store, epoch) = Store::open(storage)?;
        Ok(Self {
            store,
            epoch: epoch.into(),
            retention,
            quota: Quota::new(per_client),
            running: Arc::default(),
            stopping: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    /// Suspends every runner between two lines (their jobs stay `running`, for the next start) and
    /// waits until none is left, so that the data directory is free for another origin.
    pub async fn stop(&self) {
        self.stopping.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Identifies this store's history; a new database (a wiped data directory) has a new one.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Resumes what a previous run of the origin left running, and starts the periodic retention
    /// sweep; call once, at start.
    pub async fn resume(&self) -> Result<usize, StoreError> {
        self.sweep().await;
        let jobs = self.store.take_over_running().await?;
        for job in &jobs {
            tracing::info!(
                job = %job.id,
                lines_written = job.lines_written,
                lines = job.spec.lines,
                run = job.runs,
                "resuming a job a previous run left running"
            );
            self.spawn(
                job.id.clone(),
                job.spec,
                job.lines_written,
                job.started_at,
                None,
            );
        }
        let jobs_handle = self.clone();
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = jobs_handle.stopping.cancelled() => return,
                    () = tokio::time::sleep(SWEEP_EVERY) => jobs_handle.sweep().await,
                }
            }
        });
        Ok(jobs.len())
    }

    /// Starts a job for `client`, within its quota and `SERVER_JOB_MAX`.
    pub async fn start(&self, spec: JobSpec, client: Client) -> Result<JobInfo, StartError> {
        // Claimed before anything is awaited, so that concurrent requests cannot all pass the count.
        let claim = self
            .quota
            .claim(client)
            .ok_or(StartError::TooManyForClient {
                client,
                limit: self.quota.limit(),
            })?;
        self.sweep().await;
        let running = self.store.running_count().await?;
        if running >= self.retention.max_jobs {
            return Err(StartError::TooMany(running));
        }
        let job = self.store.create(JobId::random(), spec).await?;
        tracing::info!(
            job = %job.id,
            lines = spec.lines,
            sleep = %keepalive_common::duration::display(spec.sleep),
            "job started"
        );
        self.spawn(job.id.clone(), spec, 0, job.started_at, Some(claim));
        Ok(job)
    }

    /// Cancels a running job; `false` when it is not running here.
    pub fn cancel(&self, id: &JobId) -> bool {
        let running = self.running.lock().unwrap_or_else(|err| err.into_inner());
        running.get(id).map(|job| job.cancel.cancel()).is_some()
    }

    /// A receiver of the job's committed line count, while the job runs in this process; its
    /// `changed()` waits for the next line (the current count is marked seen).
    pub fn watch(&self, id: &JobId) -> Option<watch::Receiver<u64>> {
        let running = self.running.lock().unwrap_or_else(|err| err.into_inner());
        running.get(id).map(|job| {
            let mut progress = job.progress.clone();
            progress.borrow_and_update();
            progress
        })
    }

    async fn sweep(&self) {
        let Retention { max_age, max_jobs } = self.retention;
        match self.store.sweep(max_age, max_jobs).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "finished jobs past retention deleted"),
            Err(err) => tracing::warn!(%err, "cannot delete finished jobs past retention"),
        }
    }

    /// Runs a job; its client's slot (`claim`) is held until the runner ends.
    fn spawn(
        &self,
        id: JobId,
        spec: JobSpec,
        written: u64,
        started_at: SystemTime,
        claim: Option<Claim>,
    ) {
        let (progress_tx, progress) = watch::channel(written);
        let cancel = CancellationToken::new();
        self.running
            .lock()
            .unwrap_or_else(|err| err.into_inner())
            .insert(
                id.clone(),
                Running {
                    progress,
                    cancel: cancel.clone(),
                },
            );
        let jobs = self.clone();
        self.tasks.spawn(async move {
            let _claim = claim;
            // Declared after `progress_tx` was captured, so dropped before it: readers woken by the
            // sender's drop no longer find the job here, even if this task panicked.
            let _entry = RunningEntry {
                jobs: jobs.clone(),
                id: id.clone(),
            };
            let Some(state) = jobs
                .run(&id, spec, written, started_at, &progress_tx, &cancel)
                .await
            else {
                tracing::info!(job = %id, "job suspended: the origin is stopping; it resumes at the next start");
                return;
            };
            jobs.record_end(&id, state).await;
            tracing::info!(job = %id, state = state.as_str(), "job ended");
        });
    }

    /// Records how a job ended, trying a few times: while it stays `running` in the store, readers
    /// wait for it and it counts against `SERVER_JOB_MAX` until the next start.
    async fn record_end(&self, id: &JobId, state: JobState) {
        for attempt in 1..=3 {
            match self.store.finish(id, state).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::error!(job = %id, %err, attempt, "cannot record the job's end");
                    tokio::time::sleep(Duration::from_millis(100) * attempt).await;
                }
            }
        }
    }

    /// Writes lines `written + 1 ..= spec.lines` on the poem's clock: a new job's first line at
    /// once, a resumed job's next one a `sleep` after the take-over. `None` when the origin stops.
    async fn run(
        &self,
        id: &JobId,
        spec: JobSpec,
        written: u64,
        started_at: SystemTime,
        progress: &watch::Sender<u64>,
        cancel: &CancellationToken,
    ) -> Option<JobState> {
        let mut due = Instant::now()
            + if written == 0 {
                Duration::ZERO
            } else {
                spec.sleep
            };
        for number in written + 1..=spec.lines {
            // Only between lines: a line being committed is always committed whole.
            tokio::select! {
                () = self.stopping.cancelled() => return None,
                () = cancel.cancelled() => return Some(JobState::Cancelled),
                () = tokio::time::sleep_until(due) => {}
            }
            let elapsed = started_at.elapsed().unwrap_or_default().as_secs();
            let text = render::line_text(number, elapsed);
            if let Err(err) = self.store.append(id, number, text).await {
                tracing::error!(job = %id, line = number, %err, "cannot commit a line: job failed");
                return Some(JobState::Failed);
            }
            progress.send_replace(number);
            due += spec.sleep;
        }
        Some(JobState::Completed)
    }
}

/// Takes a job off the running map when its runner ends, whichever way.
struct RunningEntry {
    jobs: Jobs,
    id: JobId,
}

impl Drop for RunningEntry {
    fn drop(&mut self) {
        self.jobs
            .running
            .lock()
            .unwrap_or_else(|err| err.into_inner())
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A job id comes from a URL: anything is read without a panic, and only what
        /// [`JobId::random`] makes is an id.
        #[test]
        fn only_16_lowercase_hex_digits_are_a_job_id(
            text in prop_oneof!["[0-9a-fA-F]{14,18}", "\\PC{0,20}", "[0-9a-f]{15}[^0-9a-f]"]
        ) {
            let well_formed = text.len() == 16
                && text.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
            match text.parse::<JobId>() {
                Ok(id) => prop_assert!(well_formed && id.as_str() == text, "{text:?}"),
                Err(()) => prop_assert!(!well_formed, "{text:?} refused"),
            }
        }
    }

    #[test]
    fn a_random_job_id_reads_back_as_itself() {
        for _ in 0..100 {
            let id = JobId::random();
            assert_eq!(id.as_str().parse::<JobId>(), Ok(id));
        }
    }

    #[tokio::test]
    async fn a_watcher_waits_for_the_next_line_not_for_those_already_written() {
        let retention = Retention {
            max_age: Duration::from_secs(3600),
            max_jobs: 10,
        };
        let jobs = Jobs::open(&Storage::Memory, retention, 10).expect("an in-memory store");
        let spec = JobSpec {
            sleep: Duration::from_secs(3600),
            heartbeat: None,
            lines: 2,
        };
        let job = jobs.start(spec, Client::Unknown).await.expect("started");
        let deadline = Instant::now() + Duration::from_secs(10);
        while jobs
            .store()
            .info(&job.id)
            .await
            .expect("info")
            .map(|job| job.lines_written)
            != Some(1)
        {
            assert!(Instant::now() < deadline, "the first line never came");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut progress = jobs.watch(&job.id).expect("running here");
        let woke = tokio::time::timeout(Duration::from_millis(200), progress.changed()).await;
        assert!(woke.is_err(), "woken with no new line: a reader would spin");
        jobs.stop().await;
    }
}
