//! One client connection, HTTP/1.1 or h2c, and the two limits it is held to: the header timer
//! (`SERVER_HEADER_TIMEOUT`, nginx's `client_header_timeout`), so that a slowloris client cannot
//! hold the origin's connections, and `SERVER_TCP_USER_TIMEOUT`.
//!
//! The header timer takes two pieces. hyper's own `header_read_timeout` (which needs a timer on the
//! builder, or is silently off) bounds every HTTP/1 request head once the connection is known to be
//! HTTP/1; its clock starts when hyper waits for a head, so it also closes a kept-alive connection
//! left idle that long. But hyper-util's version detection, which reads the first bytes before
//! either protocol starts, has no timeout at all (hyper issue 3756): a client that connects and
//! sends nothing, or a byte a second, is kept forever. So the first request must arrive within the
//! timer from accept, or the connection is dropped; that also bounds an h2c client that never sends
//! a request.
//!
//! During the drain the origin still accepts (see `lib.rs`), so a connection may start after shutdown
//! has begun. hyper's graceful shutdown closes a connection that is between requests at once, which
//! for a connection that has not yet sent its first request would drop it unanswered: so graceful
//! shutdown waits for the first request, and every response during the drain says
//! `Connection: close` (HTTP/1), so that the client learns why the connection is not kept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Version};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use keepalive_common::accept::Stopping;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower::ServiceExt;

/// What every connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Option<Duration>,
    pub tcp_user_timeout: Option<Duration>,
}

/// The protocol builder every connection shares, with hyper's HTTP/1 header timer set.
pub fn builder(limits: Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's defaults matter here: with HTTP/1 half-close off, a client's FIN while the body is
    // pending ends the connection and drops the body at once, which is how a stream learns its
    // client is gone.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    // A balancer that speaks HTTP/2 to its origins carries all its clients' streams on a few
    // connections: hyper's default of 200 streams per connection would queue the 201st stream
    // behind the others, which could last for hours.
    builder
        .http2()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    builder
}

/// Streams one HTTP/2 connection may carry at once (a proxy's, multiplexing its clients).
const MAX_STREAMS_PER_CONNECTION: u32 = 100_000;

/// Serves one connection until it closes, the drain ends it, or its first request head is late.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Limits,
    mut stopping: Stopping,
) {
    set_user_timeout(&stream, limits.tcp_user_timeout);
    let (requested, first_request) = watch::channel(false);
    let service = {
        let stopping = stopping.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            // hyper calls the service once a head is complete: the connection has sent a request.
            requested.send_replace(true);
            // HTTP/2 has no Connection header (its GOAWAY says it); HTTP/1.0 closes by default anyway.
            let close = stopping.has_begun() && request.version() == Version::HTTP_11;
            request.extensions_mut().insert(ConnectInfo(peer));
            let response = router.clone().oneshot(request);
            async move {
                let mut response = response.await?;
                if close {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let first_head_late = async {
        match limits.header_timeout {
            Some(timeout) => {
                tokio::time::sleep(timeout).await;
                if *first_request.borrow() {
                    // hyper's own timer bounds the heads that follow.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    let stop_once_requested = async {
        stopping.requested().await;
        // The sender lives in the service, as long as the connection: an error cannot happen first.
        let _ = first_request.clone().wait_for(|requested| *requested).await;
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = first_head_late => {
            tracing::debug!(%peer, "no request head within SERVER_HEADER_TIMEOUT: connection dropped");
            return;
        }
        () = stop_once_requested => {
            // Closes idle keep-alive connections now, lets a response in flight finish.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, %err, "connection ended with an error");
    }
}

/// `SERVER_TCP_USER_TIMEOUT` on one connection ([`crate::ServerConfig::check`] refuses it off Linux).
fn set_user_timeout(stream: &TcpStream, timeout: Option<Duration>) {
    #[cfg(target_os = "linux")]
    if let Some(timeout) = timeout {
        if let Err(err) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(timeout)) {
            tracing::warn!(%err, "cannot set TCP_USER_TIMEOUT: a silently lost client is noticed late");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (stream, timeout);
}
