//! The bench a scenario runs on: the real origin and the real proxy in this process, on fresh
//! loopback ports, stopped when dropped; and a reading of what the origin saw, from its metrics.

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use keepalive_proxy::{Metrics, ProxyConfig, TimerSet};
use keepalive_server::jobs::Storage;
use keepalive_server::ServerConfig;
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::watch::fetch;

/// A server task that stops when this is dropped or killed.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<DropGuard>,
}

impl Running {
    /// Stops the server now.
    pub fn stop(&mut self) {
        self.stop.take();
    }
}

/// The origin, with no drain: stopping it cuts its streams at once, as a crash does.
pub fn origin_config() -> ServerConfig {
    ServerConfig {
        drain_timeout: Duration::ZERO,
        data_dir: Storage::Memory,
        ..ServerConfig::default()
    }
}

pub async fn start_origin() -> std::io::Result<Running> {
    serve_origin(TcpListener::bind("127.0.0.1:0").await?, origin_config())
}

/// The origin with `config` on a listener the scenario prepared (to bring it back on the same
/// port, or in a network namespace).
pub fn serve_origin(listener: TcpListener, config: ServerConfig) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    tokio::spawn(keepalive_server::serve(
        listener,
        config,
        stop.clone().cancelled_owned(),
    ));
    Ok(Running {
        addr,
        stop: Some(stop.drop_guard()),
    })
}

/// A port that refuses connections until [`TcpSocket::listen`] is called on the returned socket.
pub fn reserved_port() -> std::io::Result<(TcpSocket, SocketAddr)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = socket.local_addr()?;
    Ok((socket, addr))
}

/// The proxy in front of `upstream` with exactly `timers`, then whatever `configure` changes.
pub async fn start_proxy(
    upstream: SocketAddr,
    timers: TimerSet,
    configure: impl FnOnce(&mut ProxyConfig),
) -> std::io::Result<Running> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut config = ProxyConfig {
        addr,
        upstream: format!("http://{upstream}")
            .parse()
            .map_err(|err: String| std::io::Error::other(err))?,
        drain_timeout: Duration::ZERO,
        ..ProxyConfig::default()
    }
    .with_timers(timers);
    configure(&mut config);
    let stop = CancellationToken::new();
    tokio::spawn(keepalive_proxy::serve(
        listener,
        config,
        Metrics::new(),
        stop.clone().cancelled_owned(),
    ));
    Ok(Running {
        addr,
        stop: Some(stop.drop_guard()),
    })
}

/// The origin's view, read from its `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OriginCounts {
    pub active: f64,
    pub client_gone: f64,
    pub completed: f64,
}

pub async fn origin_counts(origin: SocketAddr) -> Option<OriginCounts> {
    let url = format!("http://{origin}/metrics").parse().ok()?;
    let (_, body) = tokio::time::timeout(Duration::from_secs(2), fetch(Method::GET, &url))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&body);
    Some(OriginCounts {
        active: metric_value(&text, "origin_streams_active")?,
        client_gone: metric_value(&text, "origin_streams_ended_total{reason=\"client_gone\"}")?,
        completed: metric_value(&text, "origin_streams_ended_total{reason=\"completed\"}")?,
    })
}

/// The value of one series (`name` or `name{labels}`, written as the exposition writes it).
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// How the origin's streams ended after a point in the run: polled until none is active.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OriginEnd {
    /// When the last stream ended, since the scenario's start (to within the 10 ms poll).
    pub at: Duration,
    pub client_gone: f64,
    pub completed: f64,
}

/// Waits (up to `within`) until the origin has no active stream, and says how its streams ended
/// compared with `before`; `None` if some stream is still running.
pub async fn origin_end(
    origin: SocketAddr,
    before: OriginCounts,
    started: Instant,
    within: Duration,
) -> Option<OriginEnd> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(counts) = origin_counts(origin).await {
            if counts.active == 0.0 {
                return Some(OriginEnd {
                    at: started.elapsed(),
                    client_gone: counts.client_gone - before.client_gone,
                    completed: counts.completed - before.completed,
                });
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
