//! `keepalive-lab demo`, the command the README starts with, run as a user runs it: it prints where
//! the proxy listens and what to try, the first suggestion is cut by the idle timer exactly as
//! printed, and the narration says so. Ports are 0, so the demo reports the ones it bound.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use keepalive_kit::client::{get, raw_request, Ending};
use keepalive_kit::program::{clear_settings, Program};
use keepalive_kit::timing::assert_around;

/// The demo, stopped gracefully when dropped, and the lines it printed on stdout, read on a thread so
/// the pipe never fills up.
struct Demo {
    _program: Program,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Demo {
    fn start(args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keepalive-lab"));
        clear_settings(&mut command);
        // Jobs in memory: a test run leaves no data directory behind.
        command
            .env("SERVER_DATA_DIR", ":memory:")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut program =
            Program::start("keepalive-lab", command).unwrap_or_else(|err| panic!("{err}"));
        let stdout = program.stdout().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            _program: program,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line (already seen or arriving within `within`) that contains `needle`.
    fn line_with(&mut self, needle: &str, within: Duration) -> String {
        if let Some(line) = self.seen.iter().find(|line| line.contains(needle)) {
            return line.clone();
        }
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "the demo printed no line with {needle:?} within {within:?}; it printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

/// The address in a printed line such as `  proxy   http://127.0.0.1:41234/polls/streamed  (...)`.
fn address_in(line: &str) -> SocketAddr {
    let after = line
        .split("http://")
        .nth(1)
        .unwrap_or_else(|| panic!("no URL in {line:?}"));
    let authority = after.split('/').next().unwrap_or_default();
    authority
        .parse()
        .unwrap_or_else(|err| panic!("{authority:?} in {line:?}: {err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_its_proxy_and_its_idle_cut_happens_as_narrated() {
    let mut demo = Demo::start(&[
        "--origin-addr",
        "127.0.0.1:0",
        "--proxy-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--idle-timeout",
        "500ms",
    ]);
    let proxy = address_in(&demo.line_with("proxy   http://", Duration::from_secs(20)));
    demo.line_with("proxy listening", Duration::from_secs(5));

    // The first suggestion: a line every idle + 3 s, which the idle timer cuts.
    let suggestion = demo.line_with("curl -N", Duration::from_secs(1));
    assert!(
        suggestion.contains("sleep=3.5s"),
        "the suggestion sleeps longer than the 500ms idle limit: {suggestion:?}"
    );
    let transcript = raw_request(
        proxy,
        &get("/polls/streamed?sleep=3.5s", ""),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    assert!(
        !response.data().complete,
        "cut without the last chunk: {}",
        transcript.text()
    );
    assert_eq!(transcript.ending, Ending::Eof);
    assert_around(transcript.ended_at, Duration::from_millis(500), "idle cut");

    let cut = demo.line_with("idle timer fired mid-stream", Duration::from_secs(2));
    assert!(
        !cut.contains('\u{1b}'),
        "no colour codes in a pipe: {cut:?}"
    );
    demo.line_with("stream ended: client gone", Duration::from_secs(2));
}
