//! The processes a benchmark measures: the origin, keepalive-proxy and nginx, each a real program of
//! its own (so that the load generator never shares their CPU time accounting), on loopback ports,
//! stopped gracefully when dropped (the kit's programs: nginx's workers never outlive its master);
//! and their resident memory and CPU time, read from /proc.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use keepalive_kit::ports;
use keepalive_kit::program::{children, Program};
use keepalive_proxy::UpstreamProtocol;

use super::BenchError;

/// How long a program may take to start listening.
const START_WITHIN: Duration = Duration::from_secs(5);

/// A program under measurement, where it listens and where its /metrics are.
pub struct Process {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// The origin's own address; the proxy's admin listener; none for nginx.
    pub metrics: Option<SocketAddr>,
    program: Program,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.program.pid()
    }
}

pub fn free_addr() -> Result<SocketAddr, BenchError> {
    ports::free().map_err(BenchError::Port)
}

/// A program built next to this one (`cargo build --release` builds all three).
pub fn sibling(name: &'static str) -> Result<PathBuf, BenchError> {
    let me = std::env::current_exe().map_err(BenchError::Exe)?;
    let path = me.with_file_name(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(BenchError::Sibling { name, beside: me })
    }
}

/// `program`, once it listens on `addr`.
fn listening(
    name: &'static str,
    mut program: Program,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
) -> Result<Process, BenchError> {
    program.listening(addr, START_WITHIN)?;
    Ok(Process {
        name,
        addr,
        metrics,
        program,
    })
}

/// The origin, logging JSON to `log` (the disconnect benchmark reads its clock there).
pub fn origin(log: &Path) -> Result<Process, BenchError> {
    let addr = free_addr()?;
    let log = std::fs::File::create(log).map_err(|source| BenchError::Io {
        action: "create",
        path: log.to_owned(),
        source,
    })?;
    let mut command = Command::new(sibling("keepalive-server")?);
    command
        .env("SERVER_ADDR", addr.to_string())
        .env("LOG_FORMAT", "json")
        .env("SERVER_DRAIN_TIMEOUT", "0")
        // No jobs are measured: nothing on disk, and no lock to share with an origin already
        // running from the same directory.
        .env("SERVER_DATA_DIR", ":memory:")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log);
    let program = Program::start("origin", command)?;
    listening("origin", program, addr, Some(addr))
}

/// keepalive-proxy in front of `upstream`, nginx's timers, idle as given, speaking `protocol`
/// (`PROXY_UPSTREAM_PROTOCOL`) to it.
pub fn proxy(
    upstream: SocketAddr,
    idle: Duration,
    protocol: UpstreamProtocol,
) -> Result<Process, BenchError> {
    let addr = free_addr()?;
    let admin = free_addr()?;
    let mut command = Command::new(sibling("keepalive-proxy")?);
    command
        .env("PROXY_ADDR", addr.to_string())
        .env("PROXY_ADMIN_ADDR", admin.to_string())
        .env("PROXY_UPSTREAM", format!("http://{upstream}"))
        .env("PROXY_UPSTREAM_PROTOCOL", protocol.as_str())
        .env("PROXY_PRESET", "nginx")
        .env("PROXY_IDLE_TIMEOUT", format!("{}ms", idle.as_millis()))
        .env(
            "PROXY_FIRST_BYTE_TIMEOUT",
            format!("{}ms", idle.as_millis()),
        )
        .env("RUST_LOG", "warn")
        .env("PROXY_DRAIN_TIMEOUT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let name = match protocol {
        UpstreamProtocol::H2 => "keepalive-proxy (HTTP/2 to the origin)",
        UpstreamProtocol::Http1 => "keepalive-proxy",
    };
    let program = Program::start(name, command)?;
    listening(name, program, addr, Some(admin))
}

/// nginx in front of `upstream` with `workers` worker processes, upstream keep-alive on, and
/// `proxy_read_timeout` of `idle`.
pub fn nginx(upstream: SocketAddr, workers: usize, idle: Duration) -> Result<Process, BenchError> {
    let addr = free_addr()?;
    let dir = std::env::temp_dir().join(format!(
        "keepalive-bench-nginx-{}-{}",
        std::process::id(),
        addr.port()
    ));
    std::fs::create_dir_all(&dir).map_err(|source| BenchError::Io {
        action: "create",
        path: dir.clone(),
        source,
    })?;
    // The kit runs nginx with `daemon off; master_process on;` itself.
    let config = format!(
        "worker_processes {workers};\nworker_rlimit_nofile 65536;\npid {dir}/nginx.pid;\n\
         error_log {dir}/error.log;\nevents {{ worker_connections 30000; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
         upstream origin {{ server {upstream}; keepalive 64; }}\n\
         server {{\n    listen {addr};\n    location / {{\n      proxy_pass http://origin;\n\
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
         proxy_read_timeout {idle}ms;\n    }}\n  }}\n}}\n",
        dir = dir.display(),
        idle = idle.as_millis(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config).map_err(|source| BenchError::Io {
        action: "write",
        path: path.clone(),
        source,
    })?;
    match Program::nginx(&path, &dir, Stdio::null()) {
        Ok(program) => listening("nginx", program.scratch(dir), addr, None),
        Err(err) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(err.into())
        }
    }
}

/// Resident memory of `pid` and its children (nginx's workers), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_rss(pid) + children(pid).into_iter().map(status_rss).sum::<u64>()
}

/// CPU time a process has used so far, in user space and in the kernel, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTime {
    pub user: f64,
    pub kernel: f64,
}

impl std::ops::Sub for CpuTime {
    type Output = CpuTime;

    fn sub(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - earlier.user,
            kernel: self.kernel - earlier.kernel,
        }
    }
}

/// CPU time of `pid` and its children (nginx's workers), from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> CpuTime {
    std::iter::once(pid)
        .chain(children(pid))
        .map(stat_cpu_time)
        .fold(CpuTime::default(), |sum, one| CpuTime {
            user: sum.user + one.user,
            kernel: sum.kernel + one.kernel,
        })
}

fn stat_cpu_time(pid: u32) -> CpuTime {
    use nix::unistd::{sysconf, SysconfVar};
    let ticks_per_second = sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |ticks| ticks as f64);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    parse_stat(&stat, ticks_per_second)
}

fn parse_stat(stat: &str, ticks_per_second: f64) -> CpuTime {
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    // utime and stime are fields 14 and 15, the 12th and 13th after it.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let mut fields = after_name.split_whitespace().skip(11);
    let mut next_seconds = || {
        fields
            .next()
            .and_then(|ticks| ticks.parse::<f64>().ok())
            .map_or(0.0, |ticks| ticks / ticks_per_second)
    };
    let user = next_seconds();
    let kernel = next_seconds();
    CpuTime { user, kernel }
}

fn status_rss(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

/// A number from `/proc/<pid>/status` (`VmRSS:` in KiB, `Threads:`); 0 once the process is gone.
fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or(0)
}

/// What a process holds that a leak would grow: open descriptors, threads, resident memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Holdings {
    pub descriptors: u64,
    pub threads: u64,
    pub rss_kib: u64,
}

/// [`Holdings`] of `pid` now, from `/proc/<pid>/fd` and `/proc/<pid>/status` (the bench runs its
/// programs as its own children, so it may read their descriptors).
pub fn holdings(pid: u32) -> Holdings {
    let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count());
    Holdings {
        descriptors: descriptors as u64,
        threads: status_field(pid, "Threads:"),
        rss_kib: status_rss(pid),
    }
}

/// Raises this process's open-file limit (which the children inherit) for `streams` connections of
/// `per_stream` descriptors each, and returns how many streams fit: a proxy speaking HTTP/1.1 to its
/// origin holds two per stream (client and origin), over HTTP/2 one, so where the hard limit cannot
/// be raised (no CAP_SYS_RESOURCE), fewer streams than asked.
pub fn raise_fd_limit(streams: usize, per_stream: u64) -> Result<usize, BenchError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const SPARE: u64 = 200;
    let want = streams as u64 * per_stream + SPARE;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(BenchError::FdLimit)?;
    if soft >= want {
        return Ok(streams);
    }
    if setrlimit(Resource::RLIMIT_NOFILE, want, hard.max(want)).is_ok() {
        return Ok(streams);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|source| BenchError::FdRaise {
        limit: hard,
        source,
    })?;
    let fit = usize::try_from(hard.saturating_sub(SPARE) / per_stream).unwrap_or(streams);
    Ok(fit.min(streams))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat =
            "4242 (nginx: worker (1)) S 1 4242 4242 0 -1 4194624 90 0 0 0 250 75 0 0 20 0 1 0";
        let used = parse_stat(stat, 100.0);
        assert!((used.user - 2.5).abs() < 1e-9, "{used:?}");
        assert!((used.kernel - 0.75).abs() < 1e-9, "{used:?}");
    }

    #[test]
    fn a_missing_sibling_is_named_with_how_to_build_it() {
        let err = sibling("keepalive-no-such-program").expect_err("no such program");
        assert!(matches!(
            err,
            BenchError::Sibling {
                name: "keepalive-no-such-program",
                ..
            }
        ));
        let message = err.to_string();
        assert!(
            message.starts_with("keepalive-no-such-program not found next to /")
                && message.ends_with(": run cargo build --release first"),
            "{message}"
        );
    }
}
