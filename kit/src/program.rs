//! Real programs run as children: this workspace's own binaries (paths from `CARGO_BIN_EXE_*`, which
//! cargo sets for a package's integration tests and the test passes in) and installed ones (nginx,
//! HAProxy, looked up on PATH). A [`Program`] is stopped gracefully when dropped: nginx with SIGQUIT,
//! the others with SIGTERM, then waited for, and SIGKILL only as a last resort after
//! [`STOP_WITHIN`]; nothing a suite or the bench starts outlives it.
//!
//! nginx is the delicate one: killing its master with SIGKILL orphans its workers, which keep the
//! port and the upstream connections. So it runs in the foreground with a master
//! (`daemon off; master_process on;`), the master is the child waited for, and it exits only after
//! its workers have.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a program gets to stop on its signal before it is killed.
pub const STOP_WITHIN: Duration = Duration::from_secs(10);

/// The directives every nginx run gets on its command line (so a configuration must not set them):
/// in the foreground with a master, and a bound on its graceful stop, well within [`STOP_WITHIN`],
/// for streams still open when it is told to quit.
const NGINX_DIRECTIVES: &str = "daemon off; master_process on; worker_shutdown_timeout 5s;";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("needs {0}: apt-get install {0}")]
    Missing(String),
    #[error("cannot start {name}: {source}")]
    Start { name: String, source: io::Error },
    #[error("{name} exited with {status} before listening on {addr}")]
    Exited {
        name: String,
        status: ExitStatus,
        addr: SocketAddr,
    },
    #[error("{name} did not listen on {addr} within {within:?}")]
    NotListening {
        name: String,
        addr: SocketAddr,
        within: Duration,
    },
    #[error("{name}: {source}")]
    Io { name: String, source: io::Error },
}

/// An installed program, on PATH or in /usr/sbin (where Debian puts nginx and HAProxy, and which a
/// non-root PATH often lacks).
pub fn installed(name: &str) -> Result<PathBuf, Error> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| Error::Missing(name.to_owned()))
}

/// A child program, stopped gracefully (and its scratch directory removed) when dropped.
pub struct Program {
    name: String,
    child: Child,
    signal: Signal,
    scratch: Option<PathBuf>,
}

impl Program {
    /// Starts `command` (stdin closed; stdout and stderr as `command` sets them), to be stopped with
    /// SIGTERM.
    pub fn start(name: &str, mut command: Command) -> Result<Self, Error> {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| Error::Start {
                name: name.to_owned(),
                source,
            })?;
        Ok(Self {
            name: name.to_owned(),
            child,
            signal: Signal::SIGTERM,
            scratch: None,
        })
    }

    /// The installed nginx with `config`, its relative paths under `prefix`, its stderr (where it
    /// says why it did not start) to `stderr`; stopped with SIGQUIT, its graceful quit.
    pub fn nginx(config: &Path, prefix: &Path, stderr: Stdio) -> Result<Self, Error> {
        let mut command = Command::new(installed("nginx")?);
        command
            .arg("-c")
            .arg(config)
            .arg("-p")
            .arg(prefix)
            .arg("-g")
            .arg(NGINX_DIRECTIVES)
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut nginx = Self::start("nginx", command)?;
        nginx.signal = Signal::SIGQUIT;
        Ok(nginx)
    }

    /// PostgreSQL's `postgres` with its data directory `data`, listening on `port` (loopback) and on a
    /// socket in `sockets`, its log to `stderr`; stopped with SIGINT, its fast shutdown (SIGTERM
    /// would wait for every client to disconnect). As root it runs as the `postgres` user, which
    /// must own `data`: the server refuses to run as root.
    pub fn postgres(
        bin: &Path,
        data: &Path,
        sockets: &Path,
        port: u16,
        stderr: Stdio,
    ) -> Result<Self, Error> {
        let mut command = Command::new(bin.join("postgres"));
        command
            .arg("-D")
            .arg(data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(sockets)
            // A scratch cluster: durability across a crash of the machine is not what it is for.
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(stderr);
        as_postgres_if_root(&mut command)?;
        let mut postgres = Self::start("postgres", command)?;
        postgres.signal = Signal::SIGINT;
        Ok(postgres)
    }

    /// Removes `dir` once the program has stopped (its configuration, logs and temp files).
    pub fn scratch(mut self, dir: PathBuf) -> Self {
        self.scratch = Some(dir);
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The program's stdout, if it was piped and not taken yet.
    pub fn stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// How the program exited, if it has.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>, Error> {
        self.child.try_wait().map_err(|source| self.io(source))
    }

    /// Waits (polling every 25 ms, up to `within`) until something accepts connections on `addr`;
    /// fails at once if the program exits first.
    pub fn listening(&mut self, addr: SocketAddr, within: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited()? {
                return Err(Error::Exited {
                    name: self.name.clone(),
                    status,
                    addr,
                });
            }
            if TcpStream::connect(addr).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::NotListening {
                    name: self.name.clone(),
                    addr,
                    within,
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL now, for a test of what a crash leaves behind; returns how it ended.
    pub fn kill(&mut self) -> Result<ExitStatus, Error> {
        self.child.kill().map_err(|source| self.io(source))?;
        self.child.wait().map_err(|source| self.io(source))
    }

    /// Stops the program gracefully (see the module comment) and returns how it ended.
    pub fn stop(&mut self) -> Result<ExitStatus, Error> {
        terminate(&mut self.child, self.signal).map_err(|source| self.io(source))
    }

    fn io(&self, source: io::Error) -> Error {
        Error::Io {
            name: self.name.clone(),
            source,
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // Nothing to report to from a drop; the last resort inside `stop` already ran.
        let _ = self.stop();
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// As root, makes `command` run as the `postgres` user (Debian's package makes it).
pub fn as_postgres_if_root(command: &mut Command) -> Result<(), Error> {
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let user = postgres_user()?;
    command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    Ok(())
}

/// The `postgres` user Debian's package makes, which PostgreSQL runs as when the caller is root.
pub fn postgres_user() -> Result<nix::unistd::User, Error> {
    nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .ok_or_else(|| Error::Missing("postgresql".to_owned()))
}

/// Sends `signal` to `child` unless it has exited, waits up to [`STOP_WITHIN`], then kills it and
/// its own children (nginx's workers, which would otherwise be orphaned). The children stay in the
/// test's process group on purpose: a Ctrl-C at the terminal reaches them too.
fn terminate(child: &mut Child, signal: Signal) -> io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
    kill(pid, signal)?;
    let deadline = Instant::now() + STOP_WITHIN;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The master first, and its children from a list taken before: nginx's master replaces a worker
    // that dies, and a worker whose master is gone is no longer anybody's child to be found.
    let orphans = children(child.id());
    child.kill()?;
    let status = child.wait()?;
    for orphan in orphans
        .into_iter()
        .filter_map(|pid| i32::try_from(pid).ok())
    {
        let _ = kill(Pid::from_raw(orphan), Signal::SIGKILL);
    }
    Ok(status)
}

/// The children of `pid` (nginx's workers), from /proc; none once it has exited.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|child| child.parse().ok())
        .collect()
}

/// Clears the settings this workspace's programs read from the environment (`PROXY_*`, `SERVER_*`,
/// `KEEPALIVE_ADMIN`, `LOG_FORMAT`, `RUST_LOG`), so that a developer's shell cannot change what a
/// test sees.
pub fn clear_settings(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("PROXY_")
            || key.starts_with("SERVER_")
            || key == "KEEPALIVE_ADMIN"
            || key == "LOG_FORMAT"
            || key == "RUST_LOG"
        {
            command.env_remove(key.as_ref());
        }
    }
}

/// How long one of this workspace's binaries may take to refuse its settings or print its help.
const EXIT_WITHIN: Duration = Duration::from_secs(20);

/// Runs `binary` (one of this workspace's, from `CARGO_BIN_EXE_*`) with `args` and only `env` of its
/// settings, to its exit, for a test.
pub fn run_with_settings(binary: &str, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut command = Command::new(binary);
    clear_settings(&mut command);
    command
        .args(args)
        .envs(env.iter().map(|(key, value)| (key, value)));
    run_to_exit(command, EXIT_WITHIN)
}

/// Runs `command` to its exit with stdout and stderr captured, for a test; a program still running
/// after `within` is stopped and fails the test.
pub fn run_to_exit(mut command: Command, within: Duration) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("start {command:?}: {err}"));
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid fits an i32"));
    // `wait_with_output` drains both pipes while it waits, so a child that writes more than a pipe
    // holds never blocks; the thread lets this side give up after `within`.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output()));
    match receiver.recv_timeout(within) {
        Ok(output) => output.expect("the child's output"),
        Err(_) => {
            let _ = kill(pid, Signal::SIGTERM);
            let output = receiver.recv_timeout(STOP_WITHIN).unwrap_or_else(|_| {
                let _ = kill(pid, Signal::SIGKILL);
                receiver.recv().expect("the waiting thread answers")
            });
            let output = output.expect("the child's output");
            panic!(
                "{command:?} still running after {within:?}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// Asserts how this workspace's programs refuse a setting: exit code 2 and a single stderr line
/// naming `variable` and `value`.
#[track_caller]
pub fn assert_refused(output: &Output, variable: &str, value: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    let line = stderr.trim_end();
    assert!(!line.contains('\n'), "one line, got: {stderr:?}");
    assert!(line.contains(variable), "names {variable}: {line:?}");
    assert!(line.contains(value), "names the value {value}: {line:?}");
}
