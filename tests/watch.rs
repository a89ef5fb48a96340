//! `keepalive-lab watch`: each way a stream ends gets its own verdict and curl's exit code, with the
//! chunks and heartbeats the client really received.

use std::process::Command;
use std::time::Duration;

use http::{HeaderValue, StatusCode, Uri};
use keepalive_kit::program::run_to_exit;
use keepalive_kit::servers::start_origin_and_proxy;
use keepalive_kit::timing::{assert_around, ms, OFF};
use keepalive_lab::watch::{observe, Verdict};
use keepalive_proxy::faults::RESET_AFTER_HEADER;
use keepalive_proxy::TimerSet;

fn timers() -> TimerSet {
    TimerSet {
        connect: ms(2000),
        first_byte: ms(400),
        idle: ms(500),
        max_duration: OFF,
        header: OFF,
        keepalive: OFF,
        send: OFF,
    }
}

fn url(addr: std::net::SocketAddr, target: &str) -> Uri {
    format!("http://{addr}{target}").parse().expect("a URL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finite_stream_is_completed_chunk_by_chunk() {
    let (_origin, proxy) = start_origin_and_proxy(timers()).await;
    let seen = observe(
        &url(proxy.addr, "/polls/streamed?sleep=100ms&lines=3"),
        &[],
        Some(Duration::from_secs(5)),
        |_| {},
    )
    .await;
    assert_eq!(seen.verdict, Verdict::Completed);
    assert_eq!(seen.status, Some(StatusCode::OK));
    assert_eq!(seen.chunks.len(), 3);
    assert_eq!(seen.body_bytes(), 33 + 42 + 26);
    assert!(
        seen.chunks[2].at >= Duration::from_millis(190),
        "{:?}",
        seen.chunks
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cut_is_truncated_and_heartbeats_are_told_apart() {
    let (_origin, proxy) = start_origin_and_proxy(timers()).await;
    let cut = observe(
        &url(proxy.addr, "/polls/streamed?sleep=2s"),
        &[],
        None,
        |_| {},
    )
    .await;
    assert_eq!(cut.verdict, Verdict::Truncated);
    assert_eq!(cut.verdict.exit_code(), 18);
    assert_around(
        cut.ended_at,
        Duration::from_millis(500),
        "idle cut seen by watch",
    );

    let kept = observe(
        &url(proxy.addr, "/polls/streamed?sleep=1s&heartbeat=150ms"),
        &[],
        Some(Duration::from_millis(1600)),
        |_| {},
    )
    .await;
    assert_eq!(
        kept.verdict,
        Verdict::Timeout,
        "heartbeats beat the idle timer"
    );
    assert_eq!(kept.verdict.exit_code(), 28);
    assert!(kept.heartbeats() >= 6, "{:?}", kept.chunks);
    assert_eq!(kept.chunks.len() - kept.heartbeats(), 2, "two poem lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_reset_is_a_reset() {
    let (_origin, proxy) = start_origin_and_proxy(timers()).await;
    let header = (RESET_AFTER_HEADER, HeaderValue::from_static("300ms"));
    let seen = observe(
        &url(proxy.addr, "/polls/streamed?sleep=100ms"),
        &[header],
        Some(Duration::from_secs(3)),
        |_| {},
    )
    .await;
    assert_eq!(seen.verdict, Verdict::Reset);
    assert_eq!(seen.verdict.exit_code(), 56);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_504_is_an_http_verdict() {
    let (_origin, proxy) = start_origin_and_proxy(timers()).await;
    let seen = observe(
        &url(proxy.addr, "/polls/streamed?delay=2s"),
        &[],
        None,
        |_| {},
    )
    .await;
    assert_eq!(seen.verdict, Verdict::Http(StatusCode::GATEWAY_TIMEOUT));
    assert_eq!(seen.verdict.exit_code(), 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_the_verdict_and_exits_with_its_code() {
    let (_origin, proxy) = start_origin_and_proxy(timers()).await;
    let target = url(proxy.addr, "/polls/streamed?sleep=2s").to_string();
    let output = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keepalive-lab"));
        command.args(["watch", &target, "--json"]);
        run_to_exit(command, Duration::from_secs(20))
    })
    .await
    .expect("the command ran");
    assert_eq!(output.status.code(), Some(18));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a verdict line")).expect("JSON");
    assert_eq!(last["verdict"], "truncated", "{stdout}");
    assert_eq!(last["bytes"], 33, "{stdout}");
}
