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
//! body. A timer in the IO rather than in the response body because a body that is not polled cannot
//! notice anything: hyper stops polling it exactly when the client stops reading.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Timer, TimerExpired};

/// Sentinel for "the last write made progress".
const FLOWING: u64 = u64::MAX;

/// Whether writes to one client connection are stalled, and since when.
pub struct Stall {
    epoch: Instant,
    /// Milliseconds since `epoch` when a write first went `Pending`, or `FLOWING`.
    since: AtomicU64,
    started: Notify,
}

impl Stall {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            since: AtomicU64::new(FLOWING),
            started: Notify::new(),
        })
    }

    fn write_pending(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(FLOWING - 1);
        if self
            .since
            .compare_exchange(FLOWING, now, Ordering::AcqRel, Ordering::Acquire)
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
}

/// Resolves when one write has been stalled for `limit`; never when `limit` is `None`.
pub async fn stalled(stall: &Stall, limit: Option<Duration>) -> TimerExpired {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    loop {
        let started = stall.started.notified();
        match stall.since.load(Ordering::Acquire) {
            FLOWING => started.await,
            since => {
                let at = stall.epoch + Duration::from_millis(since) + limit;
                if at <= Instant::now() {
                    return TimerExpired::new(Timer::Send, limit);
                }
                // When the sleep ends the loop looks again: a write may have gone through meanwhile.
                tokio::select! {
                    () = started => {}
                    () = tokio::time::sleep_until(at) => {}
                }
            }
        }
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

    #[tokio::test(start_paused = true)]
    async fn off_never_fires() {
        let (mut io, stall, _far) = stalled_client(16);
        let writing = tokio::spawn(async move { io.write_all(&[b'x'; 64]).await });
        let outcome = tokio::time::timeout(Duration::from_secs(3600), stalled(&stall, None)).await;
        assert!(outcome.is_err(), "a send timer that is off fired");
        writing.abort();
    }
}
