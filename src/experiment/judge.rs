//! Holds what a run saw against what its scenario expects: each [`Expect`] either holds or becomes
//! one problem, a sentence naming what was seen and what was wanted. A fact the expectation needs
//! but the run did not see (a scenario whose step cannot show it) is a problem too, never a pass.

use std::time::Duration;

use keepalive_common::duration::display;

use super::runner::{origin_said, Seen};
use super::scenarios::{ms, Ending, Expect, Scale, Scenario, When};
use crate::resume::Resumed;

/// What differed from `scenario`'s expectation: nothing when the run was as expected.
pub fn problems(scenario: &Scenario, scale: Scale, seen: &Seen) -> Vec<String> {
    let mut problems = Problems(Vec::new());
    for expect in scenario.expect {
        if let Err(unseen) = judge(expect, scenario, scale, seen, &mut problems) {
            problems.0.push(format!("no {unseen} was seen to judge"));
        }
    }
    problems.0
}

/// Within [expected - 50 ms, expected + 700 ms]: the tolerance of the test suite, for a loaded machine.
fn around(observed: Duration, expected: Duration) -> bool {
    observed + Duration::from_millis(50) >= expected
        && observed <= expected + Duration::from_millis(700)
}

struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, holds: bool, problem: impl FnOnce() -> String) {
        if !holds {
            self.0.push(problem());
        }
    }
}

/// Adds a problem for each part of `expect` that does not hold; `Err` names the fact it needed
/// and the run did not see.
fn judge(
    expect: &Expect,
    scenario: &Scenario,
    scale: Scale,
    seen: &Seen,
    problems: &mut Problems,
) -> Result<(), &'static str> {
    let stream = || seen.stream.as_ref().ok_or("client stream");
    let event = || seen.event.ok_or("step");
    match expect {
        Expect::Ends { ending, at } => {
            let stream = stream()?;
            let verdict = stream.verdict.name();
            problems.check(ending.matches(&stream.verdict), || {
                format!("client: {verdict}, want {}", ending.name())
            });
            let ended = stream.ended_at;
            match *at {
                When::Any => {}
                When::Around(at) => problems.check(around(ended, at.at(scale)), || {
                    format!(
                        "{verdict} at {:.3}s, want {}",
                        ended.as_secs_f64(),
                        ms(at.at(scale))
                    )
                }),
                When::Within(limit) => problems.check(ended <= limit.at(scale), || {
                    format!(
                        "{verdict} after {:.3}s, want within {}",
                        ended.as_secs_f64(),
                        ms(limit.at(scale))
                    )
                }),
            }
        }
        Expect::StillOpen { min_heartbeats } => {
            let stream = stream()?;
            problems.check(Ending::Timeout.matches(&stream.verdict), || {
                format!(
                    "client: {} at {:.3}s, want still open",
                    stream.verdict.name(),
                    stream.ended_at.as_secs_f64()
                )
            });
            problems.check(stream.heartbeats() >= *min_heartbeats, || {
                format!(
                    "only {} heartbeats arrived, want at least {min_heartbeats}",
                    stream.heartbeats()
                )
            });
        }
        Expect::BodyBytes(bytes) => {
            let received = stream()?.body_bytes();
            problems.check(bytes.contains(&received), || {
                let want = if bytes.start() == bytes.end() {
                    bytes.start().to_string()
                } else {
                    format!("{}..={}", bytes.start(), bytes.end())
                };
                format!("{received} body bytes, want {want}")
            });
        }
        Expect::ClientNotified { within } => {
            let (ended, event) = (stream()?.ended_at, event()?);
            problems.check(ended <= event + *within, || {
                format!(
                    "the client learned of it {:.3}s later",
                    ended.saturating_sub(event).as_secs_f64()
                )
            });
        }
        Expect::ClientGone => problems
            .check(seen.origin.is_some_and(|end| end.client_gone > 0.0), || {
                format!("origin: {}", origin_said(seen.origin, seen.client_end))
            }),
        Expect::OriginFollows => problems.check(
            seen.origin
                .is_some_and(|end| end.at <= seen.client_end + Duration::from_secs(1)),
            || format!("origin: {}", origin_said(seen.origin, seen.client_end)),
        ),
        Expect::Recovers => {
            let retry = seen.retry.as_ref().ok_or("second request")?;
            problems.check(Ending::Completed.matches(&retry.verdict), || {
                format!("once back: {}, want completed", retry.verdict.name())
            });
        }
        Expect::OriginLetsGo { after } => {
            let (dropped, after) = (event()?, after.at(scale));
            let beat = scenario
                .setup
                .target
                .heartbeat()
                .map_or(Duration::ZERO, |beat| beat.at(scale));
            match seen.origin {
                Some(end) => problems.check(
                    end.at >= dropped + after
                        && end.at <= dropped + after + beat + Duration::from_secs(1),
                    || {
                        format!(
                            "the origin let go {} after the drop, want about {}",
                            display(end.at.saturating_sub(dropped)),
                            ms(after)
                        )
                    },
                ),
                None => problems.0.push(format!(
                    "the origin still streams {} after the drop despite a {} TCP_USER_TIMEOUT",
                    display(seen.looked.saturating_sub(dropped)),
                    ms(after)
                )),
            }
        }
        Expect::OriginStreamsOn => {
            let dropped = event()?;
            if let Some(end) = seen.origin {
                problems.0.push(format!(
                    "the origin let go {} after the drop with no TCP_USER_TIMEOUT: something sent a FIN or RST",
                    display(end.at.saturating_sub(dropped))
                ));
            }
        }
        Expect::JobWhole => {
            let job = seen.job.as_ref().ok_or("job")?;
            problems.check(job.verified(), || job_problem(job));
        }
        Expect::Cuts { at_least, look } => {
            let job = seen.job.as_ref().ok_or("job")?;
            problems.check(job.cuts >= *at_least, || {
                format!("{} cuts: the proxy did not keep cutting", job.cuts)
            });
            let want = look.name();
            problems.check(job.cut_kinds.iter().all(|kind| *kind == want), || {
                format!("cuts {:?}, want all {want}", job.cut_kinds)
            });
        }
        Expect::NoFailedRequest => {
            let run = seen.replicas.as_ref().ok_or("replicas run")?;
            let failures = run.failures();
            problems.check(!run.requests.is_empty() && failures.is_empty(), || {
                format!(
                    "{} of {} requests failed: {}",
                    failures.len(),
                    run.requests.len(),
                    failures.join(", ")
                )
            });
        }
        Expect::VictimStreamsEnd { ending, after } => {
            let (run, event) = (seen.replicas.as_ref().ok_or("replicas run")?, event()?);
            let (on_victim, _) = run.split();
            problems.check(!on_victim.is_empty(), || {
                "no stream was on the replica the step acted on".to_owned()
            });
            let want = event + after.at(scale);
            for stream in on_victim {
                let ended = stream.began + stream.seen.ended_at;
                let verdict = stream.seen.verdict.name();
                problems.check(
                    ending.matches(&stream.seen.verdict) && around(ended, want),
                    || {
                        format!(
                            "a stream on the victim: {verdict} at {:.3}s, want {} at {:.3}s",
                            ended.as_secs_f64(),
                            ending.name(),
                            want.as_secs_f64()
                        )
                    },
                );
            }
        }
        Expect::OthersUntouched => {
            let run = seen.replicas.as_ref().ok_or("replicas run")?;
            let (_, others) = run.split();
            for stream in others {
                problems.check(Ending::Timeout.matches(&stream.seen.verdict), || {
                    format!(
                        "a stream on r{}: {} at {:.3}s, want still open",
                        stream.replica + 1,
                        stream.seen.verdict.name(),
                        (stream.began + stream.seen.ended_at).as_secs_f64()
                    )
                });
            }
        }
        Expect::VictimQuiet { within } => {
            let (run, event) = (seen.replicas.as_ref().ok_or("replicas run")?, event()?);
            let limit = event + within.at(scale) + Duration::from_millis(300);
            if let Some(last) = run.last_sent {
                problems.check(last <= limit, || {
                    format!(
                        "the proxy still sent it a request {} after the step, want within {}",
                        display(last.saturating_sub(event)),
                        ms(within.at(scale))
                    )
                });
            }
        }
        Expect::Retried => {
            let run = seen.replicas.as_ref().ok_or("replicas run")?;
            problems.check(run.retries >= 1.0, || {
                "the proxy retried nothing: no request met the dead replica".to_owned()
            });
        }
        Expect::EveryJobWhole => {
            let rolling = seen.rolling.as_ref().ok_or("rolling deploy")?;
            problems.check(!rolling.readers.is_empty(), || {
                "no job was followed".to_owned()
            });
            for (index, job) in rolling.readers.iter().enumerate() {
                problems.check(job.verified(), || {
                    format!("job {}: {}", index + 1, job_problem(job))
                });
            }
        }
        Expect::TakenOver { within } => {
            let rolling = seen.rolling.as_ref().ok_or("rolling deploy")?;
            problems.check(rolling.victim_jobs >= 1.0, || {
                "the killed replica ran no job: nothing was taken over".to_owned()
            });
            let limit = within.at(scale) + Duration::from_millis(300);
            match rolling.resumed_after_kill {
                Some(wait) => problems.check(wait <= limit, || {
                    format!(
                        "a job's next line came {} after the kill, want within {}",
                        display(wait),
                        ms(within.at(scale))
                    )
                }),
                None => problems
                    .0
                    .push("no job wrote a line after the kill".to_owned()),
            }
        }
        Expect::Rejoins => {
            let served = seen
                .replicas
                .as_ref()
                .and_then(|run| run.rejoined)
                .ok_or("restarted replica")?;
            problems.check(served > 0.0, || {
                "the restarted replica served nothing once back".to_owned()
            });
        }
    }
    Ok(())
}

fn job_problem(job: &Resumed) -> String {
    format!(
        "{} lines for a job of {:?}: missing {:?}, repeated {:?}{}",
        job.lines.len(),
        job.job_lines,
        job.missing(),
        job.repeated(),
        job.gave_up
            .as_ref()
            .map_or_else(String::new, |reason| format!(", stopped: {reason}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn around_allows_a_little_early_and_a_loaded_machine_late() {
        let want = Duration::from_millis(500);
        assert!(around(Duration::from_millis(460), want));
        assert!(around(Duration::from_millis(1200), want));
        assert!(!around(Duration::from_millis(440), want));
        assert!(!around(Duration::from_millis(1210), want));
    }
}
