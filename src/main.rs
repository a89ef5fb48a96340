//! keepalive-lab: the lab around the origin and the proxy. With no subcommand it runs the demo.

mod demo;

use clap::{Parser, Subcommand};
use keepalive_common::config::parse_or_exit;

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
    Demo(demo::DemoArgs),
}

#[tokio::main]
async fn main() {
    let cli: Cli = parse_or_exit();
    let outcome = match cli.command {
        Some(Command::Demo(args)) => demo::run(args).await,
        None => demo::run(cli.demo).await,
    };
    if let Err(message) = outcome {
        eprintln!("keepalive-lab: {message}");
        std::process::exit(1);
    }
}
