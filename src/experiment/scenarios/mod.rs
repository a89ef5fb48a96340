//! The scenarios: every way a long stream dies, each a value that says what it sets up (the proxy's
//! timers, a hop in front of the origin, the request and its fault headers, what happens during the
//! stream) and what a user should expect of it. [`crate::experiment::runner`] sets each up with the
//! real origin and proxy and watches it with the real client; [`crate::experiment::judge`] holds
//! what was seen against [`Scenario::expect`]. Being data, the same value also feeds `--list`, the
//! table and the title of each picture.
//!
//! Durations are [`Millis`] at the `--quick` scale: a full run takes each four times longer.

mod disconnects;
mod faults;
mod hops;
mod jobs;
mod replicas;
mod rolling;
mod silent_loss;
mod timers;
mod title;

use std::ops::RangeInclusive;
use std::time::Duration;

use http::header::{InvalidHeaderValue, ACCEPT_ENCODING};
use http::{HeaderName, HeaderValue, StatusCode};
use keepalive_proxy::config::Compression;
use keepalive_proxy::cut_style::{CutStyle, CUT_STYLE_HEADER};
use keepalive_proxy::faults::{LIMIT_BYTES_HEADER, RESET_AFTER_HEADER};
use keepalive_proxy::{Balance, ProxyConfig, TimerSet};

use crate::watch::Verdict;

pub(crate) use disconnects::{client_resets, origin_down, origin_killed};
pub(crate) use jobs::follow_job;
pub(crate) use replicas::replicas;
pub use replicas::{Fate, ReplicaStream, Run};
pub(crate) use rolling::rolling_deploy;
pub use rolling::Rolling;
pub(crate) use silent_loss::network_silent;
pub use silent_loss::MetricsProbeError;

/// How long things take: `--quick` runs at 1, a full run at 4.
#[derive(Debug, Clone, Copy)]
pub struct Scale(pub u32);

/// Milliseconds at the `--quick` scale; [`Millis::at`] is the duration at the run's scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(pub u64);

impl Millis {
    pub fn at(self, scale: Scale) -> Duration {
        Duration::from_millis(self.0 * u64::from(scale.0))
    }
}

/// One way a stream dies: what is set up, and what a user should expect of it.
pub struct Scenario {
    /// What `keepalive-lab experiment NAME` and the tests run it by.
    pub name: &'static str,
    pub family: Family,
    /// What a user should expect, in a sentence: `--list` and the table print it.
    pub expectation: &'static str,
    pub setup: Setup,
    /// What the judge checks, each in turn; the run is as expected when every one holds.
    pub expect: &'static [Expect],
}

/// The ways a stream dies, one file each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// The proxy's timers: idle, total, first byte, and how their cut looks.
    Timers,
    /// The client or the origin going away.
    Disconnects,
    /// The proxy's injected faults.
    Faults,
    /// A hop that buffers or compresses in front of the origin.
    Hops,
    /// A network that loses the client without a FIN or a RST.
    SilentLoss,
    /// A durable job read across cuts.
    Jobs,
    /// Several replicas behind the proxy: a deploy that drains one, a crash that kills one.
    Replicas,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Timers => "timers",
            Family::Disconnects => "disconnects",
            Family::Faults => "faults",
            Family::Hops => "hops",
            Family::SilentLoss => "silent loss",
            Family::Jobs => "jobs",
            Family::Replicas => "replicas",
        }
    }
}

/// What a scenario sets up: from the origin out, the hop, the proxy, the client's request, and
/// what happens while the stream runs.
pub struct Setup {
    /// A hop in front of the origin, behind the proxy.
    pub hop: Option<Hop>,
    /// The proxy the client talks to (a balancer), with these timers; `None`: no proxy at all.
    pub proxy: Option<Timers>,
    pub target: Target,
    /// Request headers: the proxy's per-request faults, or what a client asks of a hop.
    pub headers: &'static [Header],
    pub step: Step,
}

/// The proxy's timers; an unset one is off.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    /// The connect timer; `None` leaves it at a second, unscaled, for scenarios not about it.
    pub connect: Option<Millis>,
    pub first_byte: Option<Millis>,
    pub idle: Option<Millis>,
    pub total: Option<Millis>,
}

impl Timers {
    pub const NONE: Timers = Timers {
        connect: None,
        first_byte: None,
        idle: None,
        total: None,
    };

    pub fn set(self, scale: Scale) -> TimerSet {
        TimerSet {
            connect: Some(self.connect.map_or(Duration::from_secs(1), |c| c.at(scale))),
            first_byte: self.first_byte.map(|timer| timer.at(scale)),
            idle: self.idle.map(|timer| timer.at(scale)),
            max_duration: self.total.map(|timer| timer.at(scale)),
            header: None,
            keepalive: None,
            send: None,
        }
    }
}

/// A proxy in front of the origin that holds small chunks back, as real ones do.
#[derive(Debug, Clone, Copy)]
pub enum Hop {
    /// Holds body bytes until `bytes` are buffered, like nginx's `proxy_buffering`; unless it
    /// ignores it, the origin's `X-Accel-Buffering: no` turns that off.
    Buffering { bytes: u64, ignores_accel: bool },
    /// Compresses with gzip and does not flush; unless it ignores it, the origin's
    /// `Cache-Control: no-transform` turns that off.
    Gzip { ignores_no_transform: bool },
}

impl Hop {
    pub fn configure(self, config: &mut ProxyConfig) {
        match self {
            Hop::Buffering {
                bytes,
                ignores_accel,
            } => {
                config.buffering = Some(bytes);
                config.buffering_ignore_header = ignores_accel;
            }
            Hop::Gzip {
                ignores_no_transform,
            } => {
                config.compression = Compression::Gzip;
                config.compression_ignore_no_transform = ignores_no_transform;
            }
        }
    }
}

/// What the client asks the origin for.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The Django tutorial's `/polls/streamed`.
    Stream(Stream),
    /// `/polls/`: a short page, not a stream.
    Index,
    /// A durable job (`POST /jobs` at the origin) of `lines` lines, `sleep` apart, read on its
    /// SSE stream.
    Job { sleep: Millis, lines: u64 },
}

/// The parameters of `/polls/streamed`; an unset one is the origin's default.
#[derive(Debug, Clone, Copy)]
pub struct Stream {
    /// Between two lines of the poem.
    pub sleep: Option<Millis>,
    /// How many lines it owes; endless without.
    pub lines: Option<u64>,
    /// A heartbeat this often while it sleeps.
    pub heartbeat: Option<Millis>,
    /// Hold the response head this long.
    pub delay: Option<Millis>,
}

impl Stream {
    pub const DEFAULT: Stream = Stream {
        sleep: None,
        lines: None,
        heartbeat: None,
        delay: None,
    };
}

impl Target {
    /// The path and query the client (or, for a job, its `POST`) asks for.
    pub fn path(self, scale: Scale) -> String {
        match self {
            Target::Stream(stream) => {
                let parameters: Vec<String> = [
                    ("sleep", stream.sleep.map(|sleep| ms(sleep.at(scale)))),
                    ("lines", stream.lines.map(|lines| lines.to_string())),
                    ("heartbeat", stream.heartbeat.map(|beat| ms(beat.at(scale)))),
                    ("delay", stream.delay.map(|delay| ms(delay.at(scale)))),
                ]
                .into_iter()
                .filter_map(|(name, value)| Some(format!("{name}={}", value?)))
                .collect();
                format!("/polls/streamed?{}", parameters.join("&"))
            }
            Target::Index => "/polls/".to_owned(),
            Target::Job { sleep, lines } => {
                format!("/jobs?sleep={}&lines={lines}", ms(sleep.at(scale)))
            }
        }
    }

    /// How often the stream sends a heartbeat, if it does.
    pub fn heartbeat(self) -> Option<Millis> {
        match self {
            Target::Stream(stream) => stream.heartbeat,
            Target::Index | Target::Job { .. } => None,
        }
    }
}

/// A request header a scenario sends; the proxy's own names for its faults.
#[derive(Debug, Clone, Copy)]
pub enum Header {
    /// `x-keepalive-cut-style`: how the proxy's cuts end for this request.
    CutStyle(CutStyle),
    /// `x-keepalive-fault-reset-after`: the proxy resets the client this long into the response.
    ResetAfter(Millis),
    /// `x-keepalive-fault-limit-bytes`: the proxy forwards this many body bytes, then cuts.
    LimitBytes(u64),
    /// `Accept-Encoding: gzip`: what a compressing hop waits for.
    AcceptGzip,
}

/// A header value built from a scenario that `http` refused.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {source}")]
pub struct BadHeader {
    pub name: HeaderName,
    pub source: InvalidHeaderValue,
}

impl Header {
    pub fn pair(self, scale: Scale) -> Result<(HeaderName, HeaderValue), BadHeader> {
        Ok(match self {
            Header::CutStyle(style) => (CUT_STYLE_HEADER, HeaderValue::from_static(style.as_str())),
            Header::ResetAfter(after) => (
                RESET_AFTER_HEADER,
                HeaderValue::try_from(ms(after.at(scale))).map_err(|source| BadHeader {
                    name: RESET_AFTER_HEADER,
                    source,
                })?,
            ),
            Header::LimitBytes(bytes) => (LIMIT_BYTES_HEADER, HeaderValue::from(bytes)),
            Header::AcceptGzip => (ACCEPT_ENCODING, HeaderValue::from_static("gzip")),
        })
    }
}

/// What happens while the stream runs.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// The client watches the stream, and gives up after `max` if it is still open.
    Watch { max: Millis },
    /// The client closes its connection (a FIN) after `after`.
    ClientCloses { after: Millis },
    /// The client resets its connection (a RST) `after` the stream's first line.
    ClientResets { after: Millis },
    /// The origin dies `after` the request; the client watches for `max` at most.
    OriginKilled { after: Millis, max: Duration },
    /// A first request finds the origin down; it comes back `after` that one's answer, and a
    /// second request follows. Each is watched for `max` at most.
    OriginDown { after: Millis, max: Millis },
    /// The network drops every packet of the client's connection `after` the first line; the
    /// origin runs with this `SERVER_TCP_USER_TIMEOUT`.
    NetworkSilent {
        after: Millis,
        user_timeout: Option<Millis>,
    },
    /// The resuming client follows the job across every cut.
    FollowJob,
    /// Three replicas behind a proxy balancing by `balance` and checking their health every
    /// `health`; long streams over them and short requests the whole time; the busiest replica
    /// meets its `fate` `after` the start; everything is watched until `max`.
    Replicas {
        fate: Fate,
        balance: Balance,
        after: Millis,
        health: Millis,
        max: Millis,
    },
    /// Three replicas on one PostgreSQL database (`SERVER_JOB_LEASE` of `lease`,
    /// `SERVER_DRAIN_TIMEOUT` of `drain`) behind a proxy checking their health every `health`;
    /// readers follow jobs across every cut; `after` the start every replica is restarted in turn,
    /// then the busiest is killed with SIGKILL.
    RollingDeploy {
        drain: Millis,
        lease: Millis,
        health: Millis,
        after: Millis,
    },
}

/// How the client's stream ended, as a scenario expects it: a [`Verdict`] without its details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    Truncated,
    SilentlyTruncated,
    Reset,
    Timeout,
    Http(StatusCode),
}

impl Ending {
    pub fn matches(self, verdict: &Verdict) -> bool {
        match (self, verdict) {
            (Ending::Completed, Verdict::Completed)
            | (Ending::Truncated, Verdict::Truncated)
            | (Ending::SilentlyTruncated, Verdict::SilentlyTruncated(_))
            | (Ending::Reset, Verdict::Reset(_))
            | (Ending::Timeout, Verdict::Timeout) => true,
            (Ending::Http(want), Verdict::Http(status)) => want == *status,
            _ => false,
        }
    }

    /// As [`Verdict::name`] says it.
    pub fn name(self) -> String {
        match self {
            Ending::Completed => "completed".to_owned(),
            Ending::Truncated => "truncated".to_owned(),
            Ending::SilentlyTruncated => "silently truncated".to_owned(),
            Ending::Reset => "reset".to_owned(),
            Ending::Timeout => "timeout".to_owned(),
            Ending::Http(status) => format!("http {}", status.as_u16()),
        }
    }
}

/// When, from the request, the client's stream should end.
#[derive(Debug, Clone, Copy)]
pub enum When {
    Any,
    /// Within [-50 ms, +700 ms] of it: the tolerance of the test suite, for a loaded machine.
    Around(Millis),
    /// No later than it.
    Within(Millis),
}

/// One thing a scenario expects; [`crate::experiment::judge`] says when it does not hold.
#[derive(Debug, Clone)]
pub enum Expect {
    /// The client's stream ends as `ending`, `at` that time.
    Ends { ending: Ending, at: When },
    /// The client's stream is still open when it stops watching, with at least `min_heartbeats`
    /// heartbeats received: they got through.
    StillOpen { min_heartbeats: usize },
    /// So many body bytes reach the client.
    BodyBytes(RangeInclusive<usize>),
    /// The client's stream ends within `within` of the step's event (the origin's death).
    ClientNotified { within: Duration },
    /// The origin's stream ends because its client went (not completed, not still running).
    ClientGone,
    /// The origin's stream ends within a second of the client's end.
    OriginFollows,
    /// The request after the step (the origin back) completes.
    Recovers,
    /// The origin drops the stream about `after` the network went silent: no earlier, and no
    /// later than the next heartbeat and a second more (that heartbeat's write is what fails).
    OriginLetsGo { after: Millis },
    /// The origin goes on streaming to nobody after the network went silent.
    OriginStreamsOn,
    /// Every line of the job arrives exactly once, in order, and the job completed.
    JobWhole,
    /// The proxy cuts the job's stream at least `at_least` times, each cut looking like `look`.
    Cuts { at_least: usize, look: Ending },
    /// Every short request sent while replicas came and went was answered 200: no 502, no connect
    /// error, no 503.
    NoFailedRequest,
    /// Every stream on the replica the step acted on ends as `ending`, `after` the step (within
    /// [-50 ms, +700 ms]).
    VictimStreamsEnd { ending: Ending, after: Millis },
    /// Every stream on the other replicas is still open when the run stops watching.
    OthersUntouched,
    /// The proxy sends the replica the step acted on no new request later than `within` after the
    /// step (one health interval, 300 ms more for a loaded machine), until it is back.
    VictimQuiet { within: Millis },
    /// The restarted replica serves requests again once it is back.
    Rejoins,
    /// The proxy sent at least one request elsewhere after the replica it chose refused it.
    Retried,
    /// Every reader of a rolling deploy got every line of its job exactly once, in order, and
    /// every job completed.
    EveryJobWhole,
    /// The killed replica ran jobs, and every job still running had its next line no later than
    /// `within` after the kill (300 ms more for a loaded machine).
    TakenOver { within: Millis },
}

/// Every scenario, in the order a run shows them.
pub const ALL: &[Scenario] = &[
    timers::IDLE_CUT,
    timers::CLEAN_CUT,
    timers::RESET_CUT,
    timers::HEARTBEAT_SAVES,
    timers::TOTAL_TIMER,
    timers::FIRST_BYTE_504,
    disconnects::CLIENT_FIN,
    disconnects::CLIENT_RST,
    disconnects::ORIGIN_KILLED,
    disconnects::ORIGIN_DOWN,
    faults::INJECTED_RST,
    faults::BYTE_LIMIT,
    silent_loss::SILENT_LOSS,
    silent_loss::SILENT_LOSS_NO_TIMEOUT,
    hops::BUFFERING_HOP,
    hops::ACCEL_BUFFERING_NO,
    hops::COMPRESSION_HOP,
    hops::NO_TRANSFORM,
    jobs::JOB_RESUME_IDLE,
    jobs::JOB_RESUME_RST,
    replicas::DEPLOY_DRAIN,
    replicas::REPLICA_KILLED,
    rolling::ROLLING_DEPLOY,
];

/// The named scenario, if there is one.
pub fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().find(|scenario| scenario.name == name)
}

pub(crate) fn ms(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expect::Shortfall;
    use crate::watch::Reset;

    #[test]
    fn endings_are_named_as_verdicts_are() {
        let pairs = [
            (Ending::Completed, Verdict::Completed),
            (Ending::Truncated, Verdict::Truncated),
            (Ending::Reset, Verdict::Reset(Reset::Tcp)),
            (
                Ending::Reset,
                Verdict::Reset(Reset::Stream(h2::Reason::INTERNAL_ERROR)),
            ),
            (Ending::Timeout, Verdict::Timeout),
            (
                Ending::SilentlyTruncated,
                Verdict::SilentlyTruncated(Shortfall {
                    expected: "2 lines".to_owned(),
                    received: "1 lines".to_owned(),
                }),
            ),
            (
                Ending::Http(StatusCode::BAD_GATEWAY),
                Verdict::Http(StatusCode::BAD_GATEWAY),
            ),
        ];
        for (ending, verdict) in pairs {
            assert_eq!(ending.name(), verdict.name());
            assert!(ending.matches(&verdict));
        }
        assert!(!Ending::Http(StatusCode::BAD_GATEWAY)
            .matches(&Verdict::Http(StatusCode::GATEWAY_TIMEOUT)));
        assert!(!Ending::Truncated.matches(&Verdict::Reset(Reset::Tcp)));
    }

    #[test]
    fn names_are_unique() {
        for (index, scenario) in ALL.iter().enumerate() {
            assert!(
                ALL[index + 1..]
                    .iter()
                    .all(|other| other.name != scenario.name),
                "{} twice",
                scenario.name
            );
        }
    }

    #[test]
    fn a_stream_target_asks_for_what_it_sets() {
        let target = Target::Stream(Stream {
            sleep: Some(Millis(500)),
            heartbeat: Some(Millis(200)),
            ..Stream::DEFAULT
        });
        assert_eq!(
            target.path(Scale(4)),
            "/polls/streamed?sleep=2000ms&heartbeat=800ms"
        );
    }
}
