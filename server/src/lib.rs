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

mod bounds;
mod config;
mod connection;
mod error;
pub mod jobs;
mod metrics;
mod params;
mod routes;
mod state;
mod stream;

use std::future::Future;
use std::sync::Arc;

use keepalive_common::accept::serve_connections;
use tokio::net::TcpListener;

pub use config::{InvalidSetting, ServerConfig};
pub use metrics::Metrics;
pub use routes::{app, POLLS_INDEX};
pub use state::AppState;
pub use stream::{end_marker_line, BANNER, POEM};

/// Serves the origin on `listener` until `shutdown` resolves, then lets open responses finish for at
/// most `config.drain_timeout` and closes the rest; every connection is closed when this returns.
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
    let data_dir = config.data_dir.clone();
    let state = AppState::new(config).map_err(std::io::Error::other)?;
    let resumed = state.jobs().resume().await.map_err(std::io::Error::other)?;
    tracing::info!(data_dir = %data_dir, epoch = state.jobs().epoch(), resumed, "job store open");
    let config = state.config();
    tracing::info!(
        addr = %listener.local_addr().map_or_else(|err| err.to_string(), |addr| addr.to_string()),
        sleep = %keepalive_common::duration::display(config.sleep),
        heartbeat = %config.heartbeat.map_or_else(|| "off".to_owned(), keepalive_common::duration::display),
        max_sleep = %keepalive_common::duration::display(config.max_sleep),
        "listening; try /polls/streamed?sleep=1&heartbeat=300ms"
    );
    let jobs = state.jobs().clone();
    let router = app(state);
    let builder = Arc::new(connection::builder(limits));
    serve_connections(listener, shutdown, drain_timeout, |tcp, peer, stopping| {
        connection::serve(
            tcp,
            peer,
            router.clone(),
            Arc::clone(&builder),
            limits,
            stopping,
        )
    })
    .await;
    jobs.stop().await;
    Ok(())
}
