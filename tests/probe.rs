//! `keepalive-lab probe` against balancers whose timers are known: each number it reports, and
//! the two cases it must tell apart when a heartbeated stream is cut where silence was: a total
//! limit with no idle timer (GCP's backend service timeout), and heartbeats held back by a hop.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use keepalive_kit::echo::start_echo;
use keepalive_kit::program::{clear_settings, run_to_exit};
use keepalive_kit::servers::{origin_config, start_origin, start_proxy, start_proxy_configured};
use keepalive_kit::timing::{ms, OFF};
use keepalive_lab::probe::{measure, Findings, Trials};
use keepalive_proxy::TimerSet;

fn timers(idle: Option<Duration>, max: Option<Duration>) -> TimerSet {
    TimerSet {
        connect: ms(1000),
        first_byte: idle,
        idle,
        max_duration: max,
        header: OFF,
        keepalive: OFF,
        send: OFF,
    }
}

async fn probe(addr: SocketAddr, max: Duration) -> Findings {
    let url = format!("http://{addr}/polls/streamed")
        .parse()
        .expect("a URL");
    measure(&Trials::default(), &url, max, |_| {})
        .await
        .expect("the probe ran")
}

fn near(measured: Option<f64>, want: f64, what: &str, findings: &Findings) {
    let measured = measured.unwrap_or_else(|| panic!("{what}: null, want {want}: {findings:?}"));
    assert!(
        (measured - want).abs() <= (want * 0.1).max(0.2),
        "{what}: {measured}, want {want}: {findings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_total_limits_are_measured() {
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy(origin.addr, timers(ms(600), ms(2000))).await;
    let findings = probe(proxy.addr, Duration::from_secs(3)).await;
    near(findings.first_byte_timeout_s, 0.6, "first byte", &findings);
    near(findings.idle_timeout_s, 0.6, "idle", &findings);
    assert!(findings.heartbeat_survives, "{findings:?}");
    near(findings.max_duration_s, 2.0, "total", &findings);
    assert_eq!(findings.recommended_heartbeat_s, Some(0.3), "{findings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_limit_alone_is_not_mistaken_for_an_idle_timer() {
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy(origin.addr, timers(OFF, ms(1500))).await;
    let findings = probe(proxy.addr, Duration::from_secs(3)).await;
    assert_eq!(findings.idle_timeout_s, None, "{findings:?}");
    near(findings.max_duration_s, 1.5, "total", &findings);
    assert!(findings.heartbeat_survives, "{findings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_held_back_by_a_hop_are_reported() {
    let origin = start_origin(origin_config()).await;
    // A hop that buffers everything, behind a balancer with a 700 ms idle timer.
    let hop = start_proxy_configured(origin.addr, timers(OFF, OFF), |config| {
        config.buffering = Some(64 * 1024);
        config.buffering_ignore_header = true;
    })
    .await;
    let balancer = start_proxy(hop.addr, timers(ms(700), OFF)).await;
    let findings = probe(balancer.addr, Duration::from_secs(3)).await;
    near(findings.idle_timeout_s, 0.7, "idle", &findings);
    assert!(!findings.heartbeat_survives, "{findings:?}");
    assert_eq!(findings.max_duration_s, None, "{findings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_timers_are_nulls() {
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy(origin.addr, timers(OFF, OFF)).await;
    let findings = probe(proxy.addr, Duration::from_millis(1500)).await;
    assert_eq!(findings.first_byte_timeout_s, None, "{findings:?}");
    assert_eq!(findings.idle_timeout_s, None, "{findings:?}");
    assert_eq!(findings.max_duration_s, None, "{findings:?}");
    assert!(findings.heartbeat_survives, "{findings:?}");
}

/// `keepalive-lab probe URL --max 2s` as a user runs it, to its exit.
async fn probe_cli(url: String) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keepalive-lab"));
        clear_settings(&mut command);
        command.args(["probe", &url, "--max", "2s"]);
        run_to_exit(command, Duration::from_secs(30))
    })
    .await
    .expect("the probe ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_is_not_a_keepalive_stream_is_refused_not_measured() {
    let echo = start_echo().await;
    let origin = start_origin(origin_config()).await;
    for url in [
        // Some other HTTP server, answering 200 to anything.
        format!("http://{}/polls/streamed", echo.addr),
        // The origin, but its index page rather than the stream.
        format!("http://{}/polls/", origin.addr),
    ] {
        let output = probe_cli(url.clone()).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{url}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "{url} does not answer like keepalive-server's /polls/streamed"
            )),
            "{stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "no findings for {url}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}
