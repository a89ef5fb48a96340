//! Durable jobs, the tutorial's "special measures": the poem as work that runs whether or not anybody
//! is connected, with every line committed to a log before it is streamed, so that a client cut off
//! by a balancer (or an origin that crashed) resumes where it was and loses nothing.
//!
//! [`Jobs`] owns the store and the jobs running in this process. A running job is a task that writes
//! its lines on the poem's clock; readers always read the lines themselves from the store, woken by
//! the [`feed`] when one is committed (here or, on PostgreSQL, by another replica), so a live reader
//! and one resuming elsewhere see the same bytes.
//!
//! Each running job has one runner: its owner holds a lease in the store, renewed while it runs
//! ([`Jobs::resume`] starts the keeper that renews it, and takes over jobs whose lease lapsed: a
//! runner that was killed, or an origin restarted on the same SQLite file). A taken-over job goes on
//! from its last committed line (nothing a client saw is ever rewritten; `runs` counts the
//! take-overs). When the origin stops, [`Jobs::stop`] suspends the runners between two lines and
//! hands their jobs back, still `running`, for another replica or the next start to take at once.
//! Each client may run `SERVER_JOBS_PER_CLIENT` jobs at once ([`quota`]), counted by the origin it
//! started them on; taken-over jobs count against nobody's, as the store does not keep who started
//! them.

pub mod feed;
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

use crate::metrics::JobMetrics;
use feed::Feed;
pub use quota::Client;
pub use store::{Backend, DatabaseUrl, Lease, Storage, Store, StoreError};

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
/// Most lapsed jobs an origin takes over in one claim at start, where nobody else is taking turns.
const CLAIM_BATCH: u64 = 16;

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

/// The jobs of this origin: the store, the feed of changes, and a stop switch per job running here.
#[derive(Clone)]
pub struct Jobs {
    store: Store,
    feed: Feed,
    epoch: Arc<str>,
    lease: Lease,
    retention: Retention,
    quota: Quota,
    metrics: JobMetrics,
    /// Jobs whose runner is in this process.
    running: Arc<Mutex<HashMap<JobId, Runner>>>,
    /// Suspends every runner when the origin stops.
    stopping: CancellationToken,
    /// Set when the origin starts draining: it takes over no more jobs, which would only be handed
    /// back again when it stops.
    retiring: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("epoch", &self.epoch)
            .field("owner", &self.lease.owner)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// A runner in this process, as the others see it.
struct Runner {
    /// Stops it between two lines.
    stop: CancellationToken,
    /// Cancelled once it has ended and given its client's slot back.
    ended: CancellationToken,
}

/// How a runner ended.
enum Outcome {
    /// The job is over: recorded as such.
    Ended(JobState),
    /// The origin is stopping: the job stays `running`, to be handed back.
    Suspended,
    /// The job is no longer this origin's: cancelled, or its lease went to another.
    Gone,
    /// The database failed mid-write (went away, stalled, restarted): the lease lapses, and
    /// whoever reaches the database next takes the job over from what was really committed.
    Interrupted(StoreError),
}

impl Jobs {
    /// The store at `backend`, owned through leases of `lease` each; each client may run
    /// `per_client` jobs at once.
    pub async fn open(
        backend: &Backend,
        lease: Duration,
        retention: Retention,
        per_client: u64,
        metrics: JobMetrics,
    ) -> Result<Self, StoreError> {
        let feed = Feed::default();
        let lease = Lease::new(lease);
        let (store, epoch) = Store::open(backend, lease.clone(), feed.clone()).await?;
        Ok(Self {
            store,
            feed,
            epoch: epoch.into(),
            lease,
            retention,
            quota: Quota::new(per_client),
            metrics,
            running: Arc::default(),
            stopping: CancellationToken::new(),
            retiring: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    /// Suspends every runner between two lines and waits until none is left, then hands their
    /// jobs back (still `running`) so that another origin takes them over at once, not when the
    /// lease lapses.
    pub async fn stop(&self) {
        self.stopping.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        match self.store.release().await {
            Ok(0) => {}
            Ok(handed) => tracing::info!(
                handed,
                "running jobs handed back for another origin to take over"
            ),
            Err(err) => {
                tracing::warn!(%err, "cannot hand the running jobs back: another origin takes them over when their lease lapses")
            }
        }
    }

    /// The origin is draining: from now on it takes over no job (those it runs go on until
    /// [`Jobs::stop`]).
    pub fn retire(&self) {
        self.retiring.cancel();
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A receiver woken at the job's next change (not for those before this call); a reader
    /// subscribes, then reads the store, so that nothing committed in between is missed.
    pub fn subscribe(&self, id: &JobId) -> watch::Receiver<()> {
        self.feed.subscribe(id)
    }

    /// Identifies this store's history; a new database (a wiped data directory) has a new one.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Takes over the running jobs nobody owns (on SQLite: all those a previous run left), and
    /// starts the keeper that renews this origin's leases, takes over lapsed ones, and sweeps
    /// past retention; call once, at start. Returns how many jobs it took over.
    pub async fn resume(&self) -> Result<usize, StoreError> {
        self.sweep().await;
        let mut resumed = 0;
        loop {
            let taken = self.take_over(CLAIM_BATCH).await?;
            resumed += taken;
            if taken < CLAIM_BATCH as usize {
                break;
            }
        }
        let keeper = self.clone();
        self.tasks.spawn(async move { keeper.keep().await });
        Ok(resumed)
    }

    /// Renews the leases of this origin's runners a few times per lease, stops those whose lease
    /// is lost, and takes over lapsed jobs (at once when another origin hands some back).
    async fn keep(&self) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        // After a stall, one sweep rather than a burst of them ahead of the renewals.
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        sweep.tick().await;
        loop {
            tokio::select! {
                () = self.stopping.cancelled() => return,
                () = tokio::time::sleep(self.lease.period / 3) => {}
                () = self.feed.handback() => {}
                _ = sweep.tick() => {
                    self.sweep().await;
                    continue;
                }
            }
            self.renew().await;
            if self.retiring.is_cancelled() {
                continue;
            }
            if let Err(err) = self.share().await {
                tracing::warn!(%err, "cannot look for jobs to take over");
            }
        }
    }

    async fn renew(&self) {
        let mine = self.running_here();
        if mine.is_empty() {
            return;
        }
        let held = match self.store.renew(mine.clone()).await {
            Ok(held) => held,
            Err(err) => {
                tracing::warn!(%err, jobs = mine.len(), "cannot renew the leases of the jobs running here");
                return;
            }
        };
        let running = self.lock_running();
        for id in mine.iter().filter(|id| !held.contains(id)) {
            if let Some(runner) = running.get(id) {
                tracing::warn!(job = %id, "lease lost (cancelled, or taken over by another origin): stopping its runner here");
                runner.stop.cancel();
            }
        }
    }

    /// Takes lapsed or handed-back jobs one at a time, with a short random pause between two, for
    /// at most a sixth of a lease (the renewals wait meanwhile): replicas woken by the same handback
    /// then take turns and share the jobs, instead of the quickest taking them all, to lose them all
    /// in its next crash.
    async fn share(&self) -> Result<(), StoreError> {
        let until = Instant::now() + self.lease.period / 6;
        while Instant::now() < until && !self.retiring.is_cancelled() {
            if self.take_over(1).await? == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(fastrand::u64(10..50))).await;
        }
        Ok(())
    }

    /// Claims at most `batch` lapsed jobs and runs them here.
    async fn take_over(&self, batch: u64) -> Result<usize, StoreError> {
        let mine = self.running_here();
        let jobs = self.store.claim(batch, mine).await?;
        for job in &jobs {
            tracing::info!(
                job = %job.id,
                lines_written = job.lines_written,
                lines = job.spec.lines,
                run = job.runs,
                "taking over a running job whose runner is gone"
            );
            self.metrics.taken_over.inc();
            self.spawn(
                job.id.clone(),
                job.spec,
                job.lines_written,
                job.started_at,
                None,
            );
        }
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

    /// Cancels a running job, whichever origin runs it; `false` when it was not running. When it
    /// runs here, returns once its runner has ended and given its client's slot back.
    pub async fn cancel(&self, id: &JobId) -> Result<bool, StoreError> {
        let cancelled = self.store.cancel(id).await?;
        let ended = self.lock_running().get(id).map(|runner| {
            runner.stop.cancel();
            runner.ended.clone()
        });
        if let Some(ended) = ended {
            ended.cancelled().await;
        }
        Ok(cancelled)
    }

    async fn sweep(&self) {
        let Retention { max_age, max_jobs } = self.retention;
        match self.store.sweep(max_age, max_jobs).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "finished jobs past retention deleted"),
            Err(err) => tracing::warn!(%err, "cannot delete finished jobs past retention"),
        }
    }

    /// The jobs whose runner is in this origin.
    fn running_here(&self) -> Vec<JobId> {
        self.lock_running().keys().cloned().collect()
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Runner>> {
        self.running.lock().unwrap_or_else(|err| err.into_inner())
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
        let stop = CancellationToken::new();
        let ended = CancellationToken::new();
        self.metrics.running.inc();
        self.lock_running().insert(
            id.clone(),
            Runner {
                stop: stop.clone(),
                ended: ended.clone(),
            },
        );
        let jobs = self.clone();
        self.tasks.spawn(async move {
            let _entry = RunningEntry {
                jobs: jobs.clone(),
                id: id.clone(),
                claim,
                ended,
            };
            match jobs.run(&id, spec, written, started_at, &stop).await {
                Outcome::Ended(state) => {
                    jobs.record_end(&id, state).await;
                    tracing::info!(job = %id, state = state.as_str(), "job ended");
                }
                Outcome::Suspended => tracing::info!(job = %id, "job suspended: the origin is stopping; it is handed back to be taken over"),
                Outcome::Gone => tracing::info!(job = %id, "job runner stopped here: the job was cancelled or another origin runs it"),
                Outcome::Interrupted(err) => tracing::warn!(job = %id, %err, "job suspended: the job database went away; whoever reaches it once the lease lapses takes the job over"),
            }
        });
    }

    /// Records how a job ended, trying a few times: while it stays `running` in the store, it
    /// counts against `SERVER_JOB_MAX`, until its lease lapses and it is taken over.
    async fn record_end(&self, id: &JobId, state: JobState) {
        for attempt in 1..=3 {
            match self.store.finish(id, state).await {
                Ok(true) => return,
                Ok(false) => {
                    tracing::info!(job = %id, "the job's end was not recorded: it was no longer this origin's");
                    return;
                }
                Err(err) => {
                    tracing::error!(job = %id, %err, attempt, "cannot record the job's end");
                    tokio::time::sleep(Duration::from_millis(100) * attempt).await;
                }
            }
        }
    }

    /// Writes lines `written + 1 ..= spec.lines` on the poem's clock: a new job's first line at
    /// once, a taken-over job's next one a `sleep` after the take-over.
    async fn run(
        &self,
        id: &JobId,
        spec: JobSpec,
        written: u64,
        started_at: SystemTime,
        stop: &CancellationToken,
    ) -> Outcome {
        let mut due = Instant::now()
            + if written == 0 {
                Duration::ZERO
            } else {
                spec.sleep
            };
        for number in written + 1..=spec.lines {
            // Only between lines: a line being committed is always committed whole.
            tokio::select! {
                () = self.stopping.cancelled() => return Outcome::Suspended,
                () = stop.cancelled() => return Outcome::Gone,
                () = tokio::time::sleep_until(due) => {}
            }
            let elapsed = started_at.elapsed().unwrap_or_default().as_secs();
            let text = render::line_text(number, elapsed);
            match self.store.append(id, number, text).await {
                Ok(true) => {}
                Ok(false) => return Outcome::Gone,
                Err(err) if err.is_transient() => return Outcome::Interrupted(err),
                Err(err) => {
                    tracing::error!(job = %id, line = number, %err, "cannot commit a line: job failed");
                    return Outcome::Ended(JobState::Failed);
                }
            }
            due += spec.sleep;
        }
        Outcome::Ended(JobState::Completed)
    }
}

/// Takes a job off the running map when its runner ends, whichever way (a panic too), gives its
/// client's slot back, then says it has ended.
struct RunningEntry {
    jobs: Jobs,
    id: JobId,
    claim: Option<Claim>,
    ended: CancellationToken,
}

impl Drop for RunningEntry {
    fn drop(&mut self) {
        self.jobs.lock_running().remove(&self.id);
        self.jobs.metrics.running.dec();
        drop(self.claim.take());
        self.ended.cancel();
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
}
