//! The job log in SQLite: one row per job, one row per line, each line committed before anybody can
//! read it, so a line a client saw survives a `kill -9` of the origin (WAL, `synchronous=NORMAL`: a
//! commit is in the log file before the call returns; only a power cut may lose the last ones).
//!
//! The data directory is locked to one origin, so the leases here only ever name this process: at
//! open every running job is released (whoever owned it is gone) and resumed at once.
//!
//! Every call is blocking and short; it runs on tokio's blocking pool so that a slow disk never
//! stalls the streams being served.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{fresh_epoch, from_ms, millis, now_ms, Feed, Lease, StoreError};
use crate::jobs::{render, JobId, JobInfo, JobSpec, JobState, Line};

/// Where the SQLite database is: a directory (the file `jobs.sqlite3` in it), or memory only.
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

/// The schema, one step per version (`PRAGMA user_version` counts those applied). The first is
/// written so that it also adopts a database made before versions were counted.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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
     ) WITHOUT ROWID;",
    "ALTER TABLE jobs ADD COLUMN owner TEXT;
     ALTER TABLE jobs ADD COLUMN lease_until_ms INTEGER;",
];

const INFO: &str = "SELECT id, sleep_ms, heartbeat_ms, lines_total, lines_written, bytes_written,
                           state, started_at_ms, finished_at_ms, runs
                    FROM jobs";

#[derive(Clone)]
pub struct Sqlite {
    connection: Arc<Mutex<Connection>>,
    lease: Lease,
    feed: Feed,
    /// Held while the store is open: two origins running the same jobs would write each line twice.
    _lock: Option<Arc<std::fs::File>>,
}

impl Sqlite {
    pub async fn open(
        storage: &Storage,
        lease: Lease,
        feed: Feed,
    ) -> Result<(Self, String), StoreError> {
        let storage = storage.clone();
        let (connection, lock, epoch) =
            tokio::task::spawn_blocking(move || open_blocking(&storage)).await??;
        Ok((
            Self {
                connection: Arc::new(Mutex::new(connection)),
                lease,
                feed,
                _lock: lock,
            },
            epoch,
        ))
    }

    async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection, &Lease) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let connection = Arc::clone(&self.connection);
        let lease = self.lease.clone();
        let result = tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite half-written (it rolls back), so a
            // poisoned lock is still a usable connection.
            let mut connection = connection
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut connection, &lease)
        })
        .await?;
        Ok(result?)
    }

    pub async fn create(&self, id: JobId, spec: JobSpec) -> Result<JobInfo, StoreError> {
        let started = now_ms();
        self.call(move |db, lease| {
            db.execute(
                "INSERT INTO jobs (id, sleep_ms, heartbeat_ms, lines_total, state, started_at_ms,
                                   owner, lease_until_ms)
                 VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7)",
                params![
                    id.as_str(),
                    millis(spec.sleep),
                    spec.heartbeat.map(millis),
                    spec.lines,
                    started,
                    &*lease.owner,
                    until(lease)
                ],
            )?;
            info(db, &id).map(|info| info.expect("the row just inserted"))
        })
        .await
    }

    pub async fn info(&self, id: &JobId) -> Result<Option<JobInfo>, StoreError> {
        let id = id.clone();
        self.call(move |db, _| info(db, &id)).await
    }

    pub async fn append(&self, id: &JobId, number: u64, text: String) -> Result<bool, StoreError> {
        let job = id.clone();
        let committed = self
            .call(move |db, lease| {
                // Immediate: the write lock is taken up front, so a concurrent writer waits (busy
                // timeout) instead of failing the upgrade from read to write.
                let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let written: Option<u64> = tx
                    .query_row(
                        "SELECT bytes_written FROM jobs
                         WHERE id = ?1 AND owner = ?2 AND state = 'running' AND lines_written = ?3",
                        params![job.as_str(), &*lease.owner, number - 1],
                        |row| row.get(0),
                    )
                    .optional()?;
                let Some(written) = written else {
                    return Ok(false);
                };
                let end = written + render::text_len(number, &text);
                tx.execute(
                    "INSERT INTO lines (job_id, number, end_offset, text) VALUES (?1, ?2, ?3, ?4)",
                    params![job.as_str(), number, end, text],
                )?;
                tx.execute(
                    "UPDATE jobs SET lines_written = ?2, bytes_written = ?3, lease_until_ms = ?4
                     WHERE id = ?1",
                    params![job.as_str(), number, end, until(lease)],
                )?;
                tx.commit()?;
                Ok(true)
            })
            .await?;
        if committed {
            self.feed.publish(id);
        }
        Ok(committed)
    }

    pub async fn finish(&self, id: &JobId, state: JobState) -> Result<bool, StoreError> {
        let job = id.clone();
        let finished = now_ms();
        let recorded = self
            .call(move |db, lease| {
                db.execute(
                    "UPDATE jobs SET state = ?2, finished_at_ms = ?3, owner = NULL,
                                     lease_until_ms = NULL
                     WHERE id = ?1 AND owner = ?4 AND state = 'running'",
                    params![job.as_str(), state.as_str(), finished, &*lease.owner],
                )
            })
            .await?;
        self.feed.publish(id);
        Ok(recorded == 1)
    }

    pub async fn cancel(&self, id: &JobId) -> Result<bool, StoreError> {
        let job = id.clone();
        let finished = now_ms();
        let cancelled = self
            .call(move |db, _| {
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', finished_at_ms = ?2, owner = NULL,
                                     lease_until_ms = NULL
                     WHERE id = ?1 AND state = 'running'",
                    params![job.as_str(), finished],
                )
            })
            .await?;
        self.feed.publish(id);
        Ok(cancelled == 1)
    }

    pub async fn lines_after(
        &self,
        id: &JobId,
        after: u64,
        limit: u64,
    ) -> Result<Vec<Line>, StoreError> {
        let id = id.clone();
        self.call(move |db, _| {
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

    pub async fn line_at_offset(&self, id: &JobId, offset: u64) -> Result<Option<u64>, StoreError> {
        let id = id.clone();
        self.call(move |db, _| {
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

    pub async fn claim(&self, limit: u64, except: Vec<JobId>) -> Result<Vec<JobInfo>, StoreError> {
        let now = now_ms();
        // Read past the jobs excepted, which may be among the oldest.
        let limit = limit + except.len() as u64;
        self.call(move |db, lease| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let ids: Vec<String> = tx
                .prepare(
                    "SELECT id FROM jobs
                     WHERE state = 'running' AND (owner IS NULL OR lease_until_ms < ?1)
                     ORDER BY started_at_ms LIMIT ?2",
                )?
                .query_map(params![now, limit], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut claimed = Vec::with_capacity(ids.len());
            let wanted = ids
                .iter()
                .filter_map(|id| id.parse::<JobId>().ok())
                .filter(|id| !except.contains(id));
            for id in wanted {
                tx.execute(
                    "UPDATE jobs SET owner = ?2, lease_until_ms = ?3, runs = runs + 1 WHERE id = ?1",
                    params![id.as_str(), &*lease.owner, until(lease)],
                )?;
                claimed.extend(info(&tx, &id)?);
            }
            tx.commit()?;
            Ok(claimed)
        })
        .await
    }

    pub async fn renew(&self, ids: Vec<JobId>) -> Result<Vec<JobId>, StoreError> {
        self.call(move |db, lease| {
            let tx = db.transaction()?;
            let mut held = Vec::with_capacity(ids.len());
            for id in ids {
                let renewed = tx.execute(
                    "UPDATE jobs SET lease_until_ms = ?3
                     WHERE id = ?1 AND owner = ?2 AND state = 'running'",
                    params![id.as_str(), &*lease.owner, until(lease)],
                )?;
                if renewed == 1 {
                    held.push(id);
                }
            }
            tx.commit()?;
            Ok(held)
        })
        .await
    }

    pub async fn release(&self) -> Result<u64, StoreError> {
        let released = self
            .call(|db, lease| {
                db.execute(
                    "UPDATE jobs SET owner = NULL, lease_until_ms = NULL
                     WHERE owner = ?1 AND state = 'running'",
                    params![&*lease.owner],
                )
            })
            .await?;
        if released > 0 {
            self.feed.handed_back();
        }
        Ok(released as u64)
    }

    pub async fn running_count(&self) -> Result<u64, StoreError> {
        self.call(|db, _| {
            db.query_row(
                "SELECT count(*) FROM jobs WHERE state = 'running'",
                [],
                |row| row.get(0),
            )
        })
        .await
    }

    pub async fn sweep(&self, max_age: Duration, max_jobs: u64) -> Result<u64, StoreError> {
        let cutoff = now_ms().saturating_sub(millis(max_age));
        self.call(move |db, _| {
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
            Ok((aged + over) as u64)
        })
        .await
    }
}

type Opened = (Connection, Option<Arc<std::fs::File>>, String);

fn open_blocking(storage: &Storage) -> Result<Opened, StoreError> {
    let mut lock = None;
    let mut connection = match storage {
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
    migrate(&mut connection)?;
    connection.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?1)",
        params![fresh_epoch()],
    )?;
    let epoch: String =
        connection.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |row| {
            row.get(0)
        })?;
    // The directory's lock proves that whoever owned the running jobs is gone.
    connection.execute(
        "UPDATE jobs SET owner = NULL, lease_until_ms = NULL WHERE state = 'running'",
        [],
    )?;
    Ok((connection, lock, epoch))
}

/// Applies the steps of [`MIGRATIONS`] not yet applied, all in one transaction.
fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let applied: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for step in &MIGRATIONS[super::applied_steps(applied, MIGRATIONS.len())?..] {
        tx.execute_batch(step)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    tx.commit()?;
    Ok(())
}

fn until(lease: &Lease) -> u64 {
    now_ms() + millis(lease.period)
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
        &format!("{INFO} WHERE id = ?1"),
        params![id.as_str()],
        |row| {
            let state: String = row.get(6)?;
            Ok(JobInfo {
                id: id.clone(),
                spec: JobSpec {
                    sleep: Duration::from_millis(row.get(1)?),
                    heartbeat: row.get::<_, Option<u64>>(2)?.map(Duration::from_millis),
                    lines: row.get(3)?,
                },
                lines_written: row.get(4)?,
                bytes_written: row.get(5)?,
                state: state.parse().unwrap_or(JobState::Failed),
                started_at: from_ms(row.get(7)?),
                finished_at: row.get::<_, Option<u64>>(8)?.map(from_ms),
                runs: row.get(9)?,
            })
        },
    )
    .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_data_directory_in_use_is_refused() {
        let dir = std::env::temp_dir().join(format!(
            "keepalive-store-test-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let storage = Storage::Dir(dir.clone());
        let open = || {
            Sqlite::open(
                &storage,
                Lease::new(Duration::from_secs(5)),
                Feed::default(),
            )
        };
        let first = open().await.expect("opened");
        let second = open().await;
        assert!(
            matches!(second, Err(StoreError::Busy { .. })),
            "a second store opened the same directory"
        );
        drop(first);
        assert!(open().await.is_ok(), "the lock outlived its store");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_database_from_before_leases_is_migrated_and_keeps_its_jobs() {
        let dir = std::env::temp_dir().join(format!(
            "keepalive-migrate-test-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("a directory");
        {
            let old = Connection::open(dir.join("jobs.sqlite3")).expect("a database");
            old.execute_batch(MIGRATIONS[0]).expect("the first schema");
            old.execute(
                "INSERT INTO jobs (id, sleep_ms, lines_total, lines_written, state, started_at_ms)
                 VALUES ('00000000000000ab', 10, 3, 1, 'running', 1)",
                [],
            )
            .expect("a running job");
        }
        let (store, _) = Sqlite::open(
            &Storage::Dir(dir.clone()),
            Lease::new(Duration::from_secs(5)),
            Feed::default(),
        )
        .await
        .expect("migrated");
        let claimed = store.claim(10, Vec::new()).await.expect("claimed");
        assert_eq!(claimed.len(), 1, "the old running job is taken over");
        assert_eq!((claimed[0].lines_written, claimed[0].runs), (1, 2));
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}
