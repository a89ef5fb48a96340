//! Interruptions through the proxy reach the origin: a client that goes away, a proxy that cuts a
//! stream or shuts down, all end the origin's stream at once, and each side counts it; and an origin
//! going away reaches the client as a truncated body.

use std::time::Duration;

use keepalive_kit::client::{get, open_stream, raw_request};
use keepalive_kit::metrics::{metric, wait_for_metric};
use keepalive_kit::servers::{
    origin_config, start_origin, start_origin_and_proxy, start_proxy, start_proxy_configured,
    Proxy, Running,
};
use keepalive_kit::timing::{assert_around, ms, quiet_timers, OFF};
use keepalive_proxy::{TimerSet, UpstreamProtocol};

const ACTIVE: &str = "origin_streams_active";
const CLIENT_GONE: &str = "origin_streams_ended_total{reason=\"client_gone\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_through_the_proxy_ends_the_origins_stream() {
    let (origin, proxy) = start_origin_and_proxy(quiet_timers()).await;
    let conn = open_stream(proxy.addr, "/polls/streamed?sleep=1&heartbeat=100ms").await;
    wait_for_metric(origin.addr, ACTIVE, 1.0, Duration::from_secs(1)).await;
    assert_eq!(metric(origin.addr, CLIENT_GONE).await, 0.0);

    drop(conn);
    wait_for_metric(origin.addr, ACTIVE, 0.0, Duration::from_secs(1)).await;
    assert_eq!(metric(origin.addr, CLIENT_GONE).await, 1.0);
    wait_for_metric(
        proxy.admin,
        "proxy_client_disconnects_total",
        1.0,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(metric(proxy.admin, "proxy_streams_active").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_idle_cut_ends_the_origins_stream_too() {
    let (origin, proxy) = start_origin_and_proxy(idle_400ms()).await;
    idle_cut_ends_the_origins_stream(&origin, &proxy).await;
}

/// Over HTTP/2 the proxy's cut reaches the origin as a RST_STREAM on a connection that stays open,
/// not as a closed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_to_the_origin_the_idle_cut_ends_the_origins_stream_too() {
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy_configured(origin.addr, idle_400ms(), |config| {
        config.upstream_protocol = UpstreamProtocol::H2;
    })
    .await;
    idle_cut_ends_the_origins_stream(&origin, &proxy).await;
}

fn idle_400ms() -> TimerSet {
    TimerSet {
        idle: ms(400),
        ..quiet_timers()
    }
}

async fn idle_cut_ends_the_origins_stream(origin: &Running, proxy: &Proxy) {
    let transcript = raw_request(
        proxy.addr,
        &get("/polls/streamed?sleep=3", ""),
        Duration::from_secs(3),
    )
    .await;
    assert!(
        transcript.ending.is_closed(),
        "the proxy cut the client: {:?}",
        transcript.ending
    );
    assert_around(transcript.ended_at, Duration::from_millis(400), "idle cut");
    // The origin's next line is 3 s away: only the proxy closing its side can end the stream now.
    wait_for_metric(origin.addr, ACTIVE, 0.0, Duration::from_secs(1)).await;
    assert_eq!(metric(origin.addr, CLIENT_GONE).await, 1.0);
    assert_eq!(
        metric(proxy.admin, "proxy_timeouts_total{timer=\"idle\"}").await,
        1.0
    );
    assert_eq!(
        metric(proxy.admin, "proxy_client_disconnects_total").await,
        0.0,
        "a cut is the proxy's doing, not a client disconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_fin_through_the_proxy_without_heartbeats_ends_the_origins_stream() {
    let (origin, proxy) = start_origin_and_proxy(quiet_timers()).await;
    // Nothing flows for 10 s: the proxy must notice the client's FIN by reading, not by writing.
    let conn = open_stream(proxy.addr, "/polls/streamed?sleep=10").await;
    wait_for_metric(origin.addr, ACTIVE, 1.0, Duration::from_secs(1)).await;

    drop(conn);
    wait_for_metric(origin.addr, ACTIVE, 0.0, Duration::from_secs(1)).await;
    assert_eq!(metric(origin.addr, CLIENT_GONE).await, 1.0);
    wait_for_metric(
        proxy.admin,
        "proxy_client_disconnects_total",
        1.0,
        Duration::from_secs(1),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_shutdown_cuts_open_streams_after_its_drain_timeout() {
    let (origin, proxy) = start_origin_and_proxy(quiet_timers()).await;
    let conn = open_stream(proxy.addr, "/polls/streamed?sleep=10").await;
    wait_for_metric(origin.addr, ACTIVE, 1.0, Duration::from_secs(1)).await;

    let clock = conn.clock();
    let stopped = tokio::time::Instant::now();
    // start_proxy gives the proxy a 100 ms drain timeout.
    drop(proxy);
    let transcript = conn.finish(Duration::from_secs(3)).await;
    assert!(
        transcript.ending.is_closed(),
        "the stream outlived the proxy's shutdown: {:?}",
        transcript.ending
    );
    assert_around(
        (clock + transcript.ended_at).saturating_duration_since(stopped),
        Duration::from_millis(100),
        "cut after the drain timeout",
    );
    let response = transcript.response();
    assert!(
        !response.data().complete,
        "an infinite stream cut by shutdown must not look complete: {:?}",
        String::from_utf8_lossy(&response.body)
    );
    wait_for_metric(origin.addr, ACTIVE, 0.0, Duration::from_secs(1)).await;
    assert_eq!(metric(origin.addr, CLIENT_GONE).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_going_away_mid_stream_reaches_the_client_as_a_truncated_body() {
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy(origin.addr, quiet_timers()).await;
    let conn = open_stream(proxy.addr, "/polls/streamed?sleep=10").await;
    let clock = conn.clock();
    let stopped = tokio::time::Instant::now();
    // The origin's drain timeout is 100 ms: after it, the origin closes the stream mid-body.
    drop(origin);
    let transcript = conn.finish(Duration::from_secs(3)).await;
    assert!(
        transcript.ending.is_closed(),
        "the client still waits after the origin went away: {:?}",
        transcript.ending
    );
    assert_around(
        (clock + transcript.ended_at).saturating_duration_since(stopped),
        Duration::from_millis(100),
        "cut after the origin's drain timeout",
    );
    let response = transcript.response();
    assert!(
        !response.data().complete,
        "an origin that broke off must not look like a complete body: {:?}",
        String::from_utf8_lossy(&response.body)
    );
    wait_for_metric(
        proxy.admin,
        "proxy_upstream_errors_total{kind=\"body_failed\"}",
        1.0,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        metric(proxy.admin, "proxy_client_disconnects_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_504_abandons_the_origins_request_too() {
    let (origin, proxy) = start_origin_and_proxy(TimerSet {
        first_byte: ms(300),
        idle: OFF,
        ..quiet_timers()
    })
    .await;
    let transcript = raw_request(
        proxy.addr,
        &get(
            "/polls/streamed?delay=700ms&sleep=10",
            "Connection: close\r\n",
        ),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(transcript.response().status, 504, "{}", transcript.text());
    // Well after the origin's 700 ms delay: had the proxy kept its side of that connection open, a
    // stream would now be running for nobody. The origin either noticed the close during the delay
    // and never started, or started and ended at its first write.
    tokio::time::sleep(Duration::from_millis(1_500).saturating_sub(transcript.ended_at)).await;
    let started = metric(origin.addr, "origin_streams_started_total").await;
    wait_for_metric(origin.addr, ACTIVE, 0.0, Duration::from_secs(1)).await;
    assert_eq!(
        metric(origin.addr, CLIENT_GONE).await,
        started,
        "every stream the origin started ended as client_gone"
    );
}
