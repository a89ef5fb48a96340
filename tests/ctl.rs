//! `keepalive-lab ctl` against a running proxy: what a shell test does with it (set a timer, see it
//! cut a new stream, reset; list a stream and cut it in a chosen style; follow the events), and how
//! it says what went wrong (no token, a bad value, nobody listening), with exit code 1.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use keepalive_kit::client::{get, Ending, RawConn};
use keepalive_kit::program::{clear_settings, run_to_exit};
use keepalive_kit::response::{is_complete_response, RawResponse};
use keepalive_kit::servers::{origin_config, start_origin, start_proxy_configured, Proxy, Running};
use keepalive_kit::timing::{assert_around, cutting_timers, OFF};
use keepalive_proxy::config::ProxyConfig;
use keepalive_proxy::TimerSet;

const TOKEN: &str = "s3cret";

fn ctl_command(proxy: &Proxy, token: Option<&str>, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keepalive-lab"));
    clear_settings(&mut command);
    command
        .arg("ctl")
        .arg("--admin")
        .arg(format!("http://{}", proxy.admin))
        .args(token.map(|token| ["--token", token]).into_iter().flatten())
        .args(args);
    command
}

async fn ctl(proxy: &Proxy, args: &[&str]) -> Output {
    ctl_as(proxy, Some(TOKEN), args).await
}

async fn ctl_as(proxy: &Proxy, token: Option<&str>, args: &[&str]) -> Output {
    let command = ctl_command(proxy, token, args);
    tokio::task::spawn_blocking(move || run_to_exit(command, Duration::from_secs(20)))
        .await
        .expect("ctl ran")
}

#[track_caller]
fn succeeded(output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn lab(timers: TimerSet) -> (Running, Proxy) {
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy_configured(origin.addr, timers, |config: &mut ProxyConfig| {
        config.admin_token = keepalive_proxy::Token::parse(TOKEN).unwrap_or_default();
    })
    .await;
    (origin, proxy)
}

/// GETs `target` through the proxy and reads until the response ends or 3 s pass.
async fn fetch(addr: SocketAddr, target: &str) -> (RawConn, Duration) {
    let mut conn = RawConn::connect(addr).await;
    conn.send(get(target, "").as_bytes()).await;
    conn.read_until(Duration::from_secs(3), is_complete_response)
        .await;
    let at = conn.clock().elapsed();
    (conn, at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_set_changes_a_timer_without_a_restart_and_reset_restores_it() {
    let (_origin, proxy) = lab(cutting_timers(Some(Duration::from_secs(3)), OFF)).await;
    let said = succeeded(&ctl(&proxy, &["set", "idle=400ms", "cut_style=clean"]).await);
    assert!(
        said.contains("idle = 400ms (applies to new requests)"),
        "{said}"
    );
    let shown = succeeded(&ctl(&proxy, &["show"]).await);
    assert!(
        shown
            .lines()
            .any(|line| line.starts_with("* idle") && line.contains("400ms")),
        "a changed setting is marked: {shown}"
    );
    let (conn, at) = fetch(proxy.addr, "/polls/streamed?sleep=2&lines=2").await;
    let response = RawResponse::parse(conn.received()).expect("a response");
    assert!(response.data().complete, "cut cleanly, as set");
    assert_around(at, Duration::from_millis(400), "the idle cut after ctl set");

    succeeded(&ctl(&proxy, &["reset"]).await);
    let shown = succeeded(&ctl(&proxy, &["show", "--json"]).await);
    let config: serde_json::Value = serde_json::from_str(&shown).expect("JSON");
    assert_eq!(config["idle"], "3s");
    assert_eq!(config["cut_style"], "truncate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_lists_an_open_stream_and_cuts_it_in_the_style_asked() {
    let (_origin, proxy) = lab(cutting_timers(Some(Duration::from_secs(5)), OFF)).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(get("/polls/streamed?sleep=10&heartbeat=100ms", "").as_bytes())
        .await;
    assert!(
        conn.read_until(Duration::from_secs(3), |bytes| {
            bytes.windows(5).any(|chunk| chunk == b"\r\n \r\n")
        })
        .await,
        "a heartbeat came"
    );
    let listing = succeeded(&ctl(&proxy, &["streams"]).await);
    assert!(
        listing.contains("GET /polls/streamed?sleep=10&heartbeat=100ms"),
        "{listing}"
    );
    let said = succeeded(&ctl(&proxy, &["cut", "--all", "--style", "reset"]).await);
    assert!(said.starts_with("cut stream "), "{said}");
    conn.read_until(Duration::from_secs(3), |_| false).await;
    assert_eq!(conn.ended().map(|(ending, _)| ending), Some(Ending::Reset));
    let listing = succeeded(&ctl(&proxy, &["streams"]).await);
    assert_eq!(listing.trim(), "no open streams");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_events_prints_a_line_for_each_event_of_a_stream() {
    let (_origin, proxy) = lab(cutting_timers(Some(Duration::from_millis(300)), OFF)).await;
    let mut command = ctl_command(&proxy, Some(TOKEN), &["events"]);
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ctl events");
    let stdout = child.stdout.take().expect("stdout");
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    // The follower connects while the first streams run: send until one is seen from its start.
    let mut seen = Vec::new();
    for _ in 0..20 {
        fetch(proxy.addr, "/polls/streamed?sleep=2").await;
        seen.extend(lines.try_iter());
        if seen.iter().any(|line| line.contains(" started "))
            && seen.iter().any(|line| line.contains("termination=TD"))
        {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = seen.join("\n");
    for kind in [" started ", " headers ", " timer ", " ended "] {
        assert!(text.contains(kind), "no{kind}line in:\n{text}");
    }
    assert!(text.contains("timer=idle"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_says_what_went_wrong_and_exits_1() {
    let (_origin, proxy) = lab(cutting_timers(Some(Duration::from_secs(5)), OFF)).await;
    let stderr = |output: &Output| String::from_utf8_lossy(&output.stderr).into_owned();

    let output = ctl_as(&proxy, None, &["show"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("--token TOKEN or PROXY_ADMIN_TOKEN"),
        "{}",
        stderr(&output)
    );

    let output = ctl_as(&proxy, Some("guess"), &["streams"]).await;
    assert_eq!(output.status.code(), Some(1), "a wrong token is refused");

    let output = ctl(&proxy, &["set", "idle=1s", "send=soon"]).await;
    assert_eq!(output.status.code(), Some(1));
    let said = stderr(&output);
    assert!(
        said.contains("send") && said.contains("\"soon\"") && said.contains("250ms"),
        "{said}"
    );
    let shown = succeeded(&ctl(&proxy, &["show", "--json"]).await);
    assert!(
        shown.contains("\"idle\": \"5s\""),
        "nothing was half-applied: {shown}"
    );

    let output = ctl(&proxy, &["cut", "999"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no open stream 999"),
        "{}",
        stderr(&output)
    );

    drop(proxy);
    let unreachable = keepalive_kit::ports::free().expect("a free port");
    let mut command = Command::new(env!("CARGO_BIN_EXE_keepalive-lab"));
    clear_settings(&mut command);
    command.args(["ctl", "--admin", &format!("http://{unreachable}"), "show"]);
    let output = tokio::task::spawn_blocking(move || run_to_exit(command, Duration::from_secs(20)))
        .await
        .expect("ctl ran");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cannot reach the admin listener"),
        "{}",
        stderr(&output)
    );
}
