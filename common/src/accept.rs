//! The accept loop the origin and the proxy share, shaped like mini-redis's `server::run`: accept until
//! the shutdown future resolves, then ask every connection to finish, wait at most the drain timeout,
//! and drop what is left — an infinite stream never finishes by itself. Connection tasks live in a
//! `JoinSet`, so none outlives the loop.
//!
//! A [`Listener`] may cap how many connections are served at once (mini-redis's `MAX_CONNECTIONS`
//! semaphore). Beyond the cap a connection is still accepted, answered `503` and closed, rather than
//! left in the kernel's backlog: the client learns at once that the server is full instead of
//! waiting for a connect timeout, and the server keeps the descriptors the cap leaves for the
//! connections it serves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinError, JoinSet};

use crate::duration::display;

/// After a failed accept that is not about one peer (out of file descriptors, typically), wait this
/// long before trying again instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a connection beyond the cap receives before it is closed. HTTP/1.1, which both servers
/// speak: an h2c client sees a malformed preface, a failure it reports at once all the same.
const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    content-type: text/plain; charset=utf-8\r\n\
    content-length: 45\r\n\
    connection: close\r\n\
    retry-after: 1\r\n\
    \r\n\
    503: at the connection limit, try again soon\n";

/// A listener and the most connections served from it at once.
pub struct Listener {
    tcp: TcpListener,
    max_connections: usize,
}

impl Listener {
    /// Serves at most `max_connections` (at least one) connections from `tcp` at once.
    pub fn capped(tcp: TcpListener, max_connections: usize) -> Self {
        Self {
            tcp,
            max_connections: max_connections.clamp(1, Semaphore::MAX_PERMITS),
        }
    }
}

/// A bare listener serves as many connections as the process can open.
impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Self {
        Self::capped(tcp, Semaphore::MAX_PERMITS)
    }
}

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
    listener: impl Into<Listener>,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
    mut connection: F,
) where
    F: FnMut(TcpStream, SocketAddr, Stopping) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Listener {
        tcp: listener,
        max_connections,
    } = listener.into();
    let addr = listener
        .local_addr()
        .map_or_else(|err| err.to_string(), |addr| addr.to_string());
    let (stop, stopping) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(max_connections));
    // Connections answered 503 since the cap was last reached; logged once each way, not per refusal.
    let mut refused: u64 = 0;
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        if refused == 0 {
                            tracing::warn!(%addr, max_connections, "connection limit reached: answering 503 to new connections until one closes");
                        }
                        refused += 1;
                        refuse(&tcp, peer);
                        continue;
                    };
                    if refused > 0 {
                        tracing::info!(%addr, max_connections, refused, "below the connection limit again");
                        refused = 0;
                    }
                    if let Err(err) = tcp.set_nodelay(true) {
                        tracing::debug!(%peer, %err, "cannot set TCP_NODELAY");
                    }
                    let served = connection(tcp, peer, Stopping(stopping.clone()));
                    connections.spawn(async move {
                        served.await;
                        drop(slot);
                    });
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

/// Answers a connection beyond the cap and closes it, without waiting for anything: what the client
/// already sent is read and dropped first, as closing a socket with unread data resets it, and a
/// reset could destroy the 503 before the client reads it. A fresh socket's send buffer is empty, so
/// the answer fits without blocking. The calls go to the socket itself: tokio's `try_read` and
/// `try_write` refuse to try on a socket the reactor has not yet seen ready, which a socket accepted
/// a moment ago is not.
fn refuse(tcp: &TcpStream, peer: SocketAddr) {
    use std::io::{Read, Write};
    let socket = socket2::SockRef::from(tcp);
    let mut socket: &socket2::Socket = &socket;
    let mut discard = [0u8; 4096];
    while matches!(socket.read(&mut discard), Ok(n) if n > 0) {}
    if let Err(err) = socket.write_all(FULL) {
        tracing::debug!(%peer, %err, "cannot answer a connection beyond the limit");
    }
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
