//! `header` and `keepalive`: the client connection's two idle states. `header` bounds how long a
//! client may take to send a request head, from accept (or from the first byte of a later request) —
//! slowloris protection, nginx's `client_header_timeout`. `keepalive` bounds how long a connection may
//! sit idle between requests, nginx's `keepalive_timeout`.
//!
//! A connection that has not completed a request head is always under one of them: when one is off,
//! the other covers its wait too. With `header` off (the envoy, cloudflare and gcp presets), the
//! keep-alive limit bounds the whole wait for a head, from accept or the end of the previous request
//! to the head's last byte, as Envoy's connection `idle_timeout` counts a connection without an active
//! stream; with `keepalive` off (heroku), the header limit bounds the idle wait between requests, as
//! HAProxy's `timeout http-request` does when `http-keep-alive` is unset. Otherwise a client that
//! connects and sends nothing, or a byte a second, holds a descriptor forever. Only both off means
//! no limit.
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

/// The client connection's timers; `None` disables one. The watchdog enforces `header` and
/// `keepalive`; `send` is the write-stall timer (`timeouts/send.rs`).
#[derive(Debug, Clone, Copy)]
pub struct ClientConnLimits {
    pub header: Option<Duration>,
    pub keepalive: Option<Duration>,
    pub send: Option<Duration>,
}

/// Which idle timer runs, since when, and the limit it enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deadline {
    timer: Timer,
    limit: Duration,
    at: Instant,
}

impl Activity {
    /// The deadline the connection's current state is under; `None` while a request is in flight or
    /// when both idle timers are off.
    fn deadline(&self, limits: ClientConnLimits) -> Option<Deadline> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle_since = self.idle_since.load(Ordering::Acquire);
        let waiting = limits
            .keepalive
            .map(|limit| (Timer::Keepalive, limit))
            .or(limits.header.map(|limit| (Timer::Header, limit)))
            .map(|(timer, limit)| (idle_since, timer, limit));
        let (since, timer, limit) = match self.head_started.load(Ordering::Acquire) {
            NO_HEAD => waiting?,
            head_started => limits
                .header
                .map(|limit| (head_started, Timer::Header, limit))
                .or(waiting)?,
        };
        Some(Deadline {
            timer,
            limit,
            at: self.epoch + Duration::from_millis(since) + limit,
        })
    }
}

/// Resolves when the connection has waited for a request head past a limit, naming the timer; never
/// while a request is in flight.
pub async fn watchdog(activity: &Activity, limits: ClientConnLimits) -> TimerExpired {
    loop {
        let notified = activity.changed.notified();
        match activity.deadline(limits) {
            None => notified.await,
            Some(deadline) if deadline.at <= Instant::now() => {
                return TimerExpired::new(deadline.timer, deadline.limit);
            }
            // When the sleep ends, the loop looks at the state again: a request may have started.
            Some(deadline) => tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline.at) => {}
            },
        }
    }
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
        send: None,
    };
    /// The watchdog, failing the test rather than waiting forever when no timer runs (a paused clock
    /// with nothing scheduled never advances).
    async fn bounded(activity: &Activity, limits: ClientConnLimits) -> TimerExpired {
        tokio::time::timeout(Duration::from_secs(24 * 3600), watchdog(activity, limits))
            .await
            .expect("the watchdog fires within a day")
    }

    const NO_HEADER_TIMER: ClientConnLimits = ClientConnLimits {
        header: None,
        ..LIMITS
    };
    const NO_KEEPALIVE_TIMER: ClientConnLimits = ClientConnLimits {
        keepalive: None,
        ..LIMITS
    };

    #[tokio::test(start_paused = true)]
    async fn silent_connection_hits_the_header_timer() {
        let activity = Activity::new();
        let start = Instant::now();
        let expired = bounded(&activity, LIMITS).await;
        assert_eq!(expired.timer, Timer::Header);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_after_a_request_hits_the_keepalive_timer() {
        let activity = Activity::new();
        drop(activity.request_started(Version::HTTP_11));
        let start = Instant::now();
        let expired = bounded(&activity, LIMITS).await;
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
            tokio::spawn(async move { bounded(&activity, LIMITS).await })
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
            tokio::spawn(async move { bounded(&activity, LIMITS).await })
        };
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        activity.on_bytes_read();
        let expired = watching.await.expect("watchdog task");
        assert_eq!(expired.timer, Timer::Keepalive);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_header_timer_a_silent_connection_hits_the_keepalive_timer() {
        let activity = Activity::new();
        let start = Instant::now();
        let expired = bounded(&activity, NO_HEADER_TIMER).await;
        assert_eq!(expired.timer, Timer::Keepalive);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_header_timer_a_trickled_head_is_bounded_by_the_keepalive_timer() {
        let activity = Activity::new();
        drop(activity.request_started(Version::HTTP_11));
        let start = Instant::now();
        let watching = {
            let activity = Arc::clone(&activity);
            tokio::spawn(async move {
                let expired = bounded(&activity, NO_HEADER_TIMER).await;
                (expired, start.elapsed())
            })
        };
        // A byte every second never completes the head; none of them moves the deadline.
        while !watching.is_finished() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            activity.on_bytes_read();
        }
        let (expired, elapsed) = watching.await.expect("watchdog task");
        assert_eq!(expired.timer, Timer::Keepalive);
        assert_eq!(elapsed, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_keepalive_timer_an_idle_connection_hits_the_header_timer() {
        let activity = Activity::new();
        drop(activity.request_started(Version::HTTP_11));
        let start = Instant::now();
        let expired = bounded(&activity, NO_KEEPALIVE_TIMER).await;
        assert_eq!(expired.timer, Timer::Header);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn with_both_timers_off_nothing_fires() {
        let activity = Activity::new();
        let off = ClientConnLimits {
            header: None,
            keepalive: None,
            send: None,
        };
        let outcome =
            tokio::time::timeout(Duration::from_secs(3600), watchdog(&activity, off)).await;
        assert!(outcome.is_err(), "watchdog fired with both timers off");
    }
}
