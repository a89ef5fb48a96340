//! Both `/metrics`, the proxy's and the origin's, in the classic text format a scraper asks for with
//! `Accept: text/plain`, pass `promtool check metrics` (Prometheus's own linter: names, types,
//! help, units), with every kind of series present: histograms with observations, counters with
//! labels, gauges. Ignored by plain `cargo test`, since it needs promtool; the full test command
//! runs it and fails where promtool is missing.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use keepalive_kit::client::{get, raw_request};
use keepalive_kit::program::installed;
use keepalive_kit::servers::start_origin_and_proxy;
use keepalive_kit::timing::{cutting_timers, OFF};

/// The exposition at `addr` for a scraper that asks for text only.
async fn classic(addr: SocketAddr) -> String {
    let transcript = raw_request(
        addr,
        &get("/metrics", "Accept: text/plain\r\nConnection: close\r\n"),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .is_some_and(|value| value.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        response.headers
    );
    response.text()
}

fn promtool(exposition: &str) -> (bool, String) {
    let binary =
        installed("promtool").unwrap_or_else(|err| panic!("{err} (apt-get install prometheus)"));
    let mut child = Command::new(binary)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool's verdict");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs promtool (apt-get install prometheus)"]
async fn promtool_accepts_both_metrics_in_the_classic_text_format() {
    let (origin, proxy) =
        start_origin_and_proxy(cutting_timers(Some(Duration::from_millis(300)), OFF)).await;
    // One completed stream and one cut: every histogram has observations, every family a sample.
    for target in ["/polls/streamed?sleep=0&lines=2", "/polls/streamed?sleep=2"] {
        raw_request(
            proxy.addr,
            &get(target, "Connection: close\r\n"),
            Duration::from_secs(3),
        )
        .await;
    }
    let proxy_text = classic(proxy.admin).await;
    assert!(
        proxy_text.contains("proxy_stream_duration_seconds_bucket{"),
        "{proxy_text}"
    );
    for (name, text) in [
        ("proxy", proxy_text),
        ("origin", classic(origin.addr).await),
    ] {
        let (clean, said) = promtool(&text);
        assert!(
            clean,
            "promtool rejects the {name}'s /metrics: {said}\n{text}"
        );
    }
}
