//! The origin's drain over real sockets, as a balancer in front of it sees a deploy: from the moment
//! shutdown begins `/healthz` answers 503 on a new connection, other requests are still served (with
//! `Connection: close`), an open stream goes on until `SERVER_DRAIN_TIMEOUT` and is then cut mid-body
//! (no last chunk), a stream that ends earlier ends complete and the origin returns at once. Last,
//! the real binary on SIGTERM (`CARGO_BIN_EXE_*`), with the line it logs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use keepalive_kit::client::{get, open_stream, raw_request, Ending, RawConn};
use keepalive_kit::metrics::metric;
use keepalive_kit::ports;
use keepalive_kit::program::{clear_settings, Program};
use keepalive_kit::response::RawResponse;
use keepalive_kit::servers::{origin_config, start_origin};
use keepalive_kit::timing::{assert_around, wait_until};
use keepalive_server::ServerConfig;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;

const DRAIN: Duration = Duration::from_millis(600);
/// How soon after the signal a balancer's health check must see the 503.
const HEALTHZ_WITHIN: Duration = Duration::from_millis(200);
const STREAM: &str = "/polls/streamed?sleep=10&heartbeat=100ms";

/// `GET target` on a new connection: the response, or `None` when it came incomplete.
async fn fetch(addr: SocketAddr, target: &str) -> Option<RawResponse> {
    let transcript = raw_request(
        addr,
        &get(target, "Connection: close\r\n"),
        Duration::from_secs(2),
    )
    .await;
    RawResponse::parse(&transcript.bytes)
}

/// Polls `/healthz` on new connections until it answers 503; how long that took.
async fn healthz_503_within(addr: SocketAddr, within: Duration) -> Option<Duration> {
    wait_until(within, || async move {
        fetch(addr, "/healthz")
            .await
            .is_some_and(|response| response.status == 503 && response.text() == "draining\n")
    })
    .await
}

/// What an open stream received from `since` on, and how it ended.
struct Rest {
    chunks_after: usize,
    complete: bool,
    ending: Ending,
    ended_after: Duration,
}

async fn rest_of(stream: RawConn, since: Instant) -> Rest {
    let clock = stream.clock();
    let before = stream.received().len();
    let transcript = stream.finish(Duration::from_secs(5)).await;
    let response = transcript.response();
    let after = RawResponse::parse(&transcript.bytes[..before]).map_or(0, |r| r.data().chunks);
    Rest {
        chunks_after: response.data().chunks - after,
        complete: response.data().complete,
        ending: transcript.ending,
        ended_after: (clock + transcript.ended_at).saturating_duration_since(since),
    }
}

fn drain_config(drain: Duration) -> ServerConfig {
    ServerConfig {
        drain_timeout: drain,
        ..origin_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_origin_says_503_keeps_streaming_then_cuts_at_the_limit() {
    let mut origin = start_origin(drain_config(DRAIN)).await;
    let addr = origin.addr;
    let stream = open_stream(addr, STREAM).await;
    assert_eq!(fetch(addr, "/healthz").await.map(|r| r.status), Some(200));

    origin.stop();
    let began = Instant::now();
    let took = healthz_503_within(addr, HEALTHZ_WITHIN).await;
    assert!(
        took.is_some(),
        "no 503 on a new connection within {HEALTHZ_WITHIN:?}"
    );

    let other = fetch(addr, "/polls/")
        .await
        .expect("still served while draining");
    assert_eq!(other.status, 200);
    assert_eq!(other.header("connection"), Some("close"));

    let rest = rest_of(stream, began).await;
    assert!(
        rest.chunks_after >= 3,
        "heartbeats every 100 ms go on through a 600 ms drain: {} chunks",
        rest.chunks_after
    );
    assert!(!rest.complete, "cut mid-body: no last chunk");
    assert_eq!(
        rest.ending,
        Ending::Eof,
        "closed, as curl's exit 18 sees it"
    );
    assert_around(rest.ended_after, DRAIN, "the cut");
    origin.stopped().await.expect("the origin stops cleanly");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_within_the_drain_ends_complete_and_the_origin_returns_early() {
    let drain = Duration::from_secs(10);
    let mut origin = start_origin(drain_config(drain)).await;
    let stream = open_stream(origin.addr, "/polls/streamed?sleep=200ms&lines=3").await;
    origin.stop();
    let began = Instant::now();

    let rest = rest_of(stream, began).await;
    assert!(rest.complete, "the last chunk arrived");
    assert_eq!(rest.chunks_after, 2, "the two lines still owed");
    origin.stopped().await.expect("the origin stops cleanly");
    let returned = began.elapsed();
    assert!(
        returned < Duration::from_secs(3),
        "returns once nothing is open, not at the {drain:?} limit: {returned:?}"
    );
}

/// The real binary, its log in a file shown if the test fails.
struct Origin {
    program: Program,
    log: PathBuf,
}

impl Origin {
    fn spawn(addr: SocketAddr, drain: &str) -> Self {
        let log = std::env::temp_dir().join(format!(
            "keepalive-drain-test-{}-{:016x}.log",
            std::process::id(),
            fastrand::u64(..)
        ));
        let stderr = std::fs::File::create(&log).expect("create the server log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_keepalive-server"));
        clear_settings(&mut command);
        command
            .env("SERVER_ADDR", addr.to_string())
            .env("SERVER_DATA_DIR", ":memory:")
            .env("SERVER_DRAIN_TIMEOUT", drain)
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(stderr);
        let program =
            Program::start("keepalive-server", command).unwrap_or_else(|err| panic!("{err}"));
        Self { program, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_on_sigterm_drains_then_exits_0_saying_how_many_streams_it_cut() {
    let addr = ports::free().expect("a free port");
    let mut origin = Origin::spawn(addr, "600ms");
    origin
        .program
        .listening(addr, Duration::from_secs(10))
        .unwrap_or_else(|err| panic!("{err}"));
    let stream = open_stream(addr, STREAM).await;
    let finite = open_stream(addr, "/polls/streamed?sleep=100ms&lines=2").await;
    assert_eq!(metric(addr, "origin_draining").await, 0.0);

    let pid = Pid::from_raw(i32::try_from(origin.program.pid()).expect("a pid fits an i32"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM the origin");
    let began = Instant::now();
    let took = healthz_503_within(addr, HEALTHZ_WITHIN).await;
    assert!(
        took.is_some(),
        "no 503 within {HEALTHZ_WITHIN:?} of SIGTERM"
    );
    assert_eq!(metric(addr, "origin_draining").await, 1.0);

    assert!(
        rest_of(finite, began).await.complete,
        "ends by itself, complete"
    );
    let rest = rest_of(stream, began).await;
    assert!(!rest.complete && rest.ending == Ending::Eof, "cut mid-body");
    assert_around(rest.ended_after, DRAIN, "the cut");
    let exited = wait_until(Duration::from_secs(5), || {
        let exited = origin
            .program
            .exited()
            .unwrap_or_else(|err| panic!("{err}"));
        async move { exited.is_some() }
    })
    .await;
    assert!(exited.is_some(), "the origin exits once drained");
    let status = origin.program.stop().unwrap_or_else(|err| panic!("{err}"));
    assert!(status.success(), "exits 0 after draining: {status}");

    let log = origin.log();
    let drained: serde_json::Value = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("drained:"))
        })
        .unwrap_or_else(|| panic!("no drained line in:\n{log}"));
    assert_eq!(drained["streams_cut"], 1, "{drained}");
    assert_eq!(drained["streams_finished"], 1, "{drained}");
    assert_eq!(
        drained["message"],
        "drained: 1 streams cut at the drain limit, 1 finished by themselves"
    );
    assert!(
        log.contains(r#""reason":"drained""#),
        "the cut stream's end is logged as drained:\n{log}"
    );
}
