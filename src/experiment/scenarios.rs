//! The scenarios: every way a long stream dies, each set up with the real origin and proxy, watched
//! by the real client, and judged against what a user should expect. Timers are hundreds of
//! milliseconds in `--quick` runs and four times that otherwise.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, Uri};
use keepalive_common::duration::display;
use keepalive_proxy::TimerSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::lab::{
    metric_value, origin_config, origin_counts, origin_end, reserved_port, serve_origin,
    start_origin, start_proxy, OriginCounts, OriginEnd,
};
use super::timeline::{Event, Mark, Timeline};
use crate::resume::{follow_job, Progress, Resumed};
use crate::watch::{fetch, observe, Observation, Verdict};

/// How long things take: `--quick` runs at 1, a full run at 4.
#[derive(Debug, Clone, Copy)]
pub struct Scale(pub u32);

impl Scale {
    pub fn ms(self, millis: u64) -> Duration {
        Duration::from_millis(millis * u64::from(self.0))
    }
}

/// What a run showed: the client's and the origin's view in a sentence each, what differed from
/// the expectation (nothing, when it passed), and the picture.
pub struct Outcome {
    pub client: String,
    pub origin: String,
    pub problems: Vec<String>,
    pub timeline: Timeline,
}

/// Why a scenario has no outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotRun {
    /// This machine cannot provide what the scenario needs (root, a network namespace).
    CannotRun(String),
    /// Setting the scenario up failed.
    Failed(String),
}

impl From<String> for NotRun {
    fn from(reason: String) -> Self {
        NotRun::Failed(reason)
    }
}

type Run = Pin<Box<dyn Future<Output = Result<Outcome, NotRun>> + Send>>;

pub struct Scenario {
    pub name: &'static str,
    pub expectation: &'static str,
    pub run: fn(Scale) -> Run,
}

pub const ALL: &[Scenario] = &[
    Scenario {
        name: "idle-cut",
        expectation: "truncated at the idle limit; the origin sees the client go",
        run: |scale| Box::pin(idle_cut(scale)),
    },
    Scenario {
        name: "clean-cut",
        expectation: "the idle cut ends the body like a normal end (curl exits 0); the client still tells it was cut",
        run: |scale| Box::pin(styled_cut(scale, "clean")),
    },
    Scenario {
        name: "reset-cut",
        expectation: "the idle cut resets the connection (curl exits 56)",
        run: |scale| Box::pin(styled_cut(scale, "reset")),
    },
    Scenario {
        name: "heartbeat-saves",
        expectation: "heartbeats keep it open past 4x the idle limit",
        run: |scale| Box::pin(heartbeat_saves(scale)),
    },
    Scenario {
        name: "total-timer",
        expectation: "truncated at the total limit despite heartbeats",
        run: |scale| Box::pin(total_timer(scale)),
    },
    Scenario {
        name: "first-byte-504",
        expectation: "504 at the first-byte limit",
        run: |scale| Box::pin(first_byte_504(scale)),
    },
    Scenario {
        name: "client-fin",
        expectation: "the origin's stream ends within 1s of the client's FIN",
        run: |scale| Box::pin(client_fin(scale)),
    },
    Scenario {
        name: "client-rst",
        expectation: "the origin's stream ends within 1s of the client's RST",
        run: |scale| Box::pin(client_rst(scale)),
    },
    Scenario {
        name: "origin-killed",
        expectation: "truncated, never a clean end",
        run: |scale| Box::pin(origin_killed(scale)),
    },
    Scenario {
        name: "origin-down",
        expectation: "502 at once while down, 200 once it is back",
        run: |scale| Box::pin(origin_down(scale)),
    },
    Scenario {
        name: "injected-rst",
        expectation: "reset at the fault's time; the origin sees the client go",
        run: |scale| Box::pin(injected_rst(scale)),
    },
    Scenario {
        name: "byte-limit",
        expectation: "exactly 70 bytes, then truncated",
        run: |scale| Box::pin(byte_limit(scale)),
    },
    Scenario {
        name: "silent-loss",
        expectation: "with SERVER_TCP_USER_TIMEOUT, the origin drops the stream about that long after the network goes silent",
        run: |scale| Box::pin(silent_loss(scale, Some(scale.ms(1000)))),
    },
    Scenario {
        name: "silent-loss-no-timeout",
        expectation: "without it, the origin goes on streaming to nobody",
        run: |scale| Box::pin(silent_loss(scale, None)),
    },
    Scenario {
        name: "buffering-hop",
        expectation: "a buffering hop holds the heartbeats; the idle timer behind it cuts",
        run: |scale| Box::pin(buffering_hop(scale)),
    },
    Scenario {
        name: "accel-buffering-no",
        expectation: "X-Accel-Buffering: no lets the heartbeats through that hop",
        run: |scale| Box::pin(accel_buffering_no(scale)),
    },
    Scenario {
        name: "compression-hop",
        expectation: "a gzip hop holds the heartbeats; the idle timer behind it cuts",
        run: |scale| Box::pin(compression_hop(scale)),
    },
    Scenario {
        name: "no-transform",
        expectation: "Cache-Control: no-transform lets the heartbeats through that hop",
        run: |scale| Box::pin(no_transform(scale)),
    },
    Scenario {
        name: "job-resume-idle",
        expectation: "a durable job read through a proxy whose idle timer keeps cutting: every line once, in order",
        run: |scale| Box::pin(job_resume_idle(scale)),
    },
    Scenario {
        name: "job-resume-rst",
        expectation: "a durable job read through injected RSTs: every line once, in order",
        run: |scale| Box::pin(job_resume_rst(scale)),
    },
];

/// The named scenario, if there is one.
pub fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().find(|scenario| scenario.name == name)
}

fn timers(idle: Option<Duration>, first_byte: Option<Duration>, max: Option<Duration>) -> TimerSet {
    TimerSet {
        connect: Some(Duration::from_secs(1)),
        first_byte,
        idle,
        max_duration: max,
        header: None,
        keepalive: None,
    }
}

fn url(addr: SocketAddr, target: &str) -> Result<Uri, String> {
    format!("http://{addr}{target}")
        .parse()
        .map_err(|err| format!("bad URL for {target}: {err}"))
}

fn io(err: std::io::Error) -> String {
    format!("cannot set the scenario up: {err}")
}

fn ms(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// Within [expected - 50 ms, expected + 700 ms]: the tolerance of the test suite, for a loaded machine.
fn around(observed: Duration, expected: Duration) -> bool {
    observed + Duration::from_millis(50) >= expected
        && observed <= expected + Duration::from_millis(700)
}

fn describe(seen: &Observation) -> String {
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

/// The client's lane: headers, each chunk, and how it ended; `offset` places a request that began
/// later than the scenario.
fn client_lane(timeline: &mut Timeline, lane: &str, seen: &Observation, offset: Duration) {
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

/// The origin's lane and sentence: when its stream ended, and how long after `client_end`.
fn origin_lane(timeline: &mut Timeline, end: Option<OriginEnd>, client_end: Duration) -> String {
    let Some(end) = end else {
        return "still streaming 2s later".to_owned();
    };
    let how = if end.client_gone > 0.0 {
        "client gone"
    } else if end.completed > 0.0 {
        "completed"
    } else {
        "no stream"
    };
    let after = end.at.saturating_sub(client_end);
    timeline.lane("origin").events.push(Event {
        at: end.at,
        mark: Mark::Note,
        label: format!("origin: {how}"),
    });
    format!("{how}, +{}", display(after))
}

/// The client's stream ended as `want`, and at about `at` when given.
fn ended_as(problems: &mut Vec<String>, client: &Observation, want: Verdict, at: Option<Duration>) {
    if client.verdict != want {
        problems.push(format!(
            "client: {}, want {}",
            client.verdict.name(),
            want.name()
        ));
    }
    if let Some(at) = at.filter(|at| !around(client.ended_at, *at)) {
        problems.push(format!(
            "{} at {:.3}s, want {}",
            client.verdict.name(),
            client.ended_at.as_secs_f64(),
            ms(at)
        ));
    }
}

fn check(problems: &mut Vec<String>, holds: bool, problem: impl FnOnce() -> String) {
    if !holds {
        problems.push(problem());
    }
}

async fn counts(origin: SocketAddr) -> Result<OriginCounts, String> {
    origin_counts(origin)
        .await
        .ok_or_else(|| format!("cannot read the origin's metrics at {origin}"))
}

/// A stream through a proxy with `timers`; judged on the client's verdict, its time, and the
/// origin learning of the end within a second.
struct Through {
    timers: TimerSet,
    target: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    max_time: Option<Duration>,
}

struct Seen {
    client: Observation,
    origin: Option<OriginEnd>,
    timeline: Timeline,
    origin_sentence: String,
}

async fn through_proxy(title: &str, run: Through) -> Result<Seen, String> {
    let origin = start_origin().await.map_err(io)?;
    let proxy = start_proxy(origin.addr, run.timers, |_| {})
        .await
        .map_err(io)?;
    let before = counts(origin.addr).await?;
    let started = Instant::now();
    let client = observe(
        &url(proxy.addr, &run.target)?,
        &run.headers,
        run.max_time,
        |_| {},
    )
    .await;
    let origin_seen = origin_end(origin.addr, before, started, Duration::from_secs(2)).await;
    let mut timeline = Timeline::new(title);
    client_lane(&mut timeline, "client", &client, Duration::ZERO);
    let origin_sentence = origin_lane(&mut timeline, origin_seen, client.ended_at);
    Ok(Seen {
        client,
        origin: origin_seen,
        timeline,
        origin_sentence,
    })
}

fn origin_follows(problems: &mut Vec<String>, seen: &Seen) {
    match seen.origin {
        Some(end) if end.at <= seen.client.ended_at + Duration::from_secs(1) => {}
        _ => problems.push(format!("origin: {}", seen.origin_sentence)),
    }
}

fn outcome(seen: Seen, problems: Vec<String>) -> Outcome {
    Outcome {
        client: describe(&seen.client),
        origin: seen.origin_sentence,
        problems,
        timeline: seen.timeline,
    }
}

async fn idle_cut(scale: Scale) -> Result<Outcome, NotRun> {
    let idle = scale.ms(500);
    let seen = through_proxy(
        &format!(
            "idle-cut: a line every {}, idle limit {}",
            ms(scale.ms(2000)),
            ms(idle)
        ),
        Through {
            timers: timers(Some(idle), None, None),
            target: format!("/polls/streamed?sleep={}", ms(scale.ms(2000))),
            headers: Vec::new(),
            max_time: Some(scale.ms(4000)),
        },
    )
    .await?;
    let mut problems = Vec::new();
    ended_as(&mut problems, &seen.client, Verdict::Truncated, Some(idle));
    origin_follows(&mut problems, &seen);
    Ok(outcome(seen, problems))
}

/// `idle-cut` again, with the proxy cutting in another style (`x-keepalive-cut-style`). The stream
/// owes three lines, so a clean end after one is a cut whatever it looks like.
async fn styled_cut(scale: Scale, style: &'static str) -> Result<Outcome, NotRun> {
    let idle = scale.ms(500);
    let seen = through_proxy(
        &format!(
            "{style}-cut: a line every {}, idle limit {}, cut style {style}",
            ms(scale.ms(2000)),
            ms(idle)
        ),
        Through {
            timers: timers(Some(idle), None, None),
            target: format!("/polls/streamed?sleep={}&lines=3", ms(scale.ms(2000))),
            headers: vec![fault("x-keepalive-cut-style", style)?],
            max_time: Some(scale.ms(4000)),
        },
    )
    .await?;
    let mut problems = Vec::new();
    match (style, &seen.client.verdict) {
        ("clean", Verdict::SilentlyTruncated(_)) | ("reset", Verdict::Reset) => {}
        (_, verdict) => problems.push(format!("client: {}, want the {style} cut", verdict.name())),
    }
    check(&mut problems, around(seen.client.ended_at, idle), || {
        format!(
            "cut at {:.3}s, want {}",
            seen.client.ended_at.as_secs_f64(),
            ms(idle)
        )
    });
    origin_follows(&mut problems, &seen);
    Ok(outcome(seen, problems))
}

async fn heartbeat_saves(scale: Scale) -> Result<Outcome, NotRun> {
    let idle = scale.ms(500);
    let seen = through_proxy(
        &format!(
            "heartbeat-saves: a line every {}, a heartbeat every {}, idle limit {}",
            ms(scale.ms(1000)),
            ms(scale.ms(200)),
            ms(idle)
        ),
        Through {
            timers: timers(Some(idle), None, None),
            target: format!(
                "/polls/streamed?sleep={}&heartbeat={}",
                ms(scale.ms(1000)),
                ms(scale.ms(200))
            ),
            headers: Vec::new(),
            max_time: Some(scale.ms(2000)),
        },
    )
    .await?;
    Ok(passed_through(seen))
}

async fn total_timer(scale: Scale) -> Result<Outcome, NotRun> {
    let total = scale.ms(1500);
    let seen = through_proxy(
        &format!(
            "total-timer: heartbeats every {}, total limit {}",
            ms(scale.ms(200)),
            ms(total)
        ),
        Through {
            timers: timers(Some(scale.ms(500)), None, Some(total)),
            target: format!(
                "/polls/streamed?sleep={}&heartbeat={}",
                ms(scale.ms(400)),
                ms(scale.ms(200))
            ),
            headers: Vec::new(),
            max_time: Some(scale.ms(4000)),
        },
    )
    .await?;
    let mut problems = Vec::new();
    ended_as(&mut problems, &seen.client, Verdict::Truncated, Some(total));
    origin_follows(&mut problems, &seen);
    Ok(outcome(seen, problems))
}

async fn first_byte_504(scale: Scale) -> Result<Outcome, NotRun> {
    let first_byte = scale.ms(500);
    let seen = through_proxy(
        &format!(
            "first-byte-504: headers held {}, first-byte limit {}",
            ms(scale.ms(2000)),
            ms(first_byte)
        ),
        Through {
            timers: timers(None, Some(first_byte), None),
            target: format!("/polls/streamed?delay={}", ms(scale.ms(2000))),
            headers: Vec::new(),
            max_time: Some(scale.ms(4000)),
        },
    )
    .await?;
    let mut problems = Vec::new();
    ended_as(
        &mut problems,
        &seen.client,
        Verdict::Http(StatusCode::GATEWAY_TIMEOUT),
        Some(first_byte),
    );
    Ok(outcome(seen, problems))
}

async fn client_fin(scale: Scale) -> Result<Outcome, NotRun> {
    let leaves = scale.ms(800);
    let seen = through_proxy(
        &format!(
            "client-fin: the client closes after {}, no heartbeats",
            ms(leaves)
        ),
        Through {
            timers: timers(Some(scale.ms(5000)), None, None),
            target: format!("/polls/streamed?sleep={}", ms(scale.ms(5000))),
            headers: Vec::new(),
            max_time: Some(leaves),
        },
    )
    .await?;
    let mut problems = Vec::new();
    match seen.origin {
        Some(end) if end.client_gone > 0.0 => {}
        _ => problems.push(format!("origin: {}", seen.origin_sentence)),
    }
    origin_follows(&mut problems, &seen);
    Ok(outcome(seen, problems))
}

async fn client_rst(scale: Scale) -> Result<Outcome, NotRun> {
    let origin = start_origin().await.map_err(io)?;
    let proxy = start_proxy(
        origin.addr,
        timers(Some(scale.ms(5000)), None, None),
        |_| {},
    )
    .await
    .map_err(io)?;
    let before = counts(origin.addr).await?;
    let started = Instant::now();
    let mut stream = TcpStream::connect(proxy.addr).await.map_err(io)?;
    let request = format!(
        "GET /polls/streamed?sleep={} HTTP/1.1\r\nHost: lab\r\n\r\n",
        ms(scale.ms(5000))
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    first_line(&mut stream).await?;
    let first_line_at = started.elapsed();
    tokio::time::sleep(scale.ms(300)).await;
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .map_err(io)?;
    drop(stream);
    let reset_at = started.elapsed();
    let end = origin_end(origin.addr, before, started, Duration::from_secs(2)).await;
    let mut timeline = Timeline::new(format!(
        "client-rst: the client resets its connection after {}",
        ms(reset_at)
    ));
    let client = timeline.lane("client");
    client.events.push(Event {
        at: first_line_at,
        mark: Mark::Chunk,
        label: "first line".to_owned(),
    });
    client.events.push(Event {
        at: reset_at,
        mark: Mark::Cut,
        label: "client sends RST".to_owned(),
    });
    let origin_sentence = origin_lane(&mut timeline, end, reset_at);
    let mut problems = Vec::new();
    match end {
        Some(end) if end.client_gone > 0.0 && end.at <= reset_at + Duration::from_secs(1) => {}
        _ => problems.push(format!("origin: {origin_sentence}")),
    }
    Ok(Outcome {
        client: format!("sent RST at {:.2}s", reset_at.as_secs_f64()),
        origin: origin_sentence,
        problems,
        timeline,
    })
}

async fn origin_killed(scale: Scale) -> Result<Outcome, NotRun> {
    let mut origin = start_origin().await.map_err(io)?;
    let proxy = start_proxy(
        origin.addr,
        timers(Some(scale.ms(5000)), None, None),
        |_| {},
    )
    .await
    .map_err(io)?;
    let target = url(
        proxy.addr,
        &format!("/polls/streamed?sleep={}", ms(scale.ms(200))),
    )?;
    let kill_after = scale.ms(700);
    let started = Instant::now();
    let watching =
        tokio::spawn(
            async move { observe(&target, &[], Some(Duration::from_secs(10)), |_| {}).await },
        );
    tokio::time::sleep(kill_after).await;
    origin.stop();
    let killed_at = started.elapsed();
    let client = watching
        .await
        .map_err(|err| format!("the client task failed: {err}"))?;
    let mut timeline = Timeline::new(format!(
        "origin-killed: the origin dies after {}",
        ms(killed_at)
    ));
    client_lane(&mut timeline, "client", &client, Duration::ZERO);
    timeline.lane("origin").events.push(Event {
        at: killed_at,
        mark: Mark::Cut,
        label: "origin killed".to_owned(),
    });
    let mut problems = Vec::new();
    ended_as(&mut problems, &client, Verdict::Truncated, None);
    check(
        &mut problems,
        client.ended_at <= killed_at + Duration::from_millis(500),
        || {
            format!(
                "the client learned of it {:.3}s later",
                (client.ended_at - killed_at).as_secs_f64()
            )
        },
    );
    Ok(Outcome {
        client: describe(&client),
        origin: format!("killed at {:.2}s", killed_at.as_secs_f64()),
        problems,
        timeline,
    })
}

async fn origin_down(scale: Scale) -> Result<Outcome, NotRun> {
    let (socket, origin_addr) = reserved_port().map_err(io)?;
    let connect = scale.ms(1000);
    let mut proxy_timers = timers(Some(scale.ms(5000)), None, None);
    proxy_timers.connect = Some(connect);
    let proxy = start_proxy(origin_addr, proxy_timers, |_| {})
        .await
        .map_err(io)?;
    let started = Instant::now();
    let index = url(proxy.addr, "/polls/")?;
    let down = observe(&index, &[], Some(scale.ms(3000)), |_| {}).await;
    tokio::time::sleep(scale.ms(300)).await;
    let listener = socket.listen(64).map_err(io)?;
    let _origin = serve_origin(listener, origin_config()).map_err(io)?;
    let back_at = started.elapsed();
    let up = observe(&index, &[], Some(scale.ms(3000)), |_| {}).await;
    let mut timeline =
        Timeline::new("origin-down: a request while the origin is down, one after it is back");
    client_lane(&mut timeline, "client", &down, Duration::ZERO);
    client_lane(&mut timeline, "client", &up, back_at);
    timeline.lane("origin").events.push(Event {
        at: back_at,
        mark: Mark::Note,
        label: "origin starts".to_owned(),
    });
    let mut problems = Vec::new();
    check(
        &mut problems,
        down.verdict == Verdict::Http(StatusCode::BAD_GATEWAY),
        || format!("while down: {}, want http 502", down.verdict.name()),
    );
    check(&mut problems, down.ended_at <= connect, || {
        format!(
            "502 after {:.3}s, want within the {} connect timeout",
            down.ended_at.as_secs_f64(),
            ms(connect)
        )
    });
    check(&mut problems, up.verdict == Verdict::Completed, || {
        format!("once back: {}, want completed", up.verdict.name())
    });
    Ok(Outcome {
        client: format!("{}, then {}", describe(&down), up.verdict.name()),
        origin: format!("back at {:.2}s", back_at.as_secs_f64()),
        problems,
        timeline,
    })
}

/// Reads a raw HTTP/1.1 response until the poem's first line arrived.
async fn first_line(stream: &mut TcpStream) -> Result<(), NotRun> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !received.windows(5).any(|w| w == b"lady\n") {
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buf[..n]),
            _ => {
                return Err(NotRun::Failed(
                    "no first line of the poem arrived".to_owned(),
                ))
            }
        }
    }
    Ok(())
}

fn fault(name: &'static str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let value = HeaderValue::try_from(value).map_err(|err| format!("{name}: {err}"))?;
    Ok((HeaderName::from_static(name), value))
}

async fn injected_rst(scale: Scale) -> Result<Outcome, NotRun> {
    let after = scale.ms(600);
    let seen = through_proxy(
        &format!(
            "injected-rst: the proxy resets the client after {}",
            ms(after)
        ),
        Through {
            timers: timers(Some(scale.ms(5000)), None, None),
            target: format!("/polls/streamed?sleep={}", ms(scale.ms(200))),
            headers: vec![fault("x-keepalive-fault-reset-after", &ms(after))?],
            max_time: Some(scale.ms(4000)),
        },
    )
    .await?;
    let mut problems = Vec::new();
    ended_as(&mut problems, &seen.client, Verdict::Reset, Some(after));
    origin_follows(&mut problems, &seen);
    Ok(outcome(seen, problems))
}

async fn byte_limit(scale: Scale) -> Result<Outcome, NotRun> {
    let seen = through_proxy(
        "byte-limit: the proxy forwards 70 body bytes, then cuts",
        Through {
            timers: timers(Some(scale.ms(5000)), None, None),
            target: format!("/polls/streamed?sleep={}", ms(scale.ms(100))),
            headers: vec![fault("x-keepalive-fault-limit-bytes", "70")?],
            max_time: Some(scale.ms(4000)),
        },
    )
    .await?;
    let mut problems = Vec::new();
    ended_as(&mut problems, &seen.client, Verdict::Truncated, None);
    check(&mut problems, seen.client.body_bytes() == 70, || {
        format!("{} body bytes, want 70", seen.client.body_bytes())
    });
    origin_follows(&mut problems, &seen);
    Ok(outcome(seen, problems))
}

/// A heartbeated stream through a hop (set up by `hop`) and a balancer with an idle timer behind it.
async fn behind_hop(
    scale: Scale,
    title: String,
    hop: impl FnOnce(&mut keepalive_proxy::ProxyConfig),
    headers: Vec<(HeaderName, HeaderValue)>,
) -> Result<(Seen, Duration), String> {
    let origin = start_origin().await.map_err(io)?;
    let hop = start_proxy(origin.addr, timers(None, None, None), hop)
        .await
        .map_err(io)?;
    let idle = scale.ms(800);
    let balancer = start_proxy(hop.addr, timers(Some(idle), None, None), |_| {})
        .await
        .map_err(io)?;
    let before = counts(origin.addr).await?;
    let started = Instant::now();
    let target = format!(
        "/polls/streamed?sleep={}&heartbeat={}",
        ms(scale.ms(5000)),
        ms(scale.ms(200))
    );
    let client = observe(
        &url(balancer.addr, &target)?,
        &headers,
        Some(scale.ms(3000)),
        |_| {},
    )
    .await;
    let end = origin_end(origin.addr, before, started, Duration::from_secs(2)).await;
    let mut timeline = Timeline::new(title);
    client_lane(&mut timeline, "client", &client, Duration::ZERO);
    let origin_sentence = origin_lane(&mut timeline, end, client.ended_at);
    Ok((
        Seen {
            client,
            origin: end,
            timeline,
            origin_sentence,
        },
        idle,
    ))
}

/// The hop held everything back: the balancer's idle timer cut the stream with (almost) nothing
/// delivered; `allowed` bytes may pass (a gzip header).
fn swallowed(seen: Seen, idle: Duration, allowed: usize) -> Outcome {
    let mut problems = Vec::new();
    ended_as(&mut problems, &seen.client, Verdict::Truncated, Some(idle));
    check(&mut problems, seen.client.body_bytes() <= allowed, || {
        format!(
            "{} body bytes passed the hop, want at most {allowed}",
            seen.client.body_bytes()
        )
    });
    origin_follows(&mut problems, &seen);
    outcome(seen, problems)
}

/// The heartbeats got through: the stream outlived the idle limit and was still open when the
/// client stopped watching.
fn passed_through(seen: Seen) -> Outcome {
    let mut problems = Vec::new();
    check(
        &mut problems,
        seen.client.verdict == Verdict::Timeout,
        || {
            format!(
                "client: {} at {:.3}s, want still open",
                seen.client.verdict.name(),
                seen.client.ended_at.as_secs_f64()
            )
        },
    );
    check(&mut problems, seen.client.heartbeats() >= 5, || {
        format!(
            "only {} heartbeats passed the hop",
            seen.client.heartbeats()
        )
    });
    origin_follows(&mut problems, &seen);
    outcome(seen, problems)
}

async fn buffering_hop(scale: Scale) -> Result<Outcome, NotRun> {
    let (seen, idle) = behind_hop(
        scale,
        format!(
            "buffering-hop: heartbeats every {} into a 64KiB buffer that ignores X-Accel-Buffering, idle limit {} behind it",
            ms(scale.ms(200)),
            ms(scale.ms(800))
        ),
        |hop| {
            hop.buffering = Some(64 * 1024);
            hop.buffering_ignore_header = true;
        },
        Vec::new(),
    )
    .await?;
    Ok(swallowed(seen, idle, 0))
}

async fn accel_buffering_no(scale: Scale) -> Result<Outcome, NotRun> {
    let (seen, _) = behind_hop(
        scale,
        format!(
            "accel-buffering-no: the same buffering hop honours X-Accel-Buffering: no; idle limit {} behind it",
            ms(scale.ms(800))
        ),
        |hop| hop.buffering = Some(64 * 1024),
        Vec::new(),
    )
    .await?;
    Ok(passed_through(seen))
}

fn accept_gzip() -> (HeaderName, HeaderValue) {
    (
        http::header::ACCEPT_ENCODING,
        HeaderValue::from_static("gzip"),
    )
}

async fn compression_hop(scale: Scale) -> Result<Outcome, NotRun> {
    let (seen, idle) = behind_hop(
        scale,
        format!(
            "compression-hop: a gzip hop that ignores no-transform holds the heartbeats; idle limit {} behind it",
            ms(scale.ms(800))
        ),
        |hop| {
            hop.compression = keepalive_proxy::config::Compression::Gzip;
            hop.compression_ignore_no_transform = true;
        },
        vec![accept_gzip()],
    )
    .await?;
    // The 10-byte gzip header leaves the encoder at once; nothing of the stream follows it.
    Ok(swallowed(seen, idle, 10))
}

async fn no_transform(scale: Scale) -> Result<Outcome, NotRun> {
    let (seen, _) = behind_hop(
        scale,
        format!(
            "no-transform: the same gzip hop honours Cache-Control: no-transform; idle limit {} behind it",
            ms(scale.ms(800))
        ),
        |hop| hop.compression = keepalive_proxy::config::Compression::Gzip,
        vec![accept_gzip()],
    )
    .await?;
    Ok(passed_through(seen))
}

/// The origin's `origin_streams_active`, asked over a connection of its own that the DROP rules
/// leave alone.
struct Probe {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
}

impl Probe {
    async fn connect(stream: TcpStream) -> Result<Self, NotRun> {
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|err| NotRun::Failed(format!("probe handshake: {err}")))?;
        tokio::spawn(connection);
        Ok(Self { sender })
    }

    async fn active_streams(&mut self) -> Result<f64, NotRun> {
        use http_body_util::BodyExt as _;
        let failed = |err: &dyn std::fmt::Display| NotRun::Failed(format!("probe: {err}"));
        self.sender.ready().await.map_err(|err| failed(&err))?;
        let request = http::Request::get("/metrics")
            .header(http::header::HOST, "origin")
            .body(http_body_util::Empty::new())
            .map_err(|err| failed(&err))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|err| failed(&err))?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| failed(&err))?
            .to_bytes();
        metric_value(&String::from_utf8_lossy(&body), "origin_streams_active")
            .ok_or_else(|| NotRun::Failed("no origin_streams_active in /metrics".to_owned()))
    }
}

/// A heartbeated stream whose client vanishes from the network (every packet to and from it
/// dropped): the origin learns of it only when unacknowledged heartbeats hit `user_timeout`.
async fn silent_loss(scale: Scale, user_timeout: Option<Duration>) -> Result<Outcome, NotRun> {
    let netns = super::netns::Netns::create().map_err(NotRun::CannotRun)?;
    let (listener, client, probe) = netns
        .sockets(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let client = std::net::TcpStream::connect(addr)?;
            let probe = std::net::TcpStream::connect(addr)?;
            for stream in [&client, &probe] {
                stream.set_nonblocking(true)?;
            }
            listener.set_nonblocking(true)?;
            Ok((listener, client, probe))
        })
        .map_err(NotRun::CannotRun)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(io)?;
    let _origin = serve_origin(
        listener,
        keepalive_server::ServerConfig {
            tcp_user_timeout: user_timeout,
            ..origin_config()
        },
    )
    .map_err(io)?;
    let mut probe = Probe::connect(TcpStream::from_std(probe).map_err(io)?).await?;
    let mut client = TcpStream::from_std(client).map_err(io)?;
    let client_port = client.local_addr().map_err(io)?.port().to_string();

    let started = Instant::now();
    let heartbeat = scale.ms(200);
    let request = format!(
        "GET /polls/streamed?sleep={}&heartbeat={} HTTP/1.1\r\nHost: lab\r\n\r\n",
        ms(scale.ms(10_000)),
        ms(heartbeat)
    );
    client.write_all(request.as_bytes()).await.map_err(io)?;
    first_line(&mut client).await?;
    let first_line_at = started.elapsed();
    tokio::time::sleep(scale.ms(500)).await;
    // On loopback every packet of the client's connection, both ways, passes INPUT with the
    // client's port on one side: dropping those is a network that went silent.
    for rule in [["--dport", &client_port], ["--sport", &client_port]] {
        netns.iptables(&["-A", "INPUT", "-p", "tcp", rule[0], rule[1], "-j", "DROP"])?;
    }
    let dropped_at = started.elapsed();

    let patience = match user_timeout {
        Some(timeout) => timeout + scale.ms(2000),
        None => scale.ms(3000),
    };
    let deadline = Instant::now() + patience;
    let mut origin_end = None;
    while Instant::now() < deadline {
        if probe.active_streams().await? == 0.0 {
            origin_end = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waited = started.elapsed();

    let setting = user_timeout.map_or_else(|| "off".to_owned(), ms);
    let mut timeline = Timeline::new(format!(
        "silent-loss: the network drops every packet after {}; heartbeats every {}, SERVER_TCP_USER_TIMEOUT {setting}",
        ms(dropped_at),
        ms(heartbeat)
    ));
    let lane = timeline.lane("client");
    lane.events.push(Event {
        at: first_line_at,
        mark: Mark::Chunk,
        label: "first line".to_owned(),
    });
    lane.events.push(Event {
        at: dropped_at,
        mark: Mark::Cut,
        label: "network drops everything".to_owned(),
    });
    let origin_lane = timeline.lane("origin");
    let origin = match origin_end {
        Some(at) => {
            origin_lane.events.push(Event {
                at,
                mark: Mark::Note,
                label: "origin: heartbeat write failed, stream dropped".to_owned(),
            });
            format!("stream dropped +{}", display(at - dropped_at))
        }
        None => {
            origin_lane.events.push(Event {
                at: waited,
                mark: Mark::Note,
                label: "origin: still streaming to nobody".to_owned(),
            });
            format!("still streaming +{}", display(waited - dropped_at))
        }
    };
    let mut problems = Vec::new();
    match (user_timeout, origin_end) {
        (Some(timeout), Some(at)) => check(
            &mut problems,
            at >= dropped_at + timeout && at <= dropped_at + timeout + heartbeat + Duration::from_secs(1),
            || format!("the origin let go {} after the drop, want about {}", display(at - dropped_at), ms(timeout)),
        ),
        (Some(timeout), None) => problems.push(format!(
            "the origin still streams {} after the drop despite a {} TCP_USER_TIMEOUT",
            display(waited - dropped_at),
            ms(timeout)
        )),
        (None, Some(at)) => problems.push(format!(
            "the origin let go {} after the drop with no TCP_USER_TIMEOUT: something sent a FIN or RST",
            display(at - dropped_at)
        )),
        (None, None) => {}
    }
    Ok(Outcome {
        client: format!("vanished at {:.2}s", dropped_at.as_secs_f64()),
        origin,
        problems,
        timeline,
    })
}

/// A durable job of `lines` lines, `sleep` apart, started at the origin and followed through a
/// proxy with `timers` (and the fault `headers`) by the resuming client; judged on every line
/// arriving exactly once, in order, through at least two cuts that looked like `cut`.
async fn job_through_cuts(
    title: String,
    timers: TimerSet,
    job: (Duration, u64),
    headers: Vec<(HeaderName, HeaderValue)>,
    cut: Verdict,
) -> Result<Outcome, NotRun> {
    let (sleep, lines) = job;
    let origin = start_origin().await.map_err(io)?;
    let proxy = start_proxy(origin.addr, timers, |_| {}).await.map_err(io)?;
    let start = url(
        origin.addr,
        &format!("/jobs?sleep={}&lines={lines}", ms(sleep)),
    )?;
    let (status, body) = fetch(http::Method::POST, &start)
        .await
        .map_err(|err| err.to_string())?;
    let job: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let stream = match (status, job["stream"].as_str()) {
        (StatusCode::CREATED, Some(stream)) => stream.to_owned(),
        _ => return Err(NotRun::Failed(format!("POST /jobs answered {status}"))),
    };
    let mut timeline = Timeline::new(title);
    let mut events = Vec::new();
    let budget = sleep * u32::try_from(lines).unwrap_or(u32::MAX) * 4 + Duration::from_secs(5);
    let resumed = follow_job(
        &url(proxy.addr, &stream)?,
        &headers,
        Some(budget),
        Some(Duration::from_millis(50)),
        |progress| match progress {
            Progress::Line(line) => events.push(Event {
                at: line.at,
                mark: Mark::Chunk,
                label: format!("id {}", line.id),
            }),
            Progress::Cut { at, how, after } => events.push(Event {
                at,
                mark: Mark::Cut,
                label: format!("{} after id {after}", how.name()),
            }),
        },
    )
    .await;
    timeline.lane("client").events = events;
    let mut problems = Vec::new();
    check(&mut problems, resumed.verified(), || job_problem(&resumed));
    check(&mut problems, resumed.cuts >= 2, || {
        format!("{} cuts: the proxy did not keep cutting", resumed.cuts)
    });
    let want = cut.name();
    check(
        &mut problems,
        resumed.cut_kinds.iter().all(|kind| *kind == want),
        || format!("cuts {:?}, want all {want}", resumed.cut_kinds),
    );
    Ok(Outcome {
        client: format!(
            "{} of {} lines, each once, through {} cuts ({})",
            resumed.lines.len(),
            resumed.job_lines.unwrap_or(0),
            resumed.cuts,
            want
        ),
        origin: format!("job {}", resumed.job_state.as_deref().unwrap_or("unknown")),
        problems,
        timeline,
    })
}

fn job_problem(resumed: &Resumed) -> String {
    format!(
        "{} lines for a job of {:?}: missing {:?}, repeated {:?}{}",
        resumed.lines.len(),
        resumed.job_lines,
        resumed.missing(),
        resumed.repeated(),
        resumed
            .gave_up
            .as_ref()
            .map_or_else(String::new, |reason| format!(", stopped: {reason}"))
    )
}

async fn job_resume_idle(scale: Scale) -> Result<Outcome, NotRun> {
    let idle = scale.ms(300);
    job_through_cuts(
        format!(
            "job-resume-idle: lines every {}, idle limit {}, no heartbeats",
            ms(scale.ms(500)),
            ms(idle)
        ),
        timers(Some(idle), None, None),
        (scale.ms(500), 7),
        Vec::new(),
        Verdict::Truncated,
    )
    .await
}

async fn job_resume_rst(scale: Scale) -> Result<Outcome, NotRun> {
    let after = scale.ms(500);
    job_through_cuts(
        format!(
            "job-resume-rst: lines every {}, each connection reset after {}",
            ms(scale.ms(200)),
            ms(after)
        ),
        timers(Some(scale.ms(5000)), None, None),
        (scale.ms(200), 12),
        vec![fault("x-keepalive-fault-reset-after", &ms(after))?],
        Verdict::Reset,
    )
    .await
}
