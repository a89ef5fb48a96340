//! What every end-to-end test needs: the real origin and the real proxy on `127.0.0.1:0` in the test's
//! own runtime, a raw HTTP/1.1 client that reports how a connection ended and when, a reader for the
//! Prometheus text both servers expose, and a poll helper.
//!
//! The raw client speaks bytes over `TcpStream` on purpose: what these tests prove is what a client on
//! the wire sees (a chunked body without its `0\r\n\r\n`, a FIN at the idle limit), which an HTTP
//! client library would hide behind an error or a retry.

// Each test file compiles this module on its own and uses a different part of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use keepalive_proxy::{admin, Metrics, ProxyConfig, TimerSet};
use keepalive_server::jobs::Storage;
use keepalive_server::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How much earlier than its limit a timer may be seen to fire (clock granularity).
pub const EARLY: Duration = Duration::from_millis(50);
/// How much later than its limit a timer may be seen to fire on a loaded 2-core machine.
pub const LATE: Duration = Duration::from_millis(700);

pub const fn ms(millis: u64) -> Option<Duration> {
    Some(Duration::from_millis(millis))
}

/// A timer switched off.
pub const OFF: Option<Duration> = None;

/// Asserts that `observed` is within [`expected` - EARLY, `expected` + LATE].
#[track_caller]
pub fn assert_around(observed: Duration, expected: Duration, what: &str) {
    let low = expected.saturating_sub(EARLY);
    let high = expected + LATE;
    assert!(
        observed >= low && observed <= high,
        "{what}: observed at {observed:?}, expected at {expected:?} (allowed {low:?}..={high:?})"
    );
}

// ---------------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------------

/// A server running in the test's runtime; dropping this shuts it down.
pub struct Running {
    pub addr: SocketAddr,
    _stop: DropGuard,
}

impl Running {
    /// A server on `addr` that stops when `stop` is cancelled, which dropping this does.
    pub fn new(addr: SocketAddr, stop: CancellationToken) -> Self {
        Self {
            addr,
            _stop: stop.drop_guard(),
        }
    }
}

/// The origin's configuration for tests: documented defaults, but a short drain so that shutting a
/// test's origin down never waits for its infinite streams.
pub fn origin_config() -> ServerConfig {
    ServerConfig {
        drain_timeout: Duration::from_millis(100),
        data_dir: Storage::Memory,
        ..ServerConfig::default()
    }
}

/// Starts keepalive-server with `config` on a fresh port.
pub async fn start_origin(config: ServerConfig) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the origin on 127.0.0.1:0");
    let addr = listener.local_addr().expect("origin's local address");
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        if let Err(err) = keepalive_server::serve(listener, config, shutdown).await {
            panic!("origin failed: {err}");
        }
    });
    Running {
        addr,
        _stop: stop.drop_guard(),
    }
}

/// A proxy and its admin listener, shut down together on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    _stop: DropGuard,
}

/// Starts keepalive-proxy in front of `upstream` with exactly `timers`, plus its admin listener.
pub async fn start_proxy(upstream: SocketAddr, timers: TimerSet) -> Proxy {
    start_proxy_configured(upstream, timers, |_| {}).await
}

/// [`start_proxy`], with the rest of the settings (faults, buffering) changed by `configure`.
pub async fn start_proxy_configured(
    upstream: SocketAddr,
    timers: TimerSet,
    configure: impl FnOnce(&mut ProxyConfig),
) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy on 127.0.0.1:0");
    let admin_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy's admin listener on 127.0.0.1:0");
    let addr = listener.local_addr().expect("proxy's local address");
    let admin = admin_listener
        .local_addr()
        .expect("admin listener's local address");
    let mut config = ProxyConfig {
        addr,
        admin_addr: admin,
        upstream: format!("http://{upstream}")
            .parse()
            .expect("an http:// upstream on 127.0.0.1"),
        drain_timeout: Duration::from_millis(100),
        ..ProxyConfig::default()
    }
    .with_timers(timers);
    configure(&mut config);
    assert_eq!(
        config.timers(),
        timers,
        "explicit timers win over the preset"
    );
    let metrics = Metrics::new();
    let stop = CancellationToken::new();
    tokio::spawn(keepalive_proxy::serve(
        listener,
        config,
        metrics.clone(),
        stop.clone().cancelled_owned(),
    ));
    tokio::spawn(admin::serve(
        admin_listener,
        metrics,
        stop.clone().cancelled_owned(),
    ));
    Proxy {
        addr,
        admin,
        _stop: stop.drop_guard(),
    }
}

/// The origin with default settings and a proxy with `timers` in front of it.
pub async fn start_origin_and_proxy(timers: TimerSet) -> (Running, Proxy) {
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy(origin.addr, timers).await;
    (origin, proxy)
}

/// An upstream that answers every request with what it received: the request line, each header as
/// `name: value` on its own line, an empty line, and the request body.
pub async fn start_echo() -> Running {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the echo upstream");
    let addr = listener.local_addr().expect("echo's local address");
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                () = stopped.cancelled() => return,
                accepted = listener.accept() => accepted.expect("echo accept"),
            };
            tokio::spawn(async move {
                let echo = service_fn(|request: Request<Incoming>| async move {
                    let (parts, body) = request.into_parts();
                    let mut text = format!("{} {}\n", parts.method, parts.uri);
                    for (name, value) in &parts.headers {
                        text += &format!("{name}: {}\n", value.to_str().unwrap_or("<binary>"));
                    }
                    let body = body
                        .collect()
                        .await
                        .map(|body| body.to_bytes())
                        .unwrap_or_default();
                    text += &format!("\n{}", String::from_utf8_lossy(&body));
                    // Hop-by-hop fields of the upstream's own, which must not reach the client.
                    let response = Response::builder()
                        .header("connection", "X-Upstream-Hop")
                        .header("x-upstream-hop", "secret")
                        .header("keep-alive", "timeout=9")
                        .header("x-upstream", "echo")
                        .body(Full::new(Bytes::from(text)))
                        .expect("a valid response");
                    Ok::<_, Infallible>(response)
                });
                // A client that goes away mid-request is not this test's concern.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), echo)
                    .await;
            });
        }
    });
    Running::new(addr, stop)
}

/// The headers the echo upstream reports, lower-cased names, in order.
pub fn echoed_headers(body: &str) -> Vec<(String, String)> {
    body.lines()
        .skip(1)
        .take_while(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line.split_once(": ").expect("name: value");
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

pub fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Raw HTTP/1.1 client
// ---------------------------------------------------------------------------------------------------

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

/// One client connection spoken to in raw bytes, with a clock started by the first `send`.
pub struct RawConn {
    stream: TcpStream,
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
        Self {
            stream,
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
        while self.ended.is_none() {
            if !self.read_once(deadline).await {
                self.ended = Some((Ending::Open, self.clock.elapsed()));
            }
        }
        let (ending, ended_at) = self.ended.expect("the loop ends with an ending");
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

// ---------------------------------------------------------------------------------------------------
// Reading HTTP/1.1 responses
// ---------------------------------------------------------------------------------------------------

/// A response head and whatever followed it on the wire (still chunk-encoded if chunked).
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Length of the head, its final CRLF CRLF included.
    pub head_len: usize,
}

impl RawResponse {
    /// Parses the head at the start of `bytes`; `None` while it is incomplete.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let end = find(bytes, b"\r\n\r\n")?;
        let head = std::str::from_utf8(&bytes[..end]).expect("a response head in UTF-8");
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next()?;
        assert!(
            version.starts_with("HTTP/1."),
            "status line {status_line:?}"
        );
        let status = parts.next()?.parse().expect("a numeric status");
        let headers = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("header line {line:?}"));
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        Some(Self {
            status,
            headers,
            body: bytes[end + 4..].to_vec(),
            head_len: end + 4,
        })
    }

    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    }

    /// The body's data: de-chunked when chunked, cut to Content-Length otherwise.
    pub fn data(&self) -> Chunked {
        if self.is_chunked() {
            return dechunk(&self.body);
        }
        match self.header("content-length") {
            Some(length) => {
                let length: usize = length.parse().expect("a numeric Content-Length");
                Chunked {
                    data: self.body[..length.min(self.body.len())].to_vec(),
                    complete: self.body.len() >= length,
                    chunks: 1,
                }
            }
            None => Chunked {
                data: self.body.clone(),
                complete: false,
                chunks: 1,
            },
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.data().data).expect("a UTF-8 body")
    }
}

/// A de-chunked body: the data received, and whether the terminating `0\r\n\r\n` arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    pub data: Vec<u8>,
    pub complete: bool,
    pub chunks: usize,
}

/// Decodes a chunked body as far as it goes; a chunk cut short contributes what arrived of it.
pub fn dechunk(mut wire: &[u8]) -> Chunked {
    let mut data = Vec::new();
    let mut chunks = 0;
    loop {
        let Some(line_end) = find(wire, b"\r\n") else {
            return Chunked {
                data,
                complete: false,
                chunks,
            };
        };
        let size_text = std::str::from_utf8(&wire[..line_end]).expect("a chunk-size line");
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .unwrap_or_else(|_| panic!("chunk size {size_text:?}"));
        wire = &wire[line_end + 2..];
        if size == 0 {
            // No trailers from these servers: the last chunk is followed by the final CRLF.
            return Chunked {
                data,
                complete: wire.starts_with(b"\r\n"),
                chunks,
            };
        }
        chunks += 1;
        if wire.len() < size + 2 {
            data.extend_from_slice(&wire[..size.min(wire.len())]);
            return Chunked {
                data,
                complete: false,
                chunks,
            };
        }
        data.extend_from_slice(&wire[..size]);
        assert_eq!(&wire[size..size + 2], b"\r\n", "chunk data ends with CRLF");
        wire = &wire[size + 2..];
    }
}

/// Whether `bytes` hold one whole response (head and Content-Length or chunked body).
pub fn is_complete_response(bytes: &[u8]) -> bool {
    RawResponse::parse(bytes).is_some_and(|response| response.data().complete)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

// ---------------------------------------------------------------------------------------------------
// Metrics and polling
// ---------------------------------------------------------------------------------------------------

/// GET /metrics from `addr` (the origin, or the proxy's admin listener) as text.
pub async fn metrics_text(addr: SocketAddr) -> String {
    let transcript = raw_request(
        addr,
        &get("/metrics", "Connection: close\r\n"),
        Duration::from_secs(5),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "GET /metrics: {}", transcript.text());
    response.text()
}

/// One sample's value: the sum of every line of metric `query`'s name whose labels include all the
/// labels given in `query` (`name` or `name{label="value",...}`); 0 when none is exposed.
pub async fn metric(addr: SocketAddr, query: &str) -> f64 {
    sample(&metrics_text(addr).await, query)
}

/// [`metric`] over an exposition already fetched.
pub fn sample(exposition: &str, query: &str) -> f64 {
    let (name, wanted) = split_sample(query);
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, rest) = match line.find('{') {
                Some(_) => {
                    let close = line.rfind('}').expect("a closing brace");
                    (&line[..=close], &line[close + 1..])
                }
                None => line.split_at(line.find(' ')?),
            };
            let (line_name, labels) = split_sample(series);
            let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
            (line_name == name && wanted.iter().all(|label| labels.contains(label)))
                .then_some(value)
        })
        .sum()
}

fn split_sample(series: &str) -> (&str, Vec<(String, String)>) {
    let Some((name, labels)) = series.split_once('{') else {
        return (series.trim(), Vec::new());
    };
    let labels = labels
        .trim_end_matches('}')
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("label {pair:?}"));
            (
                key.trim().to_owned(),
                value.trim().trim_matches('"').to_owned(),
            )
        })
        .collect();
    (name.trim(), labels)
}

/// Polls `condition` every 20 ms until it holds (returns how long that took) or `within` passes.
pub async fn wait_until<F, Fut>(within: Duration, mut condition: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return Some(start.elapsed());
        }
        if start.elapsed() >= within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `query` at `addr` equals `expected`; panics with the last value otherwise.
pub async fn wait_for_metric(addr: SocketAddr, query: &str, expected: f64, within: Duration) {
    if wait_until(within, || async { metric(addr, query).await == expected })
        .await
        .is_none()
    {
        let last = metric(addr, query).await;
        panic!("{query} at {addr} is {last}, not {expected}, after {within:?}");
    }
}

/// A port nothing listens on, for the duration of the returned socket: bound but not listening, so
/// connects to it are refused and no other test can be given it meanwhile.
pub fn refusing_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("bind without listening");
    let addr = socket.local_addr().expect("the bound address");
    (socket, addr)
}
