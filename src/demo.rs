//! `keepalive-lab demo`: the tutorial's streaming view behind a load balancer, in one process. It
//! starts the origin and the proxy with short timers, prints three curl commands (one stream that the
//! idle timer cuts, one that heartbeats save, one that hits the first-byte timer) and narrates, from
//! both servers' logs, what happens to each stream.
//!
//! With `--tls` the proxy serves HTTPS (HTTP/2 and HTTP/1.1, as browsers and curl reach real
//! balancers) with a certificate made at start for localhost, written next to the jobs so that curl
//! can be told to trust it (`--cacert`); the commands printed then say so.
//!
//! The proxy's settings are keepalive-proxy's own struct, flattened in, so that every `PROXY_*`
//! variable means here what it means to the proxy binary (`PROXY_TLS_CERT` and its key included). The demo lives only as long as its origin:
//! a proxy in front of nothing would answer 502 to every curl it suggests.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use keepalive_common::duration::display;
use keepalive_proxy::cut_style::CutStyle;
use keepalive_proxy::{admin, ProxyConfig, SetupError, TimerSet};
use keepalive_server::jobs::Storage;
use keepalive_server::ServerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::fmt::time::Uptime;

use crate::stdout::{out, Narration};

/// The proxy's own settings (`ProxyConfig`, every `PROXY_*` variable and flag, read the way
/// keepalive-proxy reads them) with the demo's defaults: loopback addresses, the demo preset's short
/// timers, a short drain since the demo's streams are endless. The upstream is always the demo's
/// origin, and the proxy binary's own switches (log format, health check) mean nothing here.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "The proxy reads every PROXY_* variable as keepalive-proxy does (PROXY_PRESET, the \
        timers, the faults); its upstream is always the origin above. RUST_LOG filters the narration \
        (e.g. RUST_LOG=debug).",
    mut_arg("addr", |arg| arg.long("proxy-addr").default_value("127.0.0.1:8080")),
    mut_arg("admin_addr", |arg| arg.default_value("127.0.0.1:9090")),
    mut_arg("preset", |arg| arg.default_value("demo")),
    mut_arg("drain_timeout", |arg| arg.default_value("1s")),
    mut_arg("upstream", |arg| arg.hide(true).env(None::<&str>)),
    mut_arg("log_format", |arg| arg.hide(true)),
    mut_arg("healthcheck", |arg| arg.hide(true)),
)]
pub struct DemoArgs {
    /// Where the origin listens
    #[arg(long, env = "SERVER_ADDR", default_value = "127.0.0.1:8000")]
    origin_addr: SocketAddr,

    /// Where the origin keeps durable jobs (POST /jobs); :memory: keeps them in memory only
    #[arg(long, env = "SERVER_DATA_DIR", default_value = "keepalive-data")]
    data_dir: Storage,

    /// Serve the proxy over HTTPS (HTTP/2 or HTTP/1.1, as the client offers) with a self-signed
    /// certificate for localhost made now and written to DATA_DIR/proxy-cert.pem
    /// (./proxy-cert.pem with :memory:), for `curl --cacert` or a browser to trust. The same as
    /// PROXY_TLS_SELF_SIGNED=FILE; PROXY_TLS_CERT and PROXY_TLS_KEY serve a certificate of your own
    #[arg(long)]
    tls: bool,

    #[command(flatten)]
    proxy: ProxyConfig,
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
    #[error("--tls makes a certificate, and {0} names one too: use one of them")]
    TwoCertificates(String),
    /// The proxy's TLS settings cannot be used (a key that is not its certificate's, say).
    #[error("{0}")]
    Tls(#[from] SetupError),
    /// The origin could not start (a data directory another origin holds) or stopped on an error.
    #[error("the origin stopped, so the demo did too: {0}")]
    Origin(#[source] std::io::Error),
}

impl DemoError {
    /// Settings that cannot work together exit 2, as a bad value does; the rest 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::TwoCertificates(_) | Self::Tls(_) => 2,
            Self::Bind { .. } | Self::Upstream { .. } | Self::Origin(_) => 1,
        }
    }
}

pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let DemoArgs {
        origin_addr,
        data_dir,
        tls,
        proxy: mut proxy_config,
    } = args;
    if tls {
        // Judged on the values, not on whether a variable is set: PROXY_TLS_SELF_SIGNED=off (or
        // empty, as compose passes it) is no certificate, and leaves --tls to choose one.
        if let Some(cert) = &proxy_config.tls_cert {
            return Err(DemoError::TwoCertificates(format!(
                "PROXY_TLS_CERT={}",
                cert.path.display()
            )));
        }
        if let Some(path) = &proxy_config.tls_self_signed {
            return Err(DemoError::TwoCertificates(format!(
                "PROXY_TLS_SELF_SIGNED={}",
                path.display()
            )));
        }
        proxy_config.tls_self_signed = Some(certificate_path(&data_dir));
    }
    init_narration();
    // PROXY_MAX_CONNECTIONS=auto counts on the hard limit, as in the proxy binary.
    if let Err(err) = keepalive_proxy::descriptors::raise_soft_limit() {
        tracing::warn!(%err, "cannot raise the descriptor limit to its hard limit");
    }
    let (origin, origin_addr) = bind(origin_addr, "origin (SERVER_ADDR)").await?;
    let (proxy, proxy_addr) = bind(proxy_config.addr, "proxy (PROXY_ADDR)").await?;
    let (admin_listener, admin_addr) =
        bind(proxy_config.admin_addr, "proxy admin (PROXY_ADMIN_ADDR)").await?;
    // Port 0 picks a free port: from here on, the addresses are the ones actually bound.
    proxy_config.addr = proxy_addr;
    proxy_config.admin_addr = admin_addr;
    proxy_config.upstream =
        format!("http://{origin_addr}")
            .parse()
            .map_err(|reason| DemoError::Upstream {
                addr: origin_addr,
                reason,
            })?;
    // Before anything is printed: TLS settings that cannot be used stop the demo with their reason.
    let proxy_service = keepalive_proxy::prepare(proxy_config.clone())?;
    let server_config = ServerConfig {
        addr: origin_addr,
        drain_timeout: proxy_config.drain_timeout,
        data_dir,
        ..ServerConfig::default()
    };

    out!("{}", instructions(origin_addr, &proxy_config));

    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            keepalive_common::shutdown::signal().await;
            stop.cancel();
        }
    });
    let origin = {
        let stop = stop.clone();
        async move {
            let outcome =
                keepalive_server::serve(origin, server_config, stop.clone().cancelled_owned())
                    .await;
            // Without its origin the demo is a proxy answering 502 to everything: stop it too, and
            // say why.
            stop.cancel();
            outcome
        }
    };
    let admin = proxy_service.admin();
    // As the proxy binary does: the admin listener outlives the drain, answering 503 on /healthz.
    let drained = CancellationToken::new();
    let proxy = {
        let (drained, stop) = (drained.clone(), stop.clone());
        async move {
            proxy_service.serve(proxy, stop.cancelled_owned()).await;
            drained.cancel();
        }
    };
    let (origin_outcome, (), ()) = tokio::join!(
        origin,
        proxy,
        admin::serve(admin_listener, admin, drained.cancelled_owned()),
    );
    origin_outcome.map_err(DemoError::Origin)
}

/// Where `--tls` writes the proxy's certificate: beside the jobs, which a user already knows to find.
fn certificate_path(data_dir: &Storage) -> PathBuf {
    match data_dir {
        Storage::Dir(dir) => dir.join("proxy-cert.pem"),
        Storage::Memory => PathBuf::from("proxy-cert.pem"),
    }
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
        .with_writer(Narration)
        .compact()
        .init();
}

fn instructions(origin: SocketAddr, config: &ProxyConfig) -> String {
    let timers: TimerSet = config.timers();
    let tls = Tls::of(config);
    let proxy = format!("{}://{}", tls.scheme(), config.addr);
    let curl = tls.curl("--http1.1");
    let show = |timer: Option<Duration>| timer.map_or_else(|| "off".to_owned(), display);
    // Over TLS, the first stream once more over HTTP/2, told last.
    let mut http2 = String::new();
    let mut text = format!(
        "\nkeepalive-lab demo\n  origin  http://{origin}/polls/streamed  (the tutorial's view)\n  \
         proxy   {proxy}/polls/streamed  (a load balancer, preset {preset}: idle {idle}, first byte {first_byte}, max duration {max})\n  \
         metrics http://{admin}/metrics and http://{origin}/metrics\n  \
         control keepalive-lab ctl --admin http://{admin} show  (change timers, list and cut streams, live)\n  \
         page    http://{admin}/live  (every stream drawn as it happens, in the browser)\n{trust}\nTry, in another terminal:\n",
        preset = config.preset.name(),
        admin = config.admin_addr,
        idle = show(timers.idle),
        first_byte = show(timers.first_byte),
        max = show(timers.max_duration),
        trust = tls.trust(),
    );
    if let Some(idle) = timers.idle {
        let sleep = idle + Duration::from_secs(3);
        let heartbeat = idle / 2;
        text += &format!(
            "\n  1. A line every {sleep}: the proxy's {idle} idle timer cuts it ({how}):\n     \
             {curl}-N '{proxy}/polls/streamed?sleep={sleep}'; echo \"curl exit $?\"\n\
             \n  2. Same stream with a heartbeat (a space) every {heartbeat}: it survives:\n     \
             {curl}-N '{proxy}/polls/streamed?sleep={sleep}&heartbeat={heartbeat}'\n",
            sleep = display(sleep),
            idle = display(idle),
            heartbeat = display(heartbeat),
            how = match config.cut_style {
                CutStyle::Truncate => "curl exits 18",
                CutStyle::Clean => "PROXY_CUT_STYLE=clean: curl exits 0, as if it had ended",
                CutStyle::Reset => "PROXY_CUT_STYLE=reset: curl exits 56",
            },
        );
        if tls != Tls::Off {
            http2 = format!(
                "\n  4. The first stream over HTTP/2, as a browser speaks it over TLS: the cut {how}:\n     \
                 {h2}-N '{proxy}/polls/streamed?sleep={sleep}'; echo \"curl exit $?\"\n",
                h2 = tls.curl("--http2"),
                sleep = display(sleep),
                how = match config.cut_style {
                    CutStyle::Truncate | CutStyle::Reset =>
                        "resets the stream (RST_STREAM), the connection stays up; curl exits 92",
                    CutStyle::Clean => "ends the stream (END_STREAM) as if it were done; curl exits 0",
                },
            );
        }
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
             {curl}-i '{proxy}/polls/streamed?delay={delay}'\n",
            delay = display(limit + Duration::from_secs(5)),
            limit = display(limit),
        );
    }
    text + &http2 + "\nWhat happens to each stream is narrated below. Ctrl-C stops.\n\n"
}

/// Whether the proxy serves TLS, and with which certificate: what the printed commands need to say.
#[derive(Debug, PartialEq, Eq)]
enum Tls<'c> {
    Off,
    /// Made at start: clients trust exactly this file.
    SelfSigned(&'c std::path::Path),
    /// The user's own: whether curl trusts it is the user's to know.
    Files(&'c std::path::Path),
}

impl<'c> Tls<'c> {
    fn of(config: &'c ProxyConfig) -> Self {
        match (&config.tls_self_signed, &config.tls_cert) {
            (Some(path), _) => Self::SelfSigned(path),
            (None, Some(cert)) => Self::Files(&cert.path),
            (None, None) => Self::Off,
        }
    }

    fn scheme(&self) -> &'static str {
        match self {
            Self::Off => "http",
            Self::SelfSigned(_) | Self::Files(_) => "https",
        }
    }

    /// curl and the flags the commands share, ending in a space; over TLS, `version` (`--http1.1`,
    /// `--http2`) too, since curl would pick HTTP/2 and the exit codes told depend on it.
    fn curl(&self, version: &str) -> String {
        match self {
            Self::Off => "curl ".to_owned(),
            Self::SelfSigned(path) => format!("curl --cacert {} {version} ", path.display()),
            Self::Files(_) => format!("curl {version} "),
        }
    }

    /// How to trust the certificate, a paragraph of its own (empty without TLS).
    fn trust(&self) -> String {
        match self {
            Self::Off => String::new(),
            Self::SelfSigned(path) => format!(
                "  tls     HTTP/2 and HTTP/1.1 with a certificate for localhost made now, written to {path}:\n          \
                 trust it with curl --cacert {path}, or import it into a browser\n",
                path = path.display(),
            ),
            Self::Files(path) => format!(
                "  tls     HTTP/2 and HTTP/1.1 with the certificate in {}\n",
                path.display()
            ),
        }
    }
}
