//! `max_duration`: the total lifetime of one exchange, from the request's arrival to the end of the
//! response body, heartbeats or not (Envoy's route timeout, GCP's backend service timeout). Before
//! headers it answers 504; after, it cuts the stream.
//!
//! tower-http's `ResponseBodyDeadlineLayer` starts its clock when the response headers arrive, so the
//! time spent waiting for them would not count; these balancers count it, so the deadline here is
//! fixed once, when the request arrives, and shared by the header wait and the body.

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

#[derive(Clone, Copy)]
pub struct MaxDurationLayer {
    limit: Option<Duration>,
}

impl MaxDurationLayer {
    pub fn new(limit: Option<Duration>) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for MaxDurationLayer {
    type Service = MaxDuration<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MaxDuration {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Clone)]
pub struct MaxDuration<S> {
    inner: S,
    limit: Option<Duration>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for MaxDuration<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = BoxError>,
{
    type Response = Response<DeadlineBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let deadline = self.limit.map(|limit| (Instant::now() + limit, limit));
        ResponseFuture {
            response: self.inner.call(request),
            expiry: expiry(deadline),
            deadline,
        }
    }
}

fn expiry(deadline: Option<(Instant, Duration)>) -> Expiry {
    match deadline {
        Some((at, limit)) => Expiry::at(at, limit),
        None => Expiry::after(None),
    }
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        response: F,
        #[pin]
        expiry: Expiry,
        deadline: Option<(Instant, Duration)>,
    }
}

impl<F, B> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, BoxError>>,
{
    type Output = Result<Response<DeadlineBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(response) = this.response.poll(cx) {
            let deadline = *this.deadline;
            return Poll::Ready(response.map(|response| {
                response.map(|body| DeadlineBody {
                    body,
                    expiry: expiry(deadline),
                })
            }));
        }
        this.expiry
            .poll_expired(cx)
            .map(|limit| Err(TimerExpired::new(Timer::MaxDuration, limit).into()))
    }
}

pin_project! {
    /// A response body that fails with [`TimerExpired`] at the exchange's deadline, even mid-flow.
    pub struct DeadlineBody<B> {
        #[pin]
        body: B,
        #[pin]
        expiry: Expiry,
    }
}

impl<B> Body for DeadlineBody<B>
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
        let this = self.project();
        if let Poll::Ready(limit) = this.expiry.poll_expired(cx) {
            return Poll::Ready(Some(Err(
                TimerExpired::new(Timer::MaxDuration, limit).into()
            )));
        }
        this.body
            .poll_frame(cx)
            .map(|frame| frame.map(|frame| frame.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
