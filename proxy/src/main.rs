//! The keepalive-proxy binary: settings from flags and env, the descriptor limit raised, both
//! listeners bound, signals wired to a graceful shutdown during which the admin listener stays up
//! (its `/healthz` answering 503) until the proxy has drained. Everything else lives in the library.

use std::process::ExitCode;

use keepalive_common::{config::parse_or_exit, health, logging, shutdown};
use keepalive_proxy::{admin, descriptors, Metrics, ProxyConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let config: ProxyConfig = parse_or_exit();
    if config.healthcheck {
        return health::exit_code("keepalive-proxy", config.admin_addr).await;
    }
    logging::init("keepalive-proxy", config.log_format, "info");
    match descriptors::raise_soft_limit() {
        Ok(limit) => tracing::debug!(limit, "descriptor limit (RLIMIT_NOFILE)"),
        Err(err) => tracing::warn!(%err, "cannot raise the descriptor limit to its hard limit"),
    }
    let (listener, admin_listener) = match bind(&config).await {
        Ok(listeners) => listeners,
        Err(message) => {
            eprintln!("keepalive-proxy: {message}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        addr = %admin_listener.local_addr().map_or_else(|err| err.to_string(), |addr| addr.to_string()),
        "admin listening (/metrics, /healthz)"
    );
    let metrics = Metrics::new();
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown::signal().await;
            stop.cancel();
        }
    });
    let drained = CancellationToken::new();
    let proxy = {
        let (metrics, drained) = (metrics.clone(), drained.clone());
        async move {
            keepalive_proxy::serve(listener, config, metrics, stop.cancelled_owned()).await;
            drained.cancel();
        }
    };
    tokio::join!(
        proxy,
        admin::serve(admin_listener, metrics, drained.cancelled_owned()),
    );
    ExitCode::SUCCESS
}

async fn bind(config: &ProxyConfig) -> Result<(TcpListener, TcpListener), String> {
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|err| format!("cannot listen on PROXY_ADDR={}: {err}", config.addr))?;
    let admin = TcpListener::bind(config.admin_addr).await.map_err(|err| {
        format!(
            "cannot listen on PROXY_ADMIN_ADDR={}: {err}",
            config.admin_addr
        )
    })?;
    Ok((listener, admin))
}
