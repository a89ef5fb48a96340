//! keepalive-proxy: a reverse proxy that behaves like a load balancer towards long streaming
//! responses. It enforces the timers real balancers have (connect, first byte, idle, total, header,
//! keep-alive, send), ends streams the way they do, and logs and counts every firing.
//!
//! [`serve`] runs it on a listener the caller bound, until a shutdown future resolves; [`stack`] is the
//! whole request path as one tower stack, readable top to bottom. Clients may be served over TLS, and
//! the upstream may be `https://` (`tls`); [`prepare`] finds what is wrong with those settings before
//! anyone is accepted. The admin listener ([`admin`]) serves metrics, health and the control API
//! (`control`), which changes settings while the proxy runs and lists and cuts open streams.

// Public: what the binary, the lab and the tests configure and start. The request path itself (edge,
// forwarding, headers, timers) is this crate's business and reached only through `serve`.
mod access;
pub mod admin;
pub mod config;
mod control;
pub mod cut_style;
mod deny;
pub mod descriptors;
mod edge;
mod exchange;
pub mod faults;
mod forward;
mod headers;
mod live;
mod metrics;
mod preset;
mod replicas;
mod request_body;
mod server;
mod timeouts;
mod tls;
mod workers;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use keepalive_common::accept::Listener;
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

pub use config::{MaxConnections, ProxyConfig, UpstreamProtocol, Workers};
pub use control::api::Token;
pub use metrics::Metrics;
pub use preset::{Preset, TimerSet};
pub use replicas::upstream::Upstream;
pub use replicas::Balance;
pub use tls::SetupError;

use admin::Admin;
use control::settings::{Live, Settings};
use control::Control;
use edge::EdgeLayer;
use faults::FaultLayer;
use forward::Forward;
use replicas::{refresh, Replicas};
use timeouts::connect::ConnectTimeout;
use timeouts::stream::StreamTimeoutsLayer;
use tls::termination::Termination;
use tls::upstream::UpstreamConnector;
use workers::Threads;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request path, outermost first. Each timer and fault fails with a typed error; only the edge
/// turns errors into responses, cuts, logs and metrics. Faults sit above the timers: the timers
/// measure the upstream, the faults shape what the client receives. Each layer reads the settings
/// in force (`live`) when a request reaches it.
fn stack(
    config: &ProxyConfig,
    connector: UpstreamConnector,
    replicas: Replicas,
    metrics: Metrics,
    control: &Control,
) -> impl Service<
    Request<Incoming>,
    Response = Response<impl http_body::Body<Data = bytes::Bytes, Error = BoxError> + Send + use<>>,
    Error = Infallible,
    Future: Send,
> + Clone
       + Send
       + 'static {
    let live: Live = control.live();
    ServiceBuilder::new()
        // Keep the id a client or an outer balancer sent; mint one otherwise.
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                // A timer's 504 or cut is logged once, with its numbers, by the edge; tower-http's
                // own ERROR line for the same failure would only repeat it without them.
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG))
                .make_span_with(|request: &Request<Incoming>| {
                    tracing::debug_span!(
                        "request",
                        method = %request.method(),
                        uri = %request.uri(),
                        request_id = request
                            .headers()
                            .get("x-request-id")
                            .and_then(|id| id.to_str().ok())
                            .unwrap_or("-"),
                    )
                }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(EdgeLayer::new(
            metrics.clone(),
            control.clone(),
            config.fault_headers.any(),
        ))
        .layer(FaultLayer::new(
            live.clone(),
            config.fault_headers,
            metrics.clone(),
        ))
        .layer(StreamTimeoutsLayer::new(live.clone()))
        .service(Forward::new(
            &config.upstream,
            config.upstream_protocol,
            replicas,
            ConnectTimeout::live(connector, live),
            config.deny_paths.clone(),
            metrics,
        ))
}

/// Proxies clients accepted on `listener` to `config.upstream` until `shutdown` resolves, then drains
/// open streams for at most `config.drain_timeout`. Fails before accepting anyone when the TLS or
/// admin settings cannot be used ([`prepare`]). The admin listener is the caller's to serve, with
/// [`Prepared::admin`].
pub async fn serve(
    listener: TcpListener,
    config: ProxyConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SetupError> {
    prepare(config)?.serve(listener, shutdown).await;
    Ok(())
}

/// Builds what the settings only describe: the TLS configuration towards clients (making and writing
/// a self-signed certificate) and the connector towards the upstream. A certificate and a key that
/// do not match, half a pair, an unwritable certificate path or unusable upstream CAs fail here, so
/// that a program can refuse to start instead of failing every handshake. So does an admin
/// listener beyond loopback without a token ([`admin::check`]).
pub fn prepare(config: ProxyConfig) -> Result<Prepared, SetupError> {
    admin::check(&config)?;
    let tls = Termination::from_settings(
        config.tls_cert.as_ref(),
        config.tls_key.as_ref(),
        config.tls_self_signed.as_ref(),
    )?;
    let connector = UpstreamConnector::new(
        &config.upstream,
        config.upstream_ca.as_ref(),
        config.upstream_protocol,
    )?;
    let metrics = Metrics::new();
    let control = Control::new(Settings::of(&config), metrics.clone());
    Ok(Prepared {
        config: Arc::new(config),
        tls,
        connector,
        metrics,
        control,
    })
}

/// A proxy whose settings have all been found usable ([`prepare`]), ready to [`Prepared::serve`].
pub struct Prepared {
    config: Arc<ProxyConfig>,
    tls: Option<Termination>,
    connector: UpstreamConnector,
    metrics: Metrics,
    control: Control,
}

impl Prepared {
    /// What the admin listener serves for this proxy: its metrics, its health, its control API.
    pub fn admin(&self) -> Admin {
        Admin {
            metrics: self.metrics.clone(),
            control: self.control.clone(),
            config: Arc::clone(&self.config),
        }
    }

    /// [`serve`], once prepared. From `shutdown` on, the proxy is draining (and the admin
    /// `/healthz` answers 503).
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let Self {
            config,
            tls,
            connector,
            metrics,
            control,
        } = self;
        let timers = config.timers();
        // Once: `auto` asks the system how many cores this process may use.
        let threads = config.workers.threads();
        let max_connections =
            max_connections(config.max_connections, config.upstream_protocol, threads);
        metrics.max_connections(max_connections);
        if config.upstream_ca.is_some() && !config.upstream.is_https() {
            tracing::warn!(upstream = %config.upstream, "PROXY_UPSTREAM_CA is set but the upstream is plain http://: it is not used");
        }
        tracing::info!(
            addr = %listener.local_addr().map_or_else(|err| err.to_string(), |addr| addr.to_string()),
            tls = %tls.as_ref().map_or_else(|| "off".to_owned(), |tls| tls.source().to_string()),
            upstream = %config.upstream,
            upstream_protocol = config.upstream_protocol.as_str(),
            workers = threads,
            balance = config.balance.as_str(),
            health_interval = %show(config.health_interval),
            preset = config.preset.name(),
            preset_source = config.preset.source(),
            connect = %show(timers.connect),
            first_byte = %show(timers.first_byte),
            idle = %show(timers.idle),
            max_duration = %show(timers.max_duration),
            header = %show(timers.header),
            keepalive = %show(timers.keepalive),
            send = %show(timers.send),
            max_connections,
            cut_style = config.cut_style.as_str(),
            deny_paths = %config.deny_paths,
            "proxy listening",
        );
        // The replicas known before the first client: a name that does not resolve yet stands for
        // none (with no replica at all, requests get 502) until the refresh resolves it.
        let replicas = Replicas::new(config.balance, metrics.clone());
        let mut resolver = refresh::Resolver::default();
        replicas.update(&resolver.resolve(&config.upstream).await);
        let refreshing = tokio::spawn(refresh::run(
            replicas.clone(),
            config.upstream.clone(),
            connector.clone(),
            config.upstream_protocol,
            config.health_interval,
            resolver,
        ));
        let service = stack(&config, connector, replicas, metrics.clone(), &control);
        let mut listener = Listener::capped(listener, max_connections);
        let workers = match Threads::start(threads) {
            Ok(workers) => {
                listener = listener.spread_over(workers.spread());
                Some(workers)
            }
            Err(err) => {
                tracing::error!(%err, threads, "cannot start the worker threads: serving clients on the caller's runtime");
                None
            }
        };
        server::run(
            listener,
            service,
            tls,
            control.live(),
            config.drain_timeout,
            metrics,
            shutdown,
        )
        .await;
        if let Some(workers) = workers {
            workers.stop().await;
        }
        refreshing.abort();
    }
}

/// `PROXY_MAX_CONNECTIONS` as a number: `auto` from the descriptor limit now in force, and a warning
/// when a number set by hand leaves no headroom for upstream connections.
fn max_connections(setting: MaxConnections, protocol: UpstreamProtocol, workers: usize) -> usize {
    let fit = match descriptors::soft_limit() {
        Ok(limit) => descriptors::connections_within(limit, protocol, workers),
        Err(err) => {
            tracing::warn!(%err, "cannot read RLIMIT_NOFILE: connections are capped only when PROXY_MAX_CONNECTIONS is set");
            usize::MAX
        }
    };
    match setting {
        MaxConnections::Auto => fit,
        MaxConnections::At(max) => {
            let max = max.get();
            if max > fit {
                tracing::warn!(
                    max_connections = max,
                    fit,
                    "PROXY_MAX_CONNECTIONS is above what the descriptor limit leaves room for: a full proxy may fail to reach the upstream",
                );
            }
            max
        }
    }
}

fn show(timer: Option<std::time::Duration>) -> String {
    timer.map_or_else(|| "off".to_owned(), keepalive_common::duration::display)
}
