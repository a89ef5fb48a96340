//! The job log in SQLite: one row per job, one row per line, each line committed before anybody can
//! read it, so a line a client saw survives a `kill -9` of the origin (WAL, `synchronous=NORMAL`: a
//! commit is in the log file before the call returns; only a power cut may lose the last ones).
//!
//! Every call is blocking and short; [`Store`] runs them on tokio's blocking pool so that a slow disk
//! never stalls the streams being served.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{JobId, JobInfo, JobSpec, JobState, Line};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is locked: another keepalive-server uses this SERVER_DATA_DIR")]
    Busy { path: PathBuf },
    #[error("job database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("job database: a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Where jobs are kept: a directory (the database file `jobs.sqlite3` in it), or memory only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    Dir(PathBuf),
    /// Jobs live as long as the process: SQLite's own `:memory:`, for tests and throwaway runs.
    Memory,
}

impl std::str::FromStr for Storage {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "" => Err("expected a directory, or :memory: to keep jobs in memory only".to_owned()),
            ":memory:" => Ok(Self::Memory),
            dir => Ok(Self::Dir(PathBuf::from(dir))),
        }
    }
}

impl std::fmt::Display for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "{}", dir.display()),
            Self::Memory => f.write_str(":memory:"),
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    sleep_ms INTEGER NOT NULL,
    heartbeat_ms INTEGER,
    lines_total INTEGER NOT NULL,
    lines_written INTEGER NOT NULL DEFAULT 0,
    bytes_written INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    finished_at_ms INTEGER,
    runs INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS lines (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (job_id, number)
) WITHOUT ROWID;
";

/// The database, shared by the routes and the job runners.
#[derive(Clone)]
pub struct Store {
    connection: Arc<Mutex<Connection>>,
    /// Held while the store is open: two origins running the same jobs would write each line twice.
    _lock: Option<Arc<std::fs::File>>,
}

impl Store {
    /// Opens (creating when needed) the database; returns it with its epoch, made once per database.
    pub fn open(storage: &Storage) -> Result<(Self, String), StoreError> {
        let mut lock = None;
        let connection = match storage {
            Storage::Memory => Connection::open_in_memory()?,
            Storage::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                    path: dir.clone(),
                    source,
                })?;
                lock = Some(Arc::new(lock_dir(dir)?));
                let connection = Connection::open(dir.join("jobs.sqlite3"))?;
                connection.pragma_update(None, "journal_mode", "WAL")?;
                connection.pragma_update(None, "synchronous", "NORMAL")?;
                connection
            }
        };
        connection.pragma_update(None, "foreign_keys", "ON")?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.execute_batch(SCHEMA)?;
        // A new database is a new history: its epoch tells clients that positions they hold from
        // another one mean nothing here.
        let fresh = format!("{:016x}", fastrand::u64(..));
        connection.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?1)",
            params![fresh],
        )?;
        let epoch: String =
            connection.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |row| {
                row.get(0)
            })?;
        Ok((
            Self {
                connection: Arc::new(Mutex::new(connection)),
                _lock: lock,
            },
            epoch,
        ))
    }

    async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let connection = Arc::clone(&self.connection);
        let result = tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite half-written (it rolls back), so a
            // poisoned lock is still a usable connection.
            let mut connection = connection
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut connection)
        })
        .await?;
        Ok(result?)
    }

    pub async fn create(&self, id: JobId, spec: JobSpec) -> Result<JobInfo, StoreError> {
        let started = now_ms();
        self.call(move |db| {
            db.execute(
                "INSERT INTO jobs (id, sleep_ms, heartbeat_ms, lines_total, state, started_at_ms)
                 VALUES (?1, ?2, ?3, ?4, 'running', ?5)",
                params![
                    id.as_str(),
                    millis(spec.sleep),
                    spec.heartbeat.map(millis),
                    spec.lines,
                    started
                ],
            )?;
            info(db, &id).map(|info| info.expect("the row just inserted"))
        })
        .await
    }

    pub async fn info(&self, id: &JobId) -> Result<Option<JobInfo>, StoreError> {
        let id = id.clone();
        self.call(move |db| info(db, &id)).await
    }

    /// Commits line `number` and the job's new totals in one transaction.
    pub async fn append(&self, id: &JobId, number: u64, text: String) -> Result<(), StoreError> {
        let id = id.clone();
        self.call(move |db| {
            // Immediate: the write lock is taken up front, so a concurrent writer waits (busy
            // timeout) instead of failing the upgrade from read to write.
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let written: u64 = tx.query_row(
                "SELECT bytes_written FROM jobs WHERE id = ?1",
                params![id.as_str()],
                |row| row.get(0),
            )?;
            let end = written + super::render::text_len(number, &text);
            tx.execute(
                "INSERT INTO lines (job_id, number, end_offset, text) VALUES (?1, ?2, ?3, ?4)",
                params![id.as_str(), number, end, text],
            )?;
            tx.execute(
                "UPDATE jobs SET lines_written = ?2, bytes_written = ?3 WHERE id = ?1",
                params![id.as_str(), number, end],
            )?;
            tx.commit()
        })
        .await
    }

    pub async fn finish(&self, id: &JobId, state: JobState) -> Result<(), StoreError> {
        let id = id.clone();
        let finished = now_ms();
        self.call(move |db| {
            db.execute(
                "UPDATE jobs SET state = ?2, finished_at_ms = ?3 WHERE id = ?1 AND state = 'running'",
                params![id.as_str(), state.as_str(), finished],
            )
            .map(drop)
        })
        .await
    }

    /// Lines after `after`, at most `limit` of them, in order.
    pub async fn lines_after(
        &self,
        id: &JobId,
        after: u64,
        limit: u64,
    ) -> Result<Vec<Line>, StoreError> {
        let id = id.clone();
        self.call(move |db| {
            let mut query = db.prepare_cached(
                "SELECT number, end_offset, text FROM lines
                 WHERE job_id = ?1 AND number > ?2 ORDER BY number LIMIT ?3",
            )?;
            let rows = query.query_map(params![id.as_str(), after, limit], |row| {
                Ok(Line {
                    number: row.get(0)?,
                    end_offset: row.get(1)?,
                    text: row.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// The number of the line holding byte `offset` of the text rendering: the first line ending
    /// after it.
    pub async fn line_at_offset(&self, id: &JobId, offset: u64) -> Result<Option<u64>, StoreError> {
        let id = id.clone();
        self.call(move |db| {
            db.query_row(
                "SELECT number FROM lines WHERE job_id = ?1 AND end_offset > ?2
                 ORDER BY number LIMIT 1",
                params![id.as_str(), offset],
                |row| row.get(0),
            )
            .optional()
        })
        .await
    }

    /// Jobs a previous run of the origin left running (it was killed or stopped), counted as run
    /// once more: they are resumed from their last committed line.
    pub async fn take_over_running(&self) -> Result<Vec<JobInfo>, StoreError> {
        self.call(|db| {
            db.execute(
                "UPDATE jobs SET runs = runs + 1 WHERE state = 'running'",
                [],
            )?;
            let ids: Vec<String> = db
                .prepare("SELECT id FROM jobs WHERE state = 'running' ORDER BY started_at_ms")?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            ids.into_iter()
                .filter_map(|id| id.parse::<JobId>().ok())
                .filter_map(|id| info(db, &id).transpose())
                .collect()
        })
        .await
    }

    pub async fn running_count(&self) -> Result<u64, StoreError> {
        self.call(|db| {
            db.query_row(
                "SELECT count(*) FROM jobs WHERE state = 'running'",
                [],
                |row| row.get(0),
            )
        })
        .await
    }

    /// Deletes finished jobs older than `max_age`, then the oldest finished ones beyond `max_jobs`
    /// in all; running jobs are never deleted. Returns how many went.
    pub async fn sweep(&self, max_age: Duration, max_jobs: u64) -> Result<usize, StoreError> {
        let cutoff = now_ms().saturating_sub(millis(max_age));
        self.call(move |db| {
            let aged = db.execute(
                "DELETE FROM jobs WHERE state != 'running' AND finished_at_ms < ?1",
                params![cutoff],
            )?;
            let running: u64 = db.query_row(
                "SELECT count(*) FROM jobs WHERE state = 'running'",
                [],
                |row| row.get(0),
            )?;
            let over = db.execute(
                "DELETE FROM jobs WHERE id IN (
                     SELECT id FROM jobs WHERE state != 'running'
                     ORDER BY finished_at_ms DESC LIMIT -1 OFFSET ?1)",
                params![max_jobs.saturating_sub(running)],
            )?;
            Ok(aged + over)
        })
        .await
    }
}

/// An exclusive lock on `dir/jobs.lock`, released when the file is closed (or the process dies).
fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join("jobs.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::Lock {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Busy { path }),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Lock { path, source }),
    }
}

fn info(db: &Connection, id: &JobId) -> rusqlite::Result<Option<JobInfo>> {
    db.query_row(
        "SELECT sleep_ms, heartbeat_ms, lines_total, lines_written, bytes_written, state,
                started_at_ms, finished_at_ms, runs
         FROM jobs WHERE id = ?1",
        params![id.as_str()],
        |row| {
            let state: String = row.get(5)?;
            Ok(JobInfo {
                id: id.clone(),
                spec: JobSpec {
                    sleep: Duration::from_millis(row.get(0)?),
                    heartbeat: row.get::<_, Option<u64>>(1)?.map(Duration::from_millis),
                    lines: row.get(2)?,
                },
                lines_written: row.get(3)?,
                bytes_written: row.get(4)?,
                state: state.parse().unwrap_or(JobState::Failed),
                started_at: from_ms(row.get(6)?),
                finished_at: row.get::<_, Option<u64>>(7)?.map(from_ms),
                runs: row.get(8)?,
            })
        },
    )
    .optional()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            sleep: Duration::ZERO,
            heartbeat: None,
            lines: 1,
        }
    }

    async fn finished_job(store: &Store, name: &str) -> JobId {
        let id: JobId = name.parse().expect("a job id");
        store.create(id.clone(), spec()).await.expect("created");
        store
            .finish(&id, JobState::Completed)
            .await
            .expect("finished");
        // Distinct finishing times, in creation order.
        tokio::time::sleep(Duration::from_millis(5)).await;
        id
    }

    #[tokio::test]
    async fn retention_deletes_the_oldest_finished_jobs_beyond_the_count_and_never_running_ones() {
        let (store, _) = Store::open(&Storage::Memory).expect("opened");
        let oldest = finished_job(&store, "000000000000000a").await;
        let middle = finished_job(&store, "000000000000000b").await;
        let newest = finished_job(&store, "000000000000000c").await;
        let running: JobId = "000000000000000d".parse().expect("a job id");
        store
            .create(running.clone(), spec())
            .await
            .expect("created");

        // Three jobs at most: the running one counts, so one finished job must go, the oldest.
        let deleted = store
            .sweep(Duration::from_secs(3600), 3)
            .await
            .expect("swept");
        assert_eq!(deleted, 1);
        assert!(store.info(&oldest).await.expect("info").is_none());
        for kept in [&middle, &newest, &running] {
            assert!(store.info(kept).await.expect("info").is_some(), "{kept}");
        }

        // Past the age limit every finished job goes; the running one stays.
        let deleted = store.sweep(Duration::ZERO, 1000).await.expect("swept");
        assert_eq!(deleted, 2);
        assert!(store.info(&running).await.expect("info").is_some());
    }

    #[tokio::test]
    async fn a_data_directory_in_use_is_refused() {
        let dir = std::env::temp_dir().join(format!(
            "keepalive-store-test-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let first = Store::open(&Storage::Dir(dir.clone())).expect("opened");
        let second = Store::open(&Storage::Dir(dir.clone()));
        assert!(
            matches!(second, Err(StoreError::Busy { .. })),
            "a second store opened the same directory"
        );
        drop(first);
        assert!(
            Store::open(&Storage::Dir(dir.clone())).is_ok(),
            "the lock outlived its store"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
