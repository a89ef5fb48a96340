//! Why a benchmark run stopped: one enum for the whole bench, kept as data until `bench::run`
//! prints it once and picks the exit code. Each variant carries what a reader needs to act on it
//! (the program to install, the path, the address, the limit), since a benchmark fails on the
//! machine it runs on far more often than in its own code.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use keepalive_kit::program;
use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A program that is missing ("needs wrk: apt-get install wrk", the same for nginx), did not
    /// start or never listened; the kit's message names it.
    #[error(transparent)]
    Program(#[from] program::Error),
    #[error("{name} not found next to {beside}: run cargo build --release first")]
    Sibling { name: &'static str, beside: PathBuf },
    #[error("cannot find this program's own path: {0}")]
    Exe(#[source] io::Error),
    #[error("no free port: {0}")]
    Port(#[source] io::Error),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot read the open-file limit (getrlimit): {0}")]
    FdLimit(#[source] Errno),
    #[error("cannot raise the open-file limit to {limit}: {source}")]
    FdRaise { limit: u64, source: Errno },
    /// wrk is installed but could not be run.
    #[error("cannot run {path}: {source}")]
    WrkStart { path: PathBuf, source: io::Error },
    #[error("wrk failed ({status}) against {url}: {stderr}")]
    WrkFailed {
        url: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("cannot read wrk's output:\n{0}")]
    WrkOutput(String),
    #[error("cannot open a stream through {addr}: {source}")]
    Open { addr: SocketAddr, source: io::Error },
    #[error("a stream through {addr} never got its first line")]
    NoFirstLine { addr: SocketAddr },
    #[error("the origin never logged the client through {addr} as gone within {within:?}")]
    NeverGone { addr: SocketAddr, within: Duration },
    #[error("a stream task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}
