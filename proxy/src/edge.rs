//! The single edge where errors stop being data: every typed failure from the layers below (a timer
//! that fired, an upstream that refused or broke off, a client's own mistake) becomes what a client of
//! a real balancer would see, one log line and one metric. Before headers that is a short text response
//! (4xx for the client's mistakes, 502/504 for the upstream's), in the proxy's own words: the error
//! chain, with hyper's internals, goes to the log line, never to the client. After headers
//! the body fails, and hyper aborts the exchange exactly like nginx does: HTTP/1.1 gets a chunked body
//! without its last chunk and a closed connection (curl exits 18), HTTP/2 a RST_STREAM. A cut the
//! proxy makes itself may instead end cleanly or with a reset ([`CutStyle`]).
//!
//! The edge also owns each exchange's bookkeeping: its place in the table of open streams (where the
//! control API lists it and may cut it), its lifecycle events, `proxy_streams_active` and the
//! histograms, the client connection's in-flight guard (which keeps the keep-alive timer off),
//! noticing a client that went away, and the access-log line with its termination flags when it
//! ends.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use keepalive_common::duration::display;
use serde_json::json;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::access::{self, Ender, Phase, Termination};
use crate::control::settings::Live;
use crate::control::streams::{Entry, Hangup};
use crate::control::Control;
use crate::cut_style::{CutStyle, CUT_STYLE_HEADER};
use crate::faults::reset::ResetSwitch;
use crate::faults::{BadFaultHeader, Fault, FaultCut};
use crate::forward::{ClientAddr, ClientError};
use crate::metrics::Metrics;
use crate::server::ConnectionCut;
use crate::timeouts::client_conn::InFlight;
use crate::timeouts::{Timer, TimerExpired};
use crate::tls::upstream::UpstreamTlsError;
use crate::BoxError;

/// Names the proxy timer behind a response the proxy made itself, so tools can tell it from an upstream's.
pub const TIMER_HEADER: &str = "x-keepalive-timer";

/// A stream the control API cut; the edge ends the body with it (or cleanly) in the style asked.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("cut by the control API ({})", .0.as_str())]
pub struct ApiCut(CutStyle);

#[derive(Clone)]
pub struct EdgeLayer {
    metrics: Metrics,
    control: Control,
    live: Live,
    /// Whether a request may choose its own cut style by header.
    from_headers: bool,
}

impl EdgeLayer {
    pub fn new(metrics: Metrics, control: Control, from_headers: bool) -> Self {
        Self {
            metrics,
            live: control.live(),
            control,
            from_headers,
        }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Edge {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    layer: EdgeLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Edge<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = BoxError>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes, Error = BoxError> + Send + 'static,
{
    type Response = Response<EdgeBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<EdgeBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The layers below are always ready; an error here would be a bug, not a client's problem.
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(err)) => {
                tracing::error!(%err, "proxy service not ready");
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        // One reading of the settings for the whole exchange: the layers below take it from here.
        let settings = layer.live.now();
        request.extensions_mut().insert(settings);
        let cut_style = if layer.from_headers {
            CutStyle::requested(request.headers(), settings.cut_style)
        } else {
            Ok(settings.cut_style)
        };
        // The upstream is not part of the experiment's plumbing.
        request.headers_mut().remove(CUT_STYLE_HEADER);
        let mut exchange = Exchange::begin(
            &request,
            layer,
            cut_style.as_ref().copied().unwrap_or_default(),
        );
        request
            .extensions_mut()
            .insert(Arc::clone(&exchange.entry.tracked));
        if let Err(bad) = cut_style {
            let response = exchange.failed_before_headers(&bad);
            return Box::pin(std::future::ready(Ok(exchange.respond(response))));
        }
        let response = self.inner.call(request);
        Box::pin(async move {
            let outcome = tokio::select! {
                response = response => Ok(response),
                style = poll_fn(|cx| exchange.entry.poll_cut(cx)) => Err(style),
            };
            let response = match outcome {
                Ok(Ok(response)) => {
                    exchange.headers_arrived(response.status());
                    response.map(BodyExt::boxed_unsync)
                }
                Ok(Err(err)) => exchange.failed_before_headers(err.as_ref()),
                Err(style) => exchange.cut_before_headers(style),
            };
            Ok(exchange.respond(response))
        })
    }
}

/// One request/response through the proxy, from arrival to the end (or abandonment) of the body.
struct Exchange {
    metrics: Metrics,
    control: Control,
    /// Its place in the table of open streams, which also counts its bytes and chunks.
    entry: Entry,
    request_id: HeaderValue,
    cut_style: CutStyle,
    /// The client connection's reset switch: HTTP/1 only, where a reset ends the whole connection.
    reset: Option<ResetSwitch>,
    cut: Option<ConnectionCut>,
    _in_flight: Option<InFlight>,
    status: Option<StatusCode>,
    /// From the request's arrival to the upstream's response headers.
    first_byte: Option<Duration>,
    /// Whether the upstream's body is being forwarded: only then are its silences measured.
    bodied: bool,
    /// When the client last got a chunk (or the headers), and a chunk that was not a heartbeat.
    last_chunk: Instant,
    last_data: Instant,
    longest_gap: Option<Duration>,
    ended: Option<Termination>,
}

impl Exchange {
    fn begin<B>(request: &Request<B>, layer: &EdgeLayer, cut_style: CutStyle) -> Self {
        layer.metrics.stream_opened();
        let path = request
            .uri()
            .path_and_query()
            .map_or_else(|| request.uri().path(), |path| path.as_str())
            .to_owned();
        let client = request
            .extensions()
            .get::<ClientAddr>()
            .map(|ClientAddr(addr)| *addr);
        let hangup = request.extensions().get::<Hangup>().cloned();
        let entry = layer
            .control
            .streams
            .open(client, request.method().clone(), path, hangup);
        let started = entry.tracked.started;
        let exchange = Self {
            metrics: layer.metrics.clone(),
            control: layer.control.clone(),
            entry,
            request_id: request
                .headers()
                .get("x-request-id")
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("-")),
            cut_style,
            reset: request
                .extensions()
                .get::<ResetSwitch>()
                .filter(|_| request.version() < http::Version::HTTP_2)
                .cloned(),
            cut: request.extensions().get::<ConnectionCut>().cloned(),
            _in_flight: request.extensions().get::<InFlight>().cloned(),
            status: None,
            first_byte: None,
            bodied: false,
            last_chunk: started,
            last_data: started,
            longest_gap: None,
            ended: None,
        };
        exchange.event("started", || {
            let tracked = &exchange.entry.tracked;
            json!({
                "client": tracked.client.map(|addr| addr.to_string()),
                "method": tracked.method.as_str(),
                "path": tracked.path,
                "request_id": exchange.request_id(),
            })
        });
        exchange
    }

    fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    fn path(&self) -> &str {
        &self.entry.tracked.path
    }

    fn elapsed(&self) -> Duration {
        self.entry.tracked.started.elapsed()
    }

    fn event(&self, kind: &'static str, detail: impl FnOnce() -> serde_json::Value) {
        self.control.events.emit(kind, &self.entry.tracked, detail);
    }

    fn end(&mut self, by: Ender, phase: Phase) {
        self.ended.get_or_insert(Termination::new(by, phase));
    }

    /// The upstream's response headers arrived.
    fn headers_arrived(&mut self, status: StatusCode) {
        let now = Instant::now();
        let after = now - self.entry.tracked.started;
        self.first_byte = Some(after);
        self.last_chunk = now;
        self.last_data = now;
        self.entry.tracked.headers_arrived();
        self.metrics.first_byte(after);
        self.event(
            "headers",
            || json!({"status": status.as_u16(), "replica": self.entry.tracked.replica()}),
        );
    }

    /// A chunk of the body went to the client.
    fn sent(&mut self, data: &Bytes) {
        let now = Instant::now();
        let gap = now - self.last_chunk;
        self.silence(gap);
        self.last_chunk = now;
        self.entry.tracked.sent(data.len() as u64, now);
        if is_heartbeat(data) {
            let silent = now - self.last_data;
            self.event(
                "heartbeat",
                || json!({"bytes": data.len(), "silent": silent.as_secs_f64()}),
            );
        } else {
            self.last_data = now;
            self.event(
                "data",
                || json!({"bytes": data.len(), "gap": gap.as_secs_f64()}),
            );
        }
    }

    /// A silence of the upstream's body, between its headers, its chunks and its end; the proxy's own
    /// answers (a 504's text) have none.
    fn silence(&mut self, gap: Duration) {
        if self.bodied {
            self.longest_gap = Some(self.longest_gap.map_or(gap, |longest| longest.max(gap)));
        }
    }

    /// The control API cut the stream before any header arrived: there is no body to end, so the
    /// client is answered 502, and with the `reset` style its HTTP/1 connection is reset instead.
    fn cut_before_headers(&mut self, style: CutStyle) -> Response<UnsyncBoxBody<Bytes, BoxError>> {
        self.end(Ender::Api, Phase::Headers);
        self.entry.tracked.ending();
        self.metrics.api_cut();
        let elapsed = display(self.elapsed());
        tracing::info!(
            cut_style = style.as_str(),
            %elapsed,
            request_id = self.request_id(),
            path = %self.path(),
            "cut by the control API before response headers: answering 502",
        );
        self.event(
            "cut",
            || json!({"by": "api", "style": style.as_str(), "before_headers": true}),
        );
        let mut response = text_response(
            StatusCode::BAD_GATEWAY,
            "502 Bad Gateway: cut by the proxy's control API before the upstream's response headers\n".to_owned(),
        );
        if style == CutStyle::Reset {
            if let Some(reset) = &self.reset {
                reset.flip();
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        response
    }

    /// The response a real balancer would have sent for a failure before any header arrived.
    fn failed_before_headers(
        &mut self,
        err: &(dyn StdError + 'static),
    ) -> Response<UnsyncBoxBody<Bytes, BoxError>> {
        let elapsed = display(self.elapsed());
        let (status, timer, message) = match Failure::of(err) {
            Failure::Timer(expired) => {
                self.end(Ender::Timer(expired.timer), Phase::Headers);
                self.metrics.timer_fired(expired.timer);
                let limit = display(expired.limit);
                if expired.timer == Timer::Connect {
                    self.metrics.upstream_error("connect_timeout");
                }
                tracing::warn!(
                    timer = %expired.timer,
                    %limit,
                    %elapsed,
                    bytes = 0,
                    request_id = self.request_id(),
                    path = %self.path(),
                    "{} timer fired before response headers: answering 504",
                    expired.timer,
                );
                self.event("timer", || {
                    json!({
                        "timer": expired.timer.as_str(),
                        "limit": expired.limit.as_secs_f64(),
                        "before_headers": true,
                        "status": 504,
                    })
                });
                let message = match expired.timer {
                    Timer::Connect => format!(
                        "504 Gateway Timeout: could not connect to the upstream within the connect timeout ({})\n",
                        display(expired.limit)
                    ),
                    timer => format!(
                        "504 Gateway Timeout: no response headers from the upstream within the {timer} timeout ({})\n",
                        display(expired.limit)
                    ),
                };
                (StatusCode::GATEWAY_TIMEOUT, Some(expired.timer), message)
            }
            Failure::Refused => {
                self.metrics.upstream_error("connect_refused");
                tracing::warn!(%elapsed, request_id = self.request_id(), "upstream refused the connection: answering 502");
                self.origin_gone_before_headers("refused");
                (
                    StatusCode::BAD_GATEWAY,
                    None,
                    "502 Bad Gateway: the upstream refused the connection\n".to_owned(),
                )
            }
            Failure::UpstreamTls => {
                self.metrics.upstream_error("tls_handshake");
                tracing::warn!(%elapsed, request_id = self.request_id(), error = %chain(err), "TLS handshake with the upstream failed: answering 502");
                self.origin_gone_before_headers("tls_handshake");
                (
                    StatusCode::BAD_GATEWAY,
                    None,
                    "502 Bad Gateway: TLS handshake with the upstream failed\n".to_owned(),
                )
            }
            Failure::Connect => {
                self.metrics.upstream_error("connect_failed");
                tracing::warn!(%elapsed, request_id = self.request_id(), error = %chain(err), "cannot connect to the upstream: answering 502");
                self.origin_gone_before_headers("connect_failed");
                (
                    StatusCode::BAD_GATEWAY,
                    None,
                    "502 Bad Gateway: cannot connect to the upstream\n".to_owned(),
                )
            }
            Failure::Client(client) => {
                self.end(Ender::Client, Phase::Headers);
                let status = client.status();
                self.metrics.client_error(client.kind());
                tracing::info!(
                    %status,
                    kind = client.kind(),
                    error = %chain(err),
                    request_id = self.request_id(),
                    path = %self.path(),
                    "refused the client's request",
                );
                (status, None, format!("{status}: {client}\n"))
            }
            Failure::BadFaultHeader => {
                self.end(Ender::Client, Phase::Headers);
                self.metrics.client_error("fault_header");
                (
                    StatusCode::BAD_REQUEST,
                    None,
                    format!("400 Bad Request: {err}\n"),
                )
            }
            // Faults act on bodies only: this is a bug in the layers below, not an upstream's failure.
            Failure::Fault(_) => {
                self.end(Ender::Origin, Phase::Headers);
                tracing::error!(error = %err, request_id = self.request_id(), "fault before response headers");
                (
                    StatusCode::BAD_GATEWAY,
                    None,
                    "502 Bad Gateway\n".to_owned(),
                )
            }
            Failure::Upstream => {
                self.metrics.upstream_error("request_failed");
                tracing::warn!(%elapsed, request_id = self.request_id(), error = %chain(err), "upstream failed before response headers: answering 502");
                self.origin_gone_before_headers("request_failed");
                (
                    StatusCode::BAD_GATEWAY,
                    None,
                    "502 Bad Gateway: the upstream failed before sending a response\n".to_owned(),
                )
            }
        };
        let mut response = text_response(status, message);
        if let Some(timer) = timer {
            response
                .headers_mut()
                .insert(TIMER_HEADER, HeaderValue::from_static(timer.as_str()));
        }
        response
    }

    fn origin_gone_before_headers(&mut self, kind: &'static str) {
        self.end(Ender::Origin, Phase::Headers);
        self.event(
            "origin_gone",
            || json!({"kind": kind, "before_headers": true, "status": 502}),
        );
    }

    fn respond(mut self, response: Response<UnsyncBoxBody<Bytes, BoxError>>) -> Response<EdgeBody> {
        self.metrics.response_sent(response.status());
        self.status = Some(response.status());
        // hyper never polls these bodies to their end, so their being dropped means nothing.
        let bodiless = self.entry.tracked.method == http::Method::HEAD
            || matches!(
                response.status(),
                StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
            );
        let state = if bodiless || response.body().is_end_stream() {
            self.end(Ender::Nobody, Phase::Complete);
            State::Ended
        } else {
            State::Streaming
        };
        // The proxy's own answers (it already knows how the exchange ended) and bodiless ones
        // cannot be cut; the upstream's bodies can, and their silences are measured.
        if self.ended.is_some() {
            self.entry.tracked.ending();
        } else {
            self.bodied = self.first_byte.is_some();
        }
        // A body of announced length, or an encoded one, cannot end early and look complete: a
        // clean cut would be malformed (HTTP/2), a truncation anyway (HTTP/1), or a gzip stream
        // without its trailer, so it is cut the nginx way instead.
        let headers = response.headers();
        let fixed_framing = headers.contains_key(http::header::CONTENT_LENGTH)
            || headers.contains_key(http::header::CONTENT_ENCODING);
        response.map(|body| EdgeBody {
            body: Some(body),
            fixed_framing,
            state,
            exchange: self,
        })
    }
}

impl Exchange {
    /// The exchange was dropped unfinished in `phase`: its connection closed under it, by one of
    /// the proxy's timers (which said so where it fired), by a cut of the control API the body
    /// never saw (a client that stopped reading), or by the client.
    fn gone(&mut self, phase: Phase) {
        let before_headers = phase == Phase::Headers;
        if let Some(style) = self.entry.asked() {
            self.end(Ender::Api, phase);
            self.metrics.api_cut();
            let elapsed = display(self.elapsed());
            tracing::info!(
                cut_style = style.as_str(),
                %elapsed,
                bytes = self.entry.tracked.bytes(),
                request_id = self.request_id(),
                path = %self.path(),
                "cut by the control API: the client was not reading, so its connection was closed",
            );
            self.event("cut", || {
                json!({"by": "api", "style": style.as_str(), "before_headers": before_headers, "connection": true})
            });
            return;
        }
        if let Some(timer) = self.cut.as_ref().and_then(ConnectionCut::timer) {
            self.end(Ender::Timer(timer), phase);
            self.event("timer", || {
                json!({"timer": timer.as_str(), "before_headers": before_headers, "connection": true})
            });
            return;
        }
        self.end(Ender::Client, phase);
        self.metrics.client_disconnected();
        let elapsed = display(self.elapsed());
        let when = if before_headers {
            "before the response headers"
        } else {
            "mid-stream"
        };
        tracing::info!(
            %elapsed,
            bytes = self.entry.tracked.bytes(),
            request_id = self.request_id(),
            path = %self.path(),
            "client went away {when}: closing the upstream's connection",
        );
        self.event("client_gone", || json!({"before_headers": before_headers}));
    }
}

fn text_response(status: StatusCode, message: String) -> Response<UnsyncBoxBody<Bytes, BoxError>> {
    let mut response = Response::new(
        Full::new(Bytes::from(message))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A chunk that only keeps the connection alive: whitespace (the Django tutorial's heartbeat) or
/// server-sent-event comment lines, which EventSource discards.
fn is_heartbeat(data: &[u8]) -> bool {
    !data.is_empty()
        && (data.iter().all(u8::is_ascii_whitespace)
            || data
                .split(|byte| *byte == b'\n')
                .all(|line| line.is_empty() || line == b"\r" || line.starts_with(b":")))
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // Dropped without a response: the connection went while the upstream's headers were
        // awaited (hyper drops the exchange with it), closed by one of the proxy's timers or by
        // the client.
        if self.ended.is_none() {
            self.gone(Phase::Headers);
        }
        let termination = self
            .ended
            .unwrap_or(Termination::new(Ender::Client, Phase::Headers));
        let duration = self.elapsed();
        // The last silence counts too: it is the one that got a stream cut.
        self.silence(self.last_chunk.elapsed());
        let tracked = &self.entry.tracked;
        let bytes = tracked.bytes();
        self.metrics
            .stream_ended(termination, duration, bytes, self.longest_gap);
        let replica = tracked.replica();
        access::write(&access::Record {
            request_id: self.request_id(),
            client: tracked.client,
            method: &tracked.method,
            path: &tracked.path,
            status: self.status,
            replica: replica.as_deref(),
            duration,
            first_byte: self.first_byte,
            bytes,
            chunks: tracked.chunks(),
            longest_gap: self.longest_gap,
            termination,
        });
        self.event("ended", || {
            json!({
                "status": self.status.map(|status| status.as_u16()),
                "termination": termination.to_string(),
                "ended_by": termination.ender(),
                "cause": termination.cause(),
                "duration": duration.as_secs_f64(),
                "bytes": bytes,
                "chunks": tracked.chunks(),
                "longest_gap": self.longest_gap.map(|gap| gap.as_secs_f64()),
            })
        });
        self.metrics.stream_closed();
    }
}

/// What went wrong, read from the error chain the layers below produced.
enum Failure<'e> {
    Timer(TimerExpired),
    /// An injected fault ended the stream; the fault logged and counted itself when it acted.
    Fault(Fault),
    BadFaultHeader,
    /// The client's own mistake, wherever in the chain it surfaced (a broken request body comes
    /// wrapped in the upstream client's error).
    Client(&'e ClientError),
    Refused,
    /// The TCP connect to an https upstream went through, its TLS handshake did not.
    UpstreamTls,
    Connect,
    Upstream,
}

impl<'e> Failure<'e> {
    fn of(err: &'e (dyn StdError + 'static)) -> Self {
        let mut connect = false;
        let mut current = Some(err);
        while let Some(err) = current {
            if let Some(expired) = err.downcast_ref::<TimerExpired>() {
                return Failure::Timer(*expired);
            }
            if let Some(cut) = err.downcast_ref::<FaultCut>() {
                return Failure::Fault(cut.fault);
            }
            if err.is::<BadFaultHeader>() {
                return Failure::BadFaultHeader;
            }
            if let Some(client) = err.downcast_ref::<ClientError>() {
                return Failure::Client(client);
            }
            if err.is::<UpstreamTlsError>() {
                return Failure::UpstreamTls;
            }
            if let Some(io) = err.downcast_ref::<io::Error>() {
                if io.kind() == io::ErrorKind::ConnectionRefused {
                    return Failure::Refused;
                }
            }
            if let Some(client) = err.downcast_ref::<hyper_util::client::legacy::Error>() {
                connect |= client.is_connect();
            }
            current = err.source();
        }
        if connect {
            Failure::Connect
        } else {
            Failure::Upstream
        }
    }
}

/// The error and its causes on one line: hyper's top-level messages alone rarely say what happened.
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut current = err.source();
    while let Some(cause) = current {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        current = cause.source();
    }
    text
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Streaming,
    Ended,
    Cut,
}

/// The response body as the client receives it: counts bytes, and reports how the stream ended.
pub struct EdgeBody {
    // Taken out when the stream ends or is cut, so the upstream's connection closes at that moment.
    body: Option<UnsyncBoxBody<Bytes, BoxError>>,
    /// Announced length or an encoding: the `clean` style falls back to `truncate`.
    fixed_framing: bool,
    state: State,
    exchange: Exchange,
}

impl EdgeBody {
    /// The style a cut the proxy makes is made in: `clean` cannot end a body of fixed framing.
    fn styled(&self, style: CutStyle) -> CutStyle {
        match style {
            CutStyle::Clean if self.fixed_framing => CutStyle::Truncate,
            style => style,
        }
    }

    /// Ends the stream after `err`: with that error (hyper then truncates, or resets the HTTP/2
    /// stream), or, for a cut in the `clean` style, with `None`, a normal end of body.
    fn cut(&mut self, err: BoxError) -> Option<BoxError> {
        self.state = State::Cut;
        self.body = None;
        self.exchange.entry.tracked.ending();
        let styled = self.styled(self.exchange.cut_style);
        let bytes = self.exchange.entry.tracked.bytes();
        let exchange = &mut self.exchange;
        let elapsed = display(exchange.elapsed());
        let style = match Failure::of(err.as_ref()) {
            Failure::Timer(expired) => {
                exchange.end(Ender::Timer(expired.timer), Phase::Body);
                exchange.metrics.timer_fired(expired.timer);
                let limit = display(expired.limit);
                tracing::warn!(
                    timer = %expired.timer,
                    %limit,
                    %elapsed,
                    bytes,
                    cut_style = styled.as_str(),
                    request_id = exchange.request_id(),
                    path = %exchange.path(),
                    "{} timer fired mid-stream: {}",
                    expired.timer,
                    styled.describe(),
                );
                exchange.event("timer", || {
                    json!({
                        "timer": expired.timer.as_str(),
                        "limit": expired.limit.as_secs_f64(),
                        "before_headers": false,
                        "style": styled.as_str(),
                    })
                });
                styled
            }
            Failure::Fault(fault) => {
                exchange.end(Ender::Fault(fault), Phase::Body);
                // A reset is that fault's whole point; it flipped the switch itself.
                let style = if fault == Fault::ResetAfter {
                    CutStyle::Reset
                } else {
                    styled
                };
                exchange.event(
                    "fault",
                    || json!({"fault": fault.as_str(), "style": style.as_str()}),
                );
                style
            }
            Failure::Client(client) => {
                exchange.end(Ender::Client, Phase::Body);
                exchange.metrics.client_error(client.kind());
                tracing::info!(
                    kind = client.kind(),
                    error = %chain(err.as_ref()),
                    %elapsed,
                    bytes,
                    request_id = exchange.request_id(),
                    path = %exchange.path(),
                    "the client's request broke off mid-stream: cutting the client off without the last chunk",
                );
                exchange.event("client_gone", || json!({"kind": client.kind()}));
                CutStyle::Truncate
            }
            _ => {
                exchange.end(Ender::Origin, Phase::Body);
                exchange.metrics.upstream_error("body_failed");
                tracing::warn!(
                    error = %chain(err.as_ref()),
                    %elapsed,
                    bytes,
                    request_id = exchange.request_id(),
                    path = %exchange.path(),
                    "upstream broke off the stream: cutting the client off without the last chunk",
                );
                exchange.event(
                    "origin_gone",
                    || json!({"kind": "body_failed", "before_headers": false}),
                );
                CutStyle::Truncate
            }
        };
        self.finish(style, err)
    }

    /// Ends the stream now, in `style`, because the control API asked.
    fn cut_by_api(&mut self, asked: CutStyle) -> Option<BoxError> {
        self.state = State::Cut;
        self.body = None;
        let style = self.styled(asked);
        let exchange = &mut self.exchange;
        exchange.end(Ender::Api, Phase::Body);
        exchange.metrics.api_cut();
        let elapsed = display(exchange.elapsed());
        tracing::info!(
            cut_style = style.as_str(),
            %elapsed,
            bytes = exchange.entry.tracked.bytes(),
            request_id = exchange.request_id(),
            path = %exchange.path(),
            "cut by the control API mid-stream: {}",
            style.describe(),
        );
        exchange.event(
            "cut",
            || json!({"by": "api", "style": style.as_str(), "before_headers": false}),
        );
        self.finish(style, ApiCut(style).into())
    }

    fn finish(&self, style: CutStyle, err: BoxError) -> Option<BoxError> {
        match style {
            CutStyle::Truncate => Some(err),
            CutStyle::Reset => {
                if let Some(reset) = &self.exchange.reset {
                    reset.flip();
                }
                Some(err)
            }
            CutStyle::Clean => None,
        }
    }
}

impl Body for EdgeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.body.is_some() {
            if let Poll::Ready(style) = this.exchange.entry.poll_cut(cx) {
                return Poll::Ready(this.cut_by_api(style).map(Err));
            }
        }
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                // hyper stops polling once a length-delimited body is complete: no `None` follows.
                let complete = body.is_end_stream();
                if let Some(data) = frame.data_ref() {
                    this.exchange.sent(data);
                }
                if complete {
                    this.ended();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(this.cut(err).map(Err)),
            Poll::Ready(None) => {
                this.ended();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl EdgeBody {
    fn ended(&mut self) {
        self.state = State::Ended;
        self.body = None;
        self.exchange.entry.tracked.ending();
        self.exchange.end(Ender::Nobody, Phase::Complete);
    }
}

impl Drop for EdgeBody {
    fn drop(&mut self) {
        if self.state == State::Streaming && self.exchange.ended.is_none() {
            self.exchange.gone(Phase::Body);
        }
    }
}
