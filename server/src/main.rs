//! The origin's binary: settings, logging, a bound socket, signals; everything else is in the library
//! so that the lab CLI and the tests run the same server.

use std::process::ExitCode;

use keepalive_common::config::parse_or_exit;
use keepalive_common::{health, logging, shutdown};
use keepalive_server::{serve, ServerConfig};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let config = parse_or_exit::<ServerConfig>();
    if config.healthcheck {
        return health::exit_code("keepalive-server", config.addr).await;
    }
    if let Err(err) = config.check() {
        eprintln!("keepalive-server: {err}");
        return ExitCode::from(2);
    }
    logging::init("keepalive-server", config.log_format, "info");
    let listener = match TcpListener::bind(config.addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("keepalive-server: cannot listen on {}: {err}", config.addr);
            return ExitCode::FAILURE;
        }
    };
    match serve(listener, config, shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("keepalive-server: {err}");
            ExitCode::FAILURE
        }
    }
}
