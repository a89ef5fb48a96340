//! The job log in PostgreSQL, shared by every replica on the database: each serves every job, and
//! a job whose runner died is taken over by another once its lease lapses.
//!
//! Readers on other replicas learn of a line through LISTEN/NOTIFY: every write notifies channel
//! `keepalive_jobs` with the job's id (in its own transaction, so the notification means the line is
//! committed), and a handback with `handback`. Lease times are the database's clock (`now()`), so
//! replicas whose clocks disagree still agree on who owns a job.
//!
//! One connection carries the queries (tokio-postgres pipelines concurrent ones) and the
//! notifications; when it is lost, it is made again, and everybody reads again.

use std::future::poll_fn;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Client, NoTls, Row};

use super::{fresh_epoch, from_ms, millis, now_ms, Feed, Lease, StoreError};
use crate::jobs::{render, JobId, JobInfo, JobSpec, JobState, Line};

/// A database URL (`postgres://user:password@host:port/dbname`, or libpq's `key=value` form), as
/// given; [`DatabaseUrl::check`] says whether it is one. Shown without its password, and never
/// quoted whole in an error, which would show it.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: &str) -> Self {
        Self(url.to_owned())
    }

    /// Why this is not a PostgreSQL connection URL, if it is not.
    pub fn check(&self) -> Result<(), String> {
        self.0.parse::<tokio_postgres::Config>().map(drop).map_err(|err| {
            format!("not a PostgreSQL connection URL ({err}); expected postgres://user:password@host:port/dbname")
        })
    }

    /// How to connect: the URL, with bounds of this origin's own on a connection that cannot be
    /// made or that goes silent (the defaults wait for ever, and two hours).
    fn config(&self) -> Result<tokio_postgres::Config, StoreError> {
        let mut config: tokio_postgres::Config = self
            .0
            .parse()
            .map_err(|_| StoreError::Url(self.check().err().unwrap_or_default()))?;
        config
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(PATIENCE);
        Ok(config)
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(url))
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Ok(config) = self.0.parse::<tokio_postgres::Config>() else {
            return f.write_str("(not a PostgreSQL URL)");
        };
        let user = config.get_user().unwrap_or("");
        let host = config
            .get_hosts()
            .first()
            .map_or_else(String::new, |host| match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            });
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let dbname = config.get_dbname().unwrap_or(user);
        write!(f, "postgres://{user}@{host}:{port}/{dbname}")
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// tokio-postgres's own words ("db error", "error connecting to server") and what is behind them:
/// the server's message and SQLSTATE, or the I/O error.
pub fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// The longest any one call to the database may take, and the longest sent data may go
/// unacknowledged on its connection: beyond it the call fails (and a runner suspends its job) rather
/// than holding everything queued behind it on the one connection.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How long an origin keeps trying to reach its database at start: long enough for a database
/// container started alongside it.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);
/// Serialises migrations between replicas that start together (any constant will do; this is
/// "keepaliv" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b65_6570_616c_6976;
const CHANNEL: &str = "keepalive_jobs";
const HANDBACK: &str = "handback";

/// The schema, one step per version, each applied once in the migration's transaction.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE keepalive_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE keepalive_jobs (
        id TEXT PRIMARY KEY,
        sleep_ms BIGINT NOT NULL,
        heartbeat_ms BIGINT,
        lines_total BIGINT NOT NULL,
        lines_written BIGINT NOT NULL DEFAULT 0,
        bytes_written BIGINT NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        started_at_ms BIGINT NOT NULL,
        finished_at_ms BIGINT,
        runs BIGINT NOT NULL DEFAULT 1,
        owner TEXT,
        lease_until TIMESTAMPTZ
    );
    CREATE INDEX keepalive_jobs_running ON keepalive_jobs (started_at_ms) WHERE state = 'running';
    CREATE TABLE keepalive_lines (
        job_id TEXT NOT NULL REFERENCES keepalive_jobs (id) ON DELETE CASCADE,
        number BIGINT NOT NULL,
        end_offset BIGINT NOT NULL,
        text TEXT NOT NULL,
        PRIMARY KEY (job_id, number)
    );
"];

const INFO: &str = "id, sleep_ms, heartbeat_ms, lines_total, lines_written, bytes_written, state,
                    started_at_ms, finished_at_ms, runs";

#[derive(Clone)]
pub struct Postgres {
    inner: Arc<Inner>,
}

struct Inner {
    client: RwLock<Arc<Client>>,
    config: tokio_postgres::Config,
    url: DatabaseUrl,
    lease: Lease,
    feed: Feed,
}

impl Postgres {
    pub async fn open(
        url: &DatabaseUrl,
        lease: Lease,
        feed: Feed,
    ) -> Result<(Self, String), StoreError> {
        let config = url.config()?;
        let started = Instant::now();
        let (mut client, first) = loop {
            match session(&config, &feed).await {
                Ok(connected) => break connected,
                // The server answered, and said no (a password, a database that does not exist):
                // asking again will not change its mind.
                Err(source) if source.as_db_error().is_some() => {
                    return Err(StoreError::Refused {
                        url: url.clone(),
                        source,
                    })
                }
                Err(source) if started.elapsed() >= CONNECT_PATIENCE => {
                    return Err(StoreError::Unreachable {
                        url: url.clone(),
                        waited: started.elapsed(),
                        source,
                    })
                }
                Err(err) => {
                    let err = describe(&err);
                    tracing::warn!(%url, %err, "cannot reach the job database yet; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let epoch = migrate(&mut client).await?;
        let inner = Arc::new(Inner {
            client: RwLock::new(Arc::new(client)),
            config,
            url: url.clone(),
            lease,
            feed,
        });
        tokio::spawn(reconnect(Arc::downgrade(&inner), first));
        Ok((Self { inner }, epoch))
    }

    fn client(&self) -> Arc<Client> {
        Arc::clone(
            &self
                .inner
                .client
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    fn owner(&self) -> &str {
        &self.inner.lease.owner
    }

    fn lease_secs(&self) -> f64 {
        self.inner.lease.period.as_secs_f64()
    }

    pub async fn create(&self, id: JobId, spec: JobSpec) -> Result<JobInfo, StoreError> {
        let row = self
            .client()
            .query_one(
                &format!(
                    "INSERT INTO keepalive_jobs (id, sleep_ms, heartbeat_ms, lines_total, state,
                                                 started_at_ms, owner, lease_until)
                     VALUES ($1, $2, $3, $4, 'running', $5, $6, now() + make_interval(secs => $7))
                     RETURNING {INFO}"
                ),
                &[
                    &id.as_str(),
                    &big(millis(spec.sleep)),
                    &spec.heartbeat.map(|beat| big(millis(beat))),
                    &big(spec.lines),
                    &big(now_ms()),
                    &self.owner(),
                    &self.lease_secs(),
                ],
            )
            .await?;
        Ok(info(&row))
    }

    pub async fn info(&self, id: &JobId) -> Result<Option<JobInfo>, StoreError> {
        let row = self
            .client()
            .query_opt(
                &format!("SELECT {INFO} FROM keepalive_jobs WHERE id = $1"),
                &[&id.as_str()],
            )
            .await?;
        Ok(row.as_ref().map(info))
    }

    pub async fn append(&self, id: &JobId, number: u64, text: String) -> Result<bool, StoreError> {
        // One statement, so one transaction: the job's row moves on only if this origin still owns
        // it and holds line `number - 1`, the line goes in only if the row moved, and the
        // notification is sent only if the line went in (at commit).
        let rows = self
            .client()
            .query(
                "WITH job AS (
                     UPDATE keepalive_jobs
                     SET lines_written = $2::bigint, bytes_written = bytes_written + $3::bigint,
                         lease_until = now() + make_interval(secs => $5)
                     WHERE id = $1 AND owner = $4 AND state = 'running'
                       AND lines_written = $2::bigint - 1
                     RETURNING bytes_written
                 ), line AS (
                     INSERT INTO keepalive_lines (job_id, number, end_offset, text)
                     SELECT $1, $2::bigint, bytes_written, $6 FROM job
                     RETURNING job_id
                 )
                 SELECT pg_notify($7, job_id)::text FROM line",
                &[
                    &id.as_str(),
                    &big(number),
                    &big(render::text_len(number, &text)),
                    &self.owner(),
                    &self.lease_secs(),
                    &text,
                    &CHANNEL,
                ],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    pub async fn finish(&self, id: &JobId, state: JobState) -> Result<bool, StoreError> {
        let rows = self
            .client()
            .query(
                "UPDATE keepalive_jobs
                 SET state = $2, finished_at_ms = $3, owner = NULL, lease_until = NULL
                 WHERE id = $1 AND owner = $4 AND state = 'running'
                 RETURNING pg_notify($5, id)::text",
                &[
                    &id.as_str(),
                    &state.as_str(),
                    &big(now_ms()),
                    &self.owner(),
                    &CHANNEL,
                ],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    pub async fn cancel(&self, id: &JobId) -> Result<bool, StoreError> {
        let rows = self
            .client()
            .query(
                "UPDATE keepalive_jobs
                 SET state = 'cancelled', finished_at_ms = $2, owner = NULL, lease_until = NULL
                 WHERE id = $1 AND state = 'running'
                 RETURNING pg_notify($3, id)::text",
                &[&id.as_str(), &big(now_ms()), &CHANNEL],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    pub async fn lines_after(
        &self,
        id: &JobId,
        after: u64,
        limit: u64,
    ) -> Result<Vec<Line>, StoreError> {
        let rows = self
            .client()
            .query(
                "SELECT number, end_offset, text FROM keepalive_lines
                 WHERE job_id = $1 AND number > $2 ORDER BY number LIMIT $3",
                &[&id.as_str(), &big(after), &big(limit)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| Line {
                number: small(row.get(0)),
                end_offset: small(row.get(1)),
                text: row.get(2),
            })
            .collect())
    }

    pub async fn line_at_offset(&self, id: &JobId, offset: u64) -> Result<Option<u64>, StoreError> {
        let row = self
            .client()
            .query_opt(
                "SELECT number FROM keepalive_lines WHERE job_id = $1 AND end_offset > $2
                 ORDER BY number LIMIT 1",
                &[&id.as_str(), &big(offset)],
            )
            .await?;
        Ok(row.map(|row| small(row.get(0))))
    }

    pub async fn claim(&self, limit: u64, except: Vec<JobId>) -> Result<Vec<JobInfo>, StoreError> {
        let except: Vec<&str> = except.iter().map(JobId::as_str).collect();
        // SKIP LOCKED: replicas claiming at the same moment share the jobs instead of queueing
        // behind each other's locks.
        let rows = self
            .client()
            .query(
                &format!(
                    "UPDATE keepalive_jobs
                     SET owner = $1, lease_until = now() + make_interval(secs => $2),
                         runs = runs + 1
                     WHERE id IN (
                         SELECT id FROM keepalive_jobs
                         WHERE state = 'running' AND (owner IS NULL OR lease_until < now())
                           AND NOT (id = ANY($4))
                         ORDER BY started_at_ms LIMIT $3
                         FOR UPDATE SKIP LOCKED)
                     RETURNING {INFO}"
                ),
                &[&self.owner(), &self.lease_secs(), &big(limit), &except],
            )
            .await?;
        let mut claimed: Vec<JobInfo> = rows.iter().map(info).collect();
        claimed.sort_by_key(|job| job.started_at);
        Ok(claimed)
    }

    pub async fn renew(&self, ids: Vec<JobId>) -> Result<Vec<JobId>, StoreError> {
        if ids.is_empty() {
            return Ok(ids);
        }
        let names: Vec<&str> = ids.iter().map(JobId::as_str).collect();
        let rows = self
            .client()
            .query(
                "UPDATE keepalive_jobs SET lease_until = now() + make_interval(secs => $2)
                 WHERE owner = $1 AND state = 'running' AND id = ANY($3)
                 RETURNING id",
                &[&self.owner(), &self.lease_secs(), &names],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| row.get::<_, &str>(0).parse().ok())
            .collect())
    }

    pub async fn release(&self) -> Result<u64, StoreError> {
        let client = self.client();
        let released = client
            .execute(
                "UPDATE keepalive_jobs SET owner = NULL, lease_until = NULL
                 WHERE owner = $1 AND state = 'running'",
                &[&self.owner()],
            )
            .await?;
        if released > 0 {
            client
                .execute("SELECT pg_notify($1, $2)::text", &[&CHANNEL, &HANDBACK])
                .await?;
        }
        Ok(released)
    }

    pub async fn running_count(&self) -> Result<u64, StoreError> {
        let row = self
            .client()
            .query_one(
                "SELECT count(*) FROM keepalive_jobs WHERE state = 'running'",
                &[],
            )
            .await?;
        Ok(small(row.get(0)))
    }

    pub async fn sweep(&self, max_age: Duration, max_jobs: u64) -> Result<u64, StoreError> {
        let client = self.client();
        let cutoff = now_ms().saturating_sub(millis(max_age));
        let aged = client
            .execute(
                "DELETE FROM keepalive_jobs WHERE state <> 'running' AND finished_at_ms < $1",
                &[&big(cutoff)],
            )
            .await?;
        let running: i64 = client
            .query_one(
                "SELECT count(*) FROM keepalive_jobs WHERE state = 'running'",
                &[],
            )
            .await?
            .get(0);
        let over = client
            .execute(
                "DELETE FROM keepalive_jobs WHERE id IN (
                     SELECT id FROM keepalive_jobs WHERE state <> 'running'
                     ORDER BY finished_at_ms DESC OFFSET $1)",
                &[&big(max_jobs.saturating_sub(small(running)))],
            )
            .await?;
        Ok(aged + over)
    }
}

/// Applies the migrations this database lacks, under an advisory lock so that replicas starting
/// together take turns (the second finds them applied); returns the database's epoch.
async fn migrate(client: &mut Client) -> Result<String, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS keepalive_migrations (
             version BIGINT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let applied: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM keepalive_migrations",
            &[],
        )
        .await?
        .get(0);
    let applied = super::applied_steps(applied, MIGRATIONS.len())?;
    for (version, step) in (1_i64..).zip(MIGRATIONS).skip(applied) {
        tx.batch_execute(step).await?;
        tx.execute(
            "INSERT INTO keepalive_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tracing::info!(version, "job database migrated");
    }
    tx.execute(
        "INSERT INTO keepalive_meta (key, value) VALUES ('epoch', $1) ON CONFLICT DO NOTHING",
        &[&fresh_epoch()],
    )
    .await?;
    let epoch: String = tx
        .query_one("SELECT value FROM keepalive_meta WHERE key = 'epoch'", &[])
        .await?
        .get(0);
    tx.commit().await?;
    Ok(epoch)
}

/// A new session: connected, driven by a task of its own (the client needs it for its answers)
/// that hands its notifications to `feed` and ends with the connection, and listening for job
/// changes.
async fn session(
    config: &tokio_postgres::Config,
    feed: &Feed,
) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    let feed = feed.clone();
    let delivering = tokio::spawn(async move { deliver(connection, &feed).await });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    Ok((client, delivering))
}

/// Drives one connection, handing its notifications to `feed`, until it ends.
async fn deliver<S, T>(mut connection: tokio_postgres::Connection<S, T>, feed: &Feed)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(note))) => match note.payload() {
                HANDBACK => feed.handed_back(),
                payload => {
                    if let Ok(id) = payload.parse::<JobId>() {
                        feed.publish(&id);
                    }
                }
            },
            Some(Ok(_)) => {}
            Some(Err(err)) => {
                let err = describe(&err);
                tracing::warn!(%err, "the job database connection failed");
                return;
            }
            None => return,
        }
    }
}

/// Makes the connection again each time it ends, for as long as the store is in use; readers and
/// the lease keeper are woken once it is back, as notifications may have been missed meanwhile.
async fn reconnect(store: Weak<Inner>, first: tokio::task::JoinHandle<()>) {
    let _ = first.await;
    let mut pause = Duration::from_millis(100);
    loop {
        let Some(inner) = store.upgrade() else {
            return;
        };
        let (client, delivering) = match session(&inner.config, &inner.feed).await {
            Ok(session) => session,
            Err(err) => {
                let err = describe(&err);
                tracing::warn!(url = %inner.url, %err, "cannot reach the job database; trying again");
                drop(inner);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        pause = Duration::from_millis(100);
        *inner
            .client
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(client);
        tracing::info!(url = %inner.url, "job database connection made again");
        inner.feed.publish_all();
        // Only a weak handle while waiting: a store no longer used drops its client, which ends
        // this connection and then this task.
        drop(inner);
        let _ = delivering.await;
    }
}

fn info(row: &Row) -> JobInfo {
    let id: &str = row.get(0);
    let state: &str = row.get(6);
    JobInfo {
        // Ids in the table are the origin's own: well formed.
        id: JobId(id.to_owned()),
        spec: JobSpec {
            sleep: Duration::from_millis(small(row.get(1))),
            heartbeat: row
                .get::<_, Option<i64>>(2)
                .map(|ms| Duration::from_millis(small(ms))),
            lines: small(row.get(3)),
        },
        lines_written: small(row.get(4)),
        bytes_written: small(row.get(5)),
        state: state.parse().unwrap_or(JobState::Failed),
        started_at: from_ms(small(row.get(7))),
        finished_at: row.get::<_, Option<i64>>(8).map(|ms| from_ms(small(ms))),
        runs: small(row.get(9)),
    }
}

/// PostgreSQL has no unsigned integers; every count here is far below `i64::MAX`.
fn big(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn small(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
