//! How an exchange ended, in two letters in the spirit of HAProxy's termination flags, and the one
//! access-log line written when it does.
//!
//! The first letter says who ended it: `-` nobody (it completed), `C` the client (it went away, or
//! its request was refused as malformed), `O` the origin (refused, failed, broke off), `T` one of the
//! proxy's timers (the line names it), `F` an injected fault, `A` the control API. The second says
//! when: `H` before the response headers (the proxy answered itself, or nothing was sent), `D`
//! during the body, `-` after a complete one. So `--` is a stream that completed, `TD` one an idle
//! or total timer cut, `CD` one whose client left, `OH` a 502.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};

use crate::faults::Fault;
use crate::timeouts::Timer;

/// Who ended an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ender {
    Nobody,
    Client,
    Origin,
    Timer(Timer),
    Fault(Fault),
    Api,
}

/// When in the exchange it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Headers,
    Body,
    Complete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Termination {
    pub by: Ender,
    pub phase: Phase,
}

impl Termination {
    pub fn new(by: Ender, phase: Phase) -> Self {
        Self { by, phase }
    }

    /// The `ended` label of `proxy_stream_duration_seconds`: who ended it, without the phase.
    pub fn ender(self) -> &'static str {
        match self.by {
            Ender::Nobody => "completed",
            Ender::Client => "client",
            Ender::Origin => "origin",
            Ender::Timer(_) => "timer",
            Ender::Fault(_) => "fault",
            Ender::Api => "api",
        }
    }

    pub const ENDERS: [&'static str; 6] =
        ["completed", "client", "origin", "timer", "fault", "api"];

    /// The timer or fault that ended it, by name.
    pub fn cause(self) -> Option<&'static str> {
        match self.by {
            Ender::Timer(timer) => Some(timer.as_str()),
            Ender::Fault(fault) => Some(fault.as_str()),
            _ => None,
        }
    }
}

/// The two letters.
impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by = match self.by {
            Ender::Nobody => '-',
            Ender::Client => 'C',
            Ender::Origin => 'O',
            Ender::Timer(_) => 'T',
            Ender::Fault(_) => 'F',
            Ender::Api => 'A',
        };
        let phase = match self.phase {
            Phase::Headers => 'H',
            Phase::Body => 'D',
            Phase::Complete => '-',
        };
        write!(f, "{by}{phase}")
    }
}

/// What the access log says of one exchange.
pub struct Record<'a> {
    pub request_id: &'a str,
    pub client: Option<SocketAddr>,
    pub method: &'a Method,
    pub path: &'a str,
    /// `None` when nothing was sent: the client left before the response headers.
    pub status: Option<StatusCode>,
    pub replica: Option<&'a str>,
    pub duration: Duration,
    /// Until the upstream's response headers; `None` when the proxy answered itself.
    pub first_byte: Option<Duration>,
    pub bytes: u64,
    pub chunks: u64,
    pub longest_gap: Option<Duration>,
    pub termination: Termination,
}

/// The access-log line: target `keepalive_proxy::access`, so that `RUST_LOG` can turn it off
/// alone (`RUST_LOG=info,keepalive_proxy::access=off`). Durations are numbers of seconds, which a
/// JSON log pipeline can sum and compare.
pub fn write(record: &Record<'_>) {
    let seconds = |duration: Duration| duration.as_secs_f64();
    tracing::info!(
        target: "keepalive_proxy::access",
        request_id = record.request_id,
        client = record.client.map(tracing::field::display),
        method = %record.method,
        path = record.path,
        status = record.status.map(|status| status.as_u16()),
        replica = record.replica,
        duration_s = seconds(record.duration),
        first_byte_s = record.first_byte.map(seconds),
        bytes = record.bytes,
        chunks = record.chunks,
        longest_gap_s = record.longest_gap.map(seconds),
        termination = %record.termination,
        ended_by = record.termination.ender(),
        cause = record.termination.cause(),
        "access",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log lines written through a subscriber that keeps them.
    #[derive(Clone, Default)]
    struct Kept(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Kept {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_json_line_has_durations_as_numbers_and_the_flags() {
        let kept = Kept::default();
        let writer = kept.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            write(&Record {
                request_id: "r-1",
                client: Some("127.0.0.1:5000".parse().expect("address")),
                method: &Method::GET,
                path: "/polls/streamed?sleep=8",
                status: Some(StatusCode::OK),
                replica: Some("127.0.0.1:8000"),
                duration: Duration::from_millis(5004),
                first_byte: Some(Duration::from_millis(3)),
                bytes: 33,
                chunks: 1,
                longest_gap: Some(Duration::from_secs(5)),
                termination: Termination::new(Ender::Timer(Timer::Idle), Phase::Body),
            });
        });
        let text = String::from_utf8(kept.0.lock().expect("lock").clone()).expect("UTF-8");
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["target"], "keepalive_proxy::access");
        assert_eq!(line["duration_s"], 5.004);
        assert_eq!(line["first_byte_s"], 0.003);
        assert_eq!(line["longest_gap_s"], 5.0);
        assert_eq!(line["status"], 200);
        assert_eq!(line["bytes"], 33);
        assert_eq!(line["termination"], "TD");
        assert_eq!(line["cause"], "idle");
        assert_eq!(line["replica"], "127.0.0.1:8000");
    }

    #[test]
    fn the_flags_say_who_and_when() {
        assert_eq!(
            Termination::new(Ender::Nobody, Phase::Complete).to_string(),
            "--"
        );
        let cut = Termination::new(Ender::Timer(Timer::Idle), Phase::Body);
        assert_eq!(cut.to_string(), "TD");
        assert_eq!(cut.ender(), "timer");
        assert_eq!(cut.cause(), Some("idle"));
        assert_eq!(
            Termination::new(Ender::Origin, Phase::Headers).to_string(),
            "OH"
        );
        assert_eq!(Termination::new(Ender::Api, Phase::Body).to_string(), "AD");
        assert_eq!(
            Termination::new(Ender::Client, Phase::Body).to_string(),
            "CD"
        );
    }
}
