//! keepalive-lab: the lab around the origin and the proxy. With no subcommand it runs the demo.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keepalive_common::config::parse_or_exit;
use keepalive_lab::{bench, ctl, demo, experiment, probe, stdout, watch};

#[derive(Debug, Parser)]
#[command(
    name = "keepalive-lab",
    version,
    about = "See, reproduce and measure what load balancers do to long streaming HTTP responses",
    long_about = "See, reproduce and measure what load balancers do to long streaming HTTP \
        responses.\n\nWithout a subcommand, runs the demo: the streaming origin and the \
        timer-enforcing proxy in one process, with curl commands to try and a narration of what \
        happens to each stream."
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    demo: demo::DemoArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Origin on 127.0.0.1:8000 and proxy on 127.0.0.1:8080 with demo timers (the default)
    Demo(Box<demo::DemoArgs>),
    /// Follow one stream: every chunk with its arrival time and the gap before it, heartbeats as
    /// dots, then how it ended: completed (exit 0), truncated (18), reset (56: TCP RST, HTTP/2
    /// RST_STREAM or GOAWAY), timeout (28), http <status> (22), silently truncated (65), or failed
    /// (7; over https a certificate not trusted 60, another handshake failure 35), curl's codes
    /// for the same endings where curl has one
    Watch(watch::WatchArgs),
    /// Measure the timers of a balancer in front of keepalive-server from outside: first byte,
    /// idle, whether heartbeats help, total; then explain each and recommend a heartbeat interval
    Probe(probe::ProbeArgs),
    /// Run the scripted scenarios, every way a long stream dies (timers, client and origin going
    /// away, injected faults, hops that swallow heartbeats, silent network loss): a table of
    /// expected vs seen, a timeline SVG each; exit 1 if any differs. --list names them
    Experiment(experiment::ExperimentArgs),
    /// Benchmark keepalive-proxy against nginx and a direct connection on this machine: throughput,
    /// 10,000 heartbeated streams, idle-cut precision, disconnect propagation (needs nginx and wrk);
    /// or, with --soak DURATION, hold streams through keepalive-proxy and look for leaks
    Bench(bench::BenchArgs),
    /// Drive a running keepalive-proxy through its control API (admin listener): show or change
    /// its timers, faults and cut style without a restart, list the open streams, cut one or all
    /// now in a chosen style, follow the events; for scripted disconnect tests
    Ctl(ctl::CtlArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = parse_or_exit();
    // A closed stdout (`| head`) ends whichever command is running, quietly: see `stdout`.
    let code = tokio::select! {
        code = run(cli) => code,
        () = stdout::gone() => stdout::exit_code(),
    };
    ExitCode::from(code)
}

async fn run(cli: Cli) -> u8 {
    let outcome = match cli.command {
        Some(Command::Watch(args)) => return watch::run(args).await,
        Some(Command::Experiment(args)) => return experiment::run(args).await,
        Some(Command::Probe(args)) => return probe::run(args).await,
        Some(Command::Bench(args)) => return bench::run(args).await,
        Some(Command::Ctl(args)) => return ctl::run(args).await,
        Some(Command::Demo(args)) => demo::run(*args).await,
        None => demo::run(cli.demo).await,
    };
    match outcome {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("keepalive-lab: {err}");
            err.exit_code()
        }
    }
}
