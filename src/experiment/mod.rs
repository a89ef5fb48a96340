//! `keepalive-lab experiment`: runs the scenarios (every way a long stream dies) in this process,
//! prints a table of what was expected and what the client and the origin saw, writes a timeline
//! picture per scenario, and fails when any observation differs from its expectation.

pub mod judge;
pub mod lab;
pub mod netns;
pub mod runner;
pub mod scenarios;
pub mod timeline;

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use crate::stdout::outln;
use runner::{NotRun, Outcome};
use scenarios::{Scale, Scenario};

#[derive(Debug, Clone, Args)]
pub struct ExperimentArgs {
    /// Timers in hundreds of milliseconds (the whole run takes seconds); otherwise four times longer
    #[arg(long)]
    quick: bool,

    /// Where the timeline pictures (one SVG per scenario) and the table (summary.md) go
    #[arg(long, default_value = "keepalive-lab-experiments")]
    out: PathBuf,

    /// Print the scenarios, each with its family and what it expects, and run nothing
    #[arg(long)]
    list: bool,

    /// Scenarios to run, by name (all when none is named; --list shows them)
    scenarios: Vec<String>,
}

/// One scenario's row in the table.
pub struct Row {
    pub scenario: &'static Scenario,
    pub outcome: Result<Outcome, NotRun>,
    pub took: std::time::Duration,
}

impl Row {
    pub fn passed(&self) -> bool {
        matches!(&self.outcome, Ok(outcome) if outcome.problems.is_empty())
    }

    /// Could not run on this machine: reported, but not a difference from the expectation.
    pub fn skipped(&self) -> bool {
        matches!(&self.outcome, Err(NotRun::CannotRun(_)))
    }
}

/// Runs one scenario.
pub async fn run_scenario(scenario: &'static Scenario, scale: Scale) -> Row {
    let started = Instant::now();
    let outcome = runner::run(scenario, scale).await;
    Row {
        scenario,
        outcome,
        took: started.elapsed(),
    }
}

/// Runs `experiment`; the exit code is 0 when every observation matched its expectation.
pub async fn run(args: ExperimentArgs) -> u8 {
    if args.list {
        for scenario in scenarios::ALL {
            outln!(
                "{:<24} {:<12} {}",
                scenario.name,
                scenario.family.name(),
                scenario.expectation
            );
        }
        return 0;
    }
    let chosen: Vec<&'static Scenario> = if args.scenarios.is_empty() {
        scenarios::ALL.iter().collect()
    } else {
        let mut chosen = Vec::new();
        for name in &args.scenarios {
            match scenarios::find(name) {
                Some(scenario) => chosen.push(scenario),
                None => {
                    let known: Vec<&str> = scenarios::ALL.iter().map(|s| s.name).collect();
                    eprintln!(
                        "keepalive-lab experiment: no scenario {name:?}; known: {} (--list says what each shows)",
                        known.join(", ")
                    );
                    return 2;
                }
            }
        }
        chosen
    };
    if let Err(err) = std::fs::create_dir_all(&args.out) {
        eprintln!(
            "keepalive-lab experiment: cannot create {}: {err}",
            args.out.display()
        );
        return 1;
    }
    let scale = Scale(if args.quick { 1 } else { 4 });
    let mut rows = Vec::new();
    for (index, scenario) in chosen.iter().enumerate() {
        eprint!("[{}/{}] {:<16} ", index + 1, chosen.len(), scenario.name);
        let row = run_scenario(scenario, scale).await;
        let verdict = if row.passed() {
            "as expected"
        } else {
            "DIFFERS"
        };
        eprintln!("{verdict} ({:.1}s)", row.took.as_secs_f64());
        if let Ok(outcome) = &row.outcome {
            let path = args.out.join(format!("{}.svg", scenario.name));
            if let Err(err) = std::fs::write(&path, outcome.timeline.to_svg()) {
                eprintln!("cannot write {}: {err}", path.display());
            }
        }
        rows.push(row);
    }
    let table = table(&rows);
    outln!("\n{table}");
    let summary = args.out.join("summary.md");
    if let Err(err) = std::fs::write(&summary, &table) {
        eprintln!("cannot write {}: {err}", summary.display());
    }
    let skipped = rows.iter().filter(|row| row.skipped()).count();
    let failed = rows
        .iter()
        .filter(|row| !row.passed() && !row.skipped())
        .count();
    outln!(
        "{} of {} scenarios as expected, {failed} differ, {skipped} could not run here; timelines in {}",
        rows.len() - failed - skipped,
        rows.len(),
        args.out.display()
    );
    u8::from(failed > 0)
}

/// The Markdown table of a run: expectation, what the client saw, what the origin saw, verdict.
pub fn table(rows: &[Row]) -> String {
    let mut text = String::from(
        "| scenario | expected | client saw | origin saw | result |\n|---|---|---|---|---|\n",
    );
    for row in rows {
        let (client, origin, result) = match &row.outcome {
            Ok(outcome) if outcome.problems.is_empty() => (
                outcome.client.clone(),
                outcome.origin.clone(),
                "as expected".to_owned(),
            ),
            Ok(outcome) => (
                outcome.client.clone(),
                outcome.origin.clone(),
                format!("DIFFERS: {}", outcome.problems.join("; ")),
            ),
            Err(NotRun::CannotRun(reason)) => (
                String::new(),
                String::new(),
                format!("SKIPPED, cannot run here: {reason}"),
            ),
            Err(NotRun::Failed(err)) => (String::new(), String::new(), format!("FAILED: {err}")),
        };
        text += &format!(
            "| {} | {} | {client} | {origin} | {result} |\n",
            row.scenario.name, row.scenario.expectation
        );
    }
    text
}
