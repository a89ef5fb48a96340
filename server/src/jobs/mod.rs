//! Durable jobs, the tutorial's "special measures": the poem as work that runs whether or not anybody
//! is connected, with every line committed to a log before it is streamed, so that a client cut off
//! by a balancer (or an origin that crashed) resumes where it was and loses nothing.
//!
//! [`Jobs`] owns the store and the jobs running in this process. A running job is a task that writes
//! its lines on the poem's clock and tells readers through a `watch` channel; readers always read the
//! lines themselves from the store, so a live reader and one resuming after a restart see the same
//! bytes. After a restart the origin resumes every job a previous run left running, from its last
//! committed line (nothing a client saw is ever rewritten; the job's `runs` counts the take-overs).

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

pub use store::{Storage, Store, StoreError};

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
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The jobs of this origin: the store, and a progress channel and a cancel switch per running job.
#[derive(Clone)]
pub struct Jobs {
    store: Store,
    epoch: Arc<str>,
    retention: Retention,
    running: Arc<Mutex<HashMap<JobId, Running>>>,
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
    pub fn open(storage: &Storage, retention: Retention) -> Result<Self, StoreError> {
        let (store, epoch) = Store::open(storage)?;
        Ok(Self {
            store,
            epoch: epoch.into(),
            retention,
            running: Arc::default(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Identifies this store's history; a new database (a wiped data directory) has a new one.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Resumes what a previous run of the origin left running; call once, at start.
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
            self.spawn(job.id.clone(), job.spec, job.lines_written, job.started_at);
        }
        Ok(jobs.len())
    }

    pub async fn start(&self, spec: JobSpec) -> Result<JobInfo, StartError> {
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
        self.spawn(job.id.clone(), spec, 0, job.started_at);
        Ok(job)
    }

    /// Cancels a running job; `false` when it is not running here.
    pub fn cancel(&self, id: &JobId) -> bool {
        let running = self.running.lock().unwrap_or_else(|err| err.into_inner());
        running.get(id).map(|job| job.cancel.cancel()).is_some()
    }

    /// A receiver of the job's committed line count, while the job runs in this process.
    pub fn watch(&self, id: &JobId) -> Option<watch::Receiver<u64>> {
        let running = self.running.lock().unwrap_or_else(|err| err.into_inner());
        running.get(id).map(|job| job.progress.clone())
    }

    async fn sweep(&self) {
        let Retention { max_age, max_jobs } = self.retention;
        match self.store.sweep(max_age, max_jobs).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "finished jobs past retention deleted"),
            Err(err) => tracing::warn!(%err, "cannot delete finished jobs past retention"),
        }
    }

    fn spawn(&self, id: JobId, spec: JobSpec, written: u64, started_at: SystemTime) {
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
        tokio::spawn(async move {
            let state = jobs
                .run(&id, spec, written, started_at, &progress_tx, &cancel)
                .await;
            if let Err(err) = jobs.store.finish(&id, state).await {
                tracing::error!(job = %id, %err, "cannot record the job's end; it resumes at the next start");
            }
            jobs.running
                .lock()
                .unwrap_or_else(|err| err.into_inner())
                .remove(&id);
            // Dropping the sender wakes every reader, which then finds the job finished in the store.
            drop(progress_tx);
            tracing::info!(job = %id, state = state.as_str(), "job ended");
        });
    }

    /// Writes lines `written + 1 ..= spec.lines` on the poem's clock; the first at once.
    async fn run(
        &self,
        id: &JobId,
        spec: JobSpec,
        written: u64,
        started_at: SystemTime,
        progress: &watch::Sender<u64>,
        cancel: &CancellationToken,
    ) -> JobState {
        let mut due = Instant::now();
        for number in written + 1..=spec.lines {
            tokio::select! {
                () = cancel.cancelled() => return JobState::Cancelled,
                () = tokio::time::sleep_until(due) => {}
            }
            let elapsed = started_at.elapsed().unwrap_or_default().as_secs();
            let text = render::line_text(number, elapsed);
            if let Err(err) = self.store.append(id, number, text).await {
                tracing::error!(job = %id, line = number, %err, "cannot commit a line: job failed");
                return JobState::Failed;
            }
            progress.send_replace(number);
            due += spec.sleep;
        }
        JobState::Completed
    }
}
