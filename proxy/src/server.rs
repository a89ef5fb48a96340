//! The client side: the accept loop, one task per connection (run on a worker thread), HTTP/1.1 or
//! HTTP/2 as the client speaks (found by ALPN or by its first bytes: [`Builders`]), over TLS when
//! the proxy terminates it, the `header`/`keepalive`
//! watchdog, the `send` timer, and a bounded graceful shutdown.
//!
//! The accept loop, its connection cap and the bounded drain are shared with the upstream
//! (`keepalive_common::accept`); what is the proxy's own is the per-connection work: the client's
//! address and in-flight guard on every request, the watchdog that closes connections idle past the
//! header or keep-alive limit, and the timer that closes those whose writes stalled past the send
//! limit. Shutdown marks the proxy as draining before the listener closes, so that `/healthz` turns
//! `503` at once.
//!
//! TLS wraps the connection's IO wrappers from above (`tls` says why), and its handshake runs here,
//! in the connection's task, under the same watchdog as the request head that follows it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::TryFutureExt;
use http::header::CONNECTION;
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use keepalive_common::accept::{serve_with_drain, Listener, Phase, Stopping};
use keepalive_common::duration::display;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::either::Either;
use tower::{Service, ServiceExt};

use crate::control::settings::Live;
use crate::control::streams::Hangup;
use crate::faults::reset::{ResetIo, ResetSwitch};
use crate::forward::{ClientAddr, ClientTls};
use crate::metrics::Metrics;
use crate::timeouts::client_conn::{watchdog, Activity, ActivityIo};
use crate::timeouts::send::{stalled, SendBody, SendIo, Stall};
use crate::timeouts::{Timer, TimerExpired};
use crate::tls::close_notify::ClosingTls;
use crate::tls::termination::Termination;

/// Serves clients from `listener` with `service` until `shutdown` resolves, then drains.
pub async fn run<S, B>(
    listener: Listener,
    service: S,
    tls: Option<Termination>,
    live: Live,
    drain_timeout: Duration,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The watchdog enforces the header timer (see timeouts/client_conn.rs); hyper's own would also
    // close idle keep-alive connections at the header limit.
    builder.http1().header_read_timeout(None);
    let mut http1 = http1::Builder::new();
    http1.header_read_timeout(None);
    let serving = Serving {
        builders: Arc::new(Builders {
            http1,
            http2: builder.clone().http2_only(),
            either: builder,
        }),
        tls,
        live,
    };
    let shutdown = {
        let metrics = metrics.clone();
        async move {
            shutdown.await;
            metrics.drain_started();
        }
    };
    // Nothing here reads the phase: the connections get it through `Stopping`, `/healthz` through
    // the metrics' draining flag.
    let (phase, _) = tokio::sync::watch::channel(Phase::Serving);
    serve_with_drain(
        listener,
        shutdown,
        drain_timeout,
        phase,
        |tcp, peer, stopping| {
            connection(
                tcp,
                peer,
                serving.clone(),
                service.clone(),
                metrics.clone(),
                stopping,
            )
        },
    )
    .await;
}

/// What every connection is served with: made once, shared by all.
#[derive(Clone)]
struct Serving {
    builders: Arc<Builders>,
    tls: Option<Termination>,
    /// Where each connection reads its `header`, `keepalive` and `send` limits when accepted.
    live: Live,
}

/// One protocol builder for each way a connection is known to speak: HTTP/1.1, HTTP/2, or not yet
/// known. The last reads the connection's first bytes itself and keeps them in a buffer of its own,
/// in front of hyper's: hyper's read buffer, grown to take them too, is then twice its 8 KiB for
/// as long as the connection lasts. So the protocol is found first where it can be without reading:
/// by ALPN over TLS, by peeking at the bytes otherwise. HTTP/1.1 is served by hyper's own builder,
/// whose connection is half the size of hyper-util's, which keeps room for HTTP/2 in every one.
struct Builders {
    http1: http1::Builder,
    http2: auto::Builder<TokioExecutor>,
    either: auto::Builder<TokioExecutor>,
}

/// The builder a connection is served with.
enum Protocol<'a> {
    Http1(&'a http1::Builder),
    Auto(&'a auto::Builder<TokioExecutor>),
}

/// A connection being served, boxed at its own size (see [`Builders`]).
enum Served<H, A> {
    Http1(Pin<Box<H>>),
    Auto(Pin<Box<A>>),
}

impl<H, A> Future for Served<H, A>
where
    H: Future<Output = hyper::Result<()>>,
    A: Future<Output = Result<(), crate::BoxError>>,
{
    type Output = Result<(), crate::BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Self::Http1(conn) => conn.as_mut().poll(cx).map_err(Into::into),
            Self::Auto(conn) => conn.as_mut().poll(cx),
        }
    }
}

/// The connection preface of HTTP/2 with prior knowledge (RFC 9113 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Builders {
    /// The builder for a TLS connection: what its ALPN named (RFC 9113 3.3), or, with none named,
    /// the one that reads the first bytes (a client may speak HTTP/2 over TLS by prior knowledge).
    fn by_alpn(&self, alpn: Option<&[u8]>) -> Protocol<'_> {
        match alpn {
            Some(b"h2") => Protocol::Auto(&self.http2),
            Some(_) => Protocol::Http1(&self.http1),
            None => Protocol::Auto(&self.either),
        }
    }

    /// The builder for a plain connection whose first bytes are `peeked`: HTTP/2 if they are its
    /// preface, HTTP/1.1 as soon as they cannot be; the one that reads for itself while they are
    /// only the preface's start (a client that sent part of it and paused).
    fn by_preface(&self, peeked: &[u8]) -> Protocol<'_> {
        let common = peeked.len().min(PREFACE.len());
        if peeked[..common] != PREFACE[..common] {
            Protocol::Http1(&self.http1)
        } else if common == PREFACE.len() {
            Protocol::Auto(&self.http2)
        } else {
            Protocol::Auto(&self.either)
        }
    }
}

async fn connection<S, B>(
    tcp: TcpStream,
    peer: SocketAddr,
    serving: Serving,
    service: S,
    metrics: Metrics,
    mut stopping: Stopping,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::BoxError>,
{
    let Serving {
        builders,
        tls,
        live,
    } = serving;
    // Accepted on the accept loop's runtime, the socket is registered with its reactor: moved to
    // the reactor of the worker this runs on, or each of its readiness events would cross threads.
    let tcp = match tcp.into_std().and_then(TcpStream::from_std) {
        Ok(tcp) => tcp,
        Err(err) => {
            tracing::warn!(%peer, %err, "cannot move the client connection to its worker: closing it");
            return;
        }
    };
    let limits = live.now().client_conn_limits();
    let activity = Activity::new();
    let stall = Stall::new();
    let cut = ConnectionCut::default();
    // A plain connection's first bytes say which protocol it speaks, read without taking them
    // (see `Builders`); the header timer runs meanwhile, as it does for a TLS handshake.
    let mut first = [0u8; PREFACE.len()];
    let peeked = match tls {
        Some(_) => 0,
        None => tokio::select! {
            peeked = tcp.peek(&mut first) => match peeked {
                Ok(0) => return,
                Ok(peeked) => peeked,
                Err(err) => {
                    tracing::debug!(%peer, %err, "client connection failed before its first byte");
                    return;
                }
            },
            expired = watchdog(&activity, limits) => return closed(expired, peer, &metrics, &cut),
        },
    };
    let reset = ResetSwitch::default();
    let io = SendIo::new(
        ActivityIo::new(ResetIo::new(tcp, reset.clone()), Arc::clone(&activity)),
        Arc::clone(&stall),
    );
    // Notified when the control API cuts a stream whose body hyper does not poll (see `Hangup`).
    let hang_up = Arc::new(Notify::new());
    let io = match tls {
        None => Either::Left(io),
        // The watchdog runs from accept: a handshake that never ends is closed at the header limit.
        Some(tls) => tokio::select! {
            handshake = Box::pin(tls.accept(io)) => match handshake {
                Ok(stream) => {
                    let stream = ClosingTls::new(stream, reset.clone());
                    tracing::debug!(%peer, alpn = %String::from_utf8_lossy(stream.alpn().unwrap_or(b"-")), "TLS handshake done");
                    // Boxed: a TLS session is large, and inline it would make every plain
                    // connection, which holds the same `Either`, as large.
                    Either::Right(Box::new(stream))
                }
                Err(err) => return handshake_failed(&err, peer, &metrics),
            },
            expired = watchdog(&activity, limits) => return closed(expired, peer, &metrics, &cut),
            expired = stalled(&stall, limits.send) => return closed(expired, peer, &metrics, &cut),
        },
    };
    let builder = match &io {
        Either::Left(_) => builders.by_preface(&first[..peeked]),
        Either::Right(tls) => builders.by_alpn(tls.alpn()),
    };
    let over_tls = matches!(io, Either::Right(_));
    let io = TokioIo::new(io);
    let (requested, first_request) = tokio::sync::watch::channel(false);
    let service = {
        let (activity, stall, cut) = (Arc::clone(&activity), Arc::clone(&stall), cut.clone());
        let hang_up = Arc::clone(&hang_up);
        let stopping = stopping.clone();
        let client = ClientAddr::new(peer);
        // hyper's `service_fn` is called by reference: tower's would be cloned, with everything it
        // holds, for every request.
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            // hyper calls the service once a head is complete: the connection has sent a request.
            requested.send_replace(true);
            let close = stopping.has_begun() && request.version() == Version::HTTP_11;
            request.extensions_mut().insert(client.clone());
            if over_tls {
                request.extensions_mut().insert(ClientTls);
            }
            request.extensions_mut().insert(cut.clone());
            request.extensions_mut().insert(reset.clone());
            // An HTTP/2 connection carries other streams: only HTTP/1 may be hung up on.
            if request.version() < Version::HTTP_2 {
                request
                    .extensions_mut()
                    .insert(Hangup::new(Arc::clone(&hang_up), reset.clone()));
            }
            let in_flight = activity.request_started(request.version());
            request.extensions_mut().insert(in_flight);
            // An HTTP/2 stream stalls on flow control, out of the socket's sight (timeouts/send.rs).
            // Watched only when the timer is on: nothing else would forget the closed streams.
            let stall = (request.version() == Version::HTTP_2 && limits.send.is_some())
                .then(|| Arc::clone(&stall));
            // A combinator, not an `async` block: hyper keeps room for this future for as long as
            // the connection lasts, and an `async` block would hold the response future twice.
            service
                .clone()
                .oneshot(request)
                .map_ok(move |mut response| {
                    if close {
                        response
                            .headers_mut()
                            .insert(CONNECTION, HeaderValue::from_static("close"));
                    }
                    response.map(|body| match stall {
                        Some(stall) => stall.watch(body),
                        None => SendBody::unwatched(body),
                    })
                })
        })
    };
    let mut conn = match builder {
        Protocol::Http1(builder) => Served::Http1(Box::pin(builder.serve_connection(io, service))),
        Protocol::Auto(builder) => Served::Auto(Box::pin(builder.serve_connection(io, service))),
    };
    let stop_once_requested = async {
        stopping.requested().await;
        // The sender lives in the service, as long as the connection: an error cannot happen first.
        let _ = first_request.clone().wait_for(|requested| *requested).await;
    };
    tokio::pin!(stop_once_requested);
    let mut draining = false;
    loop {
        tokio::select! {
            result = &mut conn => {
                if let Err(err) = result {
                    tracing::debug!(%peer, %err, "client connection ended with an error");
                }
                return;
            }
            expired = watchdog(&activity, limits) => return closed(expired, peer, &metrics, &cut),
            // Dropping the connection drops its exchanges, whose upstream connections close with them.
            expired = stalled(&stall, limits.send) => return closed(expired, peer, &metrics, &cut),
            () = hang_up.notified() => {
                tracing::debug!(%peer, "closing the client connection: the control API cut its stream, whose writes were stalled");
                return;
            }
            () = &mut stop_once_requested, if !draining => {
                draining = true;
                match &mut conn {
                    Served::Http1(conn) => conn.as_mut().graceful_shutdown(),
                    Served::Auto(conn) => conn.as_mut().graceful_shutdown(),
                }
            }
        }
    }
}

fn handshake_failed(err: &std::io::Error, peer: SocketAddr, metrics: &Metrics) {
    // A connection closed before its handshake was done, most often before it said anything (a
    // port probe, a TCP health check), is no news, and counting it would bury the failures an
    // operator looks for: a client that refused the certificate, or spoke plain HTTP to this port.
    if err.kind() == std::io::ErrorKind::UnexpectedEof {
        tracing::debug!(%peer, %err, "client closed during the TLS handshake");
        return;
    }
    metrics.client_error("tls_handshake");
    tracing::info!(%peer, %err, "TLS handshake failed: closing the client connection");
}

fn closed(expired: TimerExpired, peer: SocketAddr, metrics: &Metrics, cut: &ConnectionCut) {
    cut.closed_by(expired.timer);
    metrics.timer_fired(expired.timer);
    let limit = display(expired.limit);
    tracing::info!(
        timer = %expired.timer,
        %limit,
        %peer,
        "{} timer fired: closing the client connection",
        expired.timer,
    );
}

/// Set when the proxy itself closes a client connection on one of its timers, so that the exchanges
/// dropped with it are not also reported as clients that went away: the timer was counted and
/// logged, and their termination names it.
#[derive(Clone, Default)]
pub(crate) struct ConnectionCut(Arc<AtomicU8>);

impl ConnectionCut {
    fn closed_by(&self, timer: Timer) {
        // Zero stays "not closed": the timer is stored as its place in `Timer::ALL`, plus one.
        let place = Timer::ALL
            .iter()
            .position(|each| *each == timer)
            .unwrap_or(0)
            + 1;
        self.0
            .store(u8::try_from(place).unwrap_or(u8::MAX), Ordering::Release);
    }

    /// The timer the proxy closed the connection on, if it did.
    pub(crate) fn timer(&self) -> Option<Timer> {
        let stored = self.0.load(Ordering::Acquire);
        Timer::ALL.get(usize::from(stored).checked_sub(1)?).copied()
    }
}
