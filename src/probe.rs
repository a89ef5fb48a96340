//! `keepalive-lab probe URL`: measures, from outside, the timers of whatever balancer sits in front of
//! a keepalive-server, using the origin's own parameters to provoke each one:
//!
//! - first byte: response headers withheld (`delay=max`): the balancer's error page comes at its limit;
//! - idle: one line, then silence (`sleep=max`): the cut comes at the idle limit after that line;
//! - heartbeats: the same silence filled with heartbeats every half idle limit: a stream that outlives
//!   the idle limit proves they work; a cut then is a total limit (`max_duration`), unless a stream of
//!   real lines (no heartbeats) at that pace is not cut there, or not even the first line got through,
//!   which means the heartbeats were held back on the way (a buffering or compressing hop).
//!
//! Before any trial, one short stream (one line and the end marker) checks that what answers is
//! keepalive-server's `/polls/streamed`: anything else would answer the trials with plausible
//! numbers that mean nothing.
//!
//! A balancer acts at its limit, so the moment it acts is the measurement: one trial per timer, no
//! bisection. The first-byte and idle trials run at once (separate connections cannot disturb each
//! other); the heartbeat trial needs the idle limit, so it follows.

use std::time::Duration;

use clap::Args;
use http::{StatusCode, Uri};
use keepalive_common::duration::{display, parse_duration};
use serde::Serialize;
use tokio::time::Instant;

use keepalive_kit::servers::FIRST_LINE;
use keepalive_server::end_marker_line;

use crate::client::{Client, ClientArgs, ClientError, Transport};
use crate::expect::Expectation;
use crate::stdout::outln;
use crate::watch::{observe_owing, Observation, Verdict};

#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// The balancer's URL for keepalive-server's /polls/streamed, e.g. https://lb.example/polls/streamed
    /// (with --connect-to lb.example:443:10.0.0.5:443 to probe one balancer address by name)
    url: Uri,

    /// Longest a timer is looked for; one not hit by then is reported as null. Real balancers'
    /// timers are often 60 s: the default covers them
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    max: Duration,

    /// Print exactly one JSON object as the last line
    #[arg(long)]
    json: bool,

    /// Extra request header for every trial, `Name: value`; repeatable. `-H 'Host: name'` replaces
    /// the URL's host (HTTP/2: the :authority)
    #[arg(short = 'H', long = "header", value_parser = crate::watch::parse_header)]
    headers: Vec<(http::HeaderName, http::HeaderValue)>,

    #[command(flatten)]
    client: ClientArgs,
}

/// What one trial saw: the balancer acted (cut or answered an error) after `at`, or not at all. A
/// cut is known by what arrived, not only by how the connection closed: a body that ended cleanly
/// short of what the origin owed is a cut too (`clean`).
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Cut { at: Duration, how: &'static str },
    Error { at: Duration, status: u16 },
    Lasted,
}

impl Seen {
    /// How the balancer's action looked to the client: `truncated`, `clean`, `reset`, `http 504`.
    fn look(&self) -> Option<String> {
        match self {
            Seen::Cut { how, .. } => Some((*how).to_owned()),
            Seen::Error { status, .. } => Some(format!("http {status}")),
            Seen::Lasted => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Findings {
    pub first_byte_timeout_s: Option<f64>,
    /// The status the balancer answered when it gave up waiting for headers.
    pub first_byte_status: Option<u16>,
    /// How each timer's action looked to the client: `truncated` (closed mid-body), `clean` (a
    /// normal end of body, short of what the origin owed: silent truncation), `reset`, `http <status>`.
    pub first_byte_cut: Option<String>,
    pub idle_timeout_s: Option<f64>,
    pub idle_cut: Option<String>,
    pub heartbeat_survives: bool,
    pub heartbeat_interval_s: f64,
    pub max_duration_s: Option<f64>,
    pub max_duration_cut: Option<String>,
    pub recommended_heartbeat_s: Option<f64>,
    pub max_s: f64,
    pub took_s: f64,
    /// What the trials spoke: `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// `TLSv1.3`, `TLSv1.2`, or `null` over plain TCP.
    pub tls: Option<&'static str>,
}

/// Why the probe could not measure.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot add {query:?} to {base}: {source}")]
    Url {
        base: Uri,
        query: String,
        source: http::Error,
    },
    #[error("the balancer answered {0}: is the URL keepalive-server's /polls/streamed?")]
    NotTheOrigin(StatusCode),
    /// What answered is not keepalive-server's stream: the URL, and what came instead.
    #[error("{url} does not answer like keepalive-server's /polls/streamed: asked for one line of the poem and the end marker ({check}), got {got}; point the probe at the balancer's URL for /polls/streamed")]
    NotAStream {
        url: String,
        check: String,
        got: String,
    },
    #[error(transparent)]
    NoAnswer(#[from] ClientError),
}

fn url_with(base: &Uri, query: &str) -> Result<Uri, ProbeError> {
    let bad = |source: http::Error| ProbeError::Url {
        base: base.clone(),
        query: query.to_owned(),
        source,
    };
    let path = base.path();
    let joined = match base.query() {
        Some(existing) if !existing.is_empty() => format!("{path}?{existing}&{query}"),
        _ => format!("{path}?{query}"),
    };
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(
        joined
            .parse()
            .map_err(|err: http::uri::InvalidUri| bad(err.into()))?,
    );
    Uri::from_parts(parts).map_err(|err| bad(err.into()))
}

fn millis(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// When the balancer acted on a trial, measured from `from` (the request, or the first line).
fn seen(observation: Observation, from: Duration) -> Result<Seen, ProbeError> {
    let since = |at: Duration| at.saturating_sub(from);
    match observation.verdict {
        Verdict::Truncated => Ok(Seen::Cut {
            at: since(observation.ended_at),
            how: "truncated",
        }),
        Verdict::SilentlyTruncated(_) => Ok(Seen::Cut {
            at: since(observation.ended_at),
            how: "clean",
        }),
        Verdict::Reset(_) => Ok(Seen::Cut {
            at: since(observation.ended_at),
            how: "reset",
        }),
        Verdict::Http(status) if status.is_server_error() => Ok(Seen::Error {
            at: since(observation.ended_at),
            status: status.as_u16(),
        }),
        Verdict::Completed | Verdict::Timeout => Ok(Seen::Lasted),
        Verdict::Http(status) => Err(ProbeError::NotTheOrigin(status)),
        Verdict::Failed(err) => Err(err.into()),
    }
}

/// Two measurements of the same limit, within the probe's tolerance (10% or 200 ms).
fn same(a: Duration, b: Duration) -> bool {
    let tolerance = Duration::from_millis(200).max(a.max(b).mul_f64(0.1));
    a.abs_diff(b) <= tolerance
}

/// How long the check that the URL is keepalive-server's stream may take: its stream is one line,
/// sent at once.
const CHECK_WITHIN: Duration = Duration::from_secs(10);

/// How every trial reaches the balancer: the client (TLS, HTTP version, `--connect-to`) and the
/// user's headers.
#[derive(Clone, Default)]
pub struct Trials {
    pub client: Client,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Trials {
    /// One trial of at most `max`, judged against what the poem owes for `url`.
    async fn run(&self, url: &Uri, max: Duration) -> Observation {
        let owed = Expectation::of_poem(url);
        self.observe(url, max, Some(owed)).await
    }

    async fn observe(&self, url: &Uri, max: Duration, owed: Option<Expectation>) -> Observation {
        observe_owing(&self.client, url, &self.headers, Some(max), owed, |_| {}).await
    }
}

/// Checks that `url` answers like keepalive-server's `/polls/streamed`: asked for one line and the
/// end marker, it sends the poem's first line and the marker, and ends. What the connection spoke
/// is what every trial will speak.
async fn check_stream(trials: &Trials, url: &Uri, max: Duration) -> Result<Transport, ProbeError> {
    let check = url_with(url, "sleep=0&lines=1&end=marker")?;
    let seen = trials.observe(&check, max.min(CHECK_WITHIN), None).await;
    let body: Vec<u8> = seen
        .chunks
        .iter()
        .flat_map(|chunk| chunk.data.iter().copied())
        .collect();
    let text = String::from_utf8_lossy(&body);
    let owed = format!("{FIRST_LINE}{}", end_marker_line(1));
    let got = match seen.verdict {
        Verdict::Failed(err) => return Err(err.into()),
        Verdict::Http(status) => return Err(ProbeError::NotTheOrigin(status)),
        Verdict::Completed if text == owed => {
            if let Some(transport) = seen.transport {
                return Ok(transport);
            }
            format!("{} without a connection", seen.verdict.name())
        }
        _ if !text.starts_with(FIRST_LINE) => {
            let first: String = text
                .lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(80)
                .collect();
            format!("{first:?} first ({})", seen.verdict.name())
        }
        Verdict::Completed => format!(
            "{} bytes after the line, not the end marker",
            body.len() - FIRST_LINE.len()
        ),
        verdict => format!(
            "the line, then {} after {}",
            verdict.name(),
            display(seen.ended_at)
        ),
    };
    Err(ProbeError::NotAStream {
        url: url.to_string(),
        check: check.to_string(),
        got,
    })
}

/// Runs the trials; `progress` gets a sentence as each starts and ends.
pub async fn measure(
    trials: &Trials,
    url: &Uri,
    max: Duration,
    mut progress: impl FnMut(&str),
) -> Result<Findings, ProbeError> {
    let started = Instant::now();
    let transport = check_stream(trials, url, max).await?;
    progress(&format!("speaking {transport}"));
    // Each trial asks for a little more than `max`, so that "not hit by max" is the client's own
    // timeout and never the origin ending the stream.
    let patience = max + Duration::from_millis(500);
    let first_byte_url = url_with(url, &format!("delay={}&lines=1&sleep=0", millis(patience)))?;
    let idle_url = url_with(url, &format!("sleep={}&lines=2", millis(patience)))?;
    progress(&format!(
        "first byte: headers held back up to {}; idle: one line, then up to {} of silence",
        display(max),
        display(max)
    ));
    let (first_byte, idle) =
        tokio::join!(trials.run(&first_byte_url, max), trials.run(&idle_url, max));
    let first_byte = seen(first_byte, Duration::ZERO)?;
    let first_byte_cut = first_byte.look();
    // The origin sends the first line as soon as the request reaches it, and the balancer's idle
    // clock starts when that line passes it: measured from the request, not from when the line
    // reached the client, since a hop may hold small chunks a little (HAProxy does, ~200 ms).
    // The first line leaves the origin at once: if none arrived, something on the way holds
    // small chunks back, and heartbeats cannot help either.
    let idle_delivered = !idle.chunks.is_empty();
    let idle = seen(idle, Duration::ZERO)?;
    let mut idle_look = idle.look();
    let (first_byte_timeout, first_byte_status) = match first_byte {
        Seen::Error { at, status } => {
            progress(&format!(
                "first byte: answered {status} after {}",
                display(at)
            ));
            (Some(at), Some(status))
        }
        Seen::Cut { at, .. } => {
            progress(&format!(
                "first byte: closed without an answer after {}",
                display(at)
            ));
            (Some(at), None)
        }
        Seen::Lasted => {
            progress(&format!(
                "first byte: headers held {} without complaint",
                display(max)
            ));
            (None, None)
        }
    };
    let idle_cut = match idle {
        Seen::Cut { at, .. } | Seen::Error { at, .. } => {
            progress(&format!("idle: cut {} after the only line", display(at)));
            Some(at)
        }
        Seen::Lasted => {
            progress(&format!("idle: {} of silence passed", display(max)));
            None
        }
    };

    let interval = idle_cut.map_or(Duration::from_secs(1), |idle| idle / 2);
    let heartbeat_url = url_with(
        url,
        &format!(
            "sleep={}&lines=2&heartbeat={}",
            millis(patience),
            millis(interval)
        ),
    )?;
    progress(&format!(
        "heartbeats: the same silence with a heartbeat every {}",
        display(interval)
    ));
    let heartbeat = trials.run(&heartbeat_url, max).await;
    let heartbeat = seen(heartbeat, Duration::ZERO)?;
    let heartbeat_look = heartbeat.look();
    let (mut idle_timeout, mut survives, mut max_duration) = (idle_cut, true, None);
    let mut max_duration_look = None;
    match (heartbeat, idle_cut) {
        (Seen::Lasted, _) => progress(&format!("heartbeats: the stream lasted {}", display(max))),
        (Seen::Cut { at, .. } | Seen::Error { at, .. }, Some(idle))
            if same(at, idle) && !idle_delivered =>
        {
            progress(&format!(
                "heartbeats: cut after {} too, and not even the first line ever arrived: held back on the way",
                display(at)
            ));
            survives = false;
        }
        (Seen::Cut { at, .. } | Seen::Error { at, .. }, Some(idle)) if same(at, idle) => {
            // Cut where silence would have been cut: either the heartbeats never arrived, or
            // the "idle" cut was a total limit all along. Real lines at the heartbeat pace tell.
            progress(&format!(
                "heartbeats: cut after {} too; sending real lines every {} to tell why",
                display(at),
                display(interval)
            ));
            let lines_url = url_with(url, &format!("sleep={}", millis(interval)))?;
            let lines = trials.run(&lines_url, max).await;
            let lines = seen(lines, Duration::ZERO)?;
            match lines {
                Seen::Cut { at: lines_at, .. } | Seen::Error { at: lines_at, .. }
                    if same(lines_at, at) =>
                {
                    max_duration_look = lines.look();
                    idle_look = None;
                    progress(&format!(
                        "lines: cut after {} as well: a total limit, and no idle timer before it",
                        display(lines_at)
                    ));
                    idle_timeout = None;
                    max_duration = Some(lines_at);
                }
                _ => {
                    progress("lines: not cut there: the heartbeats were held back on the way");
                    survives = false;
                }
            }
        }
        (Seen::Cut { at, .. } | Seen::Error { at, .. }, _) => {
            progress(&format!(
                "heartbeats: the stream outlived the idle limit, then was cut after {}: a total limit",
                display(at)
            ));
            max_duration = Some(at);
            max_duration_look = heartbeat_look;
        }
    }
    let recommended = idle_timeout.map(|idle| (idle.as_secs_f64() / 2.0 * 10.0).floor() / 10.0);
    Ok(Findings {
        first_byte_timeout_s: first_byte_timeout.map(seconds),
        first_byte_status,
        first_byte_cut,
        idle_timeout_s: idle_timeout.map(seconds),
        idle_cut: idle_look.filter(|_| idle_timeout.is_some()),
        heartbeat_survives: survives,
        heartbeat_interval_s: seconds(interval),
        max_duration_s: max_duration.map(seconds),
        max_duration_cut: max_duration_look,
        recommended_heartbeat_s: recommended,
        max_s: seconds(max),
        took_s: seconds(started.elapsed()),
        protocol: transport.protocol.as_str(),
        tls: transport.tls,
    })
}

/// Whole milliseconds, as seconds.
fn seconds(duration: Duration) -> f64 {
    duration.as_millis() as f64 / 1000.0
}

fn explain(findings: &Findings) -> Vec<String> {
    let max = findings.max_s;
    let mut lines = Vec::new();
    lines.push(match (findings.first_byte_timeout_s, findings.first_byte_status) {
        (Some(at), Some(status)) => format!(
            "First byte: the balancer answers {status} when response headers take {at:.1} s: start responding (headers, then stream) sooner than that."
        ),
        (Some(at), None) => format!(
            "First byte: the balancer closes the connection when response headers take {at:.1} s."
        ),
        _ => format!("First byte: response headers may take at least {max:.0} s."),
    });
    lines.push(match findings.idle_timeout_s {
        Some(idle) if findings.idle_cut.as_deref() == Some("clean") => format!(
            "Idle: a stream silent for {idle:.1} s is cut mid-body, and the cut looks like a normal end: clients cannot tell (silent truncation). Make every stream end with a marker, and treat one without it as cut."
        ),
        Some(idle) if findings.idle_cut.as_deref() == Some("reset") => format!(
            "Idle: a stream silent for {idle:.1} s is reset mid-body ({}); clients see the stream fail after a 200, not an error page.",
            if findings.protocol == "HTTP/2" { "RST_STREAM" } else { "TCP RST" }
        ),
        Some(idle) => format!(
            "Idle: a stream silent for {idle:.1} s is cut mid-body ({}); clients see an incomplete response, not an error.",
            findings.idle_cut.as_deref().unwrap_or("cut")
        ),
        None => format!("Idle: {max:.0} s of silence did not cut the stream."),
    });
    lines.push(if findings.heartbeat_survives {
        format!(
            "Heartbeats: one every {:.2} s kept the stream alive.",
            findings.heartbeat_interval_s
        )
    } else {
        "Heartbeats: they did NOT keep the stream alive: something on the way holds small chunks back (proxy buffering, compression); send X-Accel-Buffering: no and Cache-Control: no-transform, or turn buffering off.".to_owned()
    });
    lines.push(match findings.max_duration_s {
        Some(total) => format!(
            "Total: every response is cut after {total:.1} s, heartbeats or not: longer streams must reconnect and resume."
        ),
        None => format!("Total: no limit on a heartbeated stream up to {max:.0} s."),
    });
    if let Some(every) = findings.recommended_heartbeat_s {
        lines.push(format!(
            "Recommendation: send a heartbeat at least every {every:.1} s (half the idle limit)."
        ));
    }
    lines
}

/// Runs `probe`: progress on stderr, the findings explained (or as JSON) on stdout.
pub async fn run(args: ProbeArgs) -> u8 {
    let json = args.json;
    let client = match Client::new(&args.client) {
        Ok(client) => client,
        Err(err) => {
            eprintln!("keepalive-lab probe: {err}");
            return 2;
        }
    };
    let trials = Trials {
        client,
        headers: args.headers,
    };
    let findings = measure(&trials, &args.url, args.max, |line| {
        eprintln!("probe: {line}")
    })
    .await;
    match findings {
        Ok(findings) => {
            if json {
                outln!("{}", serde_json::to_string(&findings).unwrap_or_default());
            } else {
                for line in explain(&findings) {
                    outln!("{line}");
                }
                let over = match findings.tls {
                    Some(tls) => format!("{} over {tls}", findings.protocol),
                    None => findings.protocol.to_owned(),
                };
                outln!(
                    "(probed {} with {over} in {:.1} s)",
                    args.url,
                    findings.took_s
                );
            }
            0
        }
        Err(err) => {
            eprintln!("keepalive-lab probe: {err}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_added_to_the_url() {
        let base: Uri = "http://lb:8080/polls/streamed".parse().expect("URL");
        assert_eq!(
            url_with(&base, "sleep=1").expect("URL").to_string(),
            "http://lb:8080/polls/streamed?sleep=1"
        );
        let with_query: Uri = "http://lb/polls/streamed?format=sse".parse().expect("URL");
        assert_eq!(
            url_with(&with_query, "sleep=1").expect("URL").to_string(),
            "http://lb/polls/streamed?format=sse&sleep=1"
        );
    }

    #[test]
    fn tolerance_is_ten_percent_or_200_ms() {
        assert!(same(
            Duration::from_millis(2000),
            Duration::from_millis(2190)
        ));
        assert!(!same(
            Duration::from_millis(2000),
            Duration::from_millis(2300)
        ));
        assert!(same(Duration::from_secs(60), Duration::from_secs(65)));
    }
}
