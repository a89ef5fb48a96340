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
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::{Expiry, Timer, TimerExpired};
use crate::control::settings::{Live, Settings};
use crate::control::streams::Tracked;
use crate::BoxError;

/// The limits of one exchange; `None` turns a timer off, and an off timer registers nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamTimeouts {
    pub first_byte: Option<Duration>,
    pub idle: Option<Duration>,
    pub max_duration: Option<Duration>,
}

/// Each exchange runs under the limits in force when it is called, to its end.
#[derive(Clone)]
pub struct StreamTimeoutsLayer {
    live: Live,
}

impl StreamTimeoutsLayer {
    pub fn new(live: Live) -> Self {
        Self { live }
    }
}

impl<S> Layer<S> for StreamTimeoutsLayer {
    type Service = EnforceTimeouts<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EnforceTimeouts {
            inner,
            live: self.live.clone(),
        }
    }
}

#[derive(Clone)]
pub struct EnforceTimeouts<S> {
    inner: S,
    live: Live,
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
        // The edge read the settings for this exchange; a layer tested alone reads them itself.
        let timeouts = request
            .extensions()
            .get::<Settings>()
            .copied()
            .unwrap_or_else(|| self.live.now())
            .stream_timeouts();
        // The control API lists each stream with the time its timers have left.
        let tracked = request.extensions().get::<Arc<Tracked>>().cloned();
        if let Some(tracked) = &tracked {
            tracked.timed(timeouts);
        }
        let deadline = timeouts
            .max_duration
            .map(|limit| (Instant::now() + limit, limit));
        ResponseFuture {
            response: self.inner.call(request),
            first_byte: Expiry::after(timeouts.first_byte),
            idle: Expiry::after(timeouts.idle),
            max_duration: until(deadline),
            idle_limit: timeouts.idle,
            deadline,
            tracked,
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
        tracked: Option<Arc<Tracked>>,
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
            let (idle, deadline, tracked) = (*this.idle_limit, *this.deadline, this.tracked.take());
            return Poll::Ready(response.map(|response| {
                response.map(|body| ResponseBody {
                    body,
                    idle: Expiry::after(idle),
                    max_duration: until(deadline),
                    waiting: false,
                    tracked,
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
        tracked: Option<Arc<Tracked>>,
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
            if *this.waiting {
                *this.waiting = false;
                if let Some(tracked) = this.tracked {
                    tracked.waiting(None);
                }
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if !*this.waiting {
            *this.waiting = true;
            this.idle.as_mut().restart();
            if let Some(tracked) = this.tracked {
                tracked.waiting(Some(Instant::now()));
            }
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

#[cfg(test)]
mod tests {
    //! Every timer and every edge on tokio's paused clock: the upstream is a `service_fn` that answers
    //! after a virtual delay, and its body is a channel the test feeds, so each test says exactly when
    //! headers and frames arrive and polls once to see what the client would get at that instant.

    use std::convert::Infallible;
    use std::future::poll_fn;

    use http_body_util::Full;
    use tokio::sync::mpsc;
    use tokio::time::{advance, sleep};

    use super::*;

    const LIMIT: Duration = Duration::from_millis(500);
    // tokio's timers resolve to the millisecond: one tick before a limit is the last instant it holds.
    const TICK: Duration = Duration::from_millis(1);
    const AT_ONCE: Duration = Duration::ZERO;

    type UpstreamFuture<B> = Pin<Box<dyn Future<Output = Result<Response<B>, BoxError>>>>;

    /// An upstream body the test feeds frame by frame; dropping the sender ends it cleanly.
    struct Upstream(mpsc::UnboundedReceiver<Bytes>);

    impl Upstream {
        fn new() -> (mpsc::UnboundedSender<Bytes>, Self) {
            let (sender, receiver) = mpsc::unbounded_channel();
            (sender, Self(receiver))
        }
    }

    impl Body for Upstream {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0
                .poll_recv(cx)
                .map(|data| data.map(|data| Ok(Frame::data(data))))
        }
    }

    /// What one poll of the response headers gave.
    #[derive(Debug, PartialEq)]
    enum Headers {
        Pending,
        Arrived,
        Expired(TimerExpired),
    }

    /// What one poll of the response body gave.
    #[derive(Debug, PartialEq)]
    enum Read {
        Pending,
        Data(Bytes),
        End,
        Expired(TimerExpired),
    }

    fn data(text: &'static str) -> Read {
        Read::Data(Bytes::from_static(text.as_bytes()))
    }

    fn expired(timer: Timer, limit: Duration) -> TimerExpired {
        TimerExpired::new(timer, limit)
    }

    /// Settings that hold `timeouts` and never change.
    fn live(timeouts: StreamTimeouts) -> Live {
        let mut settings = Settings::of(&crate::ProxyConfig::default());
        settings.timers.first_byte = timeouts.first_byte;
        settings.timers.idle = timeouts.idle;
        settings.timers.max_duration = timeouts.max_duration;
        Live::fixed(settings)
    }

    fn timer_error(error: BoxError) -> TimerExpired {
        match error.downcast::<TimerExpired>() {
            Ok(expired) => *expired,
            Err(error) => panic!("a timer error, not {error}"),
        }
    }

    /// One exchange through the layer, polled by hand.
    struct Exchange<B> {
        response: Pin<Box<ResponseFuture<UpstreamFuture<B>>>>,
        body: Option<Pin<Box<ResponseBody<B>>>>,
    }

    impl<B> Exchange<B>
    where
        B: Body<Data = Bytes> + 'static,
        B::Error: Into<BoxError>,
    {
        /// Calls the layer now; the upstream's headers, with `body`, arrive `headers_after` later.
        async fn start(timeouts: StreamTimeouts, headers_after: Duration, body: B) -> Self {
            let mut body = Some(body);
            let upstream = tower::service_fn(move |_: Request<()>| {
                let body = body.take();
                // Counted from the call, not from the first poll.
                let headers = sleep(headers_after);
                Box::pin(async move {
                    headers.await;
                    body.map(Response::new)
                        .ok_or_else(|| BoxError::from("the upstream answers one exchange"))
                }) as UpstreamFuture<B>
            });
            let mut service = StreamTimeoutsLayer::new(live(timeouts)).layer(upstream);
            poll_fn(|cx| service.poll_ready(cx))
                .await
                .expect("a service_fn is always ready");
            Self {
                response: Box::pin(service.call(Request::new(()))),
                body: None,
            }
        }

        async fn headers(&mut self) -> Headers {
            match poll_fn(|cx| Poll::Ready(self.response.as_mut().poll(cx))).await {
                Poll::Pending => Headers::Pending,
                Poll::Ready(Ok(response)) => {
                    self.body = Some(Box::pin(response.into_body()));
                    Headers::Arrived
                }
                Poll::Ready(Err(error)) => Headers::Expired(timer_error(error)),
            }
        }

        fn body(&mut self) -> Pin<&mut ResponseBody<B>> {
            self.body
                .as_mut()
                .expect("the headers arrived before the body is read")
                .as_mut()
        }

        async fn read(&mut self) -> Read {
            let mut body = self.body();
            match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
                Poll::Pending => Read::Pending,
                Poll::Ready(None) => Read::End,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Read::Data(data),
                    Err(frame) => panic!("only data frames are sent, not {frame:?}"),
                },
                Poll::Ready(Some(Err(error))) => Read::Expired(timer_error(error)),
            }
        }
    }

    /// An exchange whose headers arrived after `headers_after`, with the sender of its body.
    async fn streaming(
        timeouts: StreamTimeouts,
        headers_after: Duration,
    ) -> (mpsc::UnboundedSender<Bytes>, Exchange<Upstream>) {
        let (upstream, body) = Upstream::new();
        let mut exchange = Exchange::start(timeouts, headers_after, body).await;
        advance(headers_after).await;
        assert_eq!(exchange.headers().await, Headers::Arrived);
        (upstream, exchange)
    }

    fn send(upstream: &mpsc::UnboundedSender<Bytes>, text: &'static str) {
        upstream
            .send(Bytes::from_static(text.as_bytes()))
            .expect("the exchange still reads its body");
    }

    #[tokio::test(start_paused = true)]
    async fn first_byte_fires_at_its_limit_and_not_before() {
        let timeouts = StreamTimeouts {
            first_byte: Some(LIMIT),
            ..StreamTimeouts::default()
        };
        let (_upstream, body) = Upstream::new();
        let mut exchange = Exchange::start(timeouts, Duration::from_secs(3600), body).await;
        assert_eq!(exchange.headers().await, Headers::Pending);
        advance(LIMIT - TICK).await;
        assert_eq!(exchange.headers().await, Headers::Pending);
        advance(TICK).await;
        assert_eq!(
            exchange.headers().await,
            Headers::Expired(expired(Timer::FirstByte, LIMIT))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn first_byte_does_not_apply_once_headers_have_arrived() {
        let timeouts = StreamTimeouts {
            first_byte: Some(LIMIT),
            ..StreamTimeouts::default()
        };
        let (upstream, mut exchange) = streaming(timeouts, LIMIT - TICK).await;
        assert_eq!(exchange.read().await, Read::Pending);
        advance(LIMIT * 10).await;
        assert_eq!(exchange.read().await, Read::Pending);
        send(&upstream, "late line\n");
        assert_eq!(exchange.read().await, data("late line\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_before_headers_fails_the_call_at_its_limit_and_not_before() {
        let timeouts = StreamTimeouts {
            idle: Some(LIMIT),
            ..StreamTimeouts::default()
        };
        let (_upstream, body) = Upstream::new();
        let mut exchange = Exchange::start(timeouts, Duration::from_secs(3600), body).await;
        assert_eq!(exchange.headers().await, Headers::Pending);
        advance(LIMIT - TICK).await;
        assert_eq!(exchange.headers().await, Headers::Pending);
        advance(TICK).await;
        assert_eq!(
            exchange.headers().await,
            Headers::Expired(expired(Timer::Idle, LIMIT))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_cuts_a_silent_body_at_its_limit_and_not_before() {
        let timeouts = StreamTimeouts {
            idle: Some(LIMIT),
            ..StreamTimeouts::default()
        };
        // Headers just inside the limit: the body's silence is counted from its own wait, not the call.
        let (upstream, mut exchange) = streaming(timeouts, LIMIT - TICK).await;
        send(&upstream, "first line\n");
        assert_eq!(exchange.read().await, data("first line\n"));
        assert_eq!(exchange.read().await, Read::Pending);
        advance(LIMIT - TICK).await;
        assert_eq!(exchange.read().await, Read::Pending);
        advance(TICK).await;
        assert_eq!(
            exchange.read().await,
            Read::Expired(expired(Timer::Idle, LIMIT))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_is_reset_by_each_data_frame() {
        let timeouts = StreamTimeouts {
            idle: Some(LIMIT),
            ..StreamTimeouts::default()
        };
        let (upstream, mut exchange) = streaming(timeouts, AT_ONCE).await;
        let started = Instant::now();
        while started.elapsed() < LIMIT * 5 {
            assert_eq!(exchange.read().await, Read::Pending);
            advance(LIMIT - TICK).await;
            send(&upstream, " ");
            assert_eq!(exchange.read().await, data(" "));
        }
        assert_eq!(exchange.read().await, Read::Pending);
        advance(LIMIT).await;
        assert_eq!(
            exchange.read().await,
            Read::Expired(expired(Timer::Idle, LIMIT))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_delivers_a_frame_that_is_ready_after_its_limit() {
        let timeouts = StreamTimeouts {
            idle: Some(LIMIT),
            ..StreamTimeouts::default()
        };
        let (upstream, mut exchange) = streaming(timeouts, AT_ONCE).await;
        assert_eq!(exchange.read().await, Read::Pending);
        // The chunk arrived in time, but the client came back for it only after the limit.
        advance(LIMIT - TICK).await;
        send(&upstream, "waiting line\n");
        advance(LIMIT).await;
        assert_eq!(exchange.read().await, data("waiting line\n"));
        // The next wait starts a fresh limit.
        assert_eq!(exchange.read().await, Read::Pending);
        advance(LIMIT - TICK).await;
        assert_eq!(exchange.read().await, Read::Pending);
        advance(TICK).await;
        assert_eq!(
            exchange.read().await,
            Read::Expired(expired(Timer::Idle, LIMIT))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn max_duration_before_headers_fails_the_call_at_its_limit() {
        let timeouts = StreamTimeouts {
            max_duration: Some(LIMIT),
            ..StreamTimeouts::default()
        };
        let (_upstream, body) = Upstream::new();
        let mut exchange = Exchange::start(timeouts, Duration::from_secs(3600), body).await;
        assert_eq!(exchange.headers().await, Headers::Pending);
        advance(LIMIT - TICK).await;
        assert_eq!(exchange.headers().await, Headers::Pending);
        advance(TICK).await;
        assert_eq!(
            exchange.headers().await,
            Headers::Expired(expired(Timer::MaxDuration, LIMIT))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn max_duration_cuts_a_body_mid_flow_at_the_deadline_counted_from_the_request() {
        let timeouts = StreamTimeouts {
            max_duration: Some(LIMIT),
            ..StreamTimeouts::default()
        };
        let headers_after = LIMIT / 2;
        let (upstream, mut exchange) = streaming(timeouts, headers_after).await;
        send(&upstream, "first line\n");
        assert_eq!(exchange.read().await, data("first line\n"));
        advance(LIMIT - headers_after - TICK).await;
        send(&upstream, "last line in time\n");
        assert_eq!(exchange.read().await, data("last line in time\n"));
        assert_eq!(exchange.read().await, Read::Pending);
        advance(TICK).await;
        assert_eq!(
            exchange.read().await,
            Read::Expired(expired(Timer::MaxDuration, LIMIT))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn max_duration_is_not_reset_by_heartbeats() {
        let timeouts = StreamTimeouts {
            idle: Some(LIMIT / 5),
            max_duration: Some(LIMIT),
            ..StreamTimeouts::default()
        };
        let (upstream, mut exchange) = streaming(timeouts, AT_ONCE).await;
        let beat = LIMIT / 10;
        for _ in 0..9 {
            send(&upstream, " ");
            assert_eq!(exchange.read().await, data(" "));
            advance(beat).await;
        }
        // A heartbeat is ready at the deadline, and the deadline still wins: it is checked first.
        send(&upstream, " ");
        advance(beat).await;
        assert_eq!(
            exchange.read().await,
            Read::Expired(expired(Timer::MaxDuration, LIMIT))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_timers_never_fire_and_register_no_timer() {
        let (upstream, body) = Upstream::new();
        let mut exchange =
            Exchange::start(StreamTimeouts::default(), Duration::from_secs(3600), body).await;
        for expiry in [
            &exchange.response.first_byte,
            &exchange.response.idle,
            &exchange.response.max_duration,
        ] {
            assert!(expiry.sleep.is_none());
        }
        advance(Duration::from_secs(3600) - TICK).await;
        assert_eq!(exchange.headers().await, Headers::Pending);
        advance(TICK).await;
        assert_eq!(exchange.headers().await, Headers::Arrived);
        assert!(exchange.body().idle.sleep.is_none());
        assert!(exchange.body().max_duration.sleep.is_none());
        assert_eq!(exchange.read().await, Read::Pending);
        advance(Duration::from_secs(10 * 3600)).await;
        assert_eq!(exchange.read().await, Read::Pending);
        send(&upstream, "still here\n");
        assert_eq!(exchange.read().await, data("still here\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_is_named_before_first_byte_and_max_duration_expiring_at_the_same_poll() {
        let timeouts = StreamTimeouts {
            first_byte: Some(LIMIT),
            idle: Some(LIMIT),
            max_duration: Some(LIMIT),
        };
        let (_upstream, body) = Upstream::new();
        let mut exchange = Exchange::start(timeouts, Duration::from_secs(3600), body).await;
        advance(LIMIT).await;
        assert_eq!(
            exchange.headers().await,
            Headers::Expired(expired(Timer::Idle, LIMIT))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn first_byte_is_named_before_max_duration_expiring_at_the_same_poll() {
        let timeouts = StreamTimeouts {
            first_byte: Some(LIMIT),
            max_duration: Some(LIMIT),
            ..StreamTimeouts::default()
        };
        let (_upstream, body) = Upstream::new();
        let mut exchange = Exchange::start(timeouts, Duration::from_secs(3600), body).await;
        advance(LIMIT).await;
        assert_eq!(
            exchange.headers().await,
            Headers::Expired(expired(Timer::FirstByte, LIMIT))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn max_duration_is_named_before_idle_expiring_at_the_same_poll_in_the_body() {
        let timeouts = StreamTimeouts {
            idle: Some(LIMIT),
            max_duration: Some(LIMIT),
            ..StreamTimeouts::default()
        };
        let (_upstream, mut exchange) = streaming(timeouts, AT_ONCE).await;
        assert_eq!(exchange.read().await, Read::Pending);
        advance(LIMIT).await;
        assert_eq!(
            exchange.read().await,
            Read::Expired(expired(Timer::MaxDuration, LIMIT))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn end_of_stream_and_size_hint_pass_through_under_every_timer() {
        let timeouts = StreamTimeouts {
            first_byte: Some(LIMIT),
            idle: Some(LIMIT),
            max_duration: Some(LIMIT),
        };
        let full = Full::new(Bytes::from_static(b"whole body\n"));
        let mut exchange = Exchange::start(timeouts, AT_ONCE, full).await;
        assert_eq!(exchange.headers().await, Headers::Arrived);
        assert_eq!(exchange.body().size_hint().exact(), Some(11));
        assert!(!exchange.body().is_end_stream());
        assert_eq!(exchange.read().await, data("whole body\n"));
        assert!(exchange.body().is_end_stream());
        assert_eq!(exchange.body().size_hint().exact(), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_cleanly_ends_cleanly_under_idle_and_max_duration() {
        let timeouts = StreamTimeouts {
            idle: Some(LIMIT),
            max_duration: Some(LIMIT),
            ..StreamTimeouts::default()
        };
        let (upstream, mut exchange) = streaming(timeouts, AT_ONCE).await;
        send(&upstream, "only line\n");
        drop(upstream);
        assert_eq!(exchange.read().await, data("only line\n"));
        assert_eq!(exchange.read().await, Read::End);
    }
}
