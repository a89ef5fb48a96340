//! Every command that prints, with its stdout a pipe nobody reads any more (`keepalive-lab watch URL
//! | head -1` once head has its line): the command ends quietly, exit 0, and never panics on the
//! broken pipe. The pipe's reading end is closed before the program starts, so its very first write
//! fails, the case `head` leaves behind at any later one.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use keepalive_kit::program::{clear_settings, STOP_WITHIN};
use keepalive_kit::servers::{origin_config, start_origin};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Runs the lab with `args` into a closed pipe, to its exit (SIGTERM, then SIGKILL, and a failed test
/// if it is still running after `within`); returns how it ended and its stderr.
fn into_closed_pipe(args: &[&str], within: Duration) -> (ExitStatus, String) {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let mut command = Command::new(env!("CARGO_BIN_EXE_keepalive-lab"));
    clear_settings(&mut command);
    command
        .args(args)
        // Jobs in memory: the demo leaves no data directory behind.
        .env("SERVER_DATA_DIR", ":memory:")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|err| panic!("start {command:?}: {err}"));
    let mut stderr = child.stderr.take().expect("piped stderr");
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid fits an i32"));
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = sender.send((child.wait(), text));
    });
    match receiver.recv_timeout(within) {
        Ok((status, stderr)) => (status.expect("the exit status"), stderr),
        Err(_) => {
            let _ = kill(pid, Signal::SIGTERM);
            let (_, stderr) = receiver.recv_timeout(STOP_WITHIN).unwrap_or_else(|_| {
                let _ = kill(pid, Signal::SIGKILL);
                receiver.recv().expect("the waiting thread answers")
            });
            panic!("{args:?} still running {within:?} after its stdout closed; stderr: {stderr}");
        }
    }
}

#[track_caller]
fn assert_quiet_end((status, stderr): (ExitStatus, String), what: &str) {
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
    assert_eq!(status.code(), Some(0), "{what}: {status}; stderr: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_into_a_closed_pipe_ends_quietly() {
    let origin = start_origin(origin_config()).await;
    // An endless stream: only the closed pipe can end the watch.
    let url = format!("http://{}/polls/streamed?sleep=100ms", origin.addr);
    let ended = tokio::task::spawn_blocking(move || {
        into_closed_pipe(&["watch", &url], Duration::from_secs(10))
    })
    .await
    .expect("watch ran");
    assert_quiet_end(ended, "watch");
}

#[test]
fn experiment_list_into_a_closed_pipe_ends_quietly() {
    let ended = into_closed_pipe(&["experiment", "--list"], Duration::from_secs(10));
    assert_quiet_end(ended, "experiment --list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_into_a_closed_pipe_ends_quietly() {
    let origin = start_origin(origin_config()).await;
    let url = format!("http://{}/polls/streamed", origin.addr);
    let ended = tokio::task::spawn_blocking(move || {
        into_closed_pipe(&["probe", &url, "--max", "1s"], Duration::from_secs(20))
    })
    .await
    .expect("probe ran");
    assert_quiet_end(ended, "probe");
}

#[test]
fn demo_into_a_closed_pipe_ends_quietly() {
    let ended = into_closed_pipe(
        &[
            "--origin-addr",
            "127.0.0.1:0",
            "--proxy-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ],
        Duration::from_secs(10),
    );
    assert_quiet_end(ended, "demo");
}

/// The soak starts keepalive-server and keepalive-proxy from beside the lab's binary: `cargo test
/// --workspace` (or `cargo build`) builds them.
#[test]
fn bench_soak_into_a_closed_pipe_ends_quietly() {
    let ended = into_closed_pipe(
        &["bench", "--soak", "1s", "--streams", "5"],
        Duration::from_secs(60),
    );
    assert_quiet_end(ended, "bench --soak");
}
