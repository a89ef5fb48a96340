//! The single edge where errors stop being data: every typed failure from the layers below (a timer
//! that fired, an upstream that refused or broke off, a client's own mistake) becomes what a client of
//! a real balancer would see, one log line and one metric. Before headers that is a short text response
//! (4xx for the client's mistakes, 502/504 for the upstream's), in the proxy's own words: the error
//! chain, with hyper's internals, goes to the log line, never to the client. After headers
//! the body fails, and hyper aborts the exchange exactly like nginx does: HTTP/1.1 gets a chunked body
//! without its last chunk and a closed connection (curl exits 18), HTTP/2 a RST_STREAM. A cut the
//! proxy makes itself may instead end cleanly or with a reset ([`CutStyle`]).
//!
//! Each exchange's bookkeeping (the table of open streams, events, histograms, the access log) is
//! `exchange.rs`'s; the edge says how it ended, and cuts it when the control API asks.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, CONNECTION,
    CONTENT_TYPE,
};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use keepalive_common::duration::display;
use serde_json::json;
use tower::{Layer, Service};

use crate::access::{Ender, Phase};
use crate::control::settings::Live;
use crate::control::Control;
use crate::cut_style::{CutStyle, CUT_STYLE_HEADER};
use crate::exchange::Exchange;
use crate::faults::{BadFaultHeader, Fault, FaultCut};
use crate::forward::ClientError;
use crate::metrics::Metrics;
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
            &layer.metrics,
            &layer.control,
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

impl Exchange {
    /// The control API cut the stream before any header arrived: there is no body to end, so the
    /// client is answered 502, and with the `reset` style its HTTP/1 connection is reset instead.
    fn cut_before_headers(&mut self, style: CutStyle) -> Response<UnsyncBoxBody<Bytes, BoxError>> {
        self.cut_by_api(
            style,
            Phase::Headers,
            " before response headers: answering 502",
            false,
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

fn text_response(status: StatusCode, message: String) -> Response<UnsyncBoxBody<Bytes, BoxError>> {
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
    // As readable from a page on another origin as the origin's own answers (the live page's 504).
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(TIMER_HEADER),
    );
    response
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
        let how = format!(" mid-stream: {}", style.describe());
        self.exchange.cut_by_api(style, Phase::Body, &how, false);
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
