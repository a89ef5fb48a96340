//! The response body as the faults shape it on its way to the client. In the order a chunk meets
//! them: the buffering hop (hold bytes until enough are buffered), the byte limit (forward N bytes,
//! then cut), latency and bandwidth (hold each chunk before forwarding it); and, on their own clocks
//! from the response's start, the reset (RST to the client) and the blackhole (forward nothing more,
//! keep both connections open, as a dead middlebox does).
//!
//! What a fault holds is bounded whatever it was asked: latency and bandwidth hold at most
//! [`QUEUE_LIMIT`] bytes, then stop reading the upstream, which waits as it would behind a slow real
//! link (TCP's window bounds what is in flight the same way); the buffering hop's size is limited where
//! it is read ([`super::policy::MAX_BUFFERING`]).
//!
//! A blackholed body no longer polls the upstream's, so the idle and total timers below it, which act
//! only when polled, would never see the silence. The body keeps their clocks itself: the idle limit
//! from the moment the blackhole begins, the total deadline as the timers fixed it, and ends the stream
//! with their [`TimerExpired`], which the edge cuts, logs and counts as theirs.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use keepalive_common::duration::display;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::reset::ResetSwitch;
use super::{Fault, FaultCut};
use crate::metrics::Metrics;
use crate::timeouts::{Timer, TimerExpired};
use crate::BoxError;

/// The most body bytes latency and bandwidth hold before they stop reading the upstream: about one
/// TCP receive window of a fast link, so that a stream is delayed rather than starved, while a
/// thousand held streams hold a GiB at most.
pub const QUEUE_LIMIT: usize = 1024 * 1024;

/// What this response gets; every field off is a body passed through.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultPlan {
    pub latency: Option<Duration>,
    pub bandwidth: Option<u64>,
    pub limit_bytes: Option<u64>,
    pub reset_after: Option<Duration>,
    pub blackhole_after: Option<Duration>,
    pub buffering: Option<u64>,
}

/// Who to tell when a fault acts.
pub struct FaultContext {
    pub metrics: Metrics,
    pub request_id: HeaderValue,
    /// The client connection's reset switch; absent for bodies not served by the proxy's listener.
    pub reset: Option<ResetSwitch>,
    pub silence: SilenceTimers,
}

/// The proxy's timers that end a stream whose upstream falls silent; a blackhole answers to them.
#[derive(Debug, Clone, Copy, Default)]
pub struct SilenceTimers {
    pub idle: Option<Duration>,
    /// The exchange's total deadline and the limit it stands for.
    pub deadline: Option<(Instant, Duration)>,
}

pin_project! {
    pub struct FaultBody<B> {
        #[pin]
        inner: B,
        // `None`: nothing to inject, every call goes straight to `inner`.
        faults: Option<Box<Faulting>>,
    }
}

impl<B> FaultBody<B> {
    pub fn passthrough(inner: B) -> Self {
        Self {
            inner,
            faults: None,
        }
    }

    pub fn new(inner: B, plan: FaultPlan, context: FaultContext) -> Self {
        if plan == FaultPlan::default() {
            return Self::passthrough(inner);
        }
        let deadline =
            |after: Option<Duration>| after.map(|after| Box::pin(tokio::time::sleep(after)));
        Self {
            inner,
            faults: Some(Box::new(Faulting {
                plan,
                context,
                started: Instant::now(),
                reset_at: deadline(plan.reset_after),
                blackhole_at: deadline(plan.blackhole_after),
                blackholed: false,
                silence_ends: None,
                queue: VecDeque::new(),
                queued: 0,
                release: None,
                upstream_end: None,
                bandwidth_free_at: Instant::now(),
                forwarded: 0,
                limit_reached: false,
                limit_flushed: false,
                buffer: BytesMut::new(),
                after_buffer: None,
                inner_ended: false,
                reported: Vec::new(),
            })),
        }
    }
}

/// The state of a response that has faults to inject.
struct Faulting {
    plan: FaultPlan,
    context: FaultContext,
    started: Instant,
    reset_at: Option<Pin<Box<Sleep>>>,
    blackhole_at: Option<Pin<Box<Sleep>>>,
    blackholed: bool,
    /// When a timer ends the blackholed stream, and which one.
    silence_ends: Option<(Pin<Box<Sleep>>, TimerExpired)>,
    /// Chunks held back by latency or bandwidth, each with the moment it may go; the upstream is
    /// read on meanwhile (up to [`QUEUE_LIMIT`]), so that every chunk is delayed by the latency, not
    /// by those before it.
    queue: VecDeque<(Frame<Bytes>, Instant)>,
    /// What the queue holds, in bytes, each entry's own size included.
    queued: usize,
    /// Wakes the body when the chunk at the head of the queue may go.
    release: Option<Pin<Box<Sleep>>>,
    /// The upstream's body ended (`Ok`) or failed (`Err`), to be passed on once the queue is empty.
    upstream_end: Option<Result<(), BoxError>>,
    /// When the bandwidth limit lets the next chunk go.
    bandwidth_free_at: Instant,
    forwarded: u64,
    limit_reached: bool,
    limit_flushed: bool,
    buffer: BytesMut,
    /// What the upstream sent after the buffered bytes (trailers, an error), delivered after them.
    after_buffer: Option<Result<Frame<Bytes>, BoxError>>,
    inner_ended: bool,
    reported: Vec<Fault>,
}

impl Faulting {
    /// Logs and counts `fault` the first time it acts on this response.
    fn report(&mut self, fault: Fault, what: impl FnOnce() -> String) {
        if self.reported.contains(&fault) {
            return;
        }
        let what = what();
        self.reported.push(fault);
        self.context.metrics.fault_injected(fault);
        let elapsed = display(self.started.elapsed());
        tracing::warn!(
            fault = %fault,
            %elapsed,
            bytes = self.forwarded,
            request_id = self.context.request_id.to_str().unwrap_or("-"),
            "{fault} fault: {what}",
        );
    }

    /// The next frame from the upstream, through the buffering hop when there is one.
    fn next_frame<B>(
        &mut self,
        mut inner: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
    where
        B: Body<Data = Bytes, Error = BoxError>,
    {
        let Some(size) = self.plan.buffering else {
            return inner.poll_frame(cx);
        };
        loop {
            let full = self.buffer.len() as u64 >= size;
            let done = self.inner_ended || self.after_buffer.is_some();
            if !self.buffer.is_empty() && (full || done) {
                return Poll::Ready(Some(Ok(Frame::data(self.buffer.split().freeze()))));
            }
            if let Some(after) = self.after_buffer.take() {
                return Poll::Ready(Some(after));
            }
            if self.inner_ended {
                return Poll::Ready(None);
            }
            match inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.inner_ended = true,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if !data.is_empty() {
                            self.report(Fault::Buffering, || {
                                format!(
                                    "holding body bytes until {size} are buffered or the body ends"
                                )
                            });
                        }
                        self.buffer.extend_from_slice(&data);
                    }
                    Err(frame) => self.after_buffer = Some(Ok(frame)),
                },
                Poll::Ready(Some(Err(err))) => self.after_buffer = Some(Err(err)),
            }
        }
    }

    /// Applies the byte limit to a chunk about to go out.
    fn limit(&mut self, frame: Frame<Bytes>) -> Frame<Bytes> {
        let Some(limit) = self.plan.limit_bytes else {
            return frame;
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => return frame,
        };
        let room = limit.saturating_sub(self.forwarded);
        if data.len() as u64 >= room {
            data.truncate(usize::try_from(room).unwrap_or(usize::MAX));
            self.limit_reached = true;
        }
        Frame::data(data)
    }

    /// When a chunk of `len` bytes, read now, may go out given latency and bandwidth; `None` when
    /// neither applies.
    fn release_at(&mut self, len: u64) -> Option<Instant> {
        if self.plan.latency.is_none() && self.plan.bandwidth.is_none() {
            return None;
        }
        let now = Instant::now();
        let mut release = now;
        if let Some(latency) = self.plan.latency {
            release += latency;
            self.report(Fault::Latency, || {
                format!("holding every chunk {}", display(latency))
            });
        }
        if let Some(rate) = self.plan.bandwidth {
            release = release.max(self.bandwidth_free_at);
            self.bandwidth_free_at = release + Duration::from_secs_f64(len as f64 / rate as f64);
            self.report(Fault::Bandwidth, || {
                format!("forwarding at most {rate} bytes a second")
            });
        }
        Some(release)
    }

    /// Releases the head of the queue if its time has come, else arms the timer for it.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame<Bytes>>> {
        let Some(&(_, at)) = self.queue.front() else {
            return Poll::Ready(None);
        };
        if at > Instant::now() {
            let release = self
                .release
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if release.deadline() != at {
                release.as_mut().reset(at);
            }
            if release.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let frame = self.queue.pop_front().map(|(frame, _)| frame);
        if let Some(frame) = &frame {
            self.queued -= held_size(frame);
        }
        Poll::Ready(frame)
    }

    fn hold(&mut self, frame: Frame<Bytes>, at: Instant) {
        self.queued += held_size(&frame);
        self.queue.push_back((frame, at));
    }

    /// Forwards nothing more from now on: what waits is dropped, the upstream is no longer read, and
    /// only the proxy's idle and total timers may still end the stream.
    fn blackhole(&mut self) {
        self.blackholed = true;
        self.queue = VecDeque::new();
        self.queued = 0;
        self.buffer = BytesMut::new();
        self.after_buffer = None;
        let silence = self.context.silence;
        let idle = silence.idle.map(|limit| {
            (
                Instant::now() + limit,
                TimerExpired::new(Timer::Idle, limit),
            )
        });
        let total = silence
            .deadline
            .map(|(at, limit)| (at, TimerExpired::new(Timer::MaxDuration, limit)));
        let ends = idle.into_iter().chain(total).min_by_key(|(at, _)| *at);
        let until = match ends {
            Some((_, expired)) => format!(
                "until the {} timer ({}) ends the stream",
                expired.timer,
                display(expired.limit)
            ),
            None => "for good: no idle or total timer will end the stream".to_owned(),
        };
        self.silence_ends =
            ends.map(|(at, expired)| (Box::pin(tokio::time::sleep_until(at)), expired));
        self.report(Fault::BlackholeAfter, || {
            format!("forwarding nothing more; both connections stay open {until}")
        });
    }
}

/// What a queued frame costs: its bytes and its place in the queue.
fn held_size(frame: &Frame<Bytes>) -> usize {
    std::mem::size_of::<(Frame<Bytes>, Instant)>() + frame.data_ref().map_or(0, Bytes::len)
}

impl<B> Body for FaultBody<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let Some(faults) = this.faults.as_deref_mut() else {
            return this.inner.poll_frame(cx);
        };
        if let Some(reset_at) = faults.reset_at.as_mut() {
            if reset_at.as_mut().poll(cx).is_ready() {
                faults.reset_at = None;
                faults.report(Fault::ResetAfter, || {
                    "resetting the client connection (TCP RST)".to_owned()
                });
                if let Some(switch) = &faults.context.reset {
                    switch.flip();
                }
                return Poll::Ready(Some(Err(FaultCut {
                    fault: Fault::ResetAfter,
                }
                .into())));
            }
        }
        if let Some(blackhole_at) = faults.blackhole_at.as_mut() {
            if blackhole_at.as_mut().poll(cx).is_ready() {
                faults.blackhole_at = None;
                faults.blackhole();
            }
        }
        if faults.blackholed {
            let Some((ends, expired)) = faults.silence_ends.as_mut() else {
                return Poll::Pending;
            };
            return ends
                .as_mut()
                .poll(cx)
                .map(|()| Some(Err((*expired).into())));
        }
        // Read on while chunks wait, each delayed from its own arrival, until the queue is full.
        while faults.upstream_end.is_none() && !faults.limit_reached && faults.queued < QUEUE_LIMIT
        {
            match faults.next_frame(this.inner.as_mut(), cx) {
                Poll::Pending => break,
                Poll::Ready(None) => faults.upstream_end = Some(Ok(())),
                Poll::Ready(Some(Err(err))) => faults.upstream_end = Some(Err(err)),
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = faults.limit(frame);
                    let len = frame.data_ref().map_or(0, |data| data.len() as u64);
                    faults.forwarded += len;
                    match faults.release_at(len) {
                        None => return Poll::Ready(Some(Ok(frame))),
                        Some(at) => faults.hold(frame, at),
                    }
                }
            }
        }
        match faults.poll_release(cx) {
            Poll::Ready(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {}
        }
        if faults.limit_reached {
            // hyper writes a frame into its buffer and flushes only once the body is pending: an
            // error right away would lose the last bytes the limit lets through. That holds for
            // HTTP/1 only: over HTTP/2 the RST_STREAM that follows drops what h2 still has queued
            // for the stream (its send_reset clears the queue), and no signal says when it was
            // written, so there the limit guarantees at most, not exactly, its bytes.
            if !faults.limit_flushed {
                faults.limit_flushed = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let forwarded = faults.forwarded;
            faults.report(Fault::LimitBytes, || {
                format!("{forwarded} bytes forwarded: cutting the stream")
            });
            return Poll::Ready(Some(Err(FaultCut {
                fault: Fault::LimitBytes,
            }
            .into())));
        }
        match faults.upstream_end.take() {
            None => Poll::Pending,
            Some(Ok(())) => Poll::Ready(None),
            Some(Err(err)) => Poll::Ready(Some(Err(err))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.faults {
            None => self.inner.is_end_stream(),
            Some(faults) => {
                self.inner.is_end_stream()
                    && faults.queue.is_empty()
                    && faults.buffer.is_empty()
                    && faults.after_buffer.is_none()
                    && !faults.limit_reached
                    && !faults.blackholed
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.faults {
            Some(faults) if faults.plan.limit_bytes.is_some() => SizeHint::default(),
            _ => self.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The body on its own, without sockets and on a paused clock. The byte limit: what leaves the
    //! body is exactly what the limit lets through, then the cut (over HTTP/1 the wire shows the same;
    //! over HTTP/2 hyper's `send_reset` may drop the last queued DATA, so this is where "exactly" is
    //! proven). The bounds: how much a fault reads ahead of the client, and which timers still end a
    //! blackhole, and when.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt, Full};

    use super::*;

    const CHUNK: usize = 64 * 1024;

    /// An upstream with `ready` chunks of [`CHUNK`] bytes to give at once, then silent for good; it
    /// counts the chunks read from it.
    struct Upstream {
        ready: usize,
        read: Arc<AtomicUsize>,
        chunk: Bytes,
    }

    impl Upstream {
        fn with_ready(ready: usize) -> (Arc<AtomicUsize>, BoxBody<Bytes, BoxError>) {
            let read = Arc::new(AtomicUsize::new(0));
            let upstream = Self {
                ready,
                read: read.clone(),
                chunk: Bytes::from(vec![b'x'; CHUNK]),
            };
            (read, upstream.boxed())
        }
    }

    impl Body for Upstream {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if self.read.load(Ordering::Relaxed) == self.ready {
                return Poll::Pending;
            }
            self.read.fetch_add(1, Ordering::Relaxed);
            Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
        }
    }

    fn faulty(
        upstream: BoxBody<Bytes, BoxError>,
        plan: FaultPlan,
        silence: SilenceTimers,
    ) -> Pin<Box<FaultBody<BoxBody<Bytes, BoxError>>>> {
        Box::pin(FaultBody::new(
            upstream,
            plan,
            FaultContext {
                metrics: Metrics::new(),
                request_id: HeaderValue::from_static("test"),
                reset: None,
                silence,
            },
        ))
    }

    /// Waits for what the body gives within `within` of paused time: `None` if nothing came.
    async fn next_within(
        body: &mut Pin<Box<FaultBody<BoxBody<Bytes, BoxError>>>>,
        within: Duration,
    ) -> Option<Option<Result<Frame<Bytes>, BoxError>>> {
        tokio::time::timeout(within, body.frame()).await.ok()
    }

    fn expired(result: Option<Option<Result<Frame<Bytes>, BoxError>>>) -> TimerExpired {
        match result {
            Some(Some(Err(error))) => *error
                .downcast_ref::<TimerExpired>()
                .unwrap_or_else(|| panic!("not a timer's cut: {error}")),
            Some(Some(Ok(_))) => panic!("a chunk came through"),
            Some(None) => panic!("the body ended cleanly"),
            None => panic!("nothing ended the body"),
        }
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[tokio::test(start_paused = true)]
    async fn latency_reads_ahead_only_up_to_its_queue_limit() {
        // 64 MiB ready at once; a chunk held for an hour.
        let (read, upstream) = Upstream::with_ready(1024);
        let mut body = faulty(
            upstream,
            FaultPlan {
                latency: Some(Duration::from_secs(3600)),
                ..FaultPlan::default()
            },
            SilenceTimers::default(),
        );
        assert!(next_within(&mut body, Duration::from_secs(1))
            .await
            .is_none());
        let held = read.load(Ordering::Relaxed) * CHUNK;
        assert!(
            held <= QUEUE_LIMIT + CHUNK,
            "read {held} bytes ahead of the client (limit {QUEUE_LIMIT})"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bandwidth_reads_ahead_only_up_to_its_queue_limit_then_on_as_it_drains() {
        let (read, upstream) = Upstream::with_ready(1024);
        let mut body = faulty(
            upstream,
            FaultPlan {
                bandwidth: Some(CHUNK as u64),
                ..FaultPlan::default()
            },
            SilenceTimers::default(),
        );
        // At a chunk a second, the first goes at once, the queue fills, and each chunk that leaves
        // lets one more in: the upstream is read at the client's pace, not ahead of it.
        for _ in 0..20 {
            let chunk = next_within(&mut body, Duration::from_secs(2)).await;
            assert!(matches!(chunk, Some(Some(Ok(_)))), "a chunk a second");
        }
        let held = read.load(Ordering::Relaxed).saturating_sub(20) * CHUNK;
        assert!(
            held <= QUEUE_LIMIT + CHUNK,
            "{held} bytes read ahead of the client (limit {QUEUE_LIMIT})"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_blackhole_ends_at_the_idle_limit_counted_from_its_start() {
        let (read, upstream) = Upstream::with_ready(1);
        let mut body = faulty(
            upstream,
            FaultPlan {
                blackhole_after: Some(Duration::from_secs(1)),
                ..FaultPlan::default()
            },
            SilenceTimers {
                idle: Some(Duration::from_secs(2)),
                deadline: None,
            },
        );
        let start = Instant::now();
        assert!(matches!(body.frame().await, Some(Ok(_))));
        let cut = expired(next_within(&mut body, DAY).await);
        assert_eq!(cut, TimerExpired::new(Timer::Idle, Duration::from_secs(2)));
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(3),
            "1 s, then 2 s of silence"
        );
        assert_eq!(read.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_blackhole_ends_at_the_total_deadline_when_it_comes_first() {
        let (_, upstream) = Upstream::with_ready(0);
        let start = Instant::now();
        let mut body = faulty(
            upstream,
            FaultPlan {
                blackhole_after: Some(Duration::from_secs(1)),
                ..FaultPlan::default()
            },
            SilenceTimers {
                idle: Some(Duration::from_secs(60)),
                deadline: Some((start + Duration::from_secs(5), Duration::from_secs(5))),
            },
        );
        let cut = expired(next_within(&mut body, DAY).await);
        assert_eq!(
            cut,
            TimerExpired::new(Timer::MaxDuration, Duration::from_secs(5))
        );
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_blackhole_without_timers_holds_for_good_and_reads_nothing_more() {
        // Chunks wait behind a latency when the blackhole begins: they are dropped, not kept.
        let (read, upstream) = Upstream::with_ready(1024);
        let mut body = faulty(
            upstream,
            FaultPlan {
                latency: Some(Duration::from_secs(3600)),
                blackhole_after: Some(Duration::from_secs(1)),
                ..FaultPlan::default()
            },
            SilenceTimers::default(),
        );
        assert!(next_within(&mut body, DAY).await.is_none(), "held for good");
        let before = read.load(Ordering::Relaxed);
        assert!(next_within(&mut body, DAY).await.is_none());
        assert_eq!(read.load(Ordering::Relaxed), before, "nothing more is read");
        let faults = body.faults.as_ref().expect("faults");
        assert!(faults.queue.is_empty() && faults.queued == 0);
        assert!(!body.is_end_stream(), "a blackhole never looks like an end");
    }

    fn limited(body: &'static str, limit: u64) -> Pin<Box<FaultBody<BoxBody<Bytes, BoxError>>>> {
        Box::pin(FaultBody::new(
            Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|never| match never {})
                .boxed(),
            FaultPlan {
                limit_bytes: Some(limit),
                ..FaultPlan::default()
            },
            FaultContext {
                metrics: Metrics::new(),
                request_id: HeaderValue::from_static("test"),
                reset: None,
                silence: SilenceTimers::default(),
            },
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn limit_bytes_forwards_exactly_the_limit_then_cuts() {
        let mut body = limited("0123456789abcdefghij", 10);
        let mut forwarded = Vec::new();
        let error = loop {
            match body.frame().await {
                Some(Ok(frame)) => forwarded.extend_from_slice(frame.data_ref().expect("data")),
                Some(Err(error)) => break error,
                None => panic!("the body ended cleanly after {forwarded:?}"),
            }
        };
        assert_eq!(forwarded, b"0123456789");
        assert!(
            error.downcast_ref::<FaultCut>().is_some(),
            "the cut is the fault's own: {error}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn limit_bytes_above_the_body_passes_it_whole() {
        let body = limited("short", 10);
        let collected = body.collect().await.expect("no cut").to_bytes();
        assert_eq!(collected, "short");
    }
}
