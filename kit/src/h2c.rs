//! HTTP/2 from the client's side, frame by frame, over cleartext (h2c, prior knowledge) or over TLS
//! (`kit::tls` makes the connection): what an h2 client receives when the proxy cuts a stream. A cut
//! must reach it as RST_STREAM, or as END_STREAM only in the clean style; hyper reports the first as
//! a body error, which [`reset_reason`] and [`assert_reset`] trace back to the h2 error it wraps.
//!
//! Requests are addressed by a [`Base`]: an address alone is `http://` (h2c), `kit::tls::Https` is
//! `https://`, so that `:scheme` says what the connection is.

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{timeout, Instant};

use crate::servers::FIRST_LINE;

/// The RST_STREAM error codes a test looks for (`Reason::INTERNAL_ERROR`: hyper's for a body that
/// failed, the proxy's cut).
pub use h2::Reason;

/// Where requests go: the scheme and authority their URI starts with.
pub trait Base: Copy {
    /// The absolute URI of `target` (a path and query).
    fn uri(self, target: &str) -> String;
}

/// An address alone is h2c's: `http://{addr}`.
impl Base for SocketAddr {
    fn uri(self, target: &str) -> String {
        format!("http://{self}{target}")
    }
}

/// How long a test waits for any one thing an h2 peer owes it.
const WITHIN: Duration = Duration::from_secs(3);

/// One h2c connection to `addr`, driven in the background. When `ping`, the client sends a PING
/// every 100 ms, idle or not. The receiver yields when the connection has ended.
pub async fn connection(
    addr: SocketAddr,
    ping: bool,
) -> (SendRequest<Empty<Bytes>>, oneshot::Receiver<Instant>) {
    let tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|err| panic!("connect to {addr}: {err}"));
    connection_over(tcp, ping).await
}

/// [`connection`] over `io`, a connection already made (a TLS stream whose ALPN said `h2`).
pub async fn connection_over<IO>(
    io: IO,
    ping: bool,
) -> (SendRequest<Empty<Bytes>>, oneshot::Receiver<Instant>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    if ping {
        builder
            .keep_alive_interval(Duration::from_millis(100))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
    }
    let (sender, connection) = builder
        .handshake(TokioIo::new(io))
        .await
        .expect("an HTTP/2 handshake");
    let (closed, on_closed) = oneshot::channel();
    tokio::spawn(async move {
        // How it ended does not matter here, only when.
        let _ = connection.await;
        let _ = closed.send(Instant::now());
    });
    (sender, on_closed)
}

/// One h2c connection to `addr`, without pings, driven in the background.
pub async fn handshake(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    connection(addr, false).await.0
}

/// GETs `target` at `addr` on `sender` with `headers`; asserts an h2 response arrives within 3 s.
pub async fn send(
    sender: &mut SendRequest<Empty<Bytes>>,
    addr: impl Base,
    target: &str,
    headers: &[(&str, &str)],
) -> http::Response<Incoming> {
    let response = try_send(sender, addr, target, headers)
        .await
        .expect("an h2c response");
    assert_eq!(response.version(), Version::HTTP_2);
    response
}

/// [`send`], handing back the stream's error (a reset) in place of the response.
async fn try_send(
    sender: &mut SendRequest<Empty<Bytes>>,
    addr: impl Base,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<http::Response<Incoming>, hyper::Error> {
    let mut request = Request::get(addr.uri(target));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::new()).expect("a request");
    timeout(WITHIN, sender.send_request(request))
        .await
        .expect("response headers or a reset within 3 s")
}

/// GETs a `/polls/streamed` `target`; asserts a 200 whose first DATA frame is the poem's first line,
/// and returns the body after it and when the request went.
pub async fn first_line(
    sender: &mut SendRequest<Empty<Bytes>>,
    addr: impl Base,
    target: &str,
) -> (Incoming, Instant) {
    let sent = Instant::now();
    let response = send(sender, addr, target, &[]).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = timeout(WITHIN, body.frame())
        .await
        .expect("the first line within 3 s")
        .expect("a first frame, not the end")
        .expect("not an error");
    assert_eq!(first.into_data().expect("a data frame"), FIRST_LINE);
    (body, sent)
}

/// What came next on `body`, when nothing more was due: `Ok` a clean end (END_STREAM), `Err` the
/// body's error. Empty DATA frames (an END_STREAM may ride on one) carry nothing.
pub async fn ending(body: &mut Incoming) -> Result<(), hyper::Error> {
    loop {
        let next = timeout(WITHIN, body.frame())
            .await
            .expect("the end reaches the client within 3 s");
        match next {
            None => return Ok(()),
            Some(Err(err)) => return Err(err),
            Some(Ok(frame)) if frame.data_ref().is_some_and(Bytes::is_empty) => {}
            Some(Ok(frame)) => panic!("nothing more was due, yet a frame came: {frame:?}"),
        }
    }
}

/// The h2 error behind `err`, if it is one.
fn h2_error(err: &hyper::Error) -> Option<&h2::Error> {
    let mut cause: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(current) = cause {
        if let Some(h2) = current.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        cause = current.source();
    }
    None
}

/// The error code of the RST_STREAM the peer sent, when `err` is one.
pub fn reset_reason(err: &hyper::Error) -> Option<Reason> {
    h2_error(err)
        .filter(|h2| h2.is_reset() && h2.is_remote())
        .and_then(h2::Error::reason)
}

/// Asserts that `err` is an RST_STREAM the proxy sent.
#[track_caller]
pub fn assert_reset(err: &hyper::Error) {
    match h2_error(err) {
        Some(h2) => assert!(
            h2.is_reset() && h2.is_remote(),
            "the proxy reset the stream (RST_STREAM): {h2:?}"
        ),
        None => panic!("not an HTTP/2 error: {err:?}"),
    }
}

/// GETs `target` with one `header` on `sender`, reads its body until the proxy resets the stream
/// (asserted: never a clean end), and returns how many body bytes came first.
pub async fn bytes_before_reset(
    sender: &mut SendRequest<Empty<Bytes>>,
    addr: impl Base,
    target: &str,
    header: (&str, &str),
) -> usize {
    let mut body = send(sender, addr, target, &[header]).await.into_body();
    read_to_reset(&mut body).await
}

/// [`bytes_before_reset`] for a reset that can come before the response head was written: hyper
/// answers a body error with `send_reset`, and h2 drops the frames still queued for the stream,
/// HEADERS too. Then no byte arrived: 0.
pub async fn bytes_before_early_reset(
    sender: &mut SendRequest<Empty<Bytes>>,
    addr: impl Base,
    target: &str,
    header: (&str, &str),
) -> usize {
    match try_send(sender, addr, target, &[header]).await {
        Ok(response) => read_to_reset(&mut response.into_body()).await,
        Err(err) => {
            assert_reset(&err);
            0
        }
    }
}

/// Reads `body` until the proxy resets the stream (asserted: never a clean end); the bytes before.
async fn read_to_reset(body: &mut Incoming) -> usize {
    let mut received = 0;
    loop {
        match timeout(WITHIN, body.frame())
            .await
            .expect("the reset within 3 s")
        {
            Some(Ok(frame)) => received += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(err)) => {
                assert_reset(&err);
                return received;
            }
            None => panic!("the stream ended cleanly after {received} bytes"),
        }
    }
}
