//! Runs one scenario: sets up what its [`Setup`] says, on fresh loopback ports, with the real origin
//! and proxy; watches with the real client; and hands what was seen to [`judge`]. Most scenarios are
//! a stream through the proxy watched to its end ([`Step::Watch`], [`Step::ClientCloses`]), run
//! here; the few with a choreography of their own keep their step next to their data, and fill the
//! same [`Seen`].

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, Uri};
use keepalive_common::duration::display;
use keepalive_kit::servers::FIRST_LINE;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::judge;
use super::lab::{origin_counts, origin_end, start_origin, start_proxy, OriginCounts, OriginEnd};
use super::netns::NetnsError;
use super::scenarios::{self, Millis, Scale, Scenario, Setup, Step, Timers};
use super::timeline::{Event, Mark, Timeline};
use crate::client::{Client, FetchError};
use crate::resume::Resumed;
use crate::watch::{observe, Observation, Verdict};

/// What a run showed: the client's and the origin's view in a sentence each, what differed from
/// the expectation (nothing, when it passed), and the picture.
pub struct Outcome {
    pub client: String,
    pub origin: String,
    pub problems: Vec<String>,
    pub timeline: Timeline,
}

/// Why a scenario has no outcome.
#[derive(Debug, thiserror::Error)]
pub enum NotRun {
    /// This machine cannot provide what the scenario needs (root, a network namespace).
    #[error("cannot run here: {0}")]
    CannotRun(NetnsError),
    /// Setting the scenario up failed.
    #[error(transparent)]
    Failed(#[from] SetupError),
}

/// What went wrong setting a scenario up, before there was anything to judge.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot set the scenario up: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad URL {url}: {source}")]
    Url {
        url: String,
        source: http::uri::InvalidUri,
    },
    #[error(transparent)]
    Header(#[from] scenarios::BadHeader),
    /// A scenario whose step needs what its setup does not give (a job to follow).
    #[error("{scenario}: its step needs {needs}")]
    Mismatch {
        scenario: &'static str,
        needs: &'static str,
    },
    #[error("cannot read the origin's metrics at {0}")]
    Metrics(SocketAddr),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("POST /jobs answered {0}")]
    JobRefused(StatusCode),
    #[error("no first line of the poem arrived")]
    NoFirstLine,
    #[error("the client task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Probe(#[from] scenarios::MetricsProbeError),
    /// A program the scenario runs (PostgreSQL, the origin's binary) could not be had or started.
    #[error(transparent)]
    Program(#[from] keepalive_kit::program::Error),
    #[error("keepalive-server is not beside {} (nor a directory up): `cargo build --release` builds it there", beside.display())]
    NoServer { beside: std::path::PathBuf },
    /// The namespace was made, but configuring it failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

impl From<std::io::Error> for NotRun {
    fn from(err: std::io::Error) -> Self {
        NotRun::Failed(err.into())
    }
}

/// What a run saw: the facts the judge holds against the expectation (a step fills those it can
/// see), each party's view in a sentence for the table, and the picture.
#[derive(Default)]
pub struct Seen {
    /// The client's stream, when it watched one.
    pub stream: Option<Observation>,
    /// The request after the step (the origin back).
    pub retry: Option<Observation>,
    /// When the client was done, since the start: its stream's end, or its RST.
    pub client_end: Duration,
    /// When the step acted (the origin killed, the network silenced), since the start.
    pub event: Option<Duration>,
    /// How the origin's stream ended; `None`: still streaming when the run stopped looking.
    pub origin: Option<OriginEnd>,
    /// When the run stopped looking at the origin, since the start.
    pub looked: Duration,
    /// The job the client followed.
    pub job: Option<Resumed>,
    /// What a replicas step saw.
    pub replicas: Option<scenarios::Run>,
    /// What a rolling deploy saw.
    pub rolling: Option<scenarios::Rolling>,
    pub client_view: String,
    pub origin_view: String,
    pub timeline: Timeline,
}

/// Runs `scenario` and judges it.
pub async fn run(scenario: &'static Scenario, scale: Scale) -> Result<Outcome, NotRun> {
    let seen = match scenario.setup.step {
        Step::Watch { max } | Step::ClientCloses { after: max } => {
            watch(scenario, scale, max).await?
        }
        Step::ClientResets { after } => scenarios::client_resets(scenario, scale, after).await?,
        Step::OriginKilled { after, max } => {
            scenarios::origin_killed(scenario, scale, after, max).await?
        }
        Step::OriginDown { after, max } => {
            scenarios::origin_down(scenario, scale, after, max).await?
        }
        Step::NetworkSilent {
            after,
            user_timeout,
        } => scenarios::network_silent(scenario, scale, after, user_timeout).await?,
        Step::FollowJob => scenarios::follow_job(scenario, scale).await?,
        Step::Replicas {
            fate,
            balance,
            after,
            health,
            max,
        } => scenarios::replicas(scenario, scale, fate, balance, after, health, max).await?,
        Step::RollingDeploy {
            drain,
            lease,
            health,
            after,
        } => scenarios::rolling_deploy(scenario, scale, drain, lease, health, after).await?,
    };
    let problems = judge::problems(scenario, scale, &seen);
    Ok(Outcome {
        client: seen.client_view,
        origin: seen.origin_view,
        problems,
        timeline: seen.timeline,
    })
}

/// The stream through the proxy, watched for `max` at most; then how the origin's stream ended.
async fn watch(scenario: &Scenario, scale: Scale, max: Millis) -> Result<Seen, SetupError> {
    let setup = &scenario.setup;
    let origin = start_origin().await?;
    let (_front, front) = front(origin.addr, setup, scale).await?;
    let before = counts(origin.addr).await?;
    let started = Instant::now();
    let client = observe(
        &Client::default(),
        &url(front, &setup.target.path(scale))?,
        &headers(setup, scale)?,
        Some(max.at(scale)),
        |_| {},
    )
    .await;
    let end = origin_end(origin.addr, before, started, Duration::from_secs(2)).await;
    let mut timeline = Timeline::new(scenario.title(scale));
    client_lane(&mut timeline, "client", &client, Duration::ZERO);
    origin_lane(&mut timeline, end);
    Ok(Seen {
        client_view: describe(&client),
        origin_view: origin_said(end, client.ended_at),
        client_end: client.ended_at,
        origin: end,
        stream: Some(client),
        timeline,
        ..Seen::default()
    })
}

/// The hop and the proxy `setup` puts in front of `origin`, started in that order: the servers
/// (stopped when dropped), and where the client connects.
pub(crate) async fn front(
    origin: SocketAddr,
    setup: &Setup,
    scale: Scale,
) -> Result<(impl Sized, SocketAddr), SetupError> {
    let hop = match setup.hop {
        Some(hop) => Some(
            start_proxy(origin, Timers::NONE.set(scale), |config| {
                hop.configure(config)
            })
            .await?,
        ),
        None => None,
    };
    let upstream = hop.as_ref().map_or(origin, |hop| hop.addr);
    let proxy = match setup.proxy {
        Some(timers) => Some(start_proxy(upstream, timers.set(scale), |_| {}).await?),
        None => None,
    };
    let addr = proxy.as_ref().map_or(upstream, |proxy| proxy.addr);
    Ok(((hop, proxy), addr))
}

pub(crate) fn headers(
    setup: &Setup,
    scale: Scale,
) -> Result<Vec<(HeaderName, HeaderValue)>, SetupError> {
    setup
        .headers
        .iter()
        .map(|header| Ok(header.pair(scale)?))
        .collect()
}

pub(crate) fn url(addr: SocketAddr, path: &str) -> Result<Uri, SetupError> {
    let url = format!("http://{addr}{path}");
    url.parse()
        .map_err(|source| SetupError::Url { url, source })
}

pub(crate) async fn counts(origin: SocketAddr) -> Result<OriginCounts, SetupError> {
    origin_counts(origin)
        .await
        .ok_or(SetupError::Metrics(origin))
}

/// A raw HTTP/1.1 request, for a client that does to its connection what `observe` would not.
pub(crate) fn raw_get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: lab\r\n\r\n")
}

/// Reads a raw HTTP/1.1 response until the poem's first line arrived.
pub(crate) async fn first_line(stream: &mut TcpStream) -> Result<(), SetupError> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !received
        .windows(FIRST_LINE.len())
        .any(|w| w == FIRST_LINE.as_bytes())
    {
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buf[..n]),
            _ => return Err(SetupError::NoFirstLine),
        }
    }
    Ok(())
}

/// The client's view of one stream: how it ended, when, and what it received.
pub(crate) fn describe(seen: &Observation) -> String {
    format!(
        "{} at {:.2}s, {} B{}",
        seen.verdict.name(),
        seen.ended_at.as_secs_f64(),
        seen.body_bytes(),
        match seen.heartbeats() {
            0 => String::new(),
            beats => format!(" ({beats} heartbeats)"),
        }
    )
}

/// How the origin's stream ended, and how long after the client's end.
pub(crate) fn origin_said(end: Option<OriginEnd>, client_end: Duration) -> String {
    match end {
        Some(end) => format!(
            "{}, +{}",
            origin_how(end),
            display(end.at.saturating_sub(client_end))
        ),
        None => "still streaming 2s later".to_owned(),
    }
}

fn origin_how(end: OriginEnd) -> &'static str {
    if end.client_gone > 0.0 {
        "client gone"
    } else if end.completed > 0.0 {
        "completed"
    } else {
        "no stream"
    }
}

/// The client's lane: headers, each chunk, and how it ended; `offset` places a request that began
/// later than the scenario.
pub(crate) fn client_lane(
    timeline: &mut Timeline,
    lane: &str,
    seen: &Observation,
    offset: Duration,
) {
    let events = &mut timeline.lane(lane).events;
    if let (Some(at), Some(status)) = (seen.headers_at, seen.status) {
        events.push(Event {
            at: offset + at,
            mark: Mark::Headers,
            label: status.as_u16().to_string(),
        });
    }
    for chunk in &seen.chunks {
        events.push(Event {
            at: offset + chunk.at,
            mark: if chunk.heartbeat {
                Mark::Heartbeat
            } else {
                Mark::Chunk
            },
            label: String::from_utf8_lossy(&chunk.data).trim().to_owned(),
        });
    }
    let mark = match seen.verdict {
        Verdict::Completed | Verdict::Http(_) => Mark::End,
        Verdict::Timeout => Mark::Note,
        _ => Mark::Cut,
    };
    events.push(Event {
        at: offset + seen.ended_at,
        mark,
        label: seen.verdict.name(),
    });
}

/// The origin's lane: when its stream ended, if it did.
pub(crate) fn origin_lane(timeline: &mut Timeline, end: Option<OriginEnd>) {
    if let Some(end) = end {
        timeline.lane("origin").events.push(Event {
            at: end.at,
            mark: Mark::Note,
            label: format!("origin: {}", origin_how(end)),
        });
    }
}
