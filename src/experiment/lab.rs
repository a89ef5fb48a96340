//! The bench a scenario runs on: the real origin and the real proxy in this process, on fresh
//! loopback ports, stopped when dropped (the kit's servers, set up the lab's way); and a reading of
//! what the origin saw, from its metrics.

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use keepalive_kit::servers;
use keepalive_proxy::{ProxyConfig, TimerSet};
use keepalive_server::jobs::Storage;
use keepalive_server::ServerConfig;
use tokio::time::Instant;

use crate::client::Client;

use keepalive_kit::metrics::sample;
pub use keepalive_kit::servers::{Proxy, Running};

/// The origin, with no drain: stopping it cuts its streams at once, as a crash does.
pub fn undrained_origin_config() -> ServerConfig {
    ServerConfig {
        drain_timeout: Duration::ZERO,
        data_dir: Storage::Memory,
        ..ServerConfig::default()
    }
}

/// The origin with [`undrained_origin_config`] on a fresh loopback port.
pub async fn start_origin() -> std::io::Result<Running> {
    servers::origin(undrained_origin_config()).await
}

/// The proxy in front of `upstream` with exactly `timers`, whatever `configure` changes, and no
/// drain: stopping it cuts its streams at once.
pub async fn start_proxy(
    upstream: SocketAddr,
    timers: TimerSet,
    configure: impl FnOnce(&mut ProxyConfig),
) -> std::io::Result<Proxy> {
    servers::proxy(upstream, timers, |config| {
        config.drain_timeout = Duration::ZERO;
        configure(config);
    })
    .await
}

/// The origin's view, read from its `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OriginCounts {
    pub active: f64,
    pub client_gone: f64,
    pub completed: f64,
}

/// The `/metrics` text a server at `addr` (an origin, or a proxy's admin listener) serves now.
pub async fn exposition(addr: SocketAddr) -> Option<String> {
    let url = format!("http://{addr}/metrics").parse().ok()?;
    let (_, body) = tokio::time::timeout(
        Duration::from_secs(2),
        Client::default().fetch(Method::GET, &url, &[]),
    )
    .await
    .ok()?
    .ok()?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// The value of `query` in what `addr` serves on `/metrics` now ([`sample`]'s sum of the matching
/// series); `None` when it does not answer or has no such series.
pub async fn read_metric(addr: SocketAddr, query: &str) -> Option<f64> {
    sample(&exposition(addr).await?, query)
}

pub async fn origin_counts(origin: SocketAddr) -> Option<OriginCounts> {
    let text = exposition(origin).await?;
    Some(OriginCounts {
        active: sample(&text, "origin_streams_active")?,
        client_gone: sample(&text, "origin_streams_ended_total{reason=\"client_gone\"}")?,
        completed: sample(&text, "origin_streams_ended_total{reason=\"completed\"}")?,
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
