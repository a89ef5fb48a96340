//! Injected faults, as a client on the wire and the origin see them: the byte limit truncates like a
//! timer's cut, the reset is a real TCP RST, the blackhole keeps both connections open until the
//! proxy's idle timer ends it (for good without one), the buffering hop holds heartbeats unless the
//! origin says `X-Accel-Buffering: no`, latency and bandwidth pace the stream, and a request can set
//! its own faults by header, as far as `PROXY_FAULT_HEADERS` and the header limits allow, without the
//! origin ever seeing them.

use std::time::Duration;

use keepalive_kit::client::{get, raw_request, Ending, RawConn};
use keepalive_kit::echo::{echoed_headers, start_echo};
use keepalive_kit::metrics::{metric, wait_for_metric};
use keepalive_kit::servers::{
    origin_config, start_origin, start_proxy_configured, Proxy, Running, FIRST_LINE,
};
use keepalive_kit::timing::{assert_around, ms, OFF};
use keepalive_proxy::faults::policy::FaultHeaders;
use keepalive_proxy::faults::FaultSettings;
use keepalive_proxy::{ProxyConfig, TimerSet};

/// No timer in the way: what happens is the fault's doing.
fn no_timers() -> TimerSet {
    TimerSet {
        connect: ms(2000),
        first_byte: OFF,
        idle: OFF,
        max_duration: OFF,
        header: OFF,
        keepalive: OFF,
        send: OFF,
    }
}

async fn origin_and_faulty_proxy(faults: FaultSettings) -> (Running, Proxy) {
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy_configured(origin.addr, no_timers(), |config: &mut ProxyConfig| {
        *config = config.clone().with_faults(faults);
    })
    .await;
    (origin, proxy)
}

fn faults() -> FaultSettings {
    FaultSettings {
        probability: 1.0,
        ..FaultSettings::default()
    }
}

fn injected(fault: &str) -> String {
    format!("proxy_faults_injected_total{{fault=\"{fault}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_bytes_forwards_exactly_that_many_bytes_then_truncates() {
    let (_origin, proxy) = origin_and_faulty_proxy(FaultSettings {
        limit_bytes: Some(70),
        ..faults()
    })
    .await;
    let transcript = raw_request(
        proxy.addr,
        &get("/polls/streamed?sleep=50ms", ""),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    let body = response.data();
    assert_eq!(
        body.data.len(),
        70,
        "{:?}",
        String::from_utf8_lossy(&body.data)
    );
    assert!(!body.complete, "a cut body has no terminating chunk");
    assert_eq!(transcript.ending, Ending::Eof);
    wait_for_metric(
        proxy.admin,
        &injected("limit_bytes"),
        1.0,
        Duration::from_secs(1),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_after_sends_a_tcp_rst_and_the_origin_learns_of_it() {
    let (origin, proxy) = origin_and_faulty_proxy(FaultSettings {
        reset_after: ms(400),
        ..faults()
    })
    .await;
    let transcript = raw_request(
        proxy.addr,
        &get("/polls/streamed?sleep=100ms", ""),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(transcript.ending, Ending::Reset, "{}", transcript.text());
    assert_around(transcript.ended_at, Duration::from_millis(400), "reset");
    wait_for_metric(
        origin.addr,
        "origin_streams_active",
        0.0,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(metric(proxy.admin, &injected("reset_after")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_stops_forwarding_and_keeps_both_connections_open() {
    let (origin, proxy) = origin_and_faulty_proxy(FaultSettings {
        blackhole_after: ms(300),
        ..faults()
    })
    .await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(get("/polls/streamed?sleep=100ms", "").as_bytes())
        .await;
    let lines = |received: &[u8]| received.windows(4).filter(|w| w == b" s] ").count();
    assert!(
        conn.read_until(Duration::from_secs(1), |received| lines(received) >= 1)
            .await
    );
    // Unhindered, a line every 100 ms would bring 15 more in the next 1.5 s.
    assert!(
        !conn
            .read_until(Duration::from_millis(1500), |received| lines(received) >= 8)
            .await
    );
    assert_eq!(conn.ended(), None, "the client connection stays open");
    assert_eq!(
        metric(origin.addr, "origin_streams_active").await,
        1.0,
        "the origin's connection stays open too"
    );
    assert_eq!(metric(proxy.admin, &injected("blackhole_after")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_ends_at_the_proxys_idle_limit_counted_as_the_idle_timer() {
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy_configured(
        origin.addr,
        TimerSet {
            idle: ms(600),
            ..no_timers()
        },
        |config: &mut ProxyConfig| {
            *config = config.clone().with_faults(FaultSettings {
                blackhole_after: ms(300),
                ..faults()
            });
        },
    )
    .await;
    // A line every 100 ms keeps the idle timer quiet until the blackhole silences the stream.
    let transcript = raw_request(
        proxy.addr,
        &get("/polls/streamed?sleep=100ms", ""),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(transcript.ending, Ending::Eof, "{}", transcript.text());
    assert!(
        !transcript.response().data().complete,
        "cut like a timer's, without the last chunk"
    );
    assert_around(transcript.ended_at, Duration::from_millis(900), "the cut");
    assert_eq!(
        metric(proxy.admin, "proxy_timeouts_total{timer=\"idle\"}").await,
        1.0
    );
    assert_eq!(metric(proxy.admin, &injected("blackhole_after")).await, 1.0);
    wait_for_metric(
        origin.addr,
        "origin_streams_active",
        0.0,
        Duration::from_secs(1),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_asked_by_header_ends_at_the_idle_limit_when_every_header_is_allowed() {
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy_configured(
        origin.addr,
        TimerSet {
            idle: ms(600),
            ..no_timers()
        },
        |config: &mut ProxyConfig| config.fault_headers = FaultHeaders::All,
    )
    .await;
    // The line at 1 s never comes through: silence from 200 ms, the idle cut 600 ms later.
    let transcript = raw_request(
        proxy.addr,
        &get(
            "/polls/streamed?sleep=1",
            "x-keepalive-fault-blackhole-after: 200ms\r\n",
        ),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(transcript.ending, Ending::Eof, "{}", transcript.text());
    assert_around(transcript.ended_at, Duration::from_millis(800), "the cut");
    assert_eq!(
        metric(proxy.admin, "proxy_timeouts_total{timer=\"idle\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_policy_refuses_a_blackhole_by_header_saying_how_to_allow_it() {
    let (origin, proxy) = origin_and_faulty_proxy(FaultSettings::default()).await;
    let transcript = raw_request(
        proxy.addr,
        &get(
            "/polls/streamed?sleep=1",
            "x-keepalive-fault-blackhole-after: 200ms\r\nConnection: close\r\n",
        ),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 400, "{}", transcript.text());
    let text = response.text();
    assert!(
        text.contains("x-keepalive-fault-blackhole-after")
            && text.contains("PROXY_FAULT_HEADERS=all"),
        "{text}"
    );
    assert_eq!(
        metric(origin.addr, "origin_streams_started_total").await,
        0.0,
        "a refused request never reaches the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_beyond_its_limit_answers_400_naming_the_value_and_the_limit_even_with_all() {
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy_configured(origin.addr, no_timers(), |config: &mut ProxyConfig| {
        config.fault_headers = FaultHeaders::All;
    })
    .await;
    for (header, value, limit) in [
        ("x-keepalive-fault-latency", "365d", "1m"),
        ("x-keepalive-fault-bandwidth", "1", "100 bytes a second"),
        ("x-keepalive-buffering", "100GB", "1.0 MiB"),
    ] {
        let transcript = raw_request(
            proxy.addr,
            &get(
                "/polls/streamed?sleep=0&lines=2000000",
                &format!("{header}: {value}\r\nConnection: close\r\n"),
            ),
            Duration::from_secs(3),
        )
        .await;
        let response = transcript.response();
        assert_eq!(response.status, 400, "{header}: {}", transcript.text());
        let text = response.text();
        assert!(
            text.contains(header) && text.contains(&format!("{value:?}")) && text.contains(limit),
            "{text}"
        );
    }
    assert_eq!(
        metric(origin.addr, "origin_streams_started_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffering_hop_told_to_ignore_the_header_swallows_heartbeats() {
    let (_origin, proxy) = origin_and_faulty_proxy(FaultSettings {
        buffering: Some(64 * 1024),
        buffering_ignore_header: true,
        ..faults()
    })
    .await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(get("/polls/streamed?sleep=1s&heartbeat=100ms", "").as_bytes())
        .await;
    let transcript = conn.finish(Duration::from_millis(1500)).await;
    let response = transcript.response();
    assert_eq!(response.status, 200);
    assert!(
        response.data().data.is_empty(),
        "nothing of the stream passes a 64KiB buffer: {:?}",
        response.text()
    );
    assert_eq!(metric(proxy.admin, &injected("buffering")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffering_hop_lets_a_stream_that_says_no_buffering_through() {
    let (_origin, proxy) = origin_and_faulty_proxy(FaultSettings {
        buffering: Some(64 * 1024),
        ..faults()
    })
    .await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(get("/polls/streamed?sleep=1s&heartbeat=100ms", "").as_bytes())
        .await;
    let transcript = conn.finish(Duration::from_millis(700)).await;
    let text = transcript.response().data().data;
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.starts_with(&format!("{FIRST_LINE} ")),
        "the first line and heartbeats pass at once: {text:?}"
    );
    assert_eq!(metric(proxy.admin, &injected("buffering")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_paces_the_stream() {
    let (_origin, proxy) = origin_and_faulty_proxy(FaultSettings {
        bandwidth: Some(100),
        ..faults()
    })
    .await;
    let transcript = raw_request(
        proxy.addr,
        &get("/polls/streamed?sleep=0&lines=3", "Connection: close\r\n"),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        transcript.response().data().complete,
        "{}",
        transcript.text()
    );
    // 33 + 42 bytes must pass at 100 bytes/s before the third line may go: at least 0.75 s.
    let last = transcript.last_byte_at.expect("a body");
    assert!(
        last >= Duration::from_millis(750),
        "three lines at 100 bytes/s took only {last:?}"
    );
    assert_eq!(metric(proxy.admin, &injected("bandwidth")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_every_chunk_by_the_same_amount_not_by_those_before_it() {
    let (_origin, proxy) = origin_and_faulty_proxy(FaultSettings {
        latency: ms(600),
        ..faults()
    })
    .await;
    // Three lines at once from the origin: each waits 600 ms from its own arrival, so all three
    // arrive together at about 600 ms, not at 600, 1200 and 1800 ms.
    let transcript = raw_request(
        proxy.addr,
        &get("/polls/streamed?sleep=0&lines=3", "Connection: close\r\n"),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        transcript.response().data().complete,
        "{}",
        transcript.text()
    );
    let first = transcript.first_byte_at.expect("a response");
    assert!(
        first < Duration::from_millis(400),
        "headers are not delayed: {first:?}"
    );
    let last = transcript.last_byte_at.expect("a body");
    assert_around(last, Duration::from_millis(600), "the last of three chunks");
    assert_eq!(metric(proxy.admin, &injected("latency")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probability_zero_spares_every_request() {
    let (_origin, proxy) = origin_and_faulty_proxy(FaultSettings {
        limit_bytes: Some(10),
        probability: 0.0,
        ..FaultSettings::default()
    })
    .await;
    for _ in 0..3 {
        let transcript = raw_request(
            proxy.addr,
            &get("/polls/streamed?sleep=0&lines=3", "Connection: close\r\n"),
            Duration::from_secs(3),
        )
        .await;
        assert!(
            transcript.response().data().complete,
            "{}",
            transcript.text()
        );
    }
    assert_eq!(metric(proxy.admin, &injected("limit_bytes")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sets_its_own_fault_by_header_and_the_origin_never_sees_it() {
    let echo = start_echo().await;
    let proxy = start_proxy_configured(echo.addr, no_timers(), |_| {}).await;
    let transcript = raw_request(
        proxy.addr,
        &get(
            "/echo",
            "x-keepalive-fault-latency: 300ms\r\nx-keepalive-buffering: off\r\nConnection: close\r\n",
        ),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    let headers = echoed_headers(&response.text());
    assert!(
        headers
            .iter()
            .all(|(name, _)| !name.starts_with("x-keepalive-")),
        "fault headers reached the origin: {headers:?}"
    );
    let last = transcript.last_byte_at.expect("a body");
    assert!(
        last >= Duration::from_millis(300),
        "the body waited its latency: {last:?}"
    );
    assert_eq!(metric(proxy.admin, &injected("latency")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_fault_header_answers_400_naming_it() {
    let (_origin, proxy) = origin_and_faulty_proxy(faults()).await;
    let transcript = raw_request(
        proxy.addr,
        &get(
            "/polls/streamed",
            "x-keepalive-fault-reset-after: soon\r\nConnection: close\r\n",
        ),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 400, "{}", transcript.text());
    let text = response.text();
    assert!(
        text.contains("x-keepalive-fault-reset-after") && text.contains("\"soon\""),
        "{text}"
    );
}
