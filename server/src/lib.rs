//! keepalive-server, the streaming origin: the Django tutorial's `/polls/streamed`, byte for byte,
//! plus heartbeats, finite runs, first-byte delays and metrics, so that what a load balancer does to a
//! long response can be seen and measured.
//!
//! [`serve`] takes a bound listener and a shutdown future, as mini-redis's `server::run` does, so the
//! binary stays a few lines and the lab CLI and the tests run the real server in-process on port 0.
//! It uses the accept loop shared with the proxy (rather than `axum::serve`): after the drain timeout
//! the remaining streams are dropped — logged and counted by their guards — before `serve` returns,
//! instead of outliving it, and each connection carries its peer address and `TCP_NODELAY`, and
//! is held to the header timer (see `connection.rs`).
//!
//! On shutdown the origin drains as a deployed one must: its listener stays open until it exits,
//! `/healthz` answers 503 from the first moment (so a balancer's health check takes it out of
//! rotation), and requests that still arrive are served, with `Connection: close`, because a
//! balancer's view lags by up to one health interval and refusing them would turn a deploy into
//! client errors. Streams go on until `SERVER_DRAIN_TIMEOUT`, then are cut mid-body (no last chunk),
//! counted as `drained`; the origin returns as soon as nothing is open.

mod bounds;
mod config;
mod connection;
mod drain;
mod error;
pub mod jobs;
mod metrics;
mod params;
mod routes;
mod state;
mod stream;

use std::future::Future;
use std::sync::Arc;

use keepalive_common::accept::{serve_with_drain, Phase};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{InvalidSetting, ServerConfig};
pub use drain::{DrainState, StreamsDrained};
pub use metrics::{JobMetrics, Metrics};
pub use routes::{app, POLLS_INDEX};
pub use state::AppState;
pub use stream::{end_marker_line, BANNER, POEM};

/// Serves the origin on `listener` until `shutdown` resolves, then drains (see the crate's comment):
/// open responses may finish for at most `config.drain_timeout`, the rest are cut; every connection
/// is closed when this returns.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.local_addr()?;
    // The binary refuses these before it binds; a configuration built in code meets them here.
    config
        .check()
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
    let drain_timeout = config.drain_timeout;
    let limits = connection::Limits {
        header_timeout: config.header_timeout,
        tcp_user_timeout: config.tcp_user_timeout,
    };
    let backend = config.backend();
    let (phase, following) = watch::channel(Phase::Serving);
    let state = AppState::new(config)
        .await
        .map_err(std::io::Error::other)?
        .draining_with(DrainState::following(following));
    let resumed = state.jobs().resume().await.map_err(std::io::Error::other)?;
    tracing::info!(store = %backend, epoch = state.jobs().epoch(), resumed, "job store open");
    let config = state.config();
    tracing::info!(
        addr = %listener.local_addr().map_or_else(|err| err.to_string(), |addr| addr.to_string()),
        sleep = %keepalive_common::duration::display(config.sleep),
        heartbeat = %config.heartbeat.map_or_else(|| "off".to_owned(), keepalive_common::duration::display),
        max_sleep = %keepalive_common::duration::display(config.max_sleep),
        "listening; try /polls/streamed?sleep=1&heartbeat=300ms"
    );
    let jobs = state.jobs().clone();
    let drain_state = state.drain().clone();
    let shutdown = {
        let metrics = state.metrics().clone();
        let jobs = jobs.clone();
        async move {
            shutdown.await;
            metrics.drain_started();
            jobs.retire();
        }
    };
    let router = app(state);
    let builder = Arc::new(connection::builder(limits));
    let connections = serve_with_drain(
        listener,
        shutdown,
        drain_timeout,
        phase,
        |tcp, peer, stopping| {
            connection::serve(
                tcp,
                peer,
                router.clone(),
                Arc::clone(&builder),
                limits,
                stopping,
            )
        },
    )
    .await;
    let streams = drain_state.streams();
    tracing::info!(
        streams_cut = streams.cut,
        streams_finished = streams.finished,
        connections_cut = connections.cut,
        connections_finished = connections.finished,
        "drained: {} streams cut at the drain limit, {} finished by themselves",
        streams.cut,
        streams.finished,
    );
    jobs.stop().await;
    Ok(())
}
