//! The accept loop the origin and the proxy share, shaped like mini-redis's `server::run`: accept until
//! the shutdown future resolves, then ask every connection to finish, wait at most the drain timeout,
//! and drop what is left — an infinite stream never finishes by itself. Connection tasks live in a
//! `JoinSet`, so none outlives the loop.
//!
//! The listener stays open during the drain, until the loop returns: a balancer in front still sends
//! new connections until its next health check sees the server's `/healthz` answer 503, and those
//! are served rather than refused (each connection accepted then is told at once that shutdown has
//! begun, and closes after its response). The drain ends as soon as no connection is left. Callers
//! that want to know where the drain stands watch its [`Phase`].
//!
//! A [`Listener`] may cap how many connections are served at once (mini-redis's `MAX_CONNECTIONS`
//! semaphore). Beyond the cap a connection is still accepted, answered `503` and closed, rather than
//! left in the kernel's backlog: the client learns at once that the server is full instead of
//! waiting for a connect timeout, and the server keeps the descriptors the cap leaves for the
//! connections it serves.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
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

/// A listener, the most connections served from it at once, and the threads they run on.
pub struct Listener {
    tcp: TcpListener,
    max_connections: usize,
    workers: Vec<Worker>,
}

impl Listener {
    /// Serves at most `max_connections` (at least one) connections from `tcp` at once.
    pub fn capped(tcp: TcpListener, max_connections: usize) -> Self {
        Self {
            tcp,
            max_connections: max_connections.clamp(1, Semaphore::MAX_PERMITS),
            workers: Vec::new(),
        }
    }

    /// Runs each connection on the worker holding fewest, rather than on the accepting runtime.
    /// A connection's task then stays on its worker; its socket, registered with the accepting
    /// runtime's reactor, is the connection's to move to its worker's.
    pub fn spread_over(self, workers: Vec<Worker>) -> Self {
        Self { workers, ..self }
    }
}

/// A runtime connections may be spread over (one per thread), and how many it holds now.
#[derive(Clone)]
pub struct Worker {
    handle: Handle,
    connections: Arc<AtomicUsize>,
}

impl Worker {
    pub fn new(handle: Handle) -> Self {
        Self {
            handle,
            connections: Arc::default(),
        }
    }
}

/// A connection's future and what it holds until it ends (its slot under the cap, its count on its
/// worker). An `async` block awaiting the future would do the same, but an `async` block keeps the
/// future it captured apart from the one it awaits: a connection's task would take twice its size,
/// held by every open stream.
struct Guarded<F> {
    future: Pin<Box<F>>,
    _guards: (OwnedSemaphorePermit, Option<Held>),
}

impl<F> Guarded<F> {
    fn new(future: F, guards: (OwnedSemaphorePermit, Option<Held>)) -> Self {
        Self {
            future: Box::pin(future),
            _guards: guards,
        }
    }
}

impl<F: Future<Output = ()>> Future for Guarded<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.future.as_mut().poll(cx)
    }
}

/// One connection counted on its worker until dropped.
struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A bare listener serves as many connections as the process can open.
impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Self {
        Self::capped(tcp, Semaphore::MAX_PERMITS)
    }
}

/// Where an accept loop stands; it only ever moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Before shutdown.
    Serving,
    /// Shutdown has begun: open connections are finishing, for at most the drain timeout.
    Draining,
    /// The drain timeout passed: what is still open is being dropped right now.
    Cutting,
}

/// How a drain ended, counted in connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Connections that closed by themselves after shutdown began.
    pub finished: usize,
    /// Connections still open at the drain timeout, and dropped.
    pub cut: usize,
}

/// Tells a connection that the server is shutting down and wants it to finish gracefully.
#[derive(Debug, Clone)]
pub struct Stopping(watch::Receiver<Phase>);

impl Stopping {
    /// Resolves once shutdown has begun (or the accept loop is gone, which is a stop too).
    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|phase| *phase != Phase::Serving).await;
    }

    /// Whether shutdown has begun, without waiting.
    pub fn has_begun(&self) -> bool {
        *self.0.borrow() != Phase::Serving
    }
}

/// Accepts on `listener` and runs `connection` for each client until `shutdown` resolves, then drains
/// for at most `drain_timeout`, still accepting, publishing each step on `phase` (the caller keeps
/// receivers: a health handler reads it). Returns once every connection is closed.
///
/// Accepted sockets get `TCP_NODELAY`: a one-byte heartbeat must leave at once, not wait for the ACK of
/// the previous segment.
pub async fn serve_with_drain<F, Fut>(
    listener: impl Into<Listener>,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
    phase: watch::Sender<Phase>,
    connection: F,
) -> Drained
where
    F: FnMut(TcpStream, SocketAddr, Stopping) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Listener {
        tcp: listener,
        max_connections,
        workers,
    } = listener.into();
    let mut accept = Accept {
        addr: listener
            .local_addr()
            .map_or_else(|err| err.to_string(), |addr| addr.to_string()),
        slots: Arc::new(Semaphore::new(max_connections)),
        max_connections,
        refused: 0,
        stopping: phase.subscribe(),
        connections: JoinSet::new(),
        workers,
        connection,
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accept.accepted(accepted).await,
            Some(finished) = accept.connections.join_next(), if !accept.connections.is_empty() => report_panic(finished),
        }
    }
    let timeout = display(drain_timeout);
    tracing::info!(
        addr = %accept.addr,
        connections = accept.connections.len(),
        drain = %timeout,
        "draining: still accepting (each new connection closes after its response), letting open responses finish",
    );
    // `send_replace`: unlike `send`, it stores the phase even when no receiver is left.
    phase.send_replace(Phase::Draining);
    let deadline = tokio::time::sleep(drain_timeout);
    tokio::pin!(deadline);
    let mut finished = 0;
    // Ends when no connection is left (at once if none was open) or at the deadline.
    while !accept.connections.is_empty() {
        tokio::select! {
            () = &mut deadline => break,
            Some(done) = accept.connections.join_next() => {
                finished += 1;
                report_panic(done);
            }
            accepted = listener.accept() => accept.accepted(accepted).await,
        }
    }
    let cut = accept.connections.len();
    // The new phase first: whoever accounts for a dropped stream must see that it was cut at the limit.
    phase.send_replace(Phase::Cutting);
    drop(listener);
    if cut > 0 {
        tracing::warn!(
            addr = %accept.addr,
            connections = cut,
            drain = %timeout,
            "drain timeout: cutting the streams still open",
        );
        accept.connections.shutdown().await;
    }
    tracing::info!(addr = %accept.addr, "stopped");
    Drained { finished, cut }
}

/// What the loop needs to take a connection in, before and during the drain alike.
struct Accept<F> {
    addr: String,
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// Connections answered 503 since the cap was last reached; logged once each way, not per refusal.
    refused: u64,
    stopping: watch::Receiver<Phase>,
    connections: JoinSet<()>,
    workers: Vec<Worker>,
    connection: F,
}

impl<F, Fut> Accept<F>
where
    F: FnMut(TcpStream, SocketAddr, Stopping) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    async fn accepted(&mut self, accepted: std::io::Result<(TcpStream, SocketAddr)>) {
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => return accept_failed(err).await,
        };
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            if self.refused == 0 {
                tracing::warn!(addr = %self.addr, max_connections = self.max_connections, "connection limit reached: answering 503 to new connections until one closes");
            }
            self.refused += 1;
            refuse(&tcp, peer);
            return;
        };
        if self.refused > 0 {
            tracing::info!(addr = %self.addr, max_connections = self.max_connections, refused = self.refused, "below the connection limit again");
            self.refused = 0;
        }
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, %err, "cannot set TCP_NODELAY");
        }
        let served = (self.connection)(tcp, peer, Stopping(self.stopping.clone()));
        let least = self
            .workers
            .iter()
            .min_by_key(|worker| worker.connections.load(Ordering::Relaxed));
        match least {
            None => {
                self.connections.spawn(Guarded::new(served, (slot, None)));
            }
            Some(worker) => {
                worker.connections.fetch_add(1, Ordering::Relaxed);
                let held = Held(Arc::clone(&worker.connections));
                self.connections
                    .spawn_on(Guarded::new(served, (slot, Some(held))), &worker.handle);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;
    use tokio::time::Instant;

    use super::*;

    /// A connection that says whether shutdown had begun when it was accepted; one accepted before
    /// it began stays open until it is dropped, as an infinite stream does.
    async fn connection(mut tcp: TcpStream, stopping: Stopping) {
        if stopping.has_begun() {
            let _ = tcp.write_all(b"draining").await;
            return;
        }
        let _ = tcp.write_all(b"serving").await;
        std::future::pending::<()>().await;
    }

    async fn read_all(addr: SocketAddr) -> std::io::Result<String> {
        let mut tcp = TcpStream::connect(addr).await?;
        let mut text = String::new();
        tcp.read_to_string(&mut text).await?;
        Ok(text)
    }

    async fn read_some(tcp: &mut TcpStream) -> String {
        let mut buf = [0u8; 16];
        let n = tcp.read(&mut buf).await.expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn the_drain_serves_new_connections_until_its_limit() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("an address");
        let (stop, stopped) = oneshot::channel::<()>();
        let (phase, mut phases) = watch::channel(Phase::Serving);
        let served = tokio::spawn(serve_with_drain(
            tcp,
            async {
                let _ = stopped.await;
            },
            Duration::from_millis(600),
            phase,
            |tcp, _, stopping| connection(tcp, stopping),
        ));
        // One connection held open through the drain, as an infinite stream is.
        let mut held = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(read_some(&mut held).await, "serving");
        let _ = stop.send(());
        let began = Instant::now();
        phases
            .wait_for(|phase| *phase == Phase::Draining)
            .await
            .expect("the loop publishes the drain");
        let during = read_all(addr).await.ok();
        let drained = served.await.expect("the loop does not panic");
        assert_eq!(*phases.borrow(), Phase::Cutting);
        assert_eq!(during.as_deref(), Some("draining"), "told at once");
        assert_eq!(
            drained,
            Drained {
                finished: 1,
                cut: 1
            }
        );
        assert!(began.elapsed() >= Duration::from_millis(550));
    }

    #[tokio::test]
    async fn connections_run_on_the_worker_holding_fewest() {
        // Two worker threads, each its own runtime, named so that a connection can say where it runs.
        let mut stops = Vec::new();
        let mut workers = Vec::new();
        for name in ["first", "second"] {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            workers.push(Worker::new(runtime.handle().clone()));
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || {
                    let _ = runtime.block_on(stopped);
                })
                .expect("a thread");
            stops.push((stop, thread));
        }
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("an address");
        let (stop, stopped) = oneshot::channel::<()>();
        let (phase, _) = watch::channel(Phase::Serving);
        let served = tokio::spawn(serve_with_drain(
            Listener::from(tcp).spread_over(workers),
            async {
                let _ = stopped.await;
            },
            Duration::from_millis(100),
            phase,
            |mut tcp, _, _| async move {
                let thread = std::thread::current().name().unwrap_or("-").to_owned();
                let _ = tcp.write_all(thread.as_bytes()).await;
                // Held until the client closes, so that it counts on its worker meanwhile.
                let _ = tcp.read(&mut [0u8; 1]).await;
            },
        ));
        let mut open = Vec::new();
        let mut ran_on = Vec::new();
        for _ in 0..4 {
            let mut client = TcpStream::connect(addr).await.expect("connect");
            ran_on.push(read_some(&mut client).await);
            open.push(client);
        }
        assert_eq!(ran_on, ["first", "second", "first", "second"]);
        // One leaves the second worker: the next connection goes there.
        drop(open.remove(1));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(read_some(&mut client).await, "second");
        drop((open, client));
        let _ = stop.send(());
        served.await.expect("the loop does not panic");
        for (stop, thread) in stops {
            let _ = stop.send(());
            thread.join().expect("the worker thread ends");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_with_nothing_open_ends_at_once() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let start = Instant::now();
        let (phase, _) = watch::channel(Phase::Serving);
        let drained = serve_with_drain(
            tcp,
            async {},
            Duration::from_secs(3600),
            phase,
            |tcp, _, stopping| connection(tcp, stopping),
        )
        .await;
        assert_eq!(drained, Drained::default());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
