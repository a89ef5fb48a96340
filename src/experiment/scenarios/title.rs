//! A scenario told in a sentence, for the title of its picture: read from the same value the runner
//! sets up and the judge holds against, so that the picture cannot say one thing while the run does
//! another.

use super::replicas::REPLICAS;
use super::{ms, Fate, Header, Hop, Scale, Scenario, Step, Target, Timers};

impl Scenario {
    /// `name: what it sets up; what happens. Expected: its expectation`.
    pub fn title(&self, scale: Scale) -> String {
        let setup = &self.setup;
        let mut parts = vec![target(setup.target, scale)];
        parts.extend(setup.proxy.map(|timers| proxy(timers, scale)));
        parts.extend(setup.hop.map(hop));
        parts.extend(setup.headers.iter().map(|header| told(*header, scale)));
        parts.push(step(setup.step, scale));
        format!(
            "{}: {}. Expected: {}",
            self.name,
            parts.join("; "),
            self.expectation
        )
    }
}

fn target(target: Target, scale: Scale) -> String {
    match target {
        Target::Stream(stream) => {
            let parts: Vec<String> = [
                stream
                    .sleep
                    .map(|sleep| format!("a line every {}", ms(sleep.at(scale)))),
                stream.lines.map(|lines| format!("{lines} lines")),
                stream
                    .heartbeat
                    .map(|beat| format!("a heartbeat every {}", ms(beat.at(scale)))),
                stream
                    .delay
                    .map(|delay| format!("headers held {}", ms(delay.at(scale)))),
            ]
            .into_iter()
            .flatten()
            .collect();
            if parts.is_empty() {
                "the endless stream".to_owned()
            } else {
                parts.join(", ")
            }
        }
        Target::Index => "the index page".to_owned(),
        Target::Job { sleep, lines } => format!(
            "a durable job of {lines} lines, one every {}",
            ms(sleep.at(scale))
        ),
    }
}

fn proxy(timers: Timers, scale: Scale) -> String {
    let limits: Vec<String> = [
        ("idle", timers.idle),
        ("total", timers.total),
        ("first-byte", timers.first_byte),
        ("connect", timers.connect),
    ]
    .into_iter()
    .filter_map(|(name, limit)| Some(format!("{name} limit {}", ms(limit?.at(scale)))))
    .collect();
    if limits.is_empty() {
        "a proxy without timers".to_owned()
    } else {
        format!("a proxy with {}", limits.join(", "))
    }
}

fn hop(hop: Hop) -> String {
    let does = |ignores: bool| if ignores { "ignores" } else { "honours" };
    match hop {
        Hop::Buffering {
            bytes,
            ignores_accel,
        } => format!(
            "in front of the origin a {}KiB buffering hop that {} X-Accel-Buffering: no",
            bytes / 1024,
            does(ignores_accel)
        ),
        Hop::Gzip {
            ignores_no_transform,
        } => format!(
            "in front of the origin a gzip hop that {} Cache-Control: no-transform",
            does(ignores_no_transform)
        ),
    }
}

fn told(header: Header, scale: Scale) -> String {
    match header {
        Header::CutStyle(style) => format!("cut style {}", style.as_str()),
        Header::ResetAfter(after) => {
            format!("the proxy resets the client after {}", ms(after.at(scale)))
        }
        Header::LimitBytes(bytes) => format!("the proxy forwards {bytes} body bytes, then cuts"),
        Header::AcceptGzip => "the client accepts gzip".to_owned(),
    }
}

fn step(step: Step, scale: Scale) -> String {
    match step {
        Step::Watch { max } => format!("the client watches up to {}", ms(max.at(scale))),
        Step::ClientCloses { after } => format!("the client closes after {}", ms(after.at(scale))),
        Step::ClientResets { after } => format!(
            "the client resets its connection {} after the first line",
            ms(after.at(scale))
        ),
        Step::OriginKilled { after, .. } => {
            format!("the origin dies after {}", ms(after.at(scale)))
        }
        Step::OriginDown { after, .. } => format!(
            "a request while the origin is down, one after it is back {} later",
            ms(after.at(scale))
        ),
        Step::NetworkSilent {
            after,
            user_timeout,
        } => format!(
            "the network drops every packet {} after the first line; SERVER_TCP_USER_TIMEOUT {}",
            ms(after.at(scale)),
            user_timeout.map_or_else(|| "off".to_owned(), |timeout| ms(timeout.at(scale)))
        ),
        Step::FollowJob => "the client resumes after every cut".to_owned(),
        Step::Replicas {
            fate,
            balance,
            after,
            health,
            ..
        } => format!(
            "{REPLICAS} replicas, {}, /healthz checked every {}; the busiest is {} after {}",
            balance.as_str(),
            ms(health.at(scale)),
            match fate {
                Fate::Restarted { drain } =>
                    format!("restarted (drain limit {})", ms(drain.at(scale))),
                Fate::Killed => "killed".to_owned(),
            },
            ms(after.at(scale))
        ),
        Step::RollingDeploy {
            drain,
            lease,
            health,
            after,
        } => format!(
            "{REPLICAS} replicas on one PostgreSQL (job lease {}, drain limit {}), /healthz checked every {}; readers resume after every cut; from {} each replica restarted in turn, then the busiest killed -9",
            ms(lease.at(scale)),
            ms(drain.at(scale)),
            ms(health.at(scale)),
            ms(after.at(scale))
        ),
    }
}
