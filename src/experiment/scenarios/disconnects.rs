//! The client or the origin going away mid-stream. A client's FIN is the runner's own client giving
//! up; a RST, an origin that dies, and an origin that is down then back each need a step of their
//! own: a raw socket to reset, a server to stop, a port that refuses until it listens.

use std::time::Duration;

use http::StatusCode;
use keepalive_kit::ports;
use keepalive_kit::servers::origin_on;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{
    Ending, Expect, Family, Millis, Scale, Scenario, Setup, Step, Stream, Target, Timers, When,
};
use crate::client::Client;
use crate::experiment::lab::{origin_end, start_origin, undrained_origin_config};
use crate::experiment::runner::{
    client_lane, counts, describe, first_line, front, headers, origin_lane, origin_said, raw_get,
    url, Seen, SetupError,
};
use crate::experiment::timeline::{Event, Mark, Timeline};
use crate::watch::observe;

/// A proxy whose timers stay out of the way of a stream that sleeps 5 s between lines.
const PATIENT: Setup = Setup {
    hop: None,
    proxy: Some(Timers {
        idle: Some(Millis(5000)),
        ..Timers::NONE
    }),
    target: Target::Stream(Stream {
        sleep: Some(Millis(5000)),
        ..Stream::DEFAULT
    }),
    headers: &[],
    step: Step::Watch { max: Millis(4000) },
};

pub const CLIENT_FIN: Scenario = Scenario {
    name: "client-fin",
    family: Family::Disconnects,
    expectation: "the origin's stream ends within 1s of the client's FIN",
    setup: Setup {
        step: Step::ClientCloses { after: Millis(800) },
        ..PATIENT
    },
    expect: &[Expect::ClientGone, Expect::OriginFollows],
};

pub const CLIENT_RST: Scenario = Scenario {
    name: "client-rst",
    family: Family::Disconnects,
    expectation: "the origin's stream ends within 1s of the client's RST",
    setup: Setup {
        step: Step::ClientResets { after: Millis(300) },
        ..PATIENT
    },
    expect: &[Expect::ClientGone, Expect::OriginFollows],
};

pub const ORIGIN_KILLED: Scenario = Scenario {
    name: "origin-killed",
    family: Family::Disconnects,
    expectation: "truncated, never a clean end",
    setup: Setup {
        target: Target::Stream(Stream {
            sleep: Some(Millis(200)),
            ..Stream::DEFAULT
        }),
        step: Step::OriginKilled {
            after: Millis(700),
            // Unscaled: how long the client may wait to hear of the kill is not a timer of the run.
            max: Duration::from_secs(10),
        },
        ..PATIENT
    },
    expect: &[
        Expect::Ends {
            ending: Ending::Truncated,
            at: When::Any,
        },
        Expect::ClientNotified {
            within: Duration::from_millis(500),
        },
    ],
};

const CONNECT: Millis = Millis(1000);

pub const ORIGIN_DOWN: Scenario = Scenario {
    name: "origin-down",
    family: Family::Disconnects,
    expectation: "502 at once while down, 200 once it is back",
    setup: Setup {
        proxy: Some(Timers {
            connect: Some(CONNECT),
            idle: Some(Millis(5000)),
            ..Timers::NONE
        }),
        target: Target::Index,
        step: Step::OriginDown {
            after: Millis(300),
            max: Millis(3000),
        },
        ..PATIENT
    },
    expect: &[
        Expect::Ends {
            ending: Ending::Http(StatusCode::BAD_GATEWAY),
            at: When::Within(CONNECT),
        },
        Expect::Recovers,
    ],
};

/// The client reads the first line on a raw connection, waits `after`, and closes with a RST
/// (SO_LINGER 0), which `observe` never does.
pub(crate) async fn client_resets(
    scenario: &Scenario,
    scale: Scale,
    after: Millis,
) -> Result<Seen, SetupError> {
    let setup = &scenario.setup;
    let origin = start_origin().await?;
    let (_front, front) = front(origin.addr, setup, scale).await?;
    let before = counts(origin.addr).await?;
    let started = Instant::now();
    let mut stream = TcpStream::connect(front).await?;
    stream
        .write_all(raw_get(&setup.target.path(scale)).as_bytes())
        .await?;
    first_line(&mut stream).await?;
    let first_line_at = started.elapsed();
    tokio::time::sleep(after.at(scale)).await;
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    drop(stream);
    let reset_at = started.elapsed();
    let end = origin_end(origin.addr, before, started, Duration::from_secs(2)).await;
    let mut timeline = Timeline::new(scenario.title(scale));
    timeline.lane("client").events = vec![
        Event {
            at: first_line_at,
            mark: Mark::Chunk,
            label: "first line".to_owned(),
        },
        Event {
            at: reset_at,
            mark: Mark::Cut,
            label: "client sends RST".to_owned(),
        },
    ];
    origin_lane(&mut timeline, end);
    Ok(Seen {
        client_view: format!("sent RST at {:.2}s", reset_at.as_secs_f64()),
        origin_view: origin_said(end, reset_at),
        client_end: reset_at,
        origin: end,
        timeline,
        ..Seen::default()
    })
}

/// The origin is stopped `after` the request, with no drain: its streams are cut at once, as a
/// crash cuts them.
pub(crate) async fn origin_killed(
    scenario: &Scenario,
    scale: Scale,
    after: Millis,
    max: Duration,
) -> Result<Seen, SetupError> {
    let setup = &scenario.setup;
    let mut origin = start_origin().await?;
    let (_front, front) = front(origin.addr, setup, scale).await?;
    let target = url(front, &setup.target.path(scale))?;
    let headers = headers(setup, scale)?;
    let started = Instant::now();
    let watching = tokio::spawn(async move {
        observe(&Client::default(), &target, &headers, Some(max), |_| {}).await
    });
    tokio::time::sleep(after.at(scale)).await;
    origin.stop();
    let killed_at = started.elapsed();
    let client = watching.await?;
    let mut timeline = Timeline::new(scenario.title(scale));
    client_lane(&mut timeline, "client", &client, Duration::ZERO);
    timeline.lane("origin").events.push(Event {
        at: killed_at,
        mark: Mark::Cut,
        label: "origin killed".to_owned(),
    });
    Ok(Seen {
        client_view: describe(&client),
        origin_view: format!("killed at {:.2}s", killed_at.as_secs_f64()),
        client_end: client.ended_at,
        event: Some(killed_at),
        stream: Some(client),
        timeline,
        ..Seen::default()
    })
}

/// The origin's port refuses connections for a first request; the origin starts on it `after`
/// that request's answer, and a second request follows.
pub(crate) async fn origin_down(
    scenario: &Scenario,
    scale: Scale,
    after: Millis,
    max: Millis,
) -> Result<Seen, SetupError> {
    let setup = &scenario.setup;
    let (socket, origin) = ports::reserved()?;
    let (_front, front) = front(origin, setup, scale).await?;
    let target = url(front, &setup.target.path(scale))?;
    let headers = headers(setup, scale)?;
    let started = Instant::now();
    let down = observe(
        &Client::default(),
        &target,
        &headers,
        Some(max.at(scale)),
        |_| {},
    )
    .await;
    tokio::time::sleep(after.at(scale)).await;
    let _origin = origin_on(socket.listen(64)?, undrained_origin_config())?;
    let back_at = started.elapsed();
    let up = observe(
        &Client::default(),
        &target,
        &headers,
        Some(max.at(scale)),
        |_| {},
    )
    .await;
    let mut timeline = Timeline::new(scenario.title(scale));
    client_lane(&mut timeline, "client", &down, Duration::ZERO);
    client_lane(&mut timeline, "client", &up, back_at);
    timeline.lane("origin").events.push(Event {
        at: back_at,
        mark: Mark::Note,
        label: "origin starts".to_owned(),
    });
    Ok(Seen {
        client_view: format!("{}, then {}", describe(&down), up.verdict.name()),
        origin_view: format!("back at {:.2}s", back_at.as_secs_f64()),
        client_end: back_at + up.ended_at,
        event: Some(back_at),
        stream: Some(down),
        retry: Some(up),
        timeline,
        ..Seen::default()
    })
}
