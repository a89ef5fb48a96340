//! `first_byte`: from the moment the proxy starts forwarding a request to the moment the upstream's
//! response headers arrive (nginx's `proxy_read_timeout` before headers, Heroku's 30 s H12, Cloudflare's
//! 524). On expiry the service fails with [`TimerExpired`]; the edge answers 504.
//!
//! tower-http's `TimeoutLayer::with_status_code` measures the same span, but it answers by itself with a
//! bare status: the edge could not tell its 504 from an upstream's, nor log and count it as this timer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{Expiry, Timer, TimerExpired};
use crate::BoxError;

#[derive(Clone, Copy)]
pub struct FirstByteTimeoutLayer {
    limit: Option<Duration>,
}

impl FirstByteTimeoutLayer {
    pub fn new(limit: Option<Duration>) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for FirstByteTimeoutLayer {
    type Service = FirstByteTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FirstByteTimeout {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Clone)]
pub struct FirstByteTimeout<S> {
    inner: S,
    limit: Option<Duration>,
}

impl<S, B> Service<Request<B>> for FirstByteTimeout<S>
where
    S: Service<Request<B>, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ResponseFuture {
            response: self.inner.call(request),
            expiry: Expiry::after(self.limit),
        }
    }
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        response: F,
        #[pin]
        expiry: Expiry,
    }
}

impl<F, T> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, BoxError>>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(response) = this.response.poll(cx) {
            return Poll::Ready(response);
        }
        this.expiry
            .poll_expired(cx)
            .map(|limit| Err(TimerExpired::new(Timer::FirstByte, limit).into()))
    }
}
