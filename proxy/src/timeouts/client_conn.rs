//! `header` and `keepalive`: the client connection's two idle states. `header` bounds how long a
//! client may take to send a request head, from accept (or from the first byte of a later request) —
//! slowloris protection, nginx's `client_header_timeout`. `keepalive` bounds how long a connection may
//! sit idle between requests, nginx's `keepalive_timeout`.
//!
//! hyper 1.x has `header_read_timeout`, but its clock starts as soon as a connection goes idle, so it
//! would also close idle keep-alive connections at the header limit; and hyper-util's HTTP version
//! detection, which runs before it, has no timeout at all (hyper issue 3756: a client that connects and
//! sends nothing is kept forever). So the proxy watches each connection itself: [`ActivityIo`] notes
//! when a request head starts arriving, [`InFlight`] guards note when requests start and finish, and
//! [`watchdog`] sleeps until the deadline of the current state. When it returns, the connection task
//! drops the connection, which is only ever done while no request is in flight.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Version;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Timer, TimerExpired};

/// Sentinel for "no request head is being received".
const NO_HEAD: u64 = u64::MAX;

/// What one client connection is doing, shared by its IO, its requests and its watchdog.
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when the current request head began, or `NO_HEAD`.
    head_started: AtomicU64,
    /// Milliseconds since `epoch` when the last request finished.
    idle_since: AtomicU64,
    /// HTTP/2: bytes between requests are mostly control frames (PING, SETTINGS, WINDOW_UPDATE), not
    /// a request head, so once a connection is known to be HTTP/2 they no longer start the header timer.
    multiplexed: AtomicBool,
    changed: Notify,
}

impl Activity {
    /// A freshly accepted connection: the header timer runs from now, as no request has begun.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            multiplexed: AtomicBool::new(false),
            changed: Notify::new(),
        })
    }

    /// Marks a request as in flight until the returned guard (and every clone of it) is dropped.
    pub fn request_started(self: &Arc<Self>, version: Version) -> InFlight {
        if version == Version::HTTP_2 {
            self.multiplexed.store(true, Ordering::Release);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NO_HEAD, Ordering::Release);
        self.changed.notify_one();
        InFlight {
            _guard: Arc::new(Guard(Arc::clone(self))),
        }
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn on_bytes_read(&self) {
        if !self.multiplexed.load(Ordering::Acquire)
            && self.in_flight.load(Ordering::Acquire) == 0
            && self
                .head_started
                .compare_exchange(NO_HEAD, self.millis(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }
}

/// Keeps a request counted as in flight; travels in the request's extensions to the response body.
#[derive(Clone)]
pub struct InFlight {
    _guard: Arc<Guard>,
}

struct Guard(Arc<Activity>);

impl Drop for Guard {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .idle_since
            .store(activity.millis(), Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        activity.changed.notify_one();
    }
}

/// The limits the watchdog enforces; `None` disables a timer.
#[derive(Debug, Clone, Copy)]
pub struct ClientConnLimits {
    pub header: Option<Duration>,
    pub keepalive: Option<Duration>,
}

/// Resolves when the connection has been idle past a limit, naming the timer; never while a request
/// is in flight.
pub async fn watchdog(activity: &Activity, limits: ClientConnLimits) -> TimerExpired {
    loop {
        let notified = activity.changed.notified();
        let deadline = if activity.in_flight.load(Ordering::Acquire) > 0 {
            None
        } else {
            match activity.head_started.load(Ordering::Acquire) {
                NO_HEAD => limits.keepalive.map(|limit| {
                    let since = activity.idle_since.load(Ordering::Acquire);
                    (since, limit, Timer::Keepalive)
                }),
                since => limits.header.map(|limit| (since, limit, Timer::Header)),
            }
        };
        match deadline {
            None => notified.await,
            Some((since, limit, timer)) => {
                let at = activity.epoch + Duration::from_millis(since) + limit;
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep_until(at) => {
                        if still_idle(activity, since, timer) {
                            return TimerExpired::new(timer, limit);
                        }
                    }
                }
            }
        }
    }
}

fn still_idle(activity: &Activity, since: u64, timer: Timer) -> bool {
    let state_unchanged = match timer {
        Timer::Header => activity.head_started.load(Ordering::Acquire) == since,
        _ => {
            activity.head_started.load(Ordering::Acquire) == NO_HEAD
                && activity.idle_since.load(Ordering::Acquire) == since
        }
    };
    state_unchanged && activity.in_flight.load(Ordering::Acquire) == 0
}

pin_project_lite::pin_project! {
    /// The client's socket, reporting the first bytes of each request head to [`Activity`].
    pub struct ActivityIo<IO> {
        #[pin]
        io: IO,
        activity: Arc<Activity>,
    }
}

impl<IO> ActivityIo<IO> {
    pub fn new(io: IO, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<IO: AsyncRead> AsyncRead for ActivityIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.io.poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.on_bytes_read();
        }
        result
    }
}

impl<IO: AsyncWrite> AsyncWrite for ActivityIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ClientConnLimits = ClientConnLimits {
        header: Some(Duration::from_secs(10)),
        keepalive: Some(Duration::from_secs(60)),
    };

    #[tokio::test(start_paused = true)]
    async fn silent_connection_hits_the_header_timer() {
        let activity = Activity::new();
        let start = Instant::now();
        let expired = watchdog(&activity, LIMITS).await;
        assert_eq!(expired.timer, Timer::Header);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_after_a_request_hits_the_keepalive_timer() {
        let activity = Activity::new();
        drop(activity.request_started(Version::HTTP_11));
        let start = Instant::now();
        let expired = watchdog(&activity, LIMITS).await;
        assert_eq!(expired.timer, Timer::Keepalive);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn request_in_flight_is_never_cut() {
        let activity = Activity::new();
        let in_flight = activity.request_started(Version::HTTP_11);
        let outcome =
            tokio::time::timeout(Duration::from_secs(3600), watchdog(&activity, LIMITS)).await;
        assert!(outcome.is_err(), "watchdog fired with a request in flight");
        drop(in_flight);
    }

    #[tokio::test(start_paused = true)]
    async fn next_request_head_switches_from_keepalive_to_header_timer() {
        let activity = Activity::new();
        drop(activity.request_started(Version::HTTP_11));
        let watching = {
            let activity = Arc::clone(&activity);
            tokio::spawn(async move { watchdog(&activity, LIMITS).await })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        activity.on_bytes_read();
        let start = Instant::now();
        let expired = watching.await.expect("watchdog task");
        assert_eq!(expired.timer, Timer::Header);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn http2_control_frames_between_requests_leave_the_keepalive_timer_running() {
        let activity = Activity::new();
        drop(activity.request_started(Version::HTTP_2));
        let watching = {
            let activity = Arc::clone(&activity);
            tokio::spawn(async move { watchdog(&activity, LIMITS).await })
        };
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        activity.on_bytes_read();
        let expired = watching.await.expect("watchdog task");
        assert_eq!(expired.timer, Timer::Keepalive);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }
}
