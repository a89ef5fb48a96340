//! The accept loop the origin and the proxy share, shaped like mini-redis's `server::run`: accept until
//! the shutdown future resolves, then ask every connection to finish, wait at most the drain timeout,
//! and drop what is left — an infinite stream never finishes by itself. Connection tasks live in a
//! `JoinSet`, so none outlives the loop.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};

use crate::duration::display;

/// After a failed accept that is not about one peer (out of file descriptors, typically), wait this
/// long before trying again instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Tells a connection that the server is shutting down and wants it to finish gracefully.
pub struct Stopping(watch::Receiver<bool>);

impl Stopping {
    /// Resolves once shutdown has begun (or the accept loop is gone, which is a stop too).
    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Accepts on `listener` and runs `connection` for each client until `shutdown` resolves, then drains.
///
/// Accepted sockets get `TCP_NODELAY`: a one-byte heartbeat must leave at once, not wait for the ACK of
/// the previous segment.
pub async fn serve_connections<F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
    mut connection: F,
) where
    F: FnMut(TcpStream, SocketAddr, Stopping) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = listener
        .local_addr()
        .map_or_else(|err| err.to_string(), |addr| addr.to_string());
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    if let Err(err) = tcp.set_nodelay(true) {
                        tracing::debug!(%peer, %err, "cannot set TCP_NODELAY");
                    }
                    connections.spawn(connection(tcp, peer, Stopping(stopping.clone())));
                }
                Err(err) => accept_failed(err).await,
            },
            Some(finished) = connections.join_next(), if !connections.is_empty() => report_panic(finished),
        }
    }
    drop(listener);
    let drain = display(drain_timeout);
    tracing::info!(
        %addr,
        connections = connections.len(),
        %drain,
        "shutting down: no new connections, letting open responses finish",
    );
    // Every receiver may already be gone (no connection open): nothing to tell then.
    let _ = stop.send(true);
    let drained = tokio::time::timeout(drain_timeout, async {
        while let Some(finished) = connections.join_next().await {
            report_panic(finished);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            %addr,
            connections = connections.len(),
            %drain,
            "drain timeout: cutting the streams still open",
        );
        connections.shutdown().await;
    }
    tracing::info!(%addr, "stopped");
}

async fn accept_failed(err: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    // A peer that reset before we accepted it is routine; anything else is about this process.
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        tracing::debug!(%err, "accept failed");
        return;
    }
    tracing::warn!(%err, "accept failed; retrying shortly");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

fn report_panic(finished: Result<(), JoinError>) {
    if let Err(err) = finished {
        if err.is_panic() {
            tracing::error!(%err, "a connection task panicked");
        }
    }
}
