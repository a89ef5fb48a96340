//! The origin over a real socket: what only a TCP connection can show, that a client going away (or the
//! server shutting down) really ends the stream. Routing and parameters are tested without a socket in
//! the crate itself; runs through the proxy live in the proxy's tests.

use std::time::Duration;

use keepalive_kit::client::{open_stream, Ending};
use keepalive_kit::metrics::{metric, metrics_text, sample, wait_for_metric};
use keepalive_kit::servers::{origin_config, start_origin};
use keepalive_server::ServerConfig;
use tokio::time::{sleep, timeout, Instant};

const ACTIVE: &str = "origin_streams_active";
const CLIENT_GONE: &str = "origin_streams_ended_total{reason=\"client_gone\"}";

#[tokio::test]
async fn client_gone_ends_the_stream_within_a_second() {
    let origin = start_origin(origin_config()).await;

    let stream = open_stream(origin.addr, "/polls/streamed?sleep=5").await;
    assert_eq!(metric(origin.addr, ACTIVE).await, 1.0);
    // Present at 0 before any client went, not merely absent: rate() and dashboards need the 0.
    let exposition = metrics_text(origin.addr).await;
    assert_eq!(sample(&exposition, CLIENT_GONE), Some(0.0), "{exposition}");
    drop(stream);

    let closed = Instant::now();
    while metric(origin.addr, ACTIVE).await != 0.0 {
        assert!(
            closed.elapsed() < Duration::from_secs(1),
            "the origin still streams 1 s after the client went away"
        );
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(origin.addr, CLIENT_GONE).await, 1.0);

    origin.stopped().await.expect("served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_notices_a_client_fin_while_the_body_waits() {
    let origin = start_origin(origin_config()).await;
    // No heartbeat: nothing is written for 10 s, so only reading the FIN can reveal the client left.
    let conn = open_stream(origin.addr, "/polls/streamed?sleep=10").await;
    assert_eq!(metric(origin.addr, ACTIVE).await, 1.0);

    drop(conn);
    wait_for_metric(origin.addr, ACTIVE, 0.0, Duration::from_secs(1)).await;
    assert_eq!(metric(origin.addr, CLIENT_GONE).await, 1.0);
    assert_eq!(
        metric(
            origin.addr,
            "origin_streams_ended_total{reason=\"completed\"}"
        )
        .await,
        0.0
    );
}

#[tokio::test]
async fn shutdown_closes_infinite_streams_after_the_drain_timeout() {
    let origin = start_origin(ServerConfig {
        drain_timeout: Duration::from_millis(300),
        ..origin_config()
    })
    .await;
    let stream = open_stream(origin.addr, "/polls/streamed?sleep=10").await;

    let stopped = Instant::now();
    timeout(Duration::from_secs(5), origin.stopped())
        .await
        .expect("serve returns after the drain timeout")
        .expect("served");
    assert!(
        stopped.elapsed() >= Duration::from_millis(300),
        "the stream got its drain time"
    );

    // A FIN or a reset will do: what matters is that the connection does not outlive `serve`.
    let transcript = stream.finish(Duration::from_secs(5)).await;
    assert_ne!(
        transcript.ending,
        Ending::Open,
        "the connection is closed once serve returns"
    );
    assert!(
        !transcript.bytes.ends_with(b"0\r\n\r\n"),
        "an infinite stream cut by shutdown must not look complete"
    );
}
