//! Work that outlives the connection: a durable job read through a proxy that keeps cutting it, by
//! its idle timer or by injected RSTs. The step starts the job at the origin and follows its stream
//! through the proxy with the resuming client, which must assemble every line exactly once.

use std::collections::BTreeSet;
use std::time::Duration;

use http::StatusCode;

use super::{Ending, Expect, Family, Header, Millis, Scale, Scenario, Setup, Step, Target, Timers};
use crate::client::Client;
use crate::experiment::lab::start_origin;
use crate::experiment::runner::{front, headers, url, Seen, SetupError};
use crate::experiment::timeline::{Event, Mark, Timeline};
use crate::resume::{self, Progress};

const IDLE: Millis = Millis(300);

pub const JOB_RESUME_IDLE: Scenario = Scenario {
    name: "job-resume-idle",
    family: Family::Jobs,
    expectation: "a durable job read through a proxy whose idle timer keeps cutting: every line once, in order",
    setup: Setup {
        hop: None,
        proxy: Some(Timers {
            idle: Some(IDLE),
            ..Timers::NONE
        }),
        // No heartbeats: every pause between two lines outlasts the idle limit.
        target: Target::Job {
            sleep: Millis(500),
            lines: 7,
        },
        headers: &[],
        step: Step::FollowJob,
    },
    expect: &[
        Expect::JobWhole,
        Expect::Cuts {
            at_least: 2,
            look: Ending::Truncated,
        },
    ],
};

pub const JOB_RESUME_RST: Scenario = Scenario {
    name: "job-resume-rst",
    family: Family::Jobs,
    expectation: "a durable job read through injected RSTs: every line once, in order",
    setup: Setup {
        hop: None,
        proxy: Some(Timers {
            idle: Some(Millis(5000)),
            ..Timers::NONE
        }),
        target: Target::Job {
            sleep: Millis(200),
            lines: 12,
        },
        headers: &[Header::ResetAfter(Millis(500))],
        step: Step::FollowJob,
    },
    expect: &[
        Expect::JobWhole,
        Expect::Cuts {
            at_least: 2,
            look: Ending::Reset,
        },
    ],
};

/// Starts the job at the origin (`POST /jobs`), then follows its stream through the proxy, resuming
/// 50 ms after each cut, for four times the job's length and five seconds more at most.
pub(crate) async fn follow_job(scenario: &Scenario, scale: Scale) -> Result<Seen, SetupError> {
    let setup = &scenario.setup;
    let Target::Job { sleep, lines } = setup.target else {
        return Err(SetupError::Mismatch {
            scenario: scenario.name,
            needs: "a job to follow",
        });
    };
    let origin = start_origin().await?;
    let (_front, front) = front(origin.addr, setup, scale).await?;
    let start = url(origin.addr, &setup.target.path(scale))?;
    let (status, body) = Client::default()
        .fetch(http::Method::POST, &start, &[])
        .await?;
    let job: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let stream = match (status, job["stream"].as_str()) {
        (StatusCode::CREATED, Some(stream)) => stream.to_owned(),
        _ => return Err(SetupError::JobRefused(status)),
    };
    let budget =
        sleep.at(scale) * u32::try_from(lines).unwrap_or(u32::MAX) * 4 + Duration::from_secs(5);
    let mut events = Vec::new();
    let resumed = resume::follow_job(
        &Client::default(),
        &url(front, &stream)?,
        &headers(setup, scale)?,
        Some(budget),
        Some(Duration::from_millis(50)),
        |progress| match progress {
            Progress::Line(line) => events.push(Event {
                at: line.at,
                mark: Mark::Chunk,
                label: format!("id {}", line.id),
            }),
            Progress::Cut { at, how, after } => events.push(Event {
                at,
                mark: Mark::Cut,
                label: format!("{} after id {after}", how.name()),
            }),
        },
    )
    .await;
    let mut timeline = Timeline::new(scenario.title(scale));
    timeline.lane("client").events = events;
    let looks: BTreeSet<&str> = resumed.cut_kinds.iter().map(String::as_str).collect();
    Ok(Seen {
        client_view: format!(
            "{} of {} lines, each once, through {} cuts ({})",
            resumed.lines.len(),
            resumed.job_lines.unwrap_or(0),
            resumed.cuts,
            looks.into_iter().collect::<Vec<_>>().join(", ")
        ),
        origin_view: format!("job {}", resumed.job_state.as_deref().unwrap_or("unknown")),
        job: Some(resumed),
        timeline,
        ..Seen::default()
    })
}
