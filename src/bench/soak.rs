//! `keepalive-lab bench --soak DURATION`: many heartbeated streams held through keepalive-proxy for
//! a long time, to find what a short benchmark cannot: a leak. Each program's open descriptors,
//! threads, resident memory and its own count of open streams (the gauge on its /metrics: one
//! task a stream) are read before the streams open, once they are open, at the end of the hold,
//! after they close, and after a second, short round of the same streams.
//!
//! Descriptors, threads and open streams must come back to their baseline once the streams close.
//! Resident memory cannot: an allocator keeps freed memory for reuse (glibc's malloc gives back only
//! what sits at the top of each arena, and keeps an arena per thread), so it stays near its peak
//! without anything leaking. A leak shows instead as memory that keeps growing: during the hold
//! (something kept per heartbeat), or round after round of the same streams (something kept per
//! stream), where an allocator's growth levels off within a few rounds, once every arena has what
//! the streams need.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Method;
use keepalive_common::duration::display;
use keepalive_kit::metrics;
use keepalive_proxy::UpstreamProtocol;
use serde::Serialize;
use tokio::time::Instant;

use super::load::Heartbeated;
use super::procs::{self, Holdings, Process};
use super::BenchError;
use crate::client::Client;

/// Descriptors a program may hold after the streams beyond its baseline: its own bookkeeping (a log
/// file reopened, an epoll instance, a pooled upstream connection), never one per stream.
const DESCRIPTOR_SLACK: u64 = 8;
/// Threads beyond the baseline: tokio's blocking pool may keep a thread or two a while.
const THREAD_SLACK: u64 = 2;
/// Growth of resident memory never called a leak: buffers warming up, an allocator's arenas.
const RSS_SLACK_KIB: u64 = 8 * 1024;
/// How long each further round holds its streams: long enough for every stream to be set up and
/// torn down in full, which is what a per-stream leak needs. Shorter for a shorter soak, as above.
const ROUND: Duration = Duration::from_secs(10);
/// The shortest settle and round.
const SHORTEST: Duration = Duration::from_secs(2);
/// Further rounds at most: memory that still grows in the last one is a leak.
const ROUNDS: usize = 4;
/// How long, after the last stream closes, the programs get to let go of it: tokio's blocking
/// threads idle out after 10 s, and a closed stream's cleanup is immediate. Shorter for a soak
/// shorter than this (a check that the soak itself works), at least 2 s.
const SETTLE: Duration = Duration::from_secs(15);
/// How often the hold reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

/// What a soak holds, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Soak {
    pub streams: usize,
    pub hold: Duration,
}

/// One program at one moment: what it holds, and how many streams it counts as open.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    #[serde(flatten)]
    pub holdings: Holdings,
    /// `proxy_streams_active` or `origin_streams_active`; `None` when /metrics did not answer.
    pub streams_active: Option<f64>,
}

/// One program at each moment of the soak.
#[derive(Debug, Clone, Serialize)]
pub struct Phases {
    /// Before any stream.
    pub before: Sample,
    /// Every stream open.
    pub opened: Sample,
    /// At the end of the hold.
    pub held: Sample,
    /// Once the streams closed and the program had time to let go.
    pub closed: Sample,
    /// After each further, short round of the same streams, closed in turn.
    pub rounds: Vec<Sample>,
}

impl Phases {
    /// The last moment measured: after the last round, or when the streams closed.
    fn last(&self) -> Sample {
        self.rounds.last().copied().unwrap_or(self.closed)
    }

    /// Growth of resident memory in the last round, in KiB.
    fn last_round_growth(&self) -> u64 {
        let previous = match self.rounds.len() {
            0 | 1 => self.closed,
            n => self.rounds[n - 2],
        };
        grew(previous, self.last())
    }

    /// What did not come back, or kept growing, in words; empty when nothing did.
    fn kept(&self, name: &str) -> Vec<String> {
        let before = self.before.holdings;
        let mut kept = Vec::new();
        for (after, when) in [(self.closed, "once closed"), (self.last(), "at the end")] {
            let holdings = after.holdings;
            if holdings.descriptors > before.descriptors + DESCRIPTOR_SLACK {
                kept.push(format!(
                    "{name} kept {} descriptors {when}",
                    holdings.descriptors - before.descriptors
                ));
            }
            if holdings.threads > before.threads + THREAD_SLACK {
                kept.push(format!(
                    "{name} kept {} threads {when}",
                    holdings.threads - before.threads
                ));
            }
            if let (Some(before), Some(after)) = (self.before.streams_active, after.streams_active)
            {
                if after > before {
                    kept.push(format!(
                        "{name} still counts {} streams open {when}",
                        after - before
                    ));
                }
            }
        }
        let while_held = grew(self.opened, self.held);
        if while_held > RSS_SLACK_KIB {
            kept.push(format!(
                "{name} grew {} while the streams were held",
                mib(while_held)
            ));
        }
        let last_round = self.last_round_growth();
        if last_round > RSS_SLACK_KIB {
            kept.push(format!(
                "{name} still grew {} in round {}",
                mib(last_round),
                self.rounds.len() + 1
            ));
        }
        kept
    }
}

/// Growth of resident memory from one sample to a later one, in KiB.
fn grew(from: Sample, to: Sample) -> u64 {
    to.holdings.rss_kib.saturating_sub(from.holdings.rss_kib)
}

/// Every figure of a soak; `--json` prints it as one object.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub streams: usize,
    pub held_s: f64,
    /// Streams that ended before the soak closed them.
    pub streams_cut: usize,
    pub heartbeat_lag_p99_ms: f64,
    pub proxy: Phases,
    pub origin: Phases,
    pub leak: bool,
    pub verdict: String,
}

/// Runs the soak: the origin (logging into `scratch`) and keepalive-proxy as programs of their own,
/// `soak.streams` streams through the proxy for `soak.hold`; both programs stopped on return.
pub async fn run(
    soak: Soak,
    scratch: &Path,
    progress: &impl Fn(&str),
) -> Result<SoakReport, BenchError> {
    let settle = soak.hold.clamp(SHORTEST, SETTLE);
    let round_hold = soak.hold.clamp(SHORTEST, ROUND);
    let origin = procs::origin(&scratch.join("origin.log"))?;
    // An idle limit far above the 1 s heartbeat: a cut during the soak is news, not a timer.
    let proxy = procs::proxy(
        origin.addr,
        Duration::from_secs(60),
        UpstreamProtocol::Http1,
    )?;
    let before = (now(&proxy).await, now(&origin).await);
    progress(&format!(
        "soak: {} heartbeated streams through keepalive-proxy for {}",
        soak.streams,
        display(soak.hold)
    ));
    let streams = Heartbeated::open(proxy.addr, soak.streams).await?;
    let opened = all_counted(&proxy, &origin, &before, soak.streams).await;
    let started = Instant::now();
    while started.elapsed() < soak.hold {
        let left = soak.hold.saturating_sub(started.elapsed());
        tokio::time::sleep(left.min(PROGRESS_EVERY)).await;
        let now = procs::holdings(proxy.pid());
        progress(&format!(
            "soak: {} of {}: keepalive-proxy holds {} descriptors, {} threads, {:.1} MiB",
            display(Duration::from_secs(started.elapsed().as_secs())),
            display(soak.hold),
            now.descriptors,
            now.threads,
            mib_f(now.rss_kib)
        ));
    }
    let held = (now(&proxy).await, now(&origin).await);
    let first = streams.close().await?;
    progress(&format!(
        "soak: streams closed; {} for the programs to let go",
        display(settle)
    ));
    tokio::time::sleep(settle).await;
    let closed = (now(&proxy).await, now(&origin).await);
    let mut proxy_phases = Phases {
        before: before.0,
        opened: opened.0,
        held: held.0,
        closed: closed.0,
        rounds: Vec::new(),
    };
    let mut origin_phases = Phases {
        before: before.1,
        opened: opened.1,
        held: held.1,
        closed: closed.1,
        rounds: Vec::new(),
    };
    let mut cut = first.cut;
    // Rounds until memory stops growing in both programs (an allocator levelling off), or a leak.
    for round in 2..=ROUNDS + 1 {
        progress(&format!(
            "soak: round {round}, {} streams for {}, to see whether memory levels off",
            soak.streams,
            display(round_hold)
        ));
        let streams = Heartbeated::open(proxy.addr, soak.streams).await?;
        tokio::time::sleep(round_hold).await;
        cut += streams.close().await?.cut;
        tokio::time::sleep(settle).await;
        proxy_phases.rounds.push(now(&proxy).await);
        origin_phases.rounds.push(now(&origin).await);
        if proxy_phases.last_round_growth() <= RSS_SLACK_KIB
            && origin_phases.last_round_growth() <= RSS_SLACK_KIB
        {
            break;
        }
    }
    let kept: Vec<String> = [
        proxy_phases.kept("keepalive-proxy"),
        origin_phases.kept("the origin"),
    ]
    .concat();
    let verdict = if kept.is_empty() {
        format!(
            "no leak: descriptors, threads and open streams back at their baseline once the streams closed; memory grew by at most {} while {} streams were held {}, and by at most that in the last of {} rounds",
            mib(RSS_SLACK_KIB),
            soak.streams,
            display(soak.hold),
            proxy_phases.rounds.len() + 1
        )
    } else {
        format!("leak: {}", kept.join("; "))
    };
    Ok(SoakReport {
        streams: soak.streams,
        held_s: soak.hold.as_secs_f64(),
        streams_cut: cut,
        heartbeat_lag_p99_ms: first.lag_p99_ms,
        leak: !kept.is_empty(),
        proxy: proxy_phases,
        origin: origin_phases,
        verdict,
    })
}

/// Both programs once each counts every stream open (up to 30 s: a program that never does is
/// sampled as it is, and its gauge shows the shortfall).
async fn all_counted(
    proxy: &Process,
    origin: &Process,
    before: &(Sample, Sample),
    streams: usize,
) -> (Sample, Sample) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sampled = (now(proxy).await, now(origin).await);
        let counted = |sample: Sample, before: Sample| {
            let open = sample.streams_active.unwrap_or(0.0) - before.streams_active.unwrap_or(0.0);
            open >= streams as f64
        };
        if (counted(sampled.0, before.0) && counted(sampled.1, before.1))
            || Instant::now() >= deadline
        {
            return sampled;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What `process` holds now, and its own count of open streams.
async fn now(process: &Process) -> Sample {
    Sample {
        holdings: procs::holdings(process.pid()),
        streams_active: match process.metrics {
            Some(addr) => streams_active(addr).await,
            None => None,
        },
    }
}

/// The open-streams gauge on the /metrics at `addr` (the proxy's or the origin's, whichever answers).
async fn streams_active(addr: SocketAddr) -> Option<f64> {
    let url = format!("http://{addr}/metrics").parse().ok()?;
    let (_, body) = tokio::time::timeout(
        Duration::from_secs(5),
        Client::default().fetch(Method::GET, &url, &[]),
    )
    .await
    .ok()?
    .ok()?;
    let text = String::from_utf8_lossy(&body);
    ["proxy_streams_active", "origin_streams_active"]
        .into_iter()
        .find_map(|name| metrics::sample(&text, name))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", mib_f(kib))
}

fn mib_f(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The human report: one row per figure and program, one column per moment.
pub fn table(report: &SoakReport) -> String {
    let mut text = format!(
        "| program | figure | before | {n} streams open | held {held} | closed | after {rounds} more rounds |\n|---|---|---|---|---|---|---|\n",
        n = report.streams,
        held = display(Duration::from_secs_f64(report.held_s)),
        rounds = report.proxy.rounds.len(),
    );
    for (name, phases) in [
        ("keepalive-proxy", &report.proxy),
        ("origin", &report.origin),
    ] {
        let row = |figure: &str, value: &dyn Fn(&Sample) -> String| {
            let cells = [
                phases.before,
                phases.opened,
                phases.held,
                phases.closed,
                phases.last(),
            ]
            .iter()
            .map(value)
            .collect::<Vec<_>>()
            .join(" | ");
            format!("| {name} | {figure} | {cells} |\n")
        };
        text += &row("open descriptors", &|s| s.holdings.descriptors.to_string());
        text += &row("threads", &|s| s.holdings.threads.to_string());
        text += &row("streams it counts open", &|s| {
            s.streams_active
                .map_or_else(|| "?".to_owned(), |open| format!("{open:.0}"))
        });
        text += &row("RSS", &|s| mib(s.holdings.rss_kib));
    }
    text += &format!(
        "\n{} streams cut, heartbeat lag p99 {:.1} ms\n{}\n",
        report.streams_cut, report.heartbeat_lag_p99_ms, report.verdict
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(descriptors: u64, threads: u64, rss_mib: u64, open: f64) -> Sample {
        Sample {
            holdings: Holdings {
                descriptors,
                threads,
                rss_kib: rss_mib * 1024,
            },
            streams_active: Some(open),
        }
    }

    #[test]
    fn memory_kept_for_reuse_is_no_leak() {
        let phases = Phases {
            before: at(12, 3, 10, 0.0),
            opened: at(2012, 3, 48, 1000.0),
            held: at(2012, 3, 50, 1000.0),
            closed: at(13, 3, 47, 0.0),
            rounds: vec![at(13, 3, 59, 0.0), at(14, 4, 62, 0.0)],
        };
        assert_eq!(phases.kept("proxy"), Vec::<String>::new());
    }

    #[test]
    fn what_stays_or_keeps_growing_is_a_leak() {
        let phases = Phases {
            before: at(12, 3, 10, 0.0),
            opened: at(2012, 3, 48, 1000.0),
            held: at(2012, 3, 90, 1000.0),
            closed: at(1012, 9, 80, 500.0),
            rounds: vec![at(13, 3, 100, 0.0), at(13, 3, 120, 0.0)],
        };
        assert_eq!(
            phases.kept("proxy"),
            [
                "proxy kept 1000 descriptors once closed",
                "proxy kept 6 threads once closed",
                "proxy still counts 500 streams open once closed",
                "proxy grew 42.0 MiB while the streams were held",
                "proxy still grew 20.0 MiB in round 3"
            ]
        );
    }
}
