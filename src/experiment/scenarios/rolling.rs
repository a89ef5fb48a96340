//! Durable jobs through a rolling deploy: three replicas of the origin on one PostgreSQL database
//! behind the proxy, SSE readers following jobs as `watch --resume` does (resuming by
//! `Last-Event-ID` after every cut); every replica is restarted in turn the way a deploy restarts it
//! (SIGTERM, drain, stop, start again, the next one once the proxy sees it ready), then the busiest
//! is killed with SIGKILL and stays down.
//!
//! The origins are real processes (the `keepalive-server` built beside this program), because only
//! a real SIGKILL leaves a lease behind with nobody to hand it back; the database is a PostgreSQL
//! cluster of the run's own (Debian's `postgresql`), removed at the end.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use http::{Method, StatusCode};
use keepalive_kit::postgres::Cluster;
use keepalive_kit::program::{clear_settings, Program};
use keepalive_proxy::{Balance, Upstream};
use tokio::time::Instant;

use super::replicas::{note, REPLICAS};
use super::{ms, Expect, Family, Millis, Scale, Scenario, Setup, Step, Target, Timers};
use crate::client::Client;
use crate::experiment::lab::{read_metric, start_proxy};
use crate::experiment::runner::{url, Seen, SetupError};
use crate::experiment::timeline::{Event, Mark, Timeline};
use crate::resume::{self, Progress, Resumed};

/// How many jobs are followed through the deploy.
const JOBS: usize = 3;
const SLEEP: Millis = Millis(150);
const LINES: u64 = 40;
/// The replicas' `SERVER_JOB_LEASE`.
const LEASE: Millis = Millis(1000);
/// The replicas' `SERVER_DRAIN_TIMEOUT`.
const DRAIN: Millis = Millis(400);
/// How often the proxy checks each replica's `/healthz`.
const HEALTH: Millis = Millis(200);
/// How long a replica may take to listen once started.
const START_WITHIN: Duration = Duration::from_secs(10);

pub const ROLLING_DEPLOY: Scenario = Scenario {
    name: "rolling-deploy",
    family: Family::Replicas,
    expectation: "every reader gets every line of its job exactly once and every job completes; the killed replica's jobs go on elsewhere within a lease",
    setup: Setup {
        hop: None,
        proxy: Some(Timers::NONE),
        target: Target::Job {
            sleep: SLEEP,
            lines: LINES,
        },
        headers: &[],
        step: Step::RollingDeploy {
            drain: DRAIN,
            lease: LEASE,
            health: HEALTH,
            after: Millis(600),
        },
    },
    expect: &[
        Expect::EveryJobWhole,
        // A lapse is seen at the next look (a third of a lease), and the next line is a sleep
        // after the take-over.
        Expect::TakenOver {
            within: Millis(LEASE.0 + LEASE.0 / 3 + SLEEP.0),
        },
    ],
};

/// What a rolling deploy saw, beyond the lanes of its picture.
#[derive(Debug, Default)]
pub struct Rolling {
    /// Each job as its reader assembled it.
    pub readers: Vec<Resumed>,
    /// When the busiest replica was killed, since the start.
    pub killed_at: Duration,
    /// Jobs it ran when it was killed.
    pub victim_jobs: f64,
    /// From the kill until every job still running had its next line.
    pub resumed_after_kill: Option<Duration>,
    /// Each job's `runs` at the end.
    pub runs: Vec<u64>,
}

/// A replica: its address, and the process serving it now (none while it is down).
struct Replica {
    addr: SocketAddr,
    process: Option<Program>,
    lane: Vec<Event>,
}

/// How every replica is started: the same settings each time, its log in `logs`.
struct Launcher {
    binary: PathBuf,
    database: String,
    lease: Duration,
    drain: Duration,
    logs: PathBuf,
}

impl Launcher {
    async fn start(&self, addr: SocketAddr, run: usize) -> Result<Program, SetupError> {
        let log = std::fs::File::create(self.logs.join(format!("{}-{run}.log", addr.port())))?;
        let mut command = Command::new(&self.binary);
        clear_settings(&mut command);
        command
            .env("SERVER_ADDR", addr.to_string())
            .env("SERVER_DATABASE_URL", &self.database)
            .env("SERVER_JOB_LEASE", ms(self.lease))
            .env("SERVER_DRAIN_TIMEOUT", ms(self.drain))
            .env("SERVER_JOBS_PER_CLIENT", "100")
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(log);
        let mut program = Program::start("keepalive-server", command)?;
        tokio::task::spawn_blocking(move || program.listening(addr, START_WITHIN).map(|()| program))
            .await?
            .map_err(SetupError::from)
    }
}

/// Stops `program` gracefully (SIGTERM, and its drain) without holding the runtime.
async fn stop(mut program: Program) -> Result<(), SetupError> {
    tokio::task::spawn_blocking(move || program.stop().map(drop)).await??;
    Ok(())
}

pub(crate) async fn rolling_deploy(
    scenario: &Scenario,
    scale: Scale,
    drain: Millis,
    lease: Millis,
    health: Millis,
    after: Millis,
) -> Result<Seen, SetupError> {
    let Target::Job { sleep, lines } = scenario.setup.target else {
        return Err(SetupError::Mismatch {
            scenario: scenario.name,
            needs: "a job to follow",
        });
    };
    let binary = server_binary()?;
    let cluster = tokio::task::spawn_blocking(Cluster::start).await??;
    let database = cluster.database()?;
    let logs = std::env::temp_dir().join(format!(
        "keepalive-rolling-deploy-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&logs)?;
    let _logs = RemoveDir(logs.clone());
    let launcher = Launcher {
        binary,
        database,
        lease: lease.at(scale),
        drain: drain.at(scale),
        logs,
    };

    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        let addr = keepalive_kit::ports::free()?;
        let process = launcher.start(addr, 1).await?;
        replicas.push(Replica {
            addr,
            process: Some(process),
            lane: Vec::new(),
        });
    }
    let list = replicas
        .iter()
        .map(|replica| format!("http://{}", replica.addr))
        .collect::<Vec<_>>()
        .join(",");
    let upstream: Upstream = list
        .parse()
        .map_err(|why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why))?;
    let proxy = start_proxy(replicas[0].addr, Timers::NONE.set(scale), |config| {
        config.upstream = upstream;
        config.balance = Balance::LeastStreams;
        config.health_interval = Some(health.at(scale));
    })
    .await?;
    let started = Instant::now();
    // Long enough for the whole job with every take-over in it, twice over.
    let budget = sleep.at(scale) * u32::try_from(lines).unwrap_or(u32::MAX) * 2
        + lease.at(scale) * 4
        + Duration::from_secs(10);

    let mut readers = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        let (status, body) = Client::default()
            .fetch(
                Method::POST,
                &url(proxy.addr, &scenario.setup.target.path(scale))?,
                &[],
            )
            .await?;
        let job: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let (id, stream) = match (status, job["id"].as_str(), job["stream"].as_str()) {
            (StatusCode::CREATED, Some(id), Some(stream)) => (id.to_owned(), stream.to_owned()),
            _ => return Err(SetupError::JobRefused(status)),
        };
        ids.push(id);
        let target = url(proxy.addr, &stream)?;
        let offset = started.elapsed();
        readers.push(tokio::spawn(async move {
            let mut events = Vec::new();
            let resumed = resume::follow_job(
                &Client::default(),
                &target,
                &[],
                Some(budget),
                Some(Duration::from_millis(50)),
                |progress| match progress {
                    Progress::Line(line) => events.push(Event {
                        at: offset + line.at,
                        mark: Mark::Chunk,
                        // Every tenth, so that forty labels do not cover each other.
                        label: if line.id % 10 == 0 {
                            format!("id {}", line.id)
                        } else {
                            String::new()
                        },
                    }),
                    Progress::Cut { at, how, after } => events.push(Event {
                        at: offset + at,
                        mark: Mark::Cut,
                        // Short, so that the labels of cuts close together do not cover each other.
                        label: format!("{}: {after}", how.name()),
                    }),
                },
            )
            .await;
            (resumed, offset, events)
        }));
    }

    // Every replica in turn: SIGTERM and its drain, the process gone, a new one on the same
    // address, and the next only once a health check can have seen this one ready.
    tokio::time::sleep_until(started + after.at(scale)).await;
    for replica in &mut replicas {
        let Some(process) = replica.process.take() else {
            continue;
        };
        replica.lane.push(note(started.elapsed(), "SIGTERM, drain"));
        stop(process).await?;
        replica.process = Some(launcher.start(replica.addr, 2).await?);
        replica.lane.push(note(started.elapsed(), "started"));
        tokio::time::sleep(health.at(scale) + Duration::from_millis(100)).await;
    }

    // Then a crash: the replica running the most jobs, killed with SIGKILL, left down.
    let mut running = Vec::new();
    for replica in &replicas {
        running.push(
            read_metric(replica.addr, "origin_jobs_running")
                .await
                .unwrap_or(0.0),
        );
    }
    let victim = (0..REPLICAS)
        .max_by(|a, b| running[*a].total_cmp(&running[*b]))
        .unwrap_or(0);
    let killed_at = started.elapsed();
    if let Some(mut process) = replicas[victim].process.take() {
        process.kill()?;
    }
    replicas[victim].lane.push(note(
        killed_at,
        &format!("kill -9, {} jobs", running[victim]),
    ));

    let mut timeline = Timeline::new(scenario.title(scale));
    for (index, replica) in replicas.iter().enumerate() {
        timeline.lane(&format!("r{}", index + 1)).events = replica.lane.clone();
    }
    let mut rolling = Rolling {
        killed_at,
        victim_jobs: running[victim],
        ..Rolling::default()
    };
    let mut waits = Vec::new();
    for (index, reader) in readers.into_iter().enumerate() {
        let (resumed, offset, events) = reader.await?;
        // The job's first line after the kill, if it was still running then.
        if let Some(next) = resumed
            .lines
            .iter()
            .map(|line| offset + line.at)
            .find(|at| *at > killed_at)
        {
            waits.push(next - killed_at);
        }
        timeline.lane(&format!("job {}", index + 1)).events = events;
        rolling.readers.push(resumed);
    }
    rolling.resumed_after_kill = waits.into_iter().max();
    for id in &ids {
        let (_, body) = Client::default()
            .fetch(Method::GET, &url(proxy.addr, &format!("/jobs/{id}"))?, &[])
            .await?;
        let job: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        rolling.runs.push(job["runs"].as_u64().unwrap_or(0));
    }
    for replica in &mut replicas {
        if let Some(process) = replica.process.take() {
            stop(process).await?;
        }
    }
    drop(proxy);
    drop(cluster);

    let whole = rolling.readers.iter().filter(|job| job.verified()).count();
    let cuts: usize = rolling.readers.iter().map(|job| job.cuts).sum();
    let client_view =
        format!("{whole} of {JOBS} readers got their whole job exactly once, through {cuts} cuts");
    let origin_view = format!(
        "{REPLICAS} replicas restarted in turn, r{} killed with {} jobs at {:.2}s; next line {} after the kill; runs per job {:?}",
        victim + 1,
        rolling.victim_jobs,
        killed_at.as_secs_f64(),
        rolling
            .resumed_after_kill
            .map_or_else(|| "never".to_owned(), |wait| format!("{:.2}s", wait.as_secs_f64())),
        rolling.runs
    );
    Ok(Seen {
        client_view,
        origin_view,
        event: Some(killed_at),
        rolling: Some(rolling),
        timeline,
        ..Seen::default()
    })
}

/// `keepalive-server`, built beside this program (`cargo build` builds it), or one directory up
/// from a test binary in `deps/`.
fn server_binary() -> Result<PathBuf, SetupError> {
    let me = std::env::current_exe()?;
    let beside = |dir: &Path| dir.join("keepalive-server");
    me.ancestors()
        .skip(1)
        .take(2)
        .map(beside)
        .find(|path| path.is_file())
        .ok_or(SetupError::NoServer { beside: me })
}

/// The run's logs, removed at its end.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
