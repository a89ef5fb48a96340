//! The single edge where errors stop being data: every typed failure from the layers below (a timer
//! that fired, an upstream that refused or broke off, a client's own mistake) becomes what a client of
//! a real balancer would see, one log line and one metric. Before headers that is a short text response
//! (4xx for the client's mistakes, 502/504 for the upstream's), in the proxy's own words: the error
//! chain, with hyper's internals, goes to the log line, never to the client. After headers
//! the body fails, and hyper aborts the exchange exactly like nginx does: HTTP/1.1 gets a chunked body
//! without its last chunk and a closed connection (curl exits 18), HTTP/2 a RST_STREAM. A cut the
//! proxy makes itself may instead end cleanly or with a reset ([`CutStyle`]).
//!
//! The edge also owns each exchange's bookkeeping: `proxy_streams_active`, the client connection's
//! in-flight guard (which keeps the keep-alive timer off), and noticing a client that went away.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use keepalive_common::duration::display;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::cut_style::{CutStyle, CUT_STYLE_HEADER};
use crate::faults::reset::ResetSwitch;
use crate::faults::{BadFaultHeader, Fault, FaultCut};
use crate::forward::ClientError;
use crate::metrics::Metrics;
use crate::server::ConnectionCut;
use crate::timeouts::client_conn::InFlight;
use crate::timeouts::{Timer, TimerExpired};
use crate::tls::upstream::UpstreamTlsError;
use crate::BoxError;

/// Names the proxy timer behind a response the proxy made itself, so tools can tell it from an upstream's.
pub const TIMER_HEADER: &str = "x-keepalive-timer";

#[derive(Clone)]
pub struct EdgeLayer {
    metrics: Metrics,
    cut_style: CutStyle,
    /// Whether a request may choose its own cut style by header.
    from_headers: bool,
}

impl EdgeLayer {
    pub fn new(metrics: Metrics, cut_style: CutStyle, from_headers: bool) -> Self {
        Self {
            metrics,
            cut_style,
            from_headers,
        }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Edge {
            inner,
            metrics: self.metrics.clone(),
            cut_style: self.cut_style,
            from_headers: self.from_headers,
        }
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    metrics: Metrics,
    cut_style: CutStyle,
    from_headers: bool,
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
        let cut_style = if self.from_headers {
            CutStyle::requested(request.headers(), self.cut_style)
        } else {
            Ok(self.cut_style)
        };
        // The upstream is not part of the experiment's plumbing.
        request.headers_mut().remove(CUT_STYLE_HEADER);
        let exchange = Exchange::begin(
            &request,
            self.metrics.clone(),
            cut_style.as_ref().copied().unwrap_or_default(),
        );
        if let Err(bad) = cut_style {
            let response = exchange.failed_before_headers(&bad);
            return Box::pin(std::future::ready(Ok(exchange.respond(response))));
        }
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match response.await {
                Ok(response) => response.map(BodyExt::boxed_unsync),
                Err(err) => exchange.failed_before_headers(err.as_ref()),
            };
            Ok(exchange.respond(response))
        })
    }
}

/// One request/response through the proxy, from arrival to the end (or abandonment) of the body.
struct Exchange {
    metrics: Metrics,
    request_id: HeaderValue,
    method: Method,
    path: String,
    started: Instant,
    cut_style: CutStyle,
    /// The client connection's reset switch: HTTP/1 only, where a reset ends the whole connection.
    reset: Option<ResetSwitch>,
    cut: Option<ConnectionCut>,
    _in_flight: Option<InFlight>,
}

impl Exchange {
    fn begin<B>(request: &Request<B>, metrics: Metrics, cut_style: CutStyle) -> Self {
        metrics.stream_opened();
        Self {
            metrics,
            request_id: request
                .headers()
                .get("x-request-id")
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("-")),
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            started: Instant::now(),
            cut_style,
            reset: request
                .extensions()
                .get::<ResetSwitch>()
                .filter(|_| request.version() < http::Version::HTTP_2)
                .cloned(),
            cut: request.extensions().get::<ConnectionCut>().cloned(),
            _in_flight: request.extensions().get::<InFlight>().cloned(),
        }
    }

    fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    /// The response a real balancer would have sent for a failure before any header arrived.
    fn failed_before_headers(
        &self,
        err: &(dyn StdError + 'static),
    ) -> Response<UnsyncBoxBody<Bytes, BoxError>> {
        let elapsed = display(self.started.elapsed());
        let (status, timer, message) = match Failure::of(err) {
            Failure::Timer(expired) => {
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
                    path = %self.path,
                    "{} timer fired before response headers: answering 504",
                    expired.timer,
                );
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
                (
                    StatusCode::BAD_GATEWAY,
                    None,
                    "502 Bad Gateway: the upstream refused the connection\n".to_owned(),
                )
            }
            Failure::UpstreamTls => {
                self.metrics.upstream_error("tls_handshake");
                tracing::warn!(%elapsed, request_id = self.request_id(), error = %chain(err), "TLS handshake with the upstream failed: answering 502");
                (
                    StatusCode::BAD_GATEWAY,
                    None,
                    "502 Bad Gateway: TLS handshake with the upstream failed\n".to_owned(),
                )
            }
            Failure::Connect => {
                self.metrics.upstream_error("connect_failed");
                tracing::warn!(%elapsed, request_id = self.request_id(), error = %chain(err), "cannot connect to the upstream: answering 502");
                (
                    StatusCode::BAD_GATEWAY,
                    None,
                    "502 Bad Gateway: cannot connect to the upstream\n".to_owned(),
                )
            }
            Failure::Client(client) => {
                let status = client.status();
                self.metrics.client_error(client.kind());
                tracing::info!(
                    %status,
                    kind = client.kind(),
                    error = %chain(err),
                    request_id = self.request_id(),
                    path = %self.path,
                    "refused the client's request",
                );
                (status, None, format!("{status}: {client}\n"))
            }
            Failure::BadFaultHeader => {
                self.metrics.client_error("fault_header");
                (
                    StatusCode::BAD_REQUEST,
                    None,
                    format!("400 Bad Request: {err}\n"),
                )
            }
            // Faults act on bodies only: this is a bug in the layers below, not an upstream's failure.
            Failure::Fault(_) => {
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
                (
                    StatusCode::BAD_GATEWAY,
                    None,
                    "502 Bad Gateway: the upstream failed before sending a response\n".to_owned(),
                )
            }
        };
        let mut response = Response::new(
            Full::new(Bytes::from(message))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(timer) = timer {
            headers.insert(TIMER_HEADER, HeaderValue::from_static(timer.as_str()));
        }
        response
    }

    fn respond(self, response: Response<UnsyncBoxBody<Bytes, BoxError>>) -> Response<EdgeBody> {
        self.metrics.response_sent(response.status());
        // hyper never polls these bodies to their end, so their being dropped means nothing.
        let bodiless = self.method == Method::HEAD
            || matches!(
                response.status(),
                StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
            );
        let state = if bodiless || response.body().is_end_stream() {
            State::Ended
        } else {
            State::Streaming
        };
        // A body of announced length, or an encoded one, cannot end early and look complete: a
        // clean cut would be malformed (HTTP/2), a truncation anyway (HTTP/1), or a gzip stream
        // without its trailer, so it is cut the nginx way instead.
        let headers = response.headers();
        let fixed_framing = headers.contains_key(http::header::CONTENT_LENGTH)
            || headers.contains_key(http::header::CONTENT_ENCODING);
        response.map(|body| EdgeBody {
            body: Some(body),
            fixed_framing,
            bytes: 0,
            state,
            exchange: self,
        })
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
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
    bytes: u64,
    state: State,
    exchange: Exchange,
}

impl EdgeBody {
    /// Ends the stream after `err`: with that error (hyper then truncates, or resets the HTTP/2
    /// stream), or, for a cut in the `clean` style, with `None`, a normal end of body.
    fn cut(&mut self, err: BoxError) -> Option<BoxError> {
        self.state = State::Cut;
        self.body = None;
        let exchange = &self.exchange;
        let elapsed = display(exchange.started.elapsed());
        let styled = match exchange.cut_style {
            CutStyle::Clean if self.fixed_framing => CutStyle::Truncate,
            style => style,
        };
        let style = match Failure::of(err.as_ref()) {
            Failure::Timer(expired) => {
                exchange.metrics.timer_fired(expired.timer);
                let limit = display(expired.limit);
                tracing::warn!(
                    timer = %expired.timer,
                    %limit,
                    %elapsed,
                    bytes = self.bytes,
                    cut_style = styled.as_str(),
                    request_id = exchange.request_id(),
                    path = %exchange.path,
                    "{} timer fired mid-stream: {}",
                    expired.timer,
                    styled.describe(),
                );
                styled
            }
            // A reset is that fault's whole point; it flipped the switch itself.
            Failure::Fault(Fault::ResetAfter) => CutStyle::Reset,
            Failure::Fault(_) => styled,
            Failure::Client(client) => {
                exchange.metrics.client_error(client.kind());
                tracing::info!(
                    kind = client.kind(),
                    error = %chain(err.as_ref()),
                    %elapsed,
                    bytes = self.bytes,
                    request_id = exchange.request_id(),
                    path = %exchange.path,
                    "the client's request broke off mid-stream: cutting the client off without the last chunk",
                );
                CutStyle::Truncate
            }
            _ => {
                exchange.metrics.upstream_error("body_failed");
                tracing::warn!(
                    error = %chain(err.as_ref()),
                    %elapsed,
                    bytes = self.bytes,
                    request_id = exchange.request_id(),
                    path = %exchange.path,
                    "upstream broke off the stream: cutting the client off without the last chunk",
                );
                CutStyle::Truncate
            }
        };
        match style {
            CutStyle::Truncate => Some(err),
            CutStyle::Reset => {
                if let Some(reset) = &exchange.reset {
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
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                // hyper stops polling once a length-delimited body is complete: no `None` follows.
                if body.is_end_stream() {
                    self.state = State::Ended;
                }
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(self.cut(err).map(Err)),
            Poll::Ready(None) => {
                self.state = State::Ended;
                self.body = None;
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

impl Drop for EdgeBody {
    fn drop(&mut self) {
        let by_proxy = self
            .exchange
            .cut
            .as_ref()
            .is_some_and(ConnectionCut::by_proxy);
        if self.state == State::Streaming && !by_proxy {
            let exchange = &self.exchange;
            exchange.metrics.client_disconnected();
            let elapsed = display(exchange.started.elapsed());
            tracing::info!(
                %elapsed,
                bytes = self.bytes,
                request_id = exchange.request_id(),
                path = %exchange.path,
                "client went away mid-stream: closing the upstream's connection",
            );
        }
    }
}
