//! The proxy's timers, named by what they measure (pingora's habit), one file per place they act:
//! `connect` (the TCP connect to the upstream), `stream` (`first_byte`, `idle` and `max_duration`, the
//! three limits of one exchange, enforced together), `client_conn` (the client connection's
//! `header`/`keepalive` timers) and `send` (a write to the client that stalls: a client that stopped
//! reading).
//!
//! Like linkerd2-proxy's stream timeouts, a timer that fires does not build a response itself: it
//! returns a [`TimerExpired`] error, and the edge (`edge.rs`) turns it into a 504, a truncated body or a
//! reset, a log line and a metric, in one place.

pub mod client_conn;
pub mod connect;
pub mod send;
pub mod stream;

use std::fmt;
use std::time::Duration;

/// Every timer the proxy enforces; `as_str` is the name used in env vars, logs and the
/// `proxy_timeouts_total{timer}` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    Connect,
    FirstByte,
    Idle,
    MaxDuration,
    Header,
    Keepalive,
    Send,
}

impl Timer {
    pub const ALL: [Timer; 7] = [
        Timer::Connect,
        Timer::FirstByte,
        Timer::Idle,
        Timer::MaxDuration,
        Timer::Header,
        Timer::Keepalive,
        Timer::Send,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Timer::Connect => "connect",
            Timer::FirstByte => "first_byte",
            Timer::Idle => "idle",
            Timer::MaxDuration => "max_duration",
            Timer::Header => "header",
            Timer::Keepalive => "keepalive",
            Timer::Send => "send",
        }
    }
}

impl fmt::Display for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A timer fired: which one, and its configured limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{timer} timer expired (limit {})", keepalive_common::duration::display(*.limit))]
pub struct TimerExpired {
    pub timer: Timer,
    pub limit: Duration,
}

impl TimerExpired {
    pub fn new(timer: Timer, limit: Duration) -> Self {
        Self { timer, limit }
    }
}

pin_project_lite::pin_project! {
    /// An optional timer: a `Sleep` and the limit it stands for, or nothing when the timer is off.
    /// Shared by the timers so that "disabled" costs no timer registration at all.
    pub struct Expiry {
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        limit: Duration,
    }
}

impl Expiry {
    /// Expires `limit` from now; never when `limit` is `None`.
    pub fn after(limit: Option<Duration>) -> Self {
        match limit {
            Some(limit) => Self::at(tokio::time::Instant::now() + limit, limit),
            None => Self {
                sleep: None,
                limit: Duration::ZERO,
            },
        }
    }

    /// Expires at `deadline`, reporting `limit` as the limit that was reached.
    pub fn at(deadline: tokio::time::Instant, limit: Duration) -> Self {
        Self {
            sleep: Some(tokio::time::sleep_until(deadline)),
            limit,
        }
    }

    /// Moves the expiry to `limit` from now, reusing the registered timer.
    pub fn restart(self: std::pin::Pin<&mut Self>) {
        let this = self.project();
        if let Some(sleep) = this.sleep.as_pin_mut() {
            sleep.reset(tokio::time::Instant::now() + *this.limit);
        }
    }

    /// `Ready(limit)` once expired; `Pending` forever when disabled.
    pub fn poll_expired(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Duration> {
        let this = self.project();
        match this.sleep.as_pin_mut() {
            Some(sleep) => sleep.poll(cx).map(|()| *this.limit),
            None => std::task::Poll::Pending,
        }
    }
}

use std::future::Future as _;
