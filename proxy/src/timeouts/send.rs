//! `send`: how long a write to the client may stall, nginx's `send_timeout` ("set only between two
//! successive write operations, not for the transmission of the whole response"). A client that stops
//! reading fills its receive window and then the socket's send buffer; from then on every write is
//! `Pending`. Without a limit that client holds its socket, the exchange and, through it, the
//! upstream's stream and connection forever.
//!
//! [`SendIo`] wraps the client's socket and notes in a [`Stall`] when a write first goes `Pending` and
//! when one makes progress; [`stalled`] sleeps until the stall is older than the limit. The connection
//! task then drops the connection, which drops the exchange and closes its upstream connection, so the
//! upstream sees its client gone. Measured on the socket, it covers the response head as much as the
//! body. A timer outside the response body because a body that is not polled cannot notice anything:
//! hyper stops polling it exactly when the client stops reading.
//!
//! HTTP/2 adds a stall the socket never sees: a client that stops reading a stream stops granting it
//! window (RFC 9113 6.9), while its connection goes on reading frames. hyper then stops polling that
//! stream's body, so [`SendBody`] notes when an HTTP/2 body handed out a frame and has not been asked
//! for the next one since: the stream is stalled from then on, as nginx's HTTP/2 module arms
//! `send_timeout` on a stream blocked by flow control. nginx then resets only that stream; here the
//! whole connection goes, as for a stalled socket, because nothing can reach a body hyper no longer
//! polls but dropping the connection that holds it. A body reports nothing when it stalls (a
//! notification per frame would cost more than what it reports), so while HTTP/2 bodies are open the
//! watcher looks at them every quarter of the limit, soon enough to schedule each stall's deadline
//! exactly.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Timer, TimerExpired};

/// Sentinel for "the last write made progress" (or "the body was asked for its next frame").
const FLOWING: u64 = u64::MAX;

/// Whether writes to one client connection, or one of its HTTP/2 streams, are stalled, and since when.
pub struct Stall {
    epoch: Instant,
    /// Milliseconds since `epoch` when a write first went `Pending`, or `FLOWING`.
    since: AtomicU64,
    /// The open HTTP/2 bodies: each one's milliseconds since `epoch` since it waits to be asked for
    /// its next frame, or `FLOWING`.
    streams: Mutex<Vec<Weak<AtomicU64>>>,
    started: Notify,
}

impl Stall {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            since: AtomicU64::new(FLOWING),
            streams: Mutex::new(Vec::new()),
            started: Notify::new(),
        })
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(FLOWING - 1)
    }

    fn write_pending(&self) {
        if self
            .since
            .compare_exchange(FLOWING, self.millis(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.started.notify_one();
        }
    }

    /// No notification: the watcher looks again when its sleep ends, so the hot path (a write that
    /// goes through) costs one atomic load.
    fn write_progressed(&self) {
        if self.since.load(Ordering::Acquire) != FLOWING {
            self.since.store(FLOWING, Ordering::Release);
        }
    }

    /// Watches an HTTP/2 response body. It counts as stalled from now until hyper first asks it for a
    /// frame: a client that opened its stream with no window never lets hyper ask.
    pub fn watch<B>(self: &Arc<Self>, body: B) -> SendBody<B> {
        let waiting = Arc::new(AtomicU64::new(self.millis()));
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        // Closed streams go here too, so that a long connection's list stays as long as its open streams.
        streams.retain(|stream| stream.strong_count() > 0);
        streams.push(Arc::downgrade(&waiting));
        drop(streams);
        // The watcher, idle while nothing is open, starts looking at the streams.
        self.started.notify_one();
        SendBody {
            body,
            stream: Some((Arc::clone(self), waiting)),
        }
    }

    /// The oldest stall, socket or stream, and whether any HTTP/2 body is open (forgetting closed ones).
    fn oldest(&self) -> (Option<u64>, bool) {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams.retain(|stream| stream.strong_count() > 0);
        let oldest = streams
            .iter()
            .filter_map(Weak::upgrade)
            .map(|waiting| waiting.load(Ordering::Acquire))
            .chain(std::iter::once(self.since.load(Ordering::Acquire)))
            .filter(|since| *since != FLOWING)
            .min();
        (oldest, !streams.is_empty())
    }
}

/// Resolves when one write, or one HTTP/2 stream, has been stalled for `limit`; never when `limit` is
/// `None`.
pub async fn stalled(stall: &Stall, limit: Option<Duration>) -> TimerExpired {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    loop {
        let started = stall.started.notified();
        let wake = match stall.oldest() {
            (Some(since), _) => {
                let at = stall.epoch + Duration::from_millis(since) + limit;
                if at <= Instant::now() {
                    return TimerExpired::new(Timer::Send, limit);
                }
                Some(at)
            }
            // A stream stalls without a word: look again in a quarter limit.
            (None, true) => Some(Instant::now() + limit / 4),
            (None, false) => None,
        };
        // When the sleep ends the loop looks again: a write may have gone through meanwhile.
        match wake {
            None => started.await,
            Some(at) => tokio::select! {
                () = started => {}
                () = tokio::time::sleep_until(at) => {}
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body, reporting to a [`Stall`] (HTTP/2 only) how long it waits to be asked for its
    /// next frame.
    pub struct SendBody<B> {
        #[pin]
        body: B,
        stream: Option<(Arc<Stall>, Arc<AtomicU64>)>,
    }
}

impl<B> SendBody<B> {
    /// A body the socket's stall covers on its own (HTTP/1.1: hyper polls the body whenever its write
    /// buffer has room, so a body that waits means a socket that does).
    pub fn unwatched(body: B) -> Self {
        Self { body, stream: None }
    }
}

impl<B: Body> Body for SendBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let Some((stall, waiting)) = this.stream else {
            return this.body.poll_frame(cx);
        };
        waiting.store(FLOWING, Ordering::Release);
        let frame = this.body.as_mut().poll_frame(cx);
        if matches!(frame, Poll::Ready(Some(Ok(_)))) && !this.body.is_end_stream() {
            waiting.store(stall.millis(), Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The client's socket, reporting to a [`Stall`] whether its writes go through.
    pub struct SendIo<IO> {
        #[pin]
        io: IO,
        stall: Arc<Stall>,
    }
}

impl<IO> SendIo<IO> {
    pub fn new(io: IO, stall: Arc<Stall>) -> Self {
        Self { io, stall }
    }
}

fn note<T>(stall: &Stall, result: Poll<T>) -> Poll<T> {
    match result {
        Poll::Pending => stall.write_pending(),
        Poll::Ready(_) => stall.write_progressed(),
    }
    result
}

impl<IO: AsyncRead> AsyncRead for SendIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite> AsyncWrite for SendIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        note(this.stall, this.io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        note(this.stall, this.io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        note(this.stall, this.io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        note(this.stall, this.io.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const LIMIT: Option<Duration> = Some(Duration::from_secs(60));

    /// The send timer, failing the test rather than waiting forever when it never fires (a paused
    /// clock with nothing scheduled never advances).
    async fn bounded(stall: &Stall) -> TimerExpired {
        tokio::time::timeout(Duration::from_secs(24 * 3600), stalled(stall, LIMIT))
            .await
            .expect("the send timer fires within a day")
    }

    /// A client that reads nothing: a pipe `capacity` bytes deep whose far end (returned, to be kept
    /// open: a dropped one would fail the writes instead) is never read.
    fn stalled_client(
        capacity: usize,
    ) -> (
        SendIo<tokio::io::DuplexStream>,
        Arc<Stall>,
        tokio::io::DuplexStream,
    ) {
        let (near, far) = tokio::io::duplex(capacity);
        let stall = Stall::new();
        (SendIo::new(near, Arc::clone(&stall)), stall, far)
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_stalled_for_the_limit_fires_the_send_timer() {
        let (mut io, stall, _far) = stalled_client(16);
        let start = Instant::now();
        let writing = tokio::spawn(async move { io.write_all(&[b'x'; 64]).await });
        let expired = bounded(&stall).await;
        assert_eq!(
            expired,
            TimerExpired::new(Timer::Send, Duration::from_secs(60))
        );
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        writing.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn writes_that_go_through_never_fire_it() {
        let (near, mut far) = tokio::io::duplex(16);
        let stall = Stall::new();
        let mut io = SendIo::new(near, Arc::clone(&stall));
        // A slow reader: 16 bytes a minute keeps every write stalled for less than the limit.
        tokio::spawn(async move {
            let mut buf = [0u8; 16];
            loop {
                tokio::time::sleep(Duration::from_secs(59)).await;
                if tokio::io::AsyncReadExt::read(&mut far, &mut buf)
                    .await
                    .unwrap_or(0)
                    == 0
                {
                    return;
                }
            }
        });
        let writing = tokio::spawn(async move { io.write_all(&[b'x'; 160]).await });
        let outcome = tokio::time::timeout(Duration::from_secs(3600), stalled(&stall, LIMIT)).await;
        assert!(
            outcome.is_err(),
            "the send timer fired while writes went through"
        );
        writing.await.expect("writer").expect("all written");
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_counts_from_the_last_progress_not_the_first_stall() {
        let (near, mut far) = tokio::io::duplex(16);
        let stall = Stall::new();
        let mut io = SendIo::new(near, Arc::clone(&stall));
        let start = Instant::now();
        tokio::spawn(async move {
            // One read at 30 s, then nothing: the stall that counts starts when that read let a
            // write through.
            tokio::time::sleep(Duration::from_secs(30)).await;
            let mut buf = [0u8; 16];
            let _ = tokio::io::AsyncReadExt::read(&mut far, &mut buf).await;
            std::future::pending::<()>().await;
        });
        let writing = tokio::spawn(async move { io.write_all(&[b'x'; 64]).await });
        let expired = bounded(&stall).await;
        assert_eq!(expired.timer, Timer::Send);
        assert_eq!(start.elapsed(), Duration::from_secs(90));
        writing.abort();
    }

    /// A response body whose frames come from a channel, as the upstream's would.
    struct Upstream(tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>);

    impl Body for Upstream {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|data| data.map(|data| Ok(Frame::data(data))))
        }
    }

    fn upstream() -> (tokio::sync::mpsc::UnboundedSender<bytes::Bytes>, Upstream) {
        let (frames, receiver) = tokio::sync::mpsc::unbounded_channel();
        (frames, Upstream(receiver))
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_stream_no_longer_asked_for_frames_fires_the_send_timer_at_its_limit() {
        let stall = Stall::new();
        let (frames, upstream) = upstream();
        let mut body = std::pin::pin!(stall.watch(upstream));
        let start = Instant::now();
        let watching = {
            let stall = Arc::clone(&stall);
            tokio::spawn(async move {
                let expired = bounded(&stall).await;
                (expired, start.elapsed())
            })
        };
        // Read for 10 s, a frame a second, each asked for a second after the previous one; then the
        // client stops granting window and hyper stops asking.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            frames
                .send(bytes::Bytes::from_static(b"line\n"))
                .expect("body open");
            let frame = http_body_util::BodyExt::frame(&mut body).await;
            assert!(frame.is_some());
        }
        let (expired, elapsed) = watching.await.expect("watcher");
        assert_eq!(expired.timer, Timer::Send);
        assert_eq!(elapsed, Duration::from_secs(70));
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_stream_never_asked_for_a_frame_fires_the_send_timer() {
        // A client that opens a stream with no window: hyper never asks the body for anything.
        let stall = Stall::new();
        let (_frames, upstream) = upstream();
        let _body = stall.watch(upstream);
        let start = Instant::now();
        assert_eq!(bounded(&stall).await.timer, Timer::Send);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_stream_read_as_its_frames_come_never_fires() {
        let stall = Stall::new();
        let (frames, upstream) = upstream();
        let mut body = Box::pin(stall.watch(upstream));
        // The client asks for the next frame as soon as one arrives; the upstream is slow.
        tokio::spawn(
            async move { while http_body_util::BodyExt::frame(&mut body).await.is_some() {} },
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(59)).await;
                if frames.send(bytes::Bytes::from_static(b"line\n")).is_err() {
                    return;
                }
            }
        });
        let outcome = tokio::time::timeout(Duration::from_secs(3600), stalled(&stall, LIMIT)).await;
        assert!(
            outcome.is_err(),
            "the send timer fired on a stream read as its frames came"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_or_dropped_stream_is_forgotten() {
        let stall = Stall::new();
        let mut ended =
            Box::pin(stall.watch(http_body_util::Full::new(bytes::Bytes::from_static(b"all"))));
        assert!(http_body_util::BodyExt::frame(&mut ended).await.is_some());
        assert_eq!(
            stall.oldest(),
            (None, true),
            "its last frame leaves nothing to wait for"
        );
        drop(ended);
        assert_eq!(stall.oldest(), (None, false));
        let outcome = tokio::time::timeout(Duration::from_secs(3600), stalled(&stall, LIMIT)).await;
        assert!(outcome.is_err(), "a forgotten stream fired the send timer");
    }

    #[tokio::test(start_paused = true)]
    async fn off_never_fires() {
        let (mut io, stall, _far) = stalled_client(16);
        let writing = tokio::spawn(async move { io.write_all(&[b'x'; 64]).await });
        let outcome = tokio::time::timeout(Duration::from_secs(3600), stalled(&stall, None)).await;
        assert!(outcome.is_err(), "a send timer that is off fired");
        writing.abort();
    }
}
