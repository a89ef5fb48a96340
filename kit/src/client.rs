//! A raw HTTP/1.1 client: bytes over a `TcpStream` (or a TLS stream over one, `kit::tls`), with a
//! clock, reporting everything that arrived, when, and how the connection ended. Raw on purpose: what
//! the tests prove is what a client on the wire sees (a chunked body without its `0\r\n\r\n`, a FIN
//! at the idle limit, a RST), which an HTTP client library would hide behind an error or a retry.
//!
//! Over TLS, an orderly close (close_notify, then FIN) ends as [`Ending::Eof`], and a FIN without
//! close_notify as `Ending::Error(UnexpectedEof)`, which is how a TLS client tells them apart.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::response::RawResponse;
use crate::servers::FIRST_LINE;

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The peer closed cleanly (FIN).
    Eof,
    /// The peer reset the connection (RST).
    Reset,
    /// Another read error.
    Error(io::ErrorKind),
    /// Still open when the deadline passed.
    Open,
}

impl Ending {
    /// Closed by the peer, one way or the other.
    pub fn is_closed(self) -> bool {
        matches!(self, Ending::Eof | Ending::Reset)
    }
}

/// Everything one connection received, how it ended and when (times since the clock started).
#[derive(Debug)]
pub struct Transcript {
    pub bytes: Vec<u8>,
    pub ending: Ending,
    pub ended_at: Duration,
    pub first_byte_at: Option<Duration>,
    pub last_byte_at: Option<Duration>,
}

impl Transcript {
    /// The response at the start of what was received; panics when its head is incomplete.
    pub fn response(&self) -> RawResponse {
        RawResponse::parse(&self.bytes).unwrap_or_else(|| {
            panic!(
                "no complete response head in {:?} (ended {:?} at {:?})",
                String::from_utf8_lossy(&self.bytes),
                self.ending,
                self.ended_at
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

fn ending_of(err: &io::Error) -> Ending {
    match err.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => Ending::Reset,
        kind => Ending::Error(kind),
    }
}

/// Reads from `reader` into `into` until EOF, an error or `deadline`; `clock` is the zero of times.
pub async fn read_to_end_or_deadline<R: AsyncRead + Unpin>(
    reader: &mut R,
    into: &mut Vec<u8>,
    clock: Instant,
    deadline: Instant,
) -> (Ending, Duration) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, reader.read(&mut buf)).await {
            Err(_elapsed) => return (Ending::Open, clock.elapsed()),
            Ok(Ok(0)) => return (Ending::Eof, clock.elapsed()),
            Ok(Ok(n)) => into.extend_from_slice(&buf[..n]),
            Ok(Err(err)) => return (ending_of(&err), clock.elapsed()),
        }
    }
}

/// What a [`RawConn`] speaks over: a TCP stream, or a TLS stream over one.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// One client connection spoken to in raw bytes, with a clock started by the first `send`.
pub struct RawConn {
    stream: Box<dyn Stream>,
    clock: Instant,
    clock_started: bool,
    received: Vec<u8>,
    first_byte_at: Option<Duration>,
    last_byte_at: Option<Duration>,
    ended: Option<(Ending, Duration)>,
}

impl RawConn {
    /// Connects; the clock starts now and restarts at the first `send`.
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|err| panic!("connect to {addr}: {err}"));
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        Self::over(stream)
    }

    /// A connection over `stream`, already connected (a TLS stream after its handshake); the clock
    /// starts now and restarts at the first `send`.
    pub fn over(stream: impl Stream + 'static) -> Self {
        Self {
            stream: Box::new(stream),
            clock: Instant::now(),
            clock_started: false,
            received: Vec::new(),
            first_byte_at: None,
            last_byte_at: None,
            ended: None,
        }
    }

    /// When the clock started: the first `send`, else the connect.
    pub fn clock(&self) -> Instant {
        self.clock
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        if !self.clock_started {
            self.clock_started = true;
            self.clock = Instant::now();
        }
        self.stream
            .write_all(bytes)
            .await
            .expect("write the request to the server");
    }

    pub fn received(&self) -> &[u8] {
        &self.received
    }

    /// How the connection ended so far, if it did.
    pub fn ended(&self) -> Option<(Ending, Duration)> {
        self.ended
    }

    /// Reads until `done(received so far)` holds; false if the connection ended or `within` passed.
    pub async fn read_until(&mut self, within: Duration, done: impl Fn(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + within;
        while !done(&self.received) {
            if self.ended.is_some() || !self.read_once(deadline).await {
                return false;
            }
        }
        true
    }

    /// One read: records the bytes or the ending; false when `deadline` passed first.
    async fn read_once(&mut self, deadline: Instant) -> bool {
        let mut buf = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
            Err(_elapsed) => return false,
            Ok(Ok(0)) => self.ended = Some((Ending::Eof, self.clock.elapsed())),
            Ok(Ok(n)) => {
                let now = self.clock.elapsed();
                self.first_byte_at.get_or_insert(now);
                self.last_byte_at = Some(now);
                self.received.extend_from_slice(&buf[..n]);
            }
            Ok(Err(err)) => self.ended = Some((ending_of(&err), self.clock.elapsed())),
        }
        true
    }

    /// Reads until the peer closes or `within` passes, and reports everything received.
    pub async fn finish(mut self, within: Duration) -> Transcript {
        let deadline = Instant::now() + within;
        let (ending, ended_at) = loop {
            if let Some(ended) = self.ended {
                break ended;
            }
            if !self.read_once(deadline).await {
                break (Ending::Open, self.clock.elapsed());
            }
        };
        Transcript {
            bytes: self.received,
            ending,
            ended_at,
            first_byte_at: self.first_byte_at,
            last_byte_at: self.last_byte_at,
        }
    }
}

/// Connects, sends `request`, and reads until the connection ends or `within` passes.
pub async fn raw_request(addr: SocketAddr, request: &str, within: Duration) -> Transcript {
    let mut conn = RawConn::connect(addr).await;
    conn.send(request.as_bytes()).await;
    conn.finish(within).await
}

/// `GET target HTTP/1.1` with a Host and whatever extra header lines are given (each ending CRLF).
pub fn get(target: &str, extra_headers: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: keepalive.test\r\n{extra_headers}\r\n")
}

/// Sends `GET target` (a `/polls/streamed` stream) on a new connection to `addr`, and returns the
/// connection once the stream's first line has arrived (3 s at most, asserted).
pub async fn open_stream(addr: SocketAddr, target: &str) -> RawConn {
    open_stream_on(RawConn::connect(addr).await, target).await
}

/// [`open_stream`] on a connection already made (over TLS, say).
pub async fn open_stream_on(mut conn: RawConn, target: &str) -> RawConn {
    conn.send(get(target, "").as_bytes()).await;
    let first_line = FIRST_LINE.as_bytes();
    assert!(
        conn.read_until(Duration::from_secs(3), |bytes| {
            bytes.windows(first_line.len()).any(|w| w == first_line)
        })
        .await,
        "the first line arrives: {:?}",
        String::from_utf8_lossy(conn.received())
    );
    conn
}
