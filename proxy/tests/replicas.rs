//! Several replicas behind the proxy, over real sockets: least-streams keeps open streams level,
//! round-robin takes each in turn, a replica that refuses costs no client a failure (the request
//! goes to another, counted), and a draining replica (its `/healthz` answering 503) gets no new
//! requests once a health check has seen it. A request with a body that reached a replica is never
//! sent again; an idempotent one with no body is, when its replica failed before any response head.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    // Round-robin sends every other request to the dead one until a failed connect ejects it; no
    // health checks, which would take it out before any request met it.
    let live = running[0].addr;
    let proxy = start_proxy_configured(live, quiet_timers(), move |config| {
        config.upstream = upstream.parse().expect("an upstream list");
        config.balance = Balance::RoundRobin;
    })
    .await;
    for _ in 0..20 {
        assert_eq!(ok(&proxy).await, 200, "a request failed");
    }
    assert_eq!(metric(running[0].addr, STARTED).await, 20.0);
    // Every request the dead replica was given went on to the live one.
    let sent = format!("proxy_replica_requests_total{{replica=\"{dead}\"}}");
    assert!(
        metric(proxy.admin, &sent).await >= 1.0,
        "no request met the dead replica"
    );
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

/// A replica that reads each request's head (and whatever body came with it), counts it (health
/// checks aside), and hangs up without answering: a request that reached an origin and failed before any response head.
async fn hangs_up(received: Arc<AtomicUsize>) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("an address");
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = tokio::select! {
                () = stopped.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
            };
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                // The proxy's health checks are not the request under test.
                if !seen.starts_with(b"GET /healthz ") {
                    received.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    Running::new(addr, stop)
}

/// Two replicas that hang up, and `request` sent once through a proxy over them: its status, and
/// how many times a replica received it.
async fn sent_to_hanging_replicas(request: &str) -> (u16, usize) {
    let received = Arc::new(AtomicUsize::new(0));
    let a = hangs_up(Arc::clone(&received)).await;
    let b = hangs_up(Arc::clone(&received)).await;
    let proxy = proxy(&list(&[&a, &b]), Balance::RoundRobin).await;
    let status = raw_request(proxy.addr, request, Duration::from_secs(3))
        .await
        .response()
        .status;
    (status, received.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_body_that_reached_a_replica_is_never_sent_again() {
    let request =
        "POST /jobs HTTP/1.1\r\nHost: lab\r\nContent-Length: 3\r\nConnection: close\r\n\r\nx=1";
    let (status, received) = sent_to_hanging_replicas(request).await;
    assert_eq!(status, 502);
    assert_eq!(received, 1, "a POST with a body went to a second replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_without_a_body_is_retried_when_its_replica_fails_before_answering() {
    let (status, received) =
        sent_to_hanging_replicas(&get("/polls/", "Connection: close\r\n")).await;
    assert_eq!(status, 502, "both replicas hung up");
    assert_eq!(received, 2, "the GET was not tried on the other replica");
}
