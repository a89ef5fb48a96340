//! The three timers of one exchange, in one layer (as linkerd2-proxy's stream timeouts hold the
//! response-headers, idle and total limits together): they start at the same call, and a response body
//! needs one wrapper that knows them all, not one per timer.
//!
//! - `first_byte`: from the call to the upstream's response headers (nginx's `proxy_read_timeout` before
//!   headers, Heroku's 30 s H12, Cloudflare's 524).
//! - `idle`: the longest the upstream may stay silent, while the proxy waits for headers and between two
//!   body chunks (nginx's `proxy_read_timeout`, AWS ALB's and Cloudflare's idle timeouts): the timer that
//!   whitespace heartbeats exist to beat. Like nginx, it runs only while the proxy is actually waiting to
//!   read from the upstream: a chunk that is ready is always delivered, and the timer restarts when the
//!   next wait does.
//! - `max_duration`: the total lifetime of the exchange, from the request's arrival to the end of the
//!   response body, heartbeats or not (Envoy's route timeout, GCP's backend service timeout). Its deadline
//!   is fixed once, at the call, and checked before the body is read, so heartbeats cannot outlive it.
//!
//! Before headers an expiry fails the call with [`TimerExpired`] (the edge answers 504); after them it
//! fails the body (the edge cuts the stream). When several expire at the same poll before headers, the
//! error names `idle`, then `first_byte`, then `max_duration`: the name points at the remedy, and silence
//! is the cause a heartbeat fixes. With nginx's preset, where `first_byte` and `idle` are both
//! `proxy_read_timeout`, the 504 names `idle`. In the body `max_duration` is checked first, since it
//! is checked before the upstream is read at all.
//!
//! tower-http has a layer for each span, and none fits. `TimeoutLayer::with_status_code` answers by
//! itself with a bare status, which the edge could not tell from an upstream's 504, nor log and count as
//! a timer. `ResponseBodyTimeoutLayer` measures from the first body poll and checks its timer before the
//! body, so a client that reads slowly can make it fire while the upstream's next chunk is already
//! waiting. `ResponseBodyDeadlineLayer` starts its clock at the headers, so the wait for them would not
//! count, where these balancers count it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::{Expiry, Timer, TimerExpired};
use crate::BoxError;

/// The limits of one exchange; `None` turns a timer off, and an off timer registers nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamTimeouts {
    pub first_byte: Option<Duration>,
    pub idle: Option<Duration>,
    pub max_duration: Option<Duration>,
}

#[derive(Clone, Copy)]
pub struct StreamTimeoutsLayer {
    timeouts: StreamTimeouts,
}

impl StreamTimeoutsLayer {
    pub fn new(timeouts: StreamTimeouts) -> Self {
        Self { timeouts }
    }
}

impl<S> Layer<S> for StreamTimeoutsLayer {
    type Service = EnforceTimeouts<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EnforceTimeouts {
            inner,
            timeouts: self.timeouts,
        }
    }
}

#[derive(Clone)]
pub struct EnforceTimeouts<S> {
    inner: S,
    timeouts: StreamTimeouts,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for EnforceTimeouts<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let deadline = self
            .timeouts
            .max_duration
            .map(|limit| (Instant::now() + limit, limit));
        ResponseFuture {
            response: self.inner.call(request),
            first_byte: Expiry::after(self.timeouts.first_byte),
            idle: Expiry::after(self.timeouts.idle),
            max_duration: until(deadline),
            idle_limit: self.timeouts.idle,
            deadline,
        }
    }
}

/// The `max_duration` expiry at the exchange's deadline, shared by the header wait and the body.
fn until(deadline: Option<(Instant, Duration)>) -> Expiry {
    match deadline {
        Some((at, limit)) => Expiry::at(at, limit),
        None => Expiry::after(None),
    }
}

pin_project! {
    /// Waits for the response headers under all three timers.
    pub struct ResponseFuture<F> {
        #[pin]
        response: F,
        #[pin]
        first_byte: Expiry,
        #[pin]
        idle: Expiry,
        #[pin]
        max_duration: Expiry,
        idle_limit: Option<Duration>,
        deadline: Option<(Instant, Duration)>,
    }
}

impl<F, B> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, BoxError>>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(response) = this.response.poll(cx) {
            let (idle, deadline) = (*this.idle_limit, *this.deadline);
            return Poll::Ready(response.map(|response| {
                response.map(|body| ResponseBody {
                    body,
                    idle: Expiry::after(idle),
                    max_duration: until(deadline),
                    waiting: false,
                })
            }));
        }
        // In the order the module docs give: the first expired timer names the failure.
        let expired = [
            (Timer::Idle, this.idle),
            (Timer::FirstByte, this.first_byte),
            (Timer::MaxDuration, this.max_duration),
        ]
        .into_iter()
        .find_map(|(timer, expiry)| match expiry.poll_expired(cx) {
            Poll::Ready(limit) => Some(TimerExpired::new(timer, limit)),
            Poll::Pending => None,
        });
        match expired {
            Some(expired) => Poll::Ready(Err(expired.into())),
            None => Poll::Pending,
        }
    }
}

pin_project! {
    /// A response body that fails with [`TimerExpired`] when the upstream stays silent too long, or at
    /// the exchange's deadline, even mid-flow.
    pub struct ResponseBody<B> {
        #[pin]
        body: B,
        #[pin]
        idle: Expiry,
        #[pin]
        max_duration: Expiry,
        // Whether the idle timer is running for the current wait; it restarts when a new wait begins.
        waiting: bool,
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Poll::Ready(limit) = this.max_duration.poll_expired(cx) {
            return Poll::Ready(Some(Err(
                TimerExpired::new(Timer::MaxDuration, limit).into()
            )));
        }
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            *this.waiting = false;
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if !*this.waiting {
            *this.waiting = true;
            this.idle.as_mut().restart();
        }
        this.idle
            .poll_expired(cx)
            .map(|limit| Some(Err(TimerExpired::new(Timer::Idle, limit).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
