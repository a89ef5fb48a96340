//! Several replicas behind the proxy, over real sockets: least-streams keeps open streams level,
//! round-robin takes each in turn, a replica that refuses costs no client a failure (the request
//! goes to another, counted), and a draining replica (its `/healthz` answering 503) gets no new
//! requests once a health check has seen it.

use std::time::Duration;

use keepalive_kit::client::{get, open_stream, raw_request, RawConn};
use keepalive_kit::metrics::{metric, wait_for_metric};
use keepalive_kit::ports;
use keepalive_kit::servers::{origin_config, start_origin, start_proxy_configured, Proxy, Running};
use keepalive_kit::timing::quiet_timers;
use keepalive_proxy::Balance;

const STARTED: &str = "origin_streams_started_total";

async fn origins(n: usize, drain: Duration) -> Vec<Running> {
    let mut running = Vec::new();
    for _ in 0..n {
        let mut config = origin_config();
        config.drain_timeout = drain;
        running.push(start_origin(config).await);
    }
    running
}

/// A proxy in front of `upstream` (comma-separated URLs), checking health every 200 ms.
async fn proxy(upstream: &str, balance: Balance) -> Proxy {
    let first = upstream
        .split(',')
        .next()
        .and_then(|url| url.trim_start_matches("http://").parse().ok())
        .expect("an address");
    let upstream = upstream.to_owned();
    start_proxy_configured(first, quiet_timers(), move |config| {
        config.upstream = upstream.parse().expect("an upstream list");
        config.balance = balance;
        config.health_interval = Some(Duration::from_millis(200));
    })
    .await
}

fn list(origins: &[&Running]) -> String {
    origins
        .iter()
        .map(|origin| format!("http://{}", origin.addr))
        .collect::<Vec<_>>()
        .join(",")
}

async fn ok(proxy: &Proxy) -> u16 {
    raw_request(
        proxy.addr,
        &get("/polls/streamed?sleep=0&lines=1", "Connection: close\r\n"),
        Duration::from_secs(3),
    )
    .await
    .response()
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_streams_keeps_the_open_streams_of_two_replicas_level() {
    let running = origins(2, Duration::from_millis(100)).await;
    let proxy = proxy(&list(&[&running[0], &running[1]]), Balance::LeastStreams).await;
    // Each stream is open (its first line arrived) before the next is asked for: the proxy has
    // counted it, and with two replicas power of two choices always compares both.
    let mut streams: Vec<RawConn> = Vec::new();
    for _ in 0..20 {
        streams.push(open_stream(proxy.addr, "/polls/streamed?sleep=10s").await);
    }
    let a = metric(running[0].addr, STARTED).await;
    let b = metric(running[1].addr, STARTED).await;
    assert_eq!(a + b, 20.0);
    assert!((a - b).abs() <= 1.0, "open streams {a} and {b}");
    let open = format!(
        "proxy_replica_open_streams{{replica=\"{}\"}}",
        running[0].addr
    );
    assert_eq!(metric(proxy.admin, &open).await, a);
    drop(streams);
    wait_for_metric(proxy.admin, &open, 0.0, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_takes_each_replica_in_turn() {
    let running = origins(2, Duration::from_millis(100)).await;
    let proxy = proxy(&list(&[&running[0], &running[1]]), Balance::RoundRobin).await;
    for _ in 0..10 {
        assert_eq!(ok(&proxy).await, 200);
    }
    assert_eq!(metric(running[0].addr, STARTED).await, 5.0);
    assert_eq!(metric(running[1].addr, STARTED).await, 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_refuses_costs_no_client_a_failure() {
    let running = origins(1, Duration::from_millis(100)).await;
    let dead = ports::free_for_test();
    let upstream = format!("http://{dead},http://{}", running[0].addr);
    // Round-robin sends every other request to the dead one until a failed connect or the first
    // health check (whichever comes first) takes it out.
    let proxy = proxy(&upstream, Balance::RoundRobin).await;
    for _ in 0..20 {
        assert_eq!(ok(&proxy).await, 200, "a request failed");
    }
    assert_eq!(metric(running[0].addr, STARTED).await, 20.0);
    // Every request the dead replica was given went on to the live one.
    let sent = format!("proxy_replica_requests_total{{replica=\"{dead}\"}}");
    assert_eq!(
        metric(proxy.admin, "proxy_retries_total").await,
        metric(proxy.admin, &sent).await
    );
    let ready = format!("proxy_replica_ready{{replica=\"{dead}\"}}");
    assert_eq!(metric(proxy.admin, &ready).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_gets_no_new_requests_once_its_health_check_says_503() {
    let mut running = origins(2, Duration::from_secs(5)).await;
    let proxy = proxy(&list(&[&running[0], &running[1]]), Balance::RoundRobin).await;
    // A stream keeps the replica draining (it would exit at once with nothing open).
    let held = open_stream(running[1].addr, "/polls/streamed?sleep=10s").await;
    running[1].stop();
    let ready = format!("proxy_replica_ready{{replica=\"{}\"}}", running[1].addr);
    wait_for_metric(proxy.admin, &ready, 0.0, Duration::from_secs(2)).await;
    let sent = format!(
        "proxy_replica_requests_total{{replica=\"{}\"}}",
        running[1].addr
    );
    let before = metric(proxy.admin, &sent).await;
    for _ in 0..10 {
        assert_eq!(ok(&proxy).await, 200);
    }
    assert_eq!(metric(proxy.admin, &sent).await, before, "no new requests");
    drop(held);
}
