//! `keepalive-lab demo`: the tutorial's streaming view behind a load balancer, in one process. It
//! starts the origin and the proxy with short timers, prints three curl commands (one stream that the
//! idle timer cuts, one that heartbeats save, one that hits the first-byte timer) and narrates, from
//! both servers' logs, what happens to each stream.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use keepalive_common::duration::{display, parse_timer};
use keepalive_proxy::{admin, Metrics, Preset, ProxyConfig, TimerSet};
use keepalive_server::ServerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::fmt::time::Uptime;
use tracing_subscriber::EnvFilter;

/// How long open streams may go on after Ctrl-C; the demo's streams are infinite, so keep it short.
const DEMO_DRAIN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where the origin listens
    #[arg(long, env = "SERVER_ADDR", default_value = "127.0.0.1:8000")]
    origin_addr: SocketAddr,

    /// Where the proxy listens
    #[arg(long, env = "PROXY_ADDR", default_value = "127.0.0.1:8080")]
    proxy_addr: SocketAddr,

    /// Where the proxy's /metrics and /healthz listen
    #[arg(long, env = "PROXY_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    admin_addr: SocketAddr,

    /// Longest silence from the origin before the proxy cuts the stream (0 or off disables)
    #[arg(long, env = "PROXY_IDLE_TIMEOUT", default_value = "5s", value_parser = parse_timer)]
    // Spelled out so that clap takes the parser's `Option` as the value, not as "flag is optional".
    idle_timeout: std::option::Option<Duration>,

    /// Longest wait for response headers before the proxy answers 504
    #[arg(long, env = "PROXY_FIRST_BYTE_TIMEOUT", default_value = "10s", value_parser = parse_timer)]
    first_byte_timeout: std::option::Option<Duration>,

    /// Total lifetime of one response, heartbeats or not
    #[arg(long, env = "PROXY_MAX_DURATION", default_value = "off", value_parser = parse_timer)]
    max_duration: std::option::Option<Duration>,
}

impl DemoArgs {
    fn timers(&self) -> TimerSet {
        TimerSet {
            connect: Some(Duration::from_secs(5)),
            first_byte: self.first_byte_timeout,
            idle: self.idle_timeout,
            max_duration: self.max_duration,
            header: Some(Duration::from_secs(10)),
            keepalive: Some(Duration::from_secs(60)),
        }
    }
}

pub async fn run(args: DemoArgs) -> Result<(), String> {
    init_narration();
    let origin = bind(args.origin_addr, "origin (SERVER_ADDR)").await?;
    let proxy = bind(args.proxy_addr, "proxy (PROXY_ADDR)").await?;
    let admin_listener = bind(args.admin_addr, "proxy admin (PROXY_ADMIN_ADDR)").await?;
    let upstream = format!("http://{}", args.origin_addr)
        .parse()
        .map_err(|err| format!("cannot proxy to {}: {err}", args.origin_addr))?;

    let server_config = ServerConfig {
        addr: args.origin_addr,
        drain_timeout: DEMO_DRAIN,
        ..ServerConfig::default()
    };
    let proxy_config = ProxyConfig {
        addr: args.proxy_addr,
        admin_addr: args.admin_addr,
        upstream,
        preset: Preset::Nginx,
        drain_timeout: DEMO_DRAIN,
        ..ProxyConfig::default()
    }
    .with_timers(args.timers());

    print!("{}", instructions(&args));

    let stop = CancellationToken::new();
    let metrics = Metrics::new();
    let signal = {
        let stop = stop.clone();
        async move {
            keepalive_common::shutdown::signal().await;
            stop.cancel();
        }
    };
    let (origin_result, (), (), ()) = tokio::join!(
        keepalive_server::serve(origin, server_config, stop.clone().cancelled_owned()),
        keepalive_proxy::serve(
            proxy,
            proxy_config,
            metrics.clone(),
            stop.clone().cancelled_owned()
        ),
        admin::serve(admin_listener, metrics, stop.clone().cancelled_owned()),
        signal,
    );
    origin_result.map_err(|err| format!("origin failed: {err}"))
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|err| {
        format!("cannot listen on {addr} for the {what}: {err}; pick another address with --help")
    })
}

/// Logs as a narration: time since start, who speaks (origin or proxy), what happened.
fn init_narration() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("keepalive_server=info,keepalive_proxy=info,keepalive_lab=info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(Uptime::default())
        .compact()
        .init();
}

fn instructions(args: &DemoArgs) -> String {
    let proxy = format!("http://{}", args.proxy_addr);
    let show = |timer: Option<Duration>| timer.map_or_else(|| "off".to_owned(), display);
    let mut text = format!(
        "\nkeepalive-lab demo\n  origin  http://{origin}/polls/streamed  (the tutorial's view)\n  \
         proxy   {proxy}/polls/streamed  (a load balancer: idle {idle}, first byte {first_byte}, max duration {max})\n  \
         metrics http://{admin}/metrics and http://{origin}/metrics\n\nTry, in another terminal:\n",
        origin = args.origin_addr,
        admin = args.admin_addr,
        idle = show(args.idle_timeout),
        first_byte = show(args.first_byte_timeout),
        max = show(args.max_duration),
    );
    if let Some(idle) = args.idle_timeout {
        let sleep = idle + Duration::from_secs(3);
        let heartbeat = idle / 2;
        text += &format!(
            "\n  1. A line every {sleep}: the proxy's {idle} idle timer cuts it (curl exits 18):\n     \
             curl -N '{proxy}/polls/streamed?sleep={sleep}'; echo \"curl exit $?\"\n\
             \n  2. Same stream with a heartbeat (a space) every {heartbeat}: it survives:\n     \
             curl -N '{proxy}/polls/streamed?sleep={sleep}&heartbeat={heartbeat}'\n",
            sleep = display(sleep),
            idle = display(idle),
            heartbeat = display(heartbeat),
        );
    }
    if let Some(first_byte) = args.first_byte_timeout {
        text += &format!(
            "\n  3. Headers held back {delay}: the {first_byte} first-byte timer answers 504:\n     \
             curl -i '{proxy}/polls/streamed?delay={delay}'\n",
            delay = display(first_byte + Duration::from_secs(5)),
            first_byte = display(first_byte),
        );
    }
    text + "\nWhat happens to each stream is narrated below. Ctrl-C stops.\n\n"
}
