//! The job log behind one interface, in one of two databases: SQLite under `SERVER_DATA_DIR`, the
//! embedded default, locked to one origin; or PostgreSQL (`SERVER_DATABASE_URL`), shared by every
//! replica on it. Either way a line is committed before anybody can read it, and a running job has
//! one owner at a time: a lease in the database, renewed while its runner runs, taken over by
//! another origin once it lapses. Appends are fenced by the lease and by the line's number, and the
//! line's key (job, number) is unique, so two runners can never both write a line.

mod postgres;
mod sqlite;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use postgres::DatabaseUrl;
pub use sqlite::Storage;

use super::feed::Feed;
use super::{JobId, JobInfo, JobSpec, JobState, Line};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is locked: another keepalive-server uses this SERVER_DATA_DIR")]
    Busy { path: std::path::PathBuf },
    #[error("job database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("job database: {}", postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("cannot reach the job database at {url} within {waited:?}: {}", postgres::describe(.source))]
    Unreachable {
        url: DatabaseUrl,
        waited: Duration,
        source: tokio_postgres::Error,
    },
    #[error("the job database at {url} refused this origin: {}", postgres::describe(.source))]
    Refused {
        url: DatabaseUrl,
        source: tokio_postgres::Error,
    },
    #[error("SERVER_DATABASE_URL: {0}")]
    Url(String),
    #[error("job database: no answer within {0:?}")]
    Timeout(Duration),
    #[error("the job database has schema version {found}; this keepalive-server knows up to {known}: it was migrated by a newer one")]
    Newer { found: i64, known: i64 },
    #[error("the job database has schema version {0}, which no keepalive-server writes")]
    Schema(i64),
    #[error("job database: a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl StoreError {
    /// PostgreSQL failed rather than refused what was asked: the connection went away or stalled,
    /// the server restarted or ended the session. What was being done may succeed later,
    /// elsewhere or here; and since every write is fenced, whoever takes a job over goes on from
    /// what was really committed. (SQLite's errors are the disk's, and come back.)
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Postgres(_) | Self::Timeout(_))
    }
}

/// The schema version `applied` as an index into a list of `known` steps.
fn applied_steps(applied: i64, known: usize) -> Result<usize, StoreError> {
    let steps = usize::try_from(applied).map_err(|_| StoreError::Schema(applied))?;
    if steps > known {
        return Err(StoreError::Newer {
            found: applied,
            known: known as i64,
        });
    }
    Ok(steps)
}

/// Which database keeps the jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Sqlite(Storage),
    Postgres(DatabaseUrl),
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(storage) => write!(f, "sqlite {storage}"),
            Self::Postgres(url) => write!(f, "{url}"),
        }
    }
}

/// This origin as the owner of running jobs: its name in the database, and how long an
/// ownership lasts unless renewed.
#[derive(Debug, Clone)]
pub struct Lease {
    pub owner: Arc<str>,
    pub period: Duration,
}

impl Lease {
    /// A name no other origin has: the process id for people, a random part for uniqueness.
    pub fn new(period: Duration) -> Self {
        let owner = format!("pid{}-{:08x}", std::process::id(), fastrand::u32(..));
        Self {
            owner: owner.into(),
            period,
        }
    }
}

/// The job database, shared by the routes and the job runners; cheap to clone.
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// The same call on whichever database this is. A PostgreSQL call is bounded: queries share one
/// connection, and one that stalls must not hold every reader and runner behind it.
macro_rules! on {
    ($store:expr, $db:ident => $call:expr) => {
        match $store {
            Store::Sqlite($db) => $call.await,
            Store::Postgres($db) => match tokio::time::timeout(postgres::PATIENCE, $call).await {
                Ok(answer) => answer,
                Err(_) => Err(StoreError::Timeout(postgres::PATIENCE)),
            },
        }
    };
}

impl Store {
    /// Opens the database (creating and migrating it when needed); returns it with its epoch, made
    /// once per database. Changes are published to `feed`, this origin's and other replicas'.
    pub async fn open(
        backend: &Backend,
        lease: Lease,
        feed: Feed,
    ) -> Result<(Self, String), StoreError> {
        Ok(match backend {
            Backend::Sqlite(storage) => {
                let (db, epoch) = sqlite::Sqlite::open(storage, lease, feed).await?;
                (Self::Sqlite(db), epoch)
            }
            Backend::Postgres(url) => {
                let (db, epoch) = postgres::Postgres::open(url, lease, feed).await?;
                (Self::Postgres(db), epoch)
            }
        })
    }

    /// A new job, owned by this origin.
    pub async fn create(&self, id: JobId, spec: JobSpec) -> Result<JobInfo, StoreError> {
        on!(self, db => db.create(id, spec))
    }

    pub async fn info(&self, id: &JobId) -> Result<Option<JobInfo>, StoreError> {
        on!(self, db => db.info(id))
    }

    /// Commits line `number` and the job's new totals, renewing the lease; `false` (nothing
    /// written) when the job is no longer this origin's to write: its lease went to another, it
    /// was cancelled, or line `number - 1` is not the last one.
    pub async fn append(&self, id: &JobId, number: u64, text: String) -> Result<bool, StoreError> {
        on!(self, db => db.append(id, number, text))
    }

    /// Records the end of a job this origin owns; `false` when it does not any more.
    pub async fn finish(&self, id: &JobId, state: JobState) -> Result<bool, StoreError> {
        on!(self, db => db.finish(id, state))
    }

    /// Cancels a running job, whoever runs it (its runner finds out at its next write or
    /// renewal); `false` when it was not running.
    pub async fn cancel(&self, id: &JobId) -> Result<bool, StoreError> {
        on!(self, db => db.cancel(id))
    }

    /// Lines after `after`, at most `limit` of them, in order.
    pub async fn lines_after(
        &self,
        id: &JobId,
        after: u64,
        limit: u64,
    ) -> Result<Vec<Line>, StoreError> {
        on!(self, db => db.lines_after(id, after, limit))
    }

    /// The number of the line holding byte `offset` of the text rendering: the first line ending
    /// after it.
    pub async fn line_at_offset(&self, id: &JobId, offset: u64) -> Result<Option<u64>, StoreError> {
        on!(self, db => db.line_at_offset(id, offset))
    }

    /// Takes over at most `limit` running jobs that have no owner, or whose owner's lease lapsed,
    /// counting a run more for each; the oldest first. Never those in `except`: jobs whose runner
    /// is in this origin, whose lease lapsed only because a renewal came late.
    pub async fn claim(&self, limit: u64, except: Vec<JobId>) -> Result<Vec<JobInfo>, StoreError> {
        on!(self, db => db.claim(limit, except))
    }

    /// Renews this origin's lease on `ids`; returns those it still holds.
    pub async fn renew(&self, ids: Vec<JobId>) -> Result<Vec<JobId>, StoreError> {
        on!(self, db => db.renew(ids))
    }

    /// Gives up every running job this origin owns, so another may take them over at once;
    /// returns how many.
    pub async fn release(&self) -> Result<u64, StoreError> {
        on!(self, db => db.release())
    }

    pub async fn running_count(&self) -> Result<u64, StoreError> {
        on!(self, db => db.running_count())
    }

    /// Deletes finished jobs older than `max_age`, then the oldest finished ones beyond `max_jobs`
    /// in all; running jobs are never deleted. Returns how many went.
    pub async fn sweep(&self, max_age: Duration, max_jobs: u64) -> Result<u64, StoreError> {
        on!(self, db => db.sweep(max_age, max_jobs))
    }
}

/// The epoch a new database gets: a new database is a new history, and its epoch tells clients
/// that positions they hold from another one mean nothing here.
fn fresh_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

fn now_ms() -> u64 {
    millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}
