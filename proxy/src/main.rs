//! The keepalive-proxy binary: settings from flags and env, the descriptor limit raised, both
//! listeners bound, signals wired to a graceful shutdown during which the admin listener stays up
//! (its `/healthz` answering 503) until the proxy has drained. Everything else lives in the library.
//!
//! Settings the library can only judge by using them (a TLS key that is not its certificate's, a
//! self-signed certificate's path that cannot be written) stop it before it accepts anyone, with exit
//! code 2 and one line, as a bad value does.

use std::net::SocketAddr;
use std::process::ExitCode;

use keepalive_common::{config::parse_or_exit, health, logging, shutdown};
use keepalive_proxy::{admin, descriptors, ProxyConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

// One thread here for accepting, the admin listener, signals and health checks: clients are served
// on the worker threads (`PROXY_WORKERS`), each with a runtime of its own.
#[tokio::main(flavor = "current_thread")]
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
    let (addr, admin_addr) = (config.addr, config.admin_addr);
    let has_token = config.admin_token.is_some();
    let proxy = match keepalive_proxy::prepare(config) {
        Ok(proxy) => proxy,
        Err(err) => {
            eprintln!("keepalive-proxy: {err}");
            return ExitCode::from(2);
        }
    };
    let (listener, admin_listener) = match bind(addr, admin_addr).await {
        Ok(listeners) => listeners,
        Err(message) => {
            eprintln!("keepalive-proxy: {message}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        addr = %admin_listener.local_addr().map_or_else(|err| err.to_string(), |addr| addr.to_string()),
        token = if has_token { "required" } else { "none" },
        "admin listening (/metrics, /healthz; control API: /config, /streams, /events)"
    );
    let admin = proxy.admin();
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
        let drained = drained.clone();
        async move {
            proxy.serve(listener, stop.cancelled_owned()).await;
            drained.cancel();
        }
    };
    tokio::join!(
        proxy,
        admin::serve(admin_listener, admin, drained.cancelled_owned()),
    );
    ExitCode::SUCCESS
}

async fn bind(
    addr: SocketAddr,
    admin_addr: SocketAddr,
) -> Result<(TcpListener, TcpListener), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|err| format!("cannot listen on PROXY_ADDR={addr}: {err}"))?;
    let admin = TcpListener::bind(admin_addr)
        .await
        .map_err(|err| format!("cannot listen on PROXY_ADMIN_ADDR={admin_addr}: {err}"))?;
    Ok((listener, admin))
}
