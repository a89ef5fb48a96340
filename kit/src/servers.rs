//! The real origin and the real proxy in this process, on `127.0.0.1:0` or on a listener the caller
//! prepared, each stopped when its handle is dropped. In-process, so that a test or an experiment
//! owns their lifetime and the runtime they run on, and no child process can outlive it.
//!
//! [`origin`], [`origin_on`] and [`proxy`] return `io::Result` (the lab's experiments use them); the
//! `start_*` shorthands are for tests and panic.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use keepalive_proxy::cut_style::CutStyle;
use keepalive_proxy::{admin, ProxyConfig, TimerSet};
use keepalive_server::jobs::Storage;
use keepalive_server::ServerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The first line of every `/polls/streamed` stream: the Django tutorial's poem, at 0 s.
pub const FIRST_LINE: &str = "[         0 s] Little brown lady\n";

/// A server task in this process; dropping this stops it.
pub struct Running {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl Running {
    /// A server the caller runs itself (a test's hand-made upstream), told to stop through `stop`.
    pub fn new(addr: SocketAddr, stop: CancellationToken) -> Self {
        Self {
            addr,
            stop,
            task: None,
        }
    }

    /// A server running as `task`, which returns once `stop` is cancelled.
    pub fn spawned(
        addr: SocketAddr,
        stop: CancellationToken,
        task: JoinHandle<io::Result<()>>,
    ) -> Self {
        Self {
            addr,
            stop,
            task: Some(task),
        }
    }

    /// Tells the server to stop now, without waiting for it (a crash, as its clients see it).
    pub fn stop(&mut self) {
        self.stop.cancel();
    }

    /// Tells the server to stop and waits until it has: what it returned, or its panic as an error.
    pub async fn stopped(mut self) -> io::Result<()> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The origin's configuration for tests: the documented defaults, jobs in memory (a test leaves no
/// data directory behind), and a short drain so that stopping an origin never waits for its
/// infinite streams.
pub fn origin_config() -> ServerConfig {
    ServerConfig {
        drain_timeout: Duration::from_millis(100),
        data_dir: Storage::Memory,
        ..ServerConfig::default()
    }
}

/// The origin with `config` on `listener` (one the caller prepared: the same port again, or one in a
/// network namespace).
pub fn origin_on(listener: TcpListener, config: ServerConfig) -> io::Result<Running> {
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(keepalive_server::serve(
        listener,
        config,
        stop.clone().cancelled_owned(),
    ));
    Ok(Running::spawned(addr, stop, task))
}

/// The origin with `config` on a fresh loopback port.
pub async fn origin(config: ServerConfig) -> io::Result<Running> {
    origin_on(TcpListener::bind("127.0.0.1:0").await?, config)
}

/// A proxy and its admin listener (`/metrics`), stopped together when this is dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// keepalive-proxy in front of `upstream` on a fresh loopback port, with its admin listener on
/// another, a 100 ms drain, whatever `configure` changes (faults, cut style, buffering, TLS: e.g.
/// `config.tls_cert = Some(cert.cert_file())` with its key, or an `https://` upstream), and then
/// exactly `timers`: the timers given always win over a preset `configure` might pick. Settings the
/// proxy refuses to start with ([`keepalive_proxy::SetupError`]) fail here, as `InvalidInput`.
pub async fn proxy(
    upstream: SocketAddr,
    timers: TimerSet,
    configure: impl FnOnce(&mut ProxyConfig),
) -> io::Result<Proxy> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let admin_listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let admin = admin_listener.local_addr()?;
    let mut config = ProxyConfig {
        addr,
        admin_addr: admin,
        upstream: format!("http://{upstream}")
            .parse()
            .map_err(|err: String| io::Error::new(io::ErrorKind::InvalidInput, err))?,
        drain_timeout: Duration::from_millis(100),
        ..ProxyConfig::default()
    };
    // No active health checks unless a test asks: a hand-made upstream may accept one connection.
    config.health_interval = None;
    configure(&mut config);
    let prepared = keepalive_proxy::prepare(config.with_timers(timers))
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    let stop = CancellationToken::new();
    tokio::spawn(admin::serve(
        admin_listener,
        prepared.admin(),
        stop.clone().cancelled_owned(),
    ));
    tokio::spawn(prepared.serve(listener, stop.clone().cancelled_owned()));
    Ok(Proxy { addr, admin, stop })
}

/// [`origin`], for a test.
pub async fn start_origin(config: ServerConfig) -> Running {
    origin(config)
        .await
        .unwrap_or_else(|err| panic!("start the origin on 127.0.0.1:0: {err}"))
}

/// [`proxy`] with exactly `timers` and the other settings at their defaults, for a test.
pub async fn start_proxy(upstream: SocketAddr, timers: TimerSet) -> Proxy {
    start_proxy_configured(upstream, timers, |_| {}).await
}

/// A proxy in front of `upstream` that makes its cuts in `style`, for a test.
pub async fn start_cutting_proxy(upstream: SocketAddr, timers: TimerSet, style: CutStyle) -> Proxy {
    start_proxy_configured(upstream, timers, |config| config.cut_style = style).await
}

/// The origin, and a proxy in front of it that makes its cuts in `style`, for a test.
pub async fn start_origin_and_cutting_proxy(timers: TimerSet, style: CutStyle) -> (Running, Proxy) {
    let origin = start_origin(origin_config()).await;
    let proxy = start_cutting_proxy(origin.addr, timers, style).await;
    (origin, proxy)
}

/// [`proxy`], for a test.
pub async fn start_proxy_configured(
    upstream: SocketAddr,
    timers: TimerSet,
    configure: impl FnOnce(&mut ProxyConfig),
) -> Proxy {
    proxy(upstream, timers, configure)
        .await
        .unwrap_or_else(|err| panic!("start the proxy in front of {upstream}: {err}"))
}

/// The origin with [`origin_config`] and a proxy with `timers` in front of it, for a test.
pub async fn start_origin_and_proxy(timers: TimerSet) -> (Running, Proxy) {
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy(origin.addr, timers).await;
    (origin, proxy)
}
