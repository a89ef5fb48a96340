//! keepalive-server, the streaming origin: the Django tutorial's `/polls/streamed`, byte for byte,
//! plus heartbeats, finite runs, first-byte delays and metrics, so that what a load balancer does to a
//! long response can be seen and measured.
//!
//! [`serve`] takes a bound listener and a shutdown future, as mini-redis's `server::run` does, so the
//! binary stays a few lines and the lab CLI and the tests run the real server in-process on port 0.
//! It uses the accept loop shared with the proxy (rather than `axum::serve`): after the drain timeout
//! the remaining streams are dropped — logged and counted by their guards — before `serve` returns,
//! instead of outliving it, and each connection carries its peer address and `TCP_NODELAY`.

mod bounds;
mod config;
mod error;
pub mod jobs;
mod metrics;
mod params;
mod routes;
mod state;
mod stream;

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use keepalive_common::accept::{serve_connections, Stopping};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

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
    let user_timeout = config.tcp_user_timeout;
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
    serve_connections(listener, shutdown, drain_timeout, |tcp, peer, stopping| {
        set_user_timeout(&tcp, user_timeout);
        serve_connection(tcp, peer, router.clone(), stopping)
    })
    .await;
    jobs.stop().await;
    Ok(())
}

/// `SERVER_TCP_USER_TIMEOUT` on one connection ([`ServerConfig::check`] refuses it off Linux).
fn set_user_timeout(stream: &TcpStream, timeout: Option<std::time::Duration>) {
    #[cfg(target_os = "linux")]
    if let Some(timeout) = timeout {
        if let Err(err) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(timeout)) {
            tracing::warn!(%err, "cannot set TCP_USER_TIMEOUT: a silently lost client is noticed late");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (stream, timeout);
}

/// One client connection, HTTP/1.1 or h2c, until it closes or the drain ends it.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    mut stopping: Stopping,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    // hyper's defaults matter here: with HTTP/1 half-close off, a client's FIN while the body is
    // pending ends the connection and drops the body at once, which is how a stream learns its
    // client is gone.
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopping.requested() => {
            // Closes idle keep-alive connections now, lets a response in flight finish.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, %err, "connection ended with an error");
    }
}
