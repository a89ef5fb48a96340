//! Several replicas behind the proxy, and what a deploy or a crash does to their streams: three
//! origins, long streams spread over them by least-streams, a steady trickle of short requests the
//! whole time; then the busiest replica is restarted the way a deploy restarts it (SIGTERM, drain,
//! stop, start again) or killed outright. The step records which replica served each stream (from
//! the origins' own counters), every short request's answer, and the last moment the proxy sent the
//! victim a request (from the proxy's per-replica counter, which outlives a restart).

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode, Uri};
use keepalive_kit::servers::origin_on;
use keepalive_proxy::{Balance, Upstream};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Ending, Expect, Family, Millis, Scale, Scenario, Setup, Step, Stream, Target, Timers};
use crate::client::Client;
use crate::experiment::lab::{read_metric, start_proxy, undrained_origin_config};
use crate::experiment::runner::{client_lane, url, Seen, SetupError};
use crate::experiment::timeline::{Event, Mark, Timeline};
use crate::watch::{self, observe, Observation};

/// How many origins run behind the proxy.
pub const REPLICAS: usize = 3;
/// How many long streams are spread over them before the step acts.
const STREAMS: usize = 6;
/// How often the proxy checks each replica's `/healthz`.
const HEALTH: Millis = Millis(200);
/// The restarted replica's `SERVER_DRAIN_TIMEOUT`.
const DRAIN: Millis = Millis(1500);
/// A short request this often, the whole run (unscaled: it is the load, not a timer).
const TRICKLE: Duration = Duration::from_millis(50);
/// The short request: one line of the poem, at once.
const SHORT: &str = "/polls/streamed?sleep=0&lines=1";

/// What the step does to the busiest replica.
#[derive(Debug, Clone, Copy)]
pub enum Fate {
    /// A deploy: SIGTERM (its `/healthz` answers 503, its streams go on), its streams cut at the
    /// drain limit, the process gone, a new one started on the same address.
    Restarted { drain: Millis },
    /// kill -9: its connections end at once, its port refuses.
    Killed,
}

/// A proxy without timers (only a deploy or a crash ends a stream here), in front of endless streams
/// of a line every 200 ms.
const DEPLOY: Setup = Setup {
    hop: None,
    proxy: Some(Timers::NONE),
    target: Target::Stream(Stream {
        sleep: Some(Millis(200)),
        ..Stream::DEFAULT
    }),
    headers: &[],
    step: Step::Replicas {
        fate: Fate::Restarted { drain: DRAIN },
        balance: Balance::LeastStreams,
        after: Millis(800),
        health: HEALTH,
        max: Millis(3500),
    },
};

pub const DEPLOY_DRAIN: Scenario = Scenario {
    name: "deploy-drain",
    family: Family::Replicas,
    expectation: "no request fails; the restarted replica's streams end at its drain limit, the others' go on; it gets nothing new once a health check saw it drain",
    setup: DEPLOY,
    expect: &[
        Expect::NoFailedRequest,
        Expect::VictimStreamsEnd {
            ending: Ending::Truncated,
            after: DRAIN,
        },
        Expect::OthersUntouched,
        Expect::VictimQuiet { within: HEALTH },
        Expect::Rejoins,
    ],
};

pub const REPLICA_KILLED: Scenario = Scenario {
    name: "replica-killed",
    family: Family::Replicas,
    expectation: "the killed replica's streams are truncated at once, the others' go on; no request fails: the proxy retries elsewhere and ejects it",
    setup: Setup {
        // Round-robin, and health checks far enough apart, so that a request surely meets the
        // dead replica before a check sees it: the retry it takes is part of what is shown.
        step: Step::Replicas {
            fate: Fate::Killed,
            balance: Balance::RoundRobin,
            after: Millis(800),
            health: Millis(500),
            max: Millis(2500),
        },
        ..DEPLOY
    },
    expect: &[
        Expect::NoFailedRequest,
        Expect::VictimStreamsEnd {
            ending: Ending::Truncated,
            after: Millis(0),
        },
        Expect::OthersUntouched,
        Expect::Retried,
        Expect::VictimQuiet {
            within: Millis(500),
        },
    ],
};

/// What a replicas step saw, beyond the lanes of its picture.
#[derive(Debug, Default)]
pub struct Run {
    /// Each long stream: the replica that served it, when it began, and what its client saw.
    pub streams: Vec<ReplicaStream>,
    /// The replica the step acted on.
    pub victim: usize,
    /// Every short request: when it began, and its status or why it had none.
    pub requests: Vec<(Duration, Result<StatusCode, String>)>,
    /// The last moment the proxy's counter showed a new request to the victim after the step,
    /// before it was back; `None`: none after the step.
    pub last_sent: Option<Duration>,
    /// Requests the restarted replica served once back (`None`: it was not restarted).
    pub rejoined: Option<f64>,
    /// Requests the proxy sent to another replica after one failed to connect.
    pub retries: f64,
}

#[derive(Debug)]
pub struct ReplicaStream {
    pub replica: usize,
    pub began: Duration,
    pub seen: Observation,
}

impl Run {
    /// The victim's streams, then the others'.
    pub fn split(&self) -> (Vec<&ReplicaStream>, Vec<&ReplicaStream>) {
        self.streams
            .iter()
            .partition(|stream| stream.replica == self.victim)
    }

    pub fn failures(&self) -> Vec<String> {
        self.requests
            .iter()
            .filter_map(|(at, answer)| match answer {
                Ok(StatusCode::OK) => None,
                Ok(status) => Some(format!("{} at {:.2}s", status.as_u16(), at.as_secs_f64())),
                Err(why) => Some(format!("{why} at {:.2}s", at.as_secs_f64())),
            })
            .collect()
    }
}

/// Three origins behind a proxy balancing by `balance`, checking their health every `health`; [`STREAMS`]
/// long streams opened one by one; a short request every [`TRICKLE`]; the busiest replica meets
/// its `fate` `after` the start; everything is watched until `max`.
pub(crate) async fn replicas(
    scenario: &Scenario,
    scale: Scale,
    fate: Fate,
    balance: Balance,
    after: Millis,
    health: Millis,
    max: Millis,
) -> Result<Seen, SetupError> {
    let config = || {
        let mut config = undrained_origin_config();
        if let Fate::Restarted { drain } = fate {
            config.drain_timeout = drain.at(scale);
        }
        config
    };
    let mut origins = Vec::new();
    for _ in 0..REPLICAS {
        origins.push(origin_on(
            TcpListener::bind("127.0.0.1:0").await?,
            config(),
        )?);
    }
    let addrs: Vec<SocketAddr> = origins.iter().map(|origin| origin.addr).collect();
    let list: String = addrs
        .iter()
        .map(|addr| format!("http://{addr}"))
        .collect::<Vec<_>>()
        .join(",");
    let upstream: Upstream = list
        .parse()
        .map_err(|why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why))?;
    let proxy = start_proxy(addrs[0], Timers::NONE.set(scale), |config| {
        config.upstream = upstream;
        config.balance = balance;
        config.health_interval = Some(health.at(scale));
    })
    .await?;
    let started = Instant::now();
    let end = started + max.at(scale);
    let target = url(proxy.addr, &scenario.setup.target.path(scale))?;

    let mut watching = Vec::new();
    for _ in 0..STREAMS {
        let before = started_counts(&addrs).await?;
        let began = started.elapsed();
        let (first, arrived) = oneshot::channel();
        let target = target.clone();
        let budget = end.saturating_duration_since(Instant::now());
        let task = tokio::spawn(async move {
            let mut first = Some(first);
            observe(&Client::default(), &target, &[], Some(budget), |event| {
                if let watch::Event::Chunk(_) = event {
                    if let Some(first) = first.take() {
                        let _ = first.send(());
                    }
                }
            })
            .await
        });
        tokio::time::timeout(Duration::from_secs(2), arrived)
            .await
            .map_err(|_| SetupError::NoFirstLine)?
            .map_err(|_| SetupError::NoFirstLine)?;
        let after = started_counts(&addrs).await?;
        let replica = (0..REPLICAS)
            .find(|&index| after[index] > before[index])
            .ok_or(SetupError::Metrics(proxy.addr))?;
        watching.push((replica, began, task));
    }
    let victim = (0..REPLICAS)
        .max_by_key(|&index| watching.iter().filter(|(r, ..)| *r == index).count())
        .unwrap_or(0);

    let stop = CancellationToken::new();
    let trickle = tokio::spawn(trickle(url(proxy.addr, SHORT)?, started, stop.clone()));

    tokio::time::sleep_until(started + after.at(scale)).await;
    let acted = started.elapsed();
    let victim_addr = addrs[victim];
    let sent = format!("proxy_replica_requests_total{{replica=\"{victim_addr}\"}}");
    let sent_before = read_metric(proxy.admin, &sent).await.unwrap_or(0.0);
    let running = origins.remove(victim);
    let mut replica_lane = Vec::new();
    let (back, back_at) = match fate {
        Fate::Restarted { .. } => {
            replica_lane.push(note(acted, "SIGTERM: /healthz 503, drain"));
            let draining = tokio::spawn(running.stopped());
            let last_sent = last_increase(proxy.admin, &sent, sent_before, started, async {
                let _ = draining.await;
            })
            .await;
            let back = origin_on(TcpListener::bind(victim_addr).await?, config())?;
            let back_at = started.elapsed();
            replica_lane.push(note(back_at, "drain over: stopped, started again"));
            (Some((back, last_sent)), Some(back_at))
        }
        Fate::Killed => {
            let mut running = running;
            running.stop();
            drop(running);
            replica_lane.push(note(acted, "kill -9"));
            (None, None)
        }
    };
    let last_sent = match &back {
        Some((_, last_sent)) => *last_sent,
        None => {
            last_increase(
                proxy.admin,
                &sent,
                sent_before,
                started,
                tokio::time::sleep_until(end),
            )
            .await
        }
    };
    tokio::time::sleep_until(end).await;
    stop.cancel();
    let requests = trickle.await?;
    let rejoined = match &back {
        Some((back, _)) => Some(
            started_counts(&[back.addr])
                .await?
                .first()
                .copied()
                .unwrap_or(0.0),
        ),
        None => None,
    };
    let retries = read_metric(proxy.admin, "proxy_retries_total")
        .await
        .unwrap_or(0.0);

    let mut streams = Vec::new();
    for (replica, began, task) in watching {
        streams.push(ReplicaStream {
            replica,
            began,
            seen: task.await?,
        });
    }
    let run = Run {
        streams,
        victim,
        requests,
        last_sent,
        rejoined,
        retries,
    };

    let mut timeline = Timeline::new(scenario.title(scale));
    let name = |replica: usize| format!("r{}", replica + 1);
    if let Some(at) = run.last_sent {
        replica_lane.push(note(at, "the last request the proxy tried on it"));
    }
    // In time order, so that the picture's staggered labels alternate rows.
    replica_lane.sort_by_key(|event| event.at);
    timeline
        .lane(&format!("{} ({})", name(victim), fate.name()))
        .events = replica_lane;
    for (index, stream) in run.streams.iter().enumerate() {
        client_lane(
            &mut timeline,
            &format!("stream {} · {}", index + 1, name(stream.replica)),
            &stream.seen,
            stream.began,
        );
    }
    timeline.lane("requests").events = run
        .requests
        .iter()
        .map(|(at, answer)| match answer {
            Ok(StatusCode::OK) => Event {
                at: *at,
                mark: Mark::Chunk,
                label: "200".to_owned(),
            },
            Ok(status) => Event {
                at: *at,
                mark: Mark::Cut,
                label: status.as_u16().to_string(),
            },
            Err(why) => Event {
                at: *at,
                mark: Mark::Cut,
                label: why.clone(),
            },
        })
        .collect();
    let failures = run.failures();
    if let Some((last, _)) = run.requests.last() {
        timeline.lane("requests").events.push(note(
            *last,
            &format!("{} requests, {} failed", run.requests.len(), failures.len()),
        ));
    }

    let (on_victim, others) = run.split();
    let client_view = format!(
        "{} of {} requests failed; {} streams on {}: {}; {} on the others: {}",
        failures.len(),
        run.requests.len(),
        on_victim.len(),
        name(victim),
        verdicts(&on_victim),
        others.len(),
        verdicts(&others)
    );
    let origin_view = format!(
        "{} {} at {:.2}s{}; requests the proxy retried elsewhere: {}{}",
        name(victim),
        fate.name(),
        acted.as_secs_f64(),
        back_at.map_or_else(String::new, |at| format!(
            ", back at {:.2}s",
            at.as_secs_f64()
        )),
        run.retries,
        run.rejoined
            .map_or_else(String::new, |served| format!("; {served} served once back"))
    );
    Ok(Seen {
        client_view,
        origin_view,
        event: Some(acted),
        replicas: Some(run),
        timeline,
        ..Seen::default()
    })
}

impl Fate {
    pub fn name(self) -> &'static str {
        match self {
            Fate::Restarted { .. } => "restarted",
            Fate::Killed => "killed",
        }
    }
}

/// A moment of the run's own (a kill, a restart) on a lane.
pub(super) fn note(at: Duration, label: &str) -> Event {
    Event {
        at,
        mark: Mark::Note,
        label: label.to_owned(),
    }
}

/// `completed ×2, truncated ×1`: how a group of streams ended.
fn verdicts(streams: &[&ReplicaStream]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for stream in streams {
        let name = stream.seen.verdict.name();
        match counts.iter_mut().find(|(seen, _)| *seen == name) {
            Some((_, count)) => *count += 1,
            None => counts.push((name, 1)),
        }
    }
    counts
        .iter()
        .map(|(name, count)| format!("{name} ×{count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each origin's `origin_streams_started_total`, in order.
async fn started_counts(addrs: &[SocketAddr]) -> Result<Vec<f64>, SetupError> {
    let mut counts = Vec::new();
    for addr in addrs {
        let count = read_metric(*addr, "origin_streams_started_total")
            .await
            .ok_or(SetupError::Metrics(*addr))?;
        counts.push(count);
    }
    Ok(counts)
}

/// A short request through the proxy every [`TRICKLE`] until `stop`, each on a new connection (a
/// new client of the balancer), with when it began and how it was answered.
async fn trickle(
    target: Uri,
    started: Instant,
    stop: CancellationToken,
) -> Vec<(Duration, Result<StatusCode, String>)> {
    let mut answers = Vec::new();
    let mut tick = tokio::time::interval(TRICKLE);
    loop {
        tokio::select! {
            () = stop.cancelled() => return answers,
            _ = tick.tick() => {}
        }
        let at = started.elapsed();
        let answer = match tokio::time::timeout(
            Duration::from_secs(2),
            Client::default().fetch(Method::GET, &target, &[]),
        )
        .await
        {
            Ok(Ok((status, _))) => Ok(status),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("no answer within 2s".to_owned()),
        };
        answers.push((at, answer));
    }
}

/// Polls the proxy's counter `query` every 20 ms until `until` resolves, and says when it last
/// rose above `from` (`None`: it never did).
async fn last_increase(
    admin: SocketAddr,
    query: &str,
    from: f64,
    started: Instant,
    until: impl std::future::Future<Output = ()>,
) -> Option<Duration> {
    let mut last = from;
    let mut at = None;
    tokio::pin!(until);
    loop {
        if let Some(count) = read_metric(admin, query).await {
            if count > last {
                last = count;
                at = Some(started.elapsed());
            }
        }
        tokio::select! {
            () = &mut until => return at,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}
