//! What a request may ask of the faults by header, and how much. Fault headers let one proxy serve
//! many experiments, but any client of the proxy can send them: a header must not let one request make
//! the proxy hold more than that request's own stream, for longer than the proxy's timers allow.
//!
//! - Which headers are honoured is the operator's choice, `PROXY_FAULT_HEADERS`: `off`; `demo` (the
//!   default), every fault that acts on the requester's own stream and ends with it (cut style, byte
//!   limit, reset, latency, bandwidth, probability, buffering); `all`, also the blackhole, which holds
//!   a stream and both its connections until the proxy's idle or total timer ends it, and forever with
//!   neither (that is toxiproxy's `timeout` toxic). `1`/`on` keep the meaning they had before there
//!   was a choice: every header.
//! - What a header may ask is limited under every policy. A value beyond its limit is refused with a
//!   400 naming the header, the value and the limit, never clamped: an experiment that silently ran
//!   with another value than the one it asked for would mislead whoever reads its result. The env vars
//!   (`PROXY_FAULT_*`) are the operator's and take any value, except the buffering size, whose buffer
//!   every response then holds.
//! - Whatever the values, a fault's memory is bounded: latency and bandwidth hold at most
//!   [`super::body::QUEUE_LIMIT`] bytes before they stop reading the upstream.

use std::time::Duration;

use super::value::FaultValueError;

/// The longest `x-keepalive-fault-latency` a request may ask for: longer than any balancer's default
/// idle timer (nginx's 60 s), and every chunk held this long is a stream no client would wait out.
pub const MAX_LATENCY: Duration = Duration::from_secs(60);

/// The latest `x-keepalive-fault-reset-after` or `-blackhole-after` a request may ask for: the longest
/// pause an upstream allows by default (keepalive-server's `SERVER_MAX_SLEEP`).
pub const MAX_AFTER: Duration = Duration::from_secs(3600);

/// The lowest `x-keepalive-fault-bandwidth` a request may ask for: a few lines of the poem a second,
/// slow enough to watch, and slower than any link a stream really meets (a 2400 baud modem is 300).
pub const MIN_BANDWIDTH: u64 = 100;

/// The largest buffering hop, by env or header: 16 times nginx's default in-memory `proxy_buffers`
/// (8 x 8k), enough to swallow minutes of heartbeats.
pub const MAX_BUFFERING: u64 = 1024 * 1024;

/// Which `x-keepalive-*` request headers the proxy honours (`PROXY_FAULT_HEADERS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultHeaders {
    /// None: the headers are removed and ignored, the proxy's own settings decide.
    Off,
    /// Those that act on the requester's own stream and end with it.
    #[default]
    Demo,
    /// Every one, the blackhole included.
    All,
}

const FORM: &str = "off, demo or all (0 means off, 1 all)";

impl FaultHeaders {
    /// `off`, `demo` or `all`; the switch's old `0`/`1` (and `false`/`true`, `no`/`yes`) still work.
    pub fn parse(value: &str) -> Result<Self, FaultValueError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "off" | "0" | "false" | "no" => Ok(Self::Off),
            "demo" => Ok(Self::Demo),
            "all" | "on" | "1" | "true" | "yes" => Ok(Self::All),
            _ => Err(FaultValueError::Choice {
                value: value.to_owned(),
                form: FORM,
            }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Demo => "demo",
            Self::All => "all",
        }
    }

    /// Whether requests may set anything by header (`x-keepalive-cut-style` included).
    pub fn any(self) -> bool {
        self != Self::Off
    }

    /// Whether a header that is `for_demo` (or not) is honoured under this policy.
    pub fn honours(self, for_demo: bool) -> bool {
        match self {
            Self::Off => false,
            Self::Demo => for_demo,
            Self::All => true,
        }
    }
}
