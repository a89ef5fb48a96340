//! `keepalive-lab demo`: the tutorial's streaming view behind a load balancer, in one process. It
//! starts the origin and the proxy with short timers, prints three curl commands (one stream that the
//! idle timer cuts, one that heartbeats save, one that hits the first-byte timer) and narrates, from
//! both servers' logs, what happens to each stream.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use keepalive_common::duration::display;
use keepalive_proxy::config::TimerSetting;
use keepalive_proxy::cut_style::CutStyle;
use keepalive_proxy::{admin, Metrics, Preset, ProxyConfig, TimerSet};
use keepalive_server::jobs::Storage;
use keepalive_server::ServerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::fmt::time::Uptime;

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

    /// Longest silence from the origin before the proxy cuts the stream; preset = 5s, 0 or off disables
    #[arg(long, env = "PROXY_IDLE_TIMEOUT", default_value = "preset", value_parser = TimerSetting::parse)]
    idle_timeout: TimerSetting,

    /// Longest wait for response headers before the proxy answers 504; preset = 3s
    #[arg(long, env = "PROXY_FIRST_BYTE_TIMEOUT", default_value = "preset", value_parser = TimerSetting::parse)]
    first_byte_timeout: TimerSetting,

    /// Total lifetime of one response, heartbeats or not; preset = off
    #[arg(long, env = "PROXY_MAX_DURATION", default_value = "preset", value_parser = TimerSetting::parse)]
    max_duration: TimerSetting,

    /// How the proxy's cuts end for the client: truncate (like nginx), clean (looks like a normal
    /// end), reset (TCP RST)
    #[arg(long, env = "PROXY_CUT_STYLE", value_enum, default_value = "truncate")]
    cut_style: CutStyle,

    /// Where the origin keeps durable jobs (POST /jobs); :memory: keeps them in memory only
    #[arg(long, env = "SERVER_DATA_DIR", default_value = "keepalive-data")]
    data_dir: Storage,
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot listen on {addr} for the {what}: {source}; pick another address (see --help)")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    /// The proxy refuses the origin's address as its upstream (its reason is text).
    #[error("cannot proxy to {addr}: {reason}")]
    Upstream { addr: SocketAddr, reason: String },
    #[error("origin failed: {0}")]
    Origin(#[source] std::io::Error),
}

pub async fn run(mut args: DemoArgs) -> Result<(), DemoError> {
    init_narration();
    let (origin, origin_addr) = bind(args.origin_addr, "origin (SERVER_ADDR)").await?;
    let (proxy, proxy_addr) = bind(args.proxy_addr, "proxy (PROXY_ADDR)").await?;
    let (admin_listener, admin_addr) =
        bind(args.admin_addr, "proxy admin (PROXY_ADMIN_ADDR)").await?;
    // Port 0 picks a free port: from here on, the addresses are the ones actually bound.
    args.origin_addr = origin_addr;
    args.proxy_addr = proxy_addr;
    args.admin_addr = admin_addr;
    let upstream =
        format!("http://{origin_addr}")
            .parse()
            .map_err(|reason| DemoError::Upstream {
                addr: origin_addr,
                reason,
            })?;

    let server_config = ServerConfig {
        addr: args.origin_addr,
        drain_timeout: DEMO_DRAIN,
        data_dir: args.data_dir.clone(),
        ..ServerConfig::default()
    };
    let proxy_config = ProxyConfig {
        addr: args.proxy_addr,
        admin_addr: args.admin_addr,
        upstream,
        preset: Preset::Demo,
        idle_timeout: args.idle_timeout,
        first_byte_timeout: args.first_byte_timeout,
        max_duration: args.max_duration,
        cut_style: args.cut_style,
        drain_timeout: DEMO_DRAIN,
        ..ProxyConfig::default()
    };

    print!("{}", instructions(&args, &proxy_config.timers()));

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
    origin_result.map_err(DemoError::Origin)
}

async fn bind(
    addr: SocketAddr,
    what: &'static str,
) -> Result<(TcpListener, SocketAddr), DemoError> {
    let fail = |source| DemoError::Bind { addr, what, source };
    let listener = TcpListener::bind(addr).await.map_err(fail)?;
    let bound = listener.local_addr().map_err(fail)?;
    Ok((listener, bound))
}

/// Logs as a narration: time since start, who speaks (origin or proxy), what happened.
fn init_narration() {
    let filter = keepalive_common::logging::filter(
        "keepalive_server=info,keepalive_proxy=info,keepalive_lab=info",
    )
    .unwrap_or_else(|line| {
        eprintln!("keepalive-lab: {line}");
        std::process::exit(2);
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(Uptime::default())
        // Colours for a terminal only: a demo piped into a file or a test reads plain text.
        .with_ansi(std::io::stdout().is_terminal())
        .compact()
        .init();
}

fn instructions(args: &DemoArgs, timers: &TimerSet) -> String {
    let proxy = format!("http://{}", args.proxy_addr);
    let show = |timer: Option<Duration>| timer.map_or_else(|| "off".to_owned(), display);
    let mut text = format!(
        "\nkeepalive-lab demo\n  origin  http://{origin}/polls/streamed  (the tutorial's view)\n  \
         proxy   {proxy}/polls/streamed  (a load balancer: idle {idle}, first byte {first_byte}, max duration {max})\n  \
         metrics http://{admin}/metrics and http://{origin}/metrics\n\nTry, in another terminal:\n",
        origin = args.origin_addr,
        admin = args.admin_addr,
        idle = show(timers.idle),
        first_byte = show(timers.first_byte),
        max = show(timers.max_duration),
    );
    if let Some(idle) = timers.idle {
        let sleep = idle + Duration::from_secs(3);
        let heartbeat = idle / 2;
        text += &format!(
            "\n  1. A line every {sleep}: the proxy's {idle} idle timer cuts it ({how}):\n     \
             curl -N '{proxy}/polls/streamed?sleep={sleep}'; echo \"curl exit $?\"\n\
             \n  2. Same stream with a heartbeat (a space) every {heartbeat}: it survives:\n     \
             curl -N '{proxy}/polls/streamed?sleep={sleep}&heartbeat={heartbeat}'\n",
            sleep = display(sleep),
            idle = display(idle),
            heartbeat = display(heartbeat),
            how = match args.cut_style {
                CutStyle::Truncate => "curl exits 18",
                CutStyle::Clean => "PROXY_CUT_STYLE=clean: curl exits 0, as if it had ended",
                CutStyle::Reset => "PROXY_CUT_STYLE=reset: curl exits 56",
            },
        );
    }
    // The idle timer also bounds the wait for headers (as nginx's proxy_read_timeout does), so
    // whichever of the two is shorter answers the 504.
    let header_timers = [(timers.first_byte, "first-byte"), (timers.idle, "idle")];
    if let Some((limit, timer)) = header_timers
        .into_iter()
        .filter_map(|(limit, timer)| limit.map(|limit| (limit, timer)))
        .min_by_key(|(limit, _)| *limit)
    {
        text += &format!(
            "\n  3. Headers held back {delay}: the {limit} {timer} timer answers 504:\n     \
             curl -i '{proxy}/polls/streamed?delay={delay}'\n",
            delay = display(limit + Duration::from_secs(5)),
            limit = display(limit),
        );
    }
    text + "\nWhat happens to each stream is narrated below. Ctrl-C stops.\n\n"
}
