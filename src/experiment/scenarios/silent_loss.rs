//! A network that loses the client without a FIN or a RST (a NAT entry expired, a cable pulled): the
//! origin has nothing to notice but its heartbeats going unacknowledged, which only
//! `SERVER_TCP_USER_TIMEOUT` turns into an error. No loopback trick fakes that, so the step makes a
//! network namespace of its own ([`Netns`]) and drops the connection's packets with iptables; the
//! origin's view comes over a connection of its own that the rules leave alone ([`MetricsProbe`]).

use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::{handshake, SendRequest};
use hyper_util::rt::TokioIo;
use keepalive_common::duration::display;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Expect, Family, Millis, Scale, Scenario, Setup, Step, Stream, Target};
use keepalive_kit::metrics::sample;
use keepalive_kit::servers::origin_on;

use crate::experiment::lab::{undrained_origin_config, OriginEnd};
use crate::experiment::netns::Netns;
use crate::experiment::runner::{first_line, raw_get, NotRun, Seen, SetupError};
use crate::experiment::timeline::{Event, Mark, Timeline};

const USER_TIMEOUT: Millis = Millis(1000);

/// A heartbeated stream straight from the origin, its network silenced half a second in.
const fn silenced(user_timeout: Option<Millis>) -> Setup {
    Setup {
        hop: None,
        proxy: None,
        target: Target::Stream(Stream {
            sleep: Some(Millis(10_000)),
            heartbeat: Some(Millis(200)),
            ..Stream::DEFAULT
        }),
        headers: &[],
        step: Step::NetworkSilent {
            after: Millis(500),
            user_timeout,
        },
    }
}

pub const SILENT_LOSS: Scenario = Scenario {
    name: "silent-loss",
    family: Family::SilentLoss,
    expectation: "with SERVER_TCP_USER_TIMEOUT, the origin drops the stream about that long after the network goes silent",
    setup: silenced(Some(USER_TIMEOUT)),
    expect: &[Expect::OriginLetsGo {
        after: USER_TIMEOUT,
    }],
};

pub const SILENT_LOSS_NO_TIMEOUT: Scenario = Scenario {
    name: "silent-loss-no-timeout",
    family: Family::SilentLoss,
    expectation: "without it, the origin goes on streaming to nobody",
    setup: silenced(None),
    expect: &[Expect::OriginStreamsOn],
};

/// The origin's `/metrics`, asked over a connection of its own that the DROP rules leave alone.
struct MetricsProbe {
    sender: SendRequest<Empty<bytes::Bytes>>,
}

/// The probe could not read the origin's metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsProbeError {
    #[error("probe handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("probe: {0}")]
    Request(#[from] http::Error),
    #[error("probe: {0}")]
    Exchange(#[source] hyper::Error),
    #[error("no {0} in /metrics")]
    Missing(&'static str),
}

impl MetricsProbe {
    async fn connect(stream: TcpStream) -> Result<Self, MetricsProbeError> {
        let (sender, connection) = handshake(TokioIo::new(stream))
            .await
            .map_err(MetricsProbeError::Handshake)?;
        tokio::spawn(connection);
        Ok(Self { sender })
    }

    /// The origin's streams still running, and how the others ended.
    async fn streams(&mut self) -> Result<(f64, f64, f64), MetricsProbeError> {
        self.sender
            .ready()
            .await
            .map_err(MetricsProbeError::Exchange)?;
        let request = http::Request::get("/metrics")
            .header(http::header::HOST, "origin")
            .body(Empty::new())?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(MetricsProbeError::Exchange)?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(MetricsProbeError::Exchange)?
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        let value =
            |series: &'static str| sample(&text, series).ok_or(MetricsProbeError::Missing(series));
        Ok((
            value("origin_streams_active")?,
            value("origin_streams_ended_total{reason=\"client_gone\"}")?,
            value("origin_streams_ended_total{reason=\"completed\"}")?,
        ))
    }
}

/// The client reads the first line; `after` that, every packet of its connection is dropped, both
/// ways. The origin, with `user_timeout`, is watched until it drops the stream or well past when it
/// should have.
pub(crate) async fn network_silent(
    scenario: &Scenario,
    scale: Scale,
    after: Millis,
    user_timeout: Option<Millis>,
) -> Result<Seen, NotRun> {
    let user_timeout = user_timeout.map(|timeout| timeout.at(scale));
    let netns = Netns::create().map_err(NotRun::CannotRun)?;
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
    let _origin = origin_on(
        tokio::net::TcpListener::from_std(listener)?,
        keepalive_server::ServerConfig {
            tcp_user_timeout: user_timeout,
            ..undrained_origin_config()
        },
    )?;
    let mut probe = MetricsProbe::connect(TcpStream::from_std(probe)?)
        .await
        .map_err(SetupError::from)?;
    let mut client = TcpStream::from_std(client)?;
    let client_port = client.local_addr()?.port().to_string();

    let started = Instant::now();
    let path = scenario.setup.target.path(scale);
    client.write_all(raw_get(&path).as_bytes()).await?;
    first_line(&mut client).await?;
    let first_line_at = started.elapsed();
    tokio::time::sleep(after.at(scale)).await;
    // On loopback every packet of the client's connection, both ways, passes INPUT with the
    // client's port on one side: dropping those is a network that went silent.
    for rule in [["--dport", &client_port], ["--sport", &client_port]] {
        netns
            .iptables(&["-A", "INPUT", "-p", "tcp", rule[0], rule[1], "-j", "DROP"])
            .map_err(SetupError::from)?;
    }
    let dropped_at = started.elapsed();

    let patience = match user_timeout {
        Some(timeout) => timeout + Millis(2000).at(scale),
        None => Millis(3000).at(scale),
    };
    let deadline = Instant::now() + patience;
    let mut end = None;
    while Instant::now() < deadline {
        let (active, client_gone, completed) = probe.streams().await.map_err(SetupError::from)?;
        if active == 0.0 {
            end = Some(OriginEnd {
                at: started.elapsed(),
                client_gone,
                completed,
            });
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let looked = started.elapsed();

    let mut timeline = Timeline::new(scenario.title(scale));
    timeline.lane("client").events = vec![
        Event {
            at: first_line_at,
            mark: Mark::Chunk,
            label: "first line".to_owned(),
        },
        Event {
            at: dropped_at,
            mark: Mark::Cut,
            label: "network drops everything".to_owned(),
        },
    ];
    let (at, label, origin_view) = match end {
        Some(end) => (
            end.at,
            "origin: heartbeat write failed, stream dropped",
            format!("stream dropped +{}", display(end.at - dropped_at)),
        ),
        None => (
            looked,
            "origin: still streaming to nobody",
            format!("still streaming +{}", display(looked - dropped_at)),
        ),
    };
    timeline.lane("origin").events.push(Event {
        at,
        mark: Mark::Note,
        label: label.to_owned(),
    });
    Ok(Seen {
        client_view: format!("vanished at {:.2}s", dropped_at.as_secs_f64()),
        origin_view,
        client_end: dropped_at,
        event: Some(dropped_at),
        origin: end,
        looked,
        timeline,
        ..Seen::default()
    })
}
