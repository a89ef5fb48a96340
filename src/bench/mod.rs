//! `keepalive-lab bench`: keepalive-proxy side by side with nginx (and a direct connection) in one
//! run, on this machine's loopback: small-response throughput and latency, many long heartbeated
//! streams held open, idle-cut precision, and disconnect propagation. A benchmark that prints
//! figures and ratios, not a test: the goals are in the README's "Performance" section.

mod error;
mod load;
mod procs;
mod soak;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use keepalive_common::duration::parse_duration;
use keepalive_proxy::descriptors::per_connection;
use keepalive_proxy::UpstreamProtocol;
use serde::Serialize;

use crate::stdout::{out, outln};
pub use error::BenchError;
use load::{
    disconnect_propagation, hold_streams, idle_cut_errors, percentile, wrk, Held, Throughput,
};
pub use soak::{Soak, SoakReport};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Shorter runs and 1,000 streams instead of 10,000 (about a minute instead of several)
    #[arg(long)]
    quick: bool,

    /// One JSON object with every figure on the last line
    #[arg(long)]
    json: bool,

    /// Soak instead: hold --streams heartbeated streams through keepalive-proxy this long (10m, 1h),
    /// then compare the proxy's and the origin's descriptors, threads and memory with before the
    /// streams and after they close, and say whether anything leaked (exit 1 if so). Needs no nginx
    /// or wrk
    #[arg(long, value_parser = parse_duration, conflicts_with = "quick")]
    soak: Option<Duration>,

    /// How many streams the soak holds open
    #[arg(long, default_value_t = 1000, requires = "soak", value_parser = parse_streams)]
    streams: usize,
}

/// Streams for a soak: at least one, at most what one machine's ports allow a client.
fn parse_streams(value: &str) -> Result<usize, StreamsError> {
    match value.trim().parse() {
        Ok(streams @ 1..=MAX_STREAMS) => Ok(streams),
        _ => Err(StreamsError(value.to_owned())),
    }
}

/// The most streams a soak opens: one loopback client address has about 28,000 ephemeral ports.
const MAX_STREAMS: usize = 25_000;

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a number of streams: expected a whole number from 1 to 25000, like 1000")]
pub struct StreamsError(String);

/// Every figure of a run; the JSON keys are a contract of the benchmark issue.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub proxy_rps: f64,
    pub nginx_rps: f64,
    pub direct_rps: f64,
    pub proxy_p50_ms: f64,
    pub nginx_p50_ms: f64,
    pub direct_p50_ms: f64,
    pub proxy_p99_ms: f64,
    pub nginx_p99_ms: f64,
    pub direct_p99_ms: f64,
    /// CPU time each proxy spent per small request, in user space and in the kernel: the kernel's
    /// share (the same socket calls for both) bounds how far user-space work can be cut.
    pub proxy_user_us_per_request: f64,
    pub proxy_kernel_us_per_request: f64,
    pub nginx_user_us_per_request: f64,
    pub nginx_kernel_us_per_request: f64,
    /// The same small responses through keepalive-proxy speaking HTTP/2 to the origin.
    pub proxy_h2_rps: f64,
    pub proxy_h2_p50_ms: f64,
    pub proxy_h2_p99_ms: f64,
    pub proxy_h2_user_us_per_request: f64,
    pub proxy_h2_kernel_us_per_request: f64,
    /// keepalive-proxy's worker threads, and nginx's worker processes: the same number.
    pub workers: usize,
    /// Streams held through keepalive-proxy speaking `streams_upstream_protocol` to the origin (one
    /// descriptor per stream: what lets this many fit the open-file limit), and through nginx.
    pub streams: usize,
    pub streams_upstream_protocol: &'static str,
    pub proxy_streams_cut: usize,
    pub nginx_streams_cut: usize,
    /// Resident memory with the streams open, in all (the per-stream figures count only what the
    /// streams added).
    pub proxy_rss_mib: f64,
    pub nginx_rss_mib: f64,
    pub proxy_kib_per_stream: f64,
    pub nginx_kib_per_stream: f64,
    pub proxy_heartbeat_lag_p99_ms: f64,
    pub nginx_heartbeat_lag_p99_ms: f64,
    /// Streams held through keepalive-proxy speaking HTTP/1.1 to the origin, as many as two
    /// descriptors each fit.
    pub http1_streams: usize,
    pub proxy_http1_streams_cut: usize,
    pub proxy_http1_rss_mib: f64,
    pub proxy_http1_kib_per_stream: f64,
    pub proxy_http1_heartbeat_lag_p99_ms: f64,
    pub idle_cut_error_p50_ms: f64,
    pub idle_cut_error_p99_ms: f64,
    pub nginx_idle_cut_error_p50_ms: f64,
    pub nginx_idle_cut_error_p99_ms: f64,
    pub disconnect_propagation_p50_ms: f64,
    pub disconnect_propagation_p99_ms: f64,
    pub nginx_disconnect_propagation_p50_ms: f64,
    pub nginx_disconnect_propagation_p99_ms: f64,
}

struct Plan {
    wrk_for: Duration,
    connections: usize,
    streams: usize,
    http1_streams: usize,
    hold: Duration,
    cut_streams: usize,
    disconnects: usize,
}

/// Microseconds of CPU time a proxy used per request during a wrk run.
#[derive(Debug, Clone, Copy)]
struct CpuPerRequest {
    user_us: f64,
    kernel_us: f64,
}

impl CpuPerRequest {
    fn of(used: procs::CpuTime, load: Throughput) -> Self {
        let requests = load.requests.max(1) as f64;
        Self {
            user_us: used.user * 1e6 / requests,
            kernel_us: used.kernel * 1e6 / requests,
        }
    }
}

/// The limit the idle-cut precision is measured at.
const CUT_LIMIT: Duration = Duration::from_millis(500);

pub async fn run(args: BenchArgs) -> u8 {
    let progress = |line: &str| eprintln!("bench: {line}");
    let outcome = match args.soak {
        Some(hold) => soak(
            Soak {
                streams: args.streams,
                hold,
            },
            progress,
        )
        .await
        .map(|report| {
            if args.json {
                outln!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                out!("{}", soak::table(&report));
            }
            u8::from(report.leak)
        }),
        None => measure(&args, progress).await.map(|report| {
            if args.json {
                outln!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                out!("{}", table(&report));
            }
            0
        }),
    };
    outcome.unwrap_or_else(|err| {
        eprintln!("keepalive-lab bench: {err}");
        1
    })
}

/// A soak run (see the `soak` module): exit 1 when something leaked.
pub async fn soak(soak: Soak, progress: impl Fn(&str)) -> Result<SoakReport, BenchError> {
    let streams = procs::raise_fd_limit(soak.streams, per_connection(UpstreamProtocol::Http1))?;
    if streams < soak.streams {
        progress(&format!(
            "the open-file limit fits {streams} streams through a proxy, not {}: raise it (ulimit -Hn, as root) for the full count",
            soak.streams
        ));
    }
    let soak = Soak { streams, ..soak };
    in_scratch(|scratch| async move { soak::run(soak, &scratch, &progress).await }).await
}

/// Runs `body` with a scratch directory of its own (the origin's log), removed whether the run
/// succeeded or stopped on an error.
async fn in_scratch<T, F, Fut>(body: F) -> Result<T, BenchError>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<T, BenchError>>,
{
    let scratch = std::env::temp_dir().join(format!("keepalive-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|source| BenchError::Io {
        action: "create",
        path: scratch.clone(),
        source,
    })?;
    let outcome = body(scratch.clone()).await;
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}

pub async fn measure(args: &BenchArgs, progress: impl Fn(&str)) -> Result<Report, BenchError> {
    let plan = if args.quick {
        Plan {
            wrk_for: Duration::from_secs(3),
            connections: 64,
            streams: 1_000,
            http1_streams: 1_000,
            hold: Duration::from_secs(4),
            cut_streams: 50,
            disconnects: 20,
        }
    } else {
        Plan {
            wrk_for: Duration::from_secs(10),
            connections: 64,
            streams: 10_000,
            http1_streams: 10_000,
            hold: Duration::from_secs(10),
            cut_streams: 100,
            disconnects: 50,
        }
    };
    // The processes inherit this limit: HTTP/2 towards the origin costs the proxy one descriptor
    // per stream, HTTP/1.1 two, and nginx's two are shared among its worker processes.
    let http1_streams =
        procs::raise_fd_limit(plan.streams, per_connection(UpstreamProtocol::Http1))?;
    let streams = procs::raise_fd_limit(plan.streams, per_connection(UpstreamProtocol::H2))?;
    for (fit, how) in [(streams, "HTTP/2"), (http1_streams, "HTTP/1.1")] {
        if fit < plan.streams {
            progress(&format!(
                "the open-file limit fits {fit} streams through a proxy speaking {how} to its origin, not {}: raise it (ulimit -Hn, as root) for the full count",
                plan.streams
            ));
        }
    }
    let plan = Plan {
        streams,
        http1_streams,
        ..plan
    };
    in_scratch(|scratch| async move { measure_in(&plan, &scratch, &progress).await }).await
}

/// The run itself, the origin logging into `scratch`; every process it starts is stopped by the
/// time it returns, on success and on error alike.
async fn measure_in(
    plan: &Plan,
    scratch: &Path,
    progress: &impl Fn(&str),
) -> Result<Report, BenchError> {
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let origin_log = scratch.join("origin.log");
    let origin = procs::origin(&origin_log)?;
    let long = Duration::from_secs(60);
    let proxy = procs::proxy(origin.addr, long, UpstreamProtocol::Http1)?;
    let proxy_h2 = procs::proxy(origin.addr, long, UpstreamProtocol::H2)?;
    let nginx = procs::nginx(origin.addr, workers, long)?;

    let (direct, _) = small_responses(plan, "direct", origin.addr, origin.pid(), progress)?;
    let (via_proxy, proxy_cpu) =
        small_responses(plan, "keepalive-proxy", proxy.addr, proxy.pid(), progress)?;
    let (via_nginx, nginx_cpu) = small_responses(plan, "nginx", nginx.addr, nginx.pid(), progress)?;
    let (via_proxy_h2, proxy_h2_cpu) =
        small_responses(plan, proxy_h2.name, proxy_h2.addr, proxy_h2.pid(), progress)?;

    let proxy_held = hold(plan.streams, plan, &proxy_h2, progress).await?;
    let nginx_held = hold(plan.streams, plan, &nginx, progress).await?;
    let http1_held = hold(plan.http1_streams, plan, &proxy, progress).await?;

    progress(&format!(
        "idle cut precision: {} streams, limit {} ms",
        plan.cut_streams,
        CUT_LIMIT.as_millis()
    ));
    let proxy_cut = procs::proxy(origin.addr, CUT_LIMIT, UpstreamProtocol::Http1)?;
    let nginx_cut = procs::nginx(origin.addr, workers, CUT_LIMIT)?;
    let mut proxy_errors = idle_cut_errors(proxy_cut.addr, plan.cut_streams, CUT_LIMIT).await?;
    let mut nginx_errors = idle_cut_errors(nginx_cut.addr, plan.cut_streams, CUT_LIMIT).await?;

    progress(&format!(
        "disconnect propagation: {} clients closing",
        plan.disconnects
    ));
    let mut proxy_delays =
        disconnect_propagation(proxy.addr, &origin_log, plan.disconnects).await?;
    let mut nginx_delays =
        disconnect_propagation(nginx.addr, &origin_log, plan.disconnects).await?;
    drop((origin, proxy, proxy_h2, nginx, proxy_cut, nginx_cut));

    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(Report {
        proxy_rps: via_proxy.rps,
        nginx_rps: via_nginx.rps,
        direct_rps: direct.rps,
        proxy_p50_ms: via_proxy.p50_ms,
        nginx_p50_ms: via_nginx.p50_ms,
        direct_p50_ms: direct.p50_ms,
        proxy_p99_ms: via_proxy.p99_ms,
        nginx_p99_ms: via_nginx.p99_ms,
        direct_p99_ms: direct.p99_ms,
        proxy_user_us_per_request: proxy_cpu.user_us,
        proxy_kernel_us_per_request: proxy_cpu.kernel_us,
        nginx_user_us_per_request: nginx_cpu.user_us,
        nginx_kernel_us_per_request: nginx_cpu.kernel_us,
        proxy_h2_rps: via_proxy_h2.rps,
        proxy_h2_p50_ms: via_proxy_h2.p50_ms,
        proxy_h2_p99_ms: via_proxy_h2.p99_ms,
        proxy_h2_user_us_per_request: proxy_h2_cpu.user_us,
        proxy_h2_kernel_us_per_request: proxy_h2_cpu.kernel_us,
        workers,
        streams: plan.streams,
        streams_upstream_protocol: UpstreamProtocol::H2.as_str(),
        proxy_streams_cut: proxy_held.cut,
        nginx_streams_cut: nginx_held.cut,
        proxy_rss_mib: mib(proxy_held.rss_kib),
        nginx_rss_mib: mib(nginx_held.rss_kib),
        proxy_kib_per_stream: proxy_held.rss_per_stream_kib,
        nginx_kib_per_stream: nginx_held.rss_per_stream_kib,
        proxy_heartbeat_lag_p99_ms: proxy_held.lag_p99_ms,
        nginx_heartbeat_lag_p99_ms: nginx_held.lag_p99_ms,
        http1_streams: plan.http1_streams,
        proxy_http1_streams_cut: http1_held.cut,
        proxy_http1_rss_mib: mib(http1_held.rss_kib),
        proxy_http1_kib_per_stream: http1_held.rss_per_stream_kib,
        proxy_http1_heartbeat_lag_p99_ms: http1_held.lag_p99_ms,
        idle_cut_error_p50_ms: percentile(&mut proxy_errors, 0.5),
        idle_cut_error_p99_ms: percentile(&mut proxy_errors, 0.99),
        nginx_idle_cut_error_p50_ms: percentile(&mut nginx_errors, 0.5),
        nginx_idle_cut_error_p99_ms: percentile(&mut nginx_errors, 0.99),
        disconnect_propagation_p50_ms: percentile(&mut proxy_delays, 0.5),
        disconnect_propagation_p99_ms: percentile(&mut proxy_delays, 0.99),
        nginx_disconnect_propagation_p50_ms: percentile(&mut nginx_delays, 0.5),
        nginx_disconnect_propagation_p99_ms: percentile(&mut nginx_delays, 0.99),
    })
}

/// One wrk run against `addr`, and the CPU time the process `pid` (and its children) spent on it.
fn small_responses(
    plan: &Plan,
    name: &str,
    addr: SocketAddr,
    pid: u32,
    progress: &impl Fn(&str),
) -> Result<(Throughput, CpuPerRequest), BenchError> {
    progress(&format!(
        "small responses: wrk, {} connections, {} s, {name}",
        plan.connections,
        plan.wrk_for.as_secs()
    ));
    let url = format!("http://{addr}/polls/");
    let before = procs::cpu_time(pid);
    let throughput = wrk(&url, plan.wrk_for, plan.connections)?;
    let cpu = CpuPerRequest::of(procs::cpu_time(pid) - before, throughput);
    Ok((throughput, cpu))
}

/// Many heartbeated streams held open through `process`, then a second for it to let them go
/// before the next measurement.
async fn hold(
    streams: usize,
    plan: &Plan,
    process: &procs::Process,
    progress: &impl Fn(&str),
) -> Result<Held, BenchError> {
    progress(&format!(
        "{streams} heartbeated streams held {} s through {}",
        plan.hold.as_secs(),
        process.name
    ));
    let pid = process.pid();
    let held = hold_streams(process.addr, streams, plan.hold, || procs::rss_kib(pid)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(held)
}

/// The human report: one row per figure, keepalive-proxy next to nginx, and their ratio.
pub fn table(report: &Report) -> String {
    let row = |what: &str, proxy: f64, nginx: f64, unit: &str| {
        format!(
            "| {what} | {proxy:.2} {unit} | {nginx:.2} {unit} | {:.2}x |\n",
            proxy / nginx
        )
    };
    let mut text =
        String::from("| figure | keepalive-proxy | nginx | proxy / nginx |\n|---|---|---|---|\n");
    text += &row(
        "small responses, req/s",
        report.proxy_rps,
        report.nginx_rps,
        "",
    );
    text += &row(
        "latency p50",
        report.proxy_p50_ms,
        report.nginx_p50_ms,
        "ms",
    );
    text += &row(
        "latency p99",
        report.proxy_p99_ms,
        report.nginx_p99_ms,
        "ms",
    );
    text += &row(
        "CPU per request, user space",
        report.proxy_user_us_per_request,
        report.nginx_user_us_per_request,
        "µs",
    );
    text += &row(
        "CPU per request, kernel",
        report.proxy_kernel_us_per_request,
        report.nginx_kernel_us_per_request,
        "µs",
    );
    text += &row(
        "req/s, keepalive-proxy speaking HTTP/2 to the origin",
        report.proxy_h2_rps,
        report.nginx_rps,
        "",
    );
    text += &row(
        "latency p99, HTTP/2 to the origin",
        report.proxy_h2_p99_ms,
        report.nginx_p99_ms,
        "ms",
    );
    text += &row(
        &format!("RSS with {} streams", report.streams),
        report.proxy_rss_mib,
        report.nginx_rss_mib,
        "MiB",
    );
    text += &row(
        "RSS per stream",
        report.proxy_kib_per_stream,
        report.nginx_kib_per_stream,
        "KiB",
    );
    text += &row(
        "heartbeat lag p99",
        report.proxy_heartbeat_lag_p99_ms,
        report.nginx_heartbeat_lag_p99_ms,
        "ms",
    );
    text += &format!(
        "| streams cut | {} | {} | |\n",
        report.proxy_streams_cut, report.nginx_streams_cut
    );
    text += &row(
        "idle cut error p99",
        report.idle_cut_error_p99_ms,
        report.nginx_idle_cut_error_p99_ms,
        "ms",
    );
    text += &row(
        "disconnect propagation p99",
        report.disconnect_propagation_p99_ms,
        report.nginx_disconnect_propagation_p99_ms,
        "ms",
    );
    text += &format!(
        "\nstreams are held through keepalive-proxy speaking {} to the origin; over HTTP/1.1, {} streams: {:.2} KiB each, {} cut, heartbeat lag p99 {:.2} ms\n",
        report.streams_upstream_protocol,
        report.http1_streams,
        report.proxy_http1_kib_per_stream,
        report.proxy_http1_streams_cut,
        report.proxy_http1_heartbeat_lag_p99_ms,
    );
    text += &format!(
        "{} worker threads for keepalive-proxy, {} worker processes for nginx\n",
        report.workers, report.workers
    );
    text += &format!(
        "direct to the origin: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms; keepalive-proxy does {:.2}x of direct\n",
        report.direct_rps,
        report.direct_p50_ms,
        report.direct_p99_ms,
        report.proxy_rps / report.direct_rps
    );
    text += &format!(
        "a proxy making nginx's socket calls with no user-space work at all would do at most {:.2}x of nginx\n",
        ceiling_vs_nginx(report)
    );
    text
}

/// nginx's CPU time per request over its kernel time alone: the req/s ratio a proxy whose user-space
/// work cost nothing would reach, when CPU is what limits both.
pub fn ceiling_vs_nginx(report: &Report) -> f64 {
    (report.nginx_user_us_per_request + report.nginx_kernel_us_per_request)
        / report.nginx_kernel_us_per_request
}
