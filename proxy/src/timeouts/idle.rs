//! `idle`: the longest the upstream may stay silent: while the proxy waits for response headers (where
//! it answers 504), and between two body chunks (where it cuts the stream). This is nginx's
//! `proxy_read_timeout`, AWS ALB's and Cloudflare's idle timeouts: the timer that whitespace heartbeats
//! exist to beat.
//!
//! tower-http's `ResponseBodyTimeoutLayer` measures from when the body is first polled and checks its
//! timer before the body, so a client that reads slowly can make it fire while the upstream's next chunk
//! is already waiting. Like nginx, this timer only runs while the proxy is actually waiting to read from
//! the upstream: a chunk that is ready is always delivered, and the timer restarts when the next wait does.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{Expiry, Timer, TimerExpired};
use crate::BoxError;

#[derive(Clone, Copy)]
pub struct IdleTimeoutLayer {
    limit: Option<Duration>,
}

impl IdleTimeoutLayer {
    pub fn new(limit: Option<Duration>) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for IdleTimeoutLayer {
    type Service = IdleTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdleTimeout {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Clone)]
pub struct IdleTimeout<S> {
    inner: S,
    limit: Option<Duration>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for IdleTimeout<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = BoxError>,
{
    type Response = Response<IdleBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        ResponseFuture {
            response: self.inner.call(request),
            expiry: Expiry::after(self.limit),
            limit: self.limit,
        }
    }
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        response: F,
        #[pin]
        expiry: Expiry,
        limit: Option<Duration>,
    }
}

impl<F, B> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, BoxError>>,
{
    type Output = Result<Response<IdleBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(response) = this.response.poll(cx) {
            let limit = *this.limit;
            return Poll::Ready(response.map(|response| {
                response.map(|body| IdleBody {
                    body,
                    expiry: Expiry::after(limit),
                    waiting: false,
                })
            }));
        }
        this.expiry
            .poll_expired(cx)
            .map(|limit| Err(TimerExpired::new(Timer::Idle, limit).into()))
    }
}

pin_project! {
    /// A response body that fails with [`TimerExpired`] when the upstream stays silent too long.
    pub struct IdleBody<B> {
        #[pin]
        body: B,
        #[pin]
        expiry: Expiry,
        // Whether the timer is running for the current wait; it restarts when a new wait begins.
        waiting: bool,
    }
}

impl<B> Body for IdleBody<B>
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
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            *this.waiting = false;
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if !*this.waiting {
            *this.waiting = true;
            this.expiry.as_mut().restart();
        }
        this.expiry
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
