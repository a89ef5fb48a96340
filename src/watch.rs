//! `keepalive-lab watch URL`: what a client of a long stream actually receives, chunk by chunk, and
//! how the stream ended. This is the tool to point at one's own deployment: the verdict tells a
//! balancer's cut (`truncated`, `reset`) from a real end (`completed`), which curl and browsers blur.
//!
//! [`observe`] is the client itself, also used by the experiments; [`run`] prints what it sees.

use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body_util::BodyExt;
use keepalive_common::duration::parse_timer;
use serde::Serialize;
use tokio::time::Instant;

use crate::client::tls::TlsEnd;
use crate::client::{Client, ClientArgs, ClientError, Protocol, Transport};
use crate::expect::{Expectation, Shortfall};
use crate::stdout::{out, outln};

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// The stream to watch: an http:// or https:// URL, e.g.
    /// http://127.0.0.1:8080/polls/streamed?sleep=8
    url: Uri,

    /// Give up after this long (verdict `timeout`); 0 or off waits for the end
    #[arg(long, value_parser = parse_timer, default_value = "off")]
    max_time: std::option::Option<Duration>,

    /// Extra request header, `Name: value`; repeatable (e.g. -H 'x-keepalive-fault-reset-after: 2s')
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    headers: Vec<(HeaderName, HeaderValue)>,

    /// One JSON object a line: each chunk, then the verdict
    #[arg(long)]
    json: bool,

    /// URL is a durable job (/jobs/{id} or /jobs/{id}/stream): follow its SSE stream across cuts,
    /// resuming with Last-Event-ID, and check at the end that every line arrived exactly once
    /// (exit 0) or say what was lost or repeated (exit 1)
    #[arg(long)]
    resume: bool,

    #[command(flatten)]
    client: ClientArgs,
}

/// A `-H` argument that is not a header; each names the whole argument as typed.
#[derive(Debug, thiserror::Error)]
pub enum HeaderArgError {
    #[error("{0:?} is not a header like 'Name: value'")]
    NoColon(String),
    #[error("{arg:?} is not a header like 'Name: value': {name:?} is not a header name")]
    Name { arg: String, name: String },
    #[error("{arg:?} is not a header like 'Name: value': {value:?} is not a header value")]
    Value { arg: String, value: String },
}

pub fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), HeaderArgError> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| HeaderArgError::NoColon(text.to_owned()))?;
    let (name, value) = (name.trim(), value.trim());
    let header_name = HeaderName::try_from(name).map_err(|_| HeaderArgError::Name {
        arg: text.to_owned(),
        name: name.to_owned(),
    })?;
    let header_value = HeaderValue::try_from(value).map_err(|_| HeaderArgError::Value {
        arg: text.to_owned(),
        value: value.to_owned(),
    })?;
    Ok((header_name, header_value))
}

/// How a stream ended, as its client saw it.
#[derive(Debug)]
pub enum Verdict {
    /// The body ended as HTTP says it should (terminating chunk, or full Content-Length).
    Completed,
    /// The connection closed mid-body: what a balancer's cut looks like.
    Truncated,
    /// The body ended as HTTP says it should, but short of what the origin owed (see
    /// [`crate::expect`]): a cut made to look like an end.
    SilentlyTruncated(Shortfall),
    /// The connection was reset (TCP RST), or the HTTP/2 stream (RST_STREAM) or connection (GOAWAY).
    Reset(Reset),
    /// `--max-time` passed with the stream still open.
    Timeout,
    /// The answer was not a 2xx: the body is the error page.
    Http(StatusCode),
    /// No answer at all: cannot connect, or the connection failed before a response head.
    Failed(ClientError),
}

/// The same ending; two failures are the same when they say the same (an I/O error has no `==`).
impl PartialEq for Verdict {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Verdict::SilentlyTruncated(a), Verdict::SilentlyTruncated(b)) => a == b,
            (Verdict::Http(a), Verdict::Http(b)) => a == b,
            (Verdict::Reset(a), Verdict::Reset(b)) => a == b,
            (Verdict::Failed(a), Verdict::Failed(b)) => a.to_string() == b.to_string(),
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

impl Eq for Verdict {}

impl Verdict {
    /// Exit codes are curl's for the same endings, which users already know.
    pub fn exit_code(&self) -> u8 {
        match self {
            Verdict::Completed => 0,
            Verdict::Truncated => 18,
            // curl has no code for it (it exits 0 here): sysexits' "input data was incorrect".
            Verdict::SilentlyTruncated(_) => 65,
            // curl says 92 for an HTTP/2 stream reset; one code for "reset", whatever the protocol.
            Verdict::Reset(_) => 56,
            Verdict::Timeout => 28,
            Verdict::Http(_) => 22,
            Verdict::Failed(err) => err.exit_code(),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Verdict::Completed => "completed".to_owned(),
            Verdict::Truncated => "truncated".to_owned(),
            Verdict::SilentlyTruncated(_) => "silently truncated".to_owned(),
            Verdict::Reset(_) => "reset".to_owned(),
            Verdict::Timeout => "timeout".to_owned(),
            Verdict::Http(status) => format!("http {}", status.as_u16()),
            Verdict::Failed(_) => "failed".to_owned(),
        }
    }

    pub fn explain(&self) -> String {
        match self {
            Verdict::Completed => "the body ended properly".to_owned(),
            Verdict::Truncated => {
                "the connection closed mid-body: cut by something on the way (curl exits 18)"
                    .to_owned()
            }
            Verdict::SilentlyTruncated(short) => format!(
                "the body ended cleanly, but the origin owes {}; received {}: cut on the way and made to look like an end (curl exits 0)",
                short.expected, short.received
            ),
            Verdict::Reset(Reset::Tcp) => {
                "the connection was reset (TCP RST; curl exits 56)".to_owned()
            }
            Verdict::Reset(Reset::Stream(reason)) => format!(
                "the HTTP/2 stream was reset (RST_STREAM {reason:?}; curl exits 92)"
            ),
            Verdict::Reset(Reset::GoAway(reason)) => format!(
                "the HTTP/2 connection was closed under the stream (GOAWAY {reason:?}; curl exits 16)"
            ),
            Verdict::Timeout => "still open when --max-time passed".to_owned(),
            Verdict::Http(status) => format!("the answer was {status}, not a stream"),
            Verdict::Failed(err) => err.to_string(),
        }
    }
}

/// What reset a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// A TCP RST: the whole connection.
    Tcp,
    /// An HTTP/2 RST_STREAM: this stream only, with its error code.
    Stream(h2::Reason),
    /// An HTTP/2 GOAWAY: the whole connection, with its error code.
    GoAway(h2::Reason),
}

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp => f.write_str("TCP RST"),
            Self::Stream(reason) => write!(f, "RST_STREAM {reason:?}"),
            Self::GoAway(reason) => write!(f, "GOAWAY {reason:?}"),
        }
    }
}

/// What [`observe`] reports as it goes.
pub enum Event<'a> {
    /// Connected (and, over TLS, handshaken): what the connection speaks.
    Connected(&'a Transport),
    Chunk(&'a Chunk),
}

/// One body chunk as it arrived.
#[derive(Debug, Clone, Serialize)]
pub struct Chunk {
    /// Since the request was sent.
    pub at: Duration,
    pub bytes: usize,
    /// Whitespace or SSE comments only: there to keep the stream alive, not content.
    pub heartbeat: bool,
    #[serde(skip)]
    pub data: Bytes,
}

/// Everything one request saw.
#[derive(Debug)]
pub struct Observation {
    pub status: Option<StatusCode>,
    /// The response's headers; empty when there was no response.
    pub headers: http::HeaderMap,
    pub headers_at: Option<Duration>,
    pub chunks: Vec<Chunk>,
    pub verdict: Verdict,
    pub ended_at: Duration,
    /// What the connection spoke; `None` when there was none.
    pub transport: Option<Transport>,
    /// How the server ended TLS, once it did (HTTP/1.1 over TLS).
    pub tls_end: Option<TlsEnd>,
}

impl Observation {
    /// The verdict explained, with what the wire said about the end: END_STREAM over HTTP/2,
    /// whether a TLS close_notify came before an HTTP/1.1 connection closed mid-body.
    pub fn explain(&self) -> String {
        let mut text = self.verdict.explain();
        let http2 = self
            .transport
            .as_ref()
            .is_some_and(|transport| transport.protocol == Protocol::Http2);
        let wire = match (&self.verdict, http2, self.tls_end) {
            (Verdict::Completed | Verdict::SilentlyTruncated(_), true, _) => " (END_STREAM)",
            (Verdict::Truncated, true, _) => {
                "; the connection closed under the HTTP/2 stream without RST_STREAM or GOAWAY"
            }
            (Verdict::Truncated, false, Some(TlsEnd::CloseNotify)) => {
                "; TLS close_notify came first: TLS ended properly, only HTTP's framing shows the cut"
            }
            (Verdict::Truncated, false, Some(TlsEnd::NoCloseNotify)) => {
                "; no TLS close_notify: the connection was closed under TLS"
            }
            _ => "",
        };
        text.push_str(wire);
        text
    }

    pub fn body_bytes(&self) -> usize {
        self.chunks.iter().map(|chunk| chunk.bytes).sum()
    }

    pub fn heartbeats(&self) -> usize {
        self.chunks.iter().filter(|chunk| chunk.heartbeat).count()
    }
}

/// Whitespace-only chunks and SSE comment lines carry nothing but keep a connection busy.
pub fn is_heartbeat(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    !data.is_empty()
        && text
            .split('\n')
            .all(|line| line.trim().is_empty() || line.starts_with(':'))
}

/// Requests `url` and follows its body to the end, calling `on_event` once connected and as each
/// chunk arrives.
pub async fn observe(
    client: &Client,
    url: &Uri,
    headers: &[(HeaderName, HeaderValue)],
    max_time: Option<Duration>,
    on_event: impl FnMut(Event<'_>),
) -> Observation {
    let owed = Expectation::of(url, headers);
    observe_owing(client, url, headers, max_time, owed, on_event).await
}

/// [`observe`], judging a clean end against `owed` rather than against what the URL says (the
/// probe knows what it asked for, whatever path a balancer puts the origin under).
pub async fn observe_owing(
    client: &Client,
    url: &Uri,
    headers: &[(HeaderName, HeaderValue)],
    max_time: Option<Duration>,
    owed: Option<Expectation>,
    mut on_event: impl FnMut(Event<'_>),
) -> Observation {
    let started = Instant::now();
    let deadline = max_time.map(|max_time| started + max_time);
    let mut observation = Observation {
        status: None,
        headers: http::HeaderMap::new(),
        headers_at: None,
        chunks: Vec::new(),
        verdict: Verdict::Completed,
        ended_at: Duration::ZERO,
        transport: None,
        tls_end: None,
    };
    let outcome = match deadline {
        Some(deadline) => tokio::time::timeout_at(
            deadline,
            follow(
                client,
                url,
                headers,
                started,
                &mut observation,
                &mut on_event,
            ),
        )
        .await
        .unwrap_or(Verdict::Timeout),
        None => {
            follow(
                client,
                url,
                headers,
                started,
                &mut observation,
                &mut on_event,
            )
            .await
        }
    };
    observation.ended_at = started.elapsed();
    observation.verdict = match outcome {
        // An encoded body (gzip) is judged by nobody here: its bytes are not the origin's text.
        Verdict::Completed
            if observation.status != Some(StatusCode::NO_CONTENT)
                && observation
                    .headers
                    .get(http::header::CONTENT_ENCODING)
                    .is_none_or(|encoding| encoding == "identity") =>
        {
            let body: Vec<u8> = observation
                .chunks
                .iter()
                .flat_map(|chunk| chunk.data.iter().copied())
                .collect();
            match owed.and_then(|owed| owed.shortfall(&body)) {
                Some(short) => Verdict::SilentlyTruncated(short),
                None => Verdict::Completed,
            }
        }
        outcome => outcome,
    };
    observation
}

async fn follow(
    client: &Client,
    url: &Uri,
    headers: &[(HeaderName, HeaderValue)],
    started: Instant,
    observation: &mut Observation,
    on_event: &mut impl FnMut(Event<'_>),
) -> Verdict {
    let mut connection = match client.connect(url).await {
        Ok(connection) => connection,
        Err(err) => return Verdict::Failed(err),
    };
    on_event(Event::Connected(&connection.transport));
    observation.transport = Some(connection.transport.clone());
    let request = match connection.request(Method::GET, url, headers) {
        Ok(request) => request,
        Err(err) => return Verdict::Failed(err),
    };
    let response = match connection.send(request).await {
        Ok(response) => response,
        Err(err) => {
            // Closed before any response head: nothing was truncated, there was no answer.
            return match ending_of(&err) {
                Some(Verdict::Reset(reset)) => Verdict::Reset(reset),
                _ => Verdict::Failed(ClientError::NoResponse(err)),
            };
        }
    };
    observation.status = Some(response.status());
    observation.headers = response.headers().clone();
    observation.headers_at = Some(started.elapsed());
    let status = response.status();
    let mut body = response.into_body();
    let verdict = loop {
        match body.frame().await {
            None => break Verdict::Completed,
            Some(Ok(frame)) => {
                // An empty DATA frame carries HTTP/2's END_STREAM alone: an end, not a chunk.
                let Some(data) = frame.into_data().ok().filter(|data| !data.is_empty()) else {
                    continue;
                };
                let chunk = Chunk {
                    at: started.elapsed(),
                    bytes: data.len(),
                    heartbeat: is_heartbeat(&data),
                    data,
                };
                on_event(Event::Chunk(&chunk));
                observation.chunks.push(chunk);
            }
            Some(Err(err)) => {
                break ending_of(&err).unwrap_or(Verdict::Failed(ClientError::Body(err)));
            }
        }
    };
    // The connection's task noted TLS's end before hyper passed the end of the body on.
    observation.tls_end = connection.tls_end();
    drop(connection);
    match verdict {
        Verdict::Completed if !status.is_success() => Verdict::Http(status),
        verdict => verdict,
    }
}

/// A reset or a premature close, read from hyper's error and its causes: hyper reports a chunked
/// body cut short as an `UnexpectedEof` I/O error, a reset as `ConnectionReset`; over HTTP/2, h2's
/// error says whether a RST_STREAM or a GOAWAY came, or the connection's I/O failed.
fn ending_of(err: &hyper::Error) -> Option<Verdict> {
    let of_io = |io: &std::io::Error| match io.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
            Some(Verdict::Reset(Reset::Tcp))
        }
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::BrokenPipe => {
            Some(Verdict::Truncated)
        }
        _ => None,
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if let Some(verdict) = of_io(io) {
                return Some(verdict);
            }
        }
        if let Some(h2) = current.downcast_ref::<h2::Error>() {
            if let Some(io) = h2.get_io() {
                return Some(of_io(io).unwrap_or(Verdict::Truncated));
            }
            // Only the peer's: a reset our own h2 made (a protocol error it saw) is no balancer's cut.
            match h2.reason().filter(|_| h2.is_remote()) {
                Some(reason) if h2.is_go_away() => {
                    return Some(Verdict::Reset(Reset::GoAway(reason)))
                }
                Some(reason) if h2.is_reset() => {
                    return Some(Verdict::Reset(Reset::Stream(reason)))
                }
                _ => {}
            }
        }
        cause = current.source();
    }
    err.is_incomplete_message().then_some(Verdict::Truncated)
}

#[derive(Serialize)]
struct ChunkLine<'a> {
    at_s: f64,
    gap_s: f64,
    bytes: usize,
    heartbeat: bool,
    text: std::borrow::Cow<'a, str>,
}

#[derive(Serialize)]
struct VerdictLine {
    verdict: String,
    exit_code: u8,
    detail: String,
    status: Option<u16>,
    headers_at_s: Option<f64>,
    ended_at_s: f64,
    chunks: usize,
    heartbeats: usize,
    bytes: usize,
    /// `HTTP/1.1` or `HTTP/2`; `null` when no connection was made.
    protocol: Option<&'static str>,
    /// `TLSv1.3`, `TLSv1.2`; `null` over plain TCP.
    tls: Option<&'static str>,
    alpn: Option<String>,
    /// HTTP/1.1 over TLS, once the server closed: whether a close_notify came first.
    close_notify: Option<bool>,
    /// What reset the stream: `TCP RST`, `RST_STREAM <code>`, `GOAWAY <code>`.
    reset: Option<String>,
}

/// Runs `watch`; the exit code is the verdict's.
pub async fn run(args: WatchArgs) -> u8 {
    let client = match Client::new(&args.client) {
        Ok(client) => client,
        Err(err) => {
            eprintln!("keepalive-lab watch: {err}");
            return 2;
        }
    };
    if args.resume {
        return crate::resume::run(&client, &args.url, &args.headers, args.max_time, args.json)
            .await;
    }
    let json = args.json;
    if !json {
        outln!("watching {}", args.url);
    }
    let started = Instant::now();
    let mut last_at = Duration::ZERO;
    let mut heartbeat_run = 0usize;
    let observation = observe(
        &client,
        &args.url,
        &args.headers,
        args.max_time,
        |event| match event {
            Event::Connected(transport) if !json => {
                outln!("{:>9.3}s  connected: {transport}", secs(started.elapsed()));
            }
            Event::Connected(_) => {}
            Event::Chunk(chunk) => {
                let gap = chunk.at.saturating_sub(last_at);
                last_at = chunk.at;
                if json {
                    let line = ChunkLine {
                        at_s: chunk.at.as_secs_f64(),
                        gap_s: gap.as_secs_f64(),
                        bytes: chunk.bytes,
                        heartbeat: chunk.heartbeat,
                        text: String::from_utf8_lossy(&chunk.data),
                    };
                    outln!("{}", serde_json::to_string(&line).unwrap_or_default());
                    return;
                }
                // Heartbeats as dots on one line, so that minutes of them stay readable.
                if chunk.heartbeat {
                    if heartbeat_run == 0 {
                        out!("{:>9.3}s {:>+9.3}s  heartbeats ", secs(chunk.at), secs(gap));
                    }
                    heartbeat_run += 1;
                    out!(".");
                } else {
                    if heartbeat_run > 0 {
                        outln!();
                        heartbeat_run = 0;
                    }
                    let text = String::from_utf8_lossy(&chunk.data);
                    outln!(
                        "{:>9.3}s {:>+9.3}s  {:>5} B  {}",
                        secs(chunk.at),
                        secs(gap),
                        chunk.bytes,
                        text.trim_end()
                            .replace('\n', "\n                              ")
                    );
                }
            }
        },
    )
    .await;
    let verdict = &observation.verdict;
    if json {
        let transport = observation.transport.as_ref();
        let line = VerdictLine {
            verdict: verdict.name(),
            exit_code: verdict.exit_code(),
            detail: observation.explain(),
            status: observation.status.map(|status| status.as_u16()),
            headers_at_s: observation.headers_at.map(|at| at.as_secs_f64()),
            ended_at_s: observation.ended_at.as_secs_f64(),
            chunks: observation.chunks.len(),
            heartbeats: observation.heartbeats(),
            bytes: observation.body_bytes(),
            protocol: transport.map(|transport| transport.protocol.as_str()),
            tls: transport.and_then(|transport| transport.tls),
            alpn: transport.and_then(|transport| transport.alpn.clone()),
            close_notify: observation.tls_end.map(|end| end == TlsEnd::CloseNotify),
            reset: match verdict {
                Verdict::Reset(reset) => Some(reset.to_string()),
                _ => None,
            },
        };
        outln!("{}", serde_json::to_string(&line).unwrap_or_default());
    } else {
        if heartbeat_run > 0 {
            outln!();
        }
        outln!(
            "{:>9.3}s  {}: {} ({} bytes in {} chunks, {} of them heartbeats)",
            secs(observation.ended_at),
            verdict.name(),
            observation.explain(),
            observation.body_bytes(),
            observation.chunks.len(),
            observation.heartbeats()
        );
    }
    verdict.exit_code()
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_are_whitespace_or_sse_comments() {
        assert!(is_heartbeat(b" "));
        assert!(is_heartbeat(b":\n\n"));
        assert!(is_heartbeat(b": keep-alive\n\n"));
        assert!(!is_heartbeat(b"[         0 s] Little brown lady\n"));
        assert!(!is_heartbeat(b"id: 1\ndata: x\n\n"));
        assert!(!is_heartbeat(b""));
    }

    #[test]
    fn verdicts_exit_like_curl() {
        assert_eq!(Verdict::Completed.exit_code(), 0);
        assert_eq!(Verdict::Truncated.exit_code(), 18);
        assert_eq!(Verdict::Reset(Reset::Tcp).exit_code(), 56);
        assert_eq!(
            Verdict::Reset(Reset::Stream(h2::Reason::INTERNAL_ERROR)).exit_code(),
            56
        );
        assert_eq!(Verdict::Timeout.exit_code(), 28);
        assert_eq!(
            Verdict::Http(StatusCode::GATEWAY_TIMEOUT).name(),
            "http 504"
        );
    }

    #[test]
    fn headers_are_name_colon_value() {
        let (name, value) = parse_header("x-keepalive-fault-latency: 200ms").expect("valid");
        assert_eq!(name, "x-keepalive-fault-latency");
        assert_eq!(value, "200ms");
        assert!(parse_header("no colon").is_err());
    }

    proptest::proptest! {
        /// Whatever is typed after `-H`: read as a header, or refused quoting the whole argument.
        #[test]
        fn header_arguments_are_read_or_refused_naming_them(
            text in proptest::prop_oneof![
                proptest::arbitrary::any::<String>(),
                "[ -~]{0,12}:[ -~\\x00-\\x1f\\x7f-\\u{ff}]{0,12}",
            ]
        ) {
            match parse_header(&text) {
                Ok((name, value)) => {
                    let (typed_name, typed_value) = text.split_once(':').expect("a colon");
                    proptest::prop_assert!(name.as_str().eq_ignore_ascii_case(typed_name.trim()));
                    proptest::prop_assert_eq!(value.as_bytes(), typed_value.trim().as_bytes());
                }
                Err(err) => {
                    let message = err.to_string();
                    proptest::prop_assert!(message.contains(&format!("{text:?}")), "{}", message);
                }
            }
        }
    }
}
