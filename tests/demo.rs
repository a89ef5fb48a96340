//! `keepalive-lab demo`, the command the README starts with, run as a user runs it: it prints where
//! the proxy listens and what to try, the first suggestion is cut by the idle timer exactly as
//! printed, and the narration says so; the proxy's settings (`PROXY_PRESET`, the faults) work as they
//! do for keepalive-proxy; an origin that cannot start stops the demo; and with `--tls` the proxy
//! serves HTTP/2 over TLS with the certificate the demo says to trust. Ports are 0, so the demo
//! reports the ones it bound.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use keepalive_common::tls::CertFile;
use keepalive_kit::client::{get, raw_request, Ending};
use keepalive_kit::program::{clear_settings, run_to_exit, Program};
use keepalive_kit::servers::{origin_config, start_origin};
use keepalive_kit::timing::assert_around;
use keepalive_lab::client::{Client, ClientArgs, Protocol};
use keepalive_server::jobs::Storage;

/// Every listener on a port of its own.
const ANY_PORTS: [&str; 6] = [
    "--origin-addr",
    "127.0.0.1:0",
    "--proxy-addr",
    "127.0.0.1:0",
    "--admin-addr",
    "127.0.0.1:0",
];

/// The demo, stopped gracefully when dropped, and the lines it printed on stdout, read on a thread so
/// the pipe never fills up.
struct Demo {
    program: Program,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Demo {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keepalive-lab"));
        clear_settings(&mut command);
        // Jobs in memory: a test run leaves no data directory behind.
        command
            .env("SERVER_DATA_DIR", ":memory:")
            .envs(env.iter().copied())
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
            program,
            lines,
            seen: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.program.pid()
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
    let mut demo = Demo::start(
        &[&ANY_PORTS[..], &["--idle-timeout", "500ms"]].concat(),
        &[],
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_reads_the_proxy_preset_and_faults_as_the_proxy_does() {
    let mut demo = Demo::start(
        &ANY_PORTS,
        &[
            ("PROXY_PRESET", "heroku"),
            ("PROXY_FAULT_LIMIT_BYTES", "40"),
        ],
    );
    let line = demo.line_with("proxy   http://", Duration::from_secs(20));
    // Heroku's router: 30 s to the first byte, 55 s of silence.
    assert!(
        line.contains("preset heroku: idle 55s, first byte 30s"),
        "{line}"
    );
    let proxy = address_in(&line);
    demo.line_with("proxy listening", Duration::from_secs(5));
    let transcript = raw_request(
        proxy,
        &get("/polls/streamed?sleep=50ms&lines=3", ""),
        Duration::from_secs(5),
    )
    .await;
    let data = transcript.response().data();
    assert_eq!(
        data.data.len(),
        40,
        "PROXY_FAULT_LIMIT_BYTES=40 cut the body at 40 bytes: {}",
        transcript.text()
    );
    assert!(!data.complete, "{}", transcript.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_stops_and_says_why_when_its_origin_cannot_start() {
    // Another origin holds the data directory's lock, as a second `keepalive-lab` would find it.
    let dir = std::env::temp_dir().join(format!("keepalive-demo-locked-{}", std::process::id()));
    let holder = start_origin(keepalive_server::ServerConfig {
        data_dir: Storage::Dir(dir.clone()),
        ..origin_config()
    })
    .await;
    // An answer means the holder has opened its job store, lock included.
    let answered = raw_request(holder.addr, &get("/polls/", ""), Duration::from_secs(5)).await;
    assert_eq!(answered.response().status, 200, "{}", answered.text());

    let data_dir = dir.to_string_lossy().into_owned();
    let output = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keepalive-lab"));
        clear_settings(&mut command);
        command.args(ANY_PORTS).args(["--data-dir", &data_dir]);
        run_to_exit(command, Duration::from_secs(10))
    })
    .await
    .expect("the demo ran");
    drop(holder);
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("the origin stopped, so the demo did too")
            && stderr.contains("is locked: another keepalive-server uses this SERVER_DATA_DIR"),
        "says why: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_takes_localhost_a_bare_port_and_bare_switches() {
    let mut demo = Demo::start(
        &[
            "--origin-addr",
            "localhost:0",
            "--proxy-addr",
            ":0",
            "--admin-addr",
            "127.0.0.1:0",
            // A switch of the proxy's, on by the flag alone.
            "--buffering-ignore-header",
        ],
        &[],
    );
    let origin = address_in(&demo.line_with("origin  http://", Duration::from_secs(20)));
    assert!(origin.ip().is_loopback(), "localhost is loopback: {origin}");
    let proxy = address_in(&demo.line_with("proxy   http://", Duration::from_secs(1)));
    assert!(
        proxy.ip().is_unspecified(),
        ":0 is every interface: {proxy}"
    );
    demo.line_with("proxy listening", Duration::from_secs(5));
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], proxy.port()));
    let transcript = raw_request(
        loopback,
        &get("/polls/streamed?sleep=0&lines=1", ""),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(transcript.response().status, 200, "{}", transcript.text());
}

/// The status `/healthz` at `admin` answers with, or `None` when nothing answers.
async fn healthz(admin: SocketAddr) -> Option<u16> {
    tokio::net::TcpStream::connect(admin).await.ok()?;
    let transcript = raw_request(
        admin,
        &get("/healthz", "Connection: close\r\n"),
        Duration::from_secs(2),
    )
    .await;
    keepalive_kit::response::RawResponse::parse(&transcript.bytes).map(|response| response.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_answers_503_on_healthz_while_its_streams_drain() {
    let mut demo = Demo::start(&ANY_PORTS, &[("PROXY_DRAIN_TIMEOUT", "2s")]);
    let proxy = address_in(&demo.line_with("proxy   http://", Duration::from_secs(20)));
    let metrics = demo.line_with("metrics http://", Duration::from_secs(5));
    let admin = address_in(&metrics);
    demo.line_with("proxy listening", Duration::from_secs(5));
    assert_eq!(healthz(admin).await, Some(200));

    let stream =
        keepalive_kit::client::open_stream(proxy, "/polls/streamed?sleep=10&heartbeat=100ms").await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(demo.pid()).expect("a pid fits an i32"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM the demo");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        healthz(admin).await,
        Some(503),
        "a draining demo tells a balancer in front at once"
    );
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_tls_serves_http2_with_the_certificate_it_says_to_trust() {
    let dir = std::env::temp_dir().join(format!("keepalive-demo-tls-{}", std::process::id()));
    let data_dir = dir.to_str().expect("a UTF-8 temp dir");
    let mut args = ANY_PORTS.to_vec();
    args.push("--tls");
    // Off, as a compose file passes it through, leaves --tls to choose the certificate.
    let mut demo = Demo::start(
        &args,
        &[
            ("SERVER_DATA_DIR", data_dir),
            ("PROXY_TLS_SELF_SIGNED", "off"),
        ],
    );
    let line = demo.line_with("proxy   https://", Duration::from_secs(20));
    let authority = line
        .split("https://")
        .nth(1)
        .and_then(|after| after.split('/').next())
        .unwrap_or_else(|| panic!("no https URL in {line:?}"));
    let proxy: SocketAddr = authority
        .parse()
        .unwrap_or_else(|err| panic!("{authority:?}: {err}"));
    let cert = dir.join("proxy-cert.pem");
    let trust = format!("curl --cacert {}", cert.display());
    demo.line_with(&trust, Duration::from_secs(1));
    // The HTTP/2 suggestion says what the cut looks like there.
    let http2 = demo.line_with(&format!("{trust} --http2 -N"), Duration::from_secs(1));
    assert!(http2.contains(&format!("https://{proxy}/")), "{http2}");
    demo.line_with("proxy listening", Duration::from_secs(5));

    // Trusting exactly the file the demo named, as curl --cacert would.
    let client = Client::new(&ClientArgs {
        cacert: Some(CertFile::read(&cert).expect("the demo wrote its certificate")),
        ..ClientArgs::default()
    })
    .expect("a TLS client");
    let url: http::Uri = format!("https://localhost:{}/polls/", proxy.port())
        .parse()
        .expect("a URL");
    let connection = client.connect(&url).await.expect("a TLS connection");
    assert_eq!(connection.transport.protocol, Protocol::Http2);
    assert_eq!(connection.transport.alpn.as_deref(), Some("h2"));
    drop(connection);
    let (status, _) = client
        .fetch(http::Method::GET, &url, &[])
        .await
        .expect("an answer over HTTPS");
    assert_eq!(status, 200);
    drop(demo);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn demo_tls_with_a_certificate_of_its_own_too_is_refused_with_exit_2() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keepalive-lab"));
    clear_settings(&mut command);
    command
        .env("SERVER_DATA_DIR", ":memory:")
        .env("PROXY_TLS_SELF_SIGNED", "/nonexistent/proxy-cert.pem")
        .args(ANY_PORTS)
        .arg("--tls");
    let output = run_to_exit(command, Duration::from_secs(20));
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--tls") && stderr.contains("PROXY_TLS_SELF_SIGNED=/nonexistent"),
        "{stderr}"
    );
}

/// The README's scripted disconnect test, the shell block between its markers.
fn scripted_disconnect() -> &'static str {
    let readme = include_str!("../README.md");
    readme
        .split("<!-- scripted-disconnect -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- /scripted-disconnect -->").next())
        .and_then(|block| block.trim().strip_prefix("```bash"))
        .and_then(|block| block.strip_suffix("```"))
        .expect("the README holds the scripted disconnect test as a bash block between its markers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs curl (apt-get install curl)"]
async fn the_readme_scripted_disconnect_test_passes_against_the_demo() {
    let script = scripted_disconnect();
    let mut demo = Demo::start(&ANY_PORTS, &[]);
    let proxy = address_in(&demo.line_with("proxy   http://", Duration::from_secs(20)));
    let admin = address_in(&demo.line_with("metrics http://", Duration::from_secs(1)));
    demo.line_with("proxy listening", Duration::from_secs(5));
    keepalive_kit::program::installed("curl").unwrap_or_else(|err| panic!("{err}"));
    // `keepalive-lab` on PATH, as the README's set-up leaves it.
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_keepalive-lab"));
    let path = std::env::join_paths(
        binary
            .parent()
            .into_iter()
            .map(std::path::Path::to_path_buf)
            .chain(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            )),
    )
    .expect("a PATH");
    let mut command = Command::new("bash");
    clear_settings(&mut command);
    command
        .args(["-c", script])
        .env("PATH", path)
        .env("PROXY", format!("http://{proxy}"))
        .env("ADMIN", format!("http://{admin}"));
    let output = tokio::task::spawn_blocking(move || run_to_exit(command, Duration::from_secs(30)))
        .await
        .expect("the script ran");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the README's test failed: {said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.contains("both seen"), "{said}");
    demo.line_with("cut by the control API mid-stream", Duration::from_secs(2));
}
