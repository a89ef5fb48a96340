//! `PROXY_UPSTREAM_PROTOCOL=h2`: the proxy speaks HTTP/2 to the origin, many client streams on one
//! upstream connection, while its clients speak HTTP/1.1. Streams arrive whole, a client that leaves
//! is told to the origin (by RST_STREAM) without disturbing the other streams on that connection. The
//! proxy's idle cut reaching the origin over HTTP/2 is tested beside the same over HTTP/1.1, in
//! `disconnect.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keepalive_kit::client::{get, open_stream, raw_request};
use keepalive_kit::metrics::{metric, wait_for_metric};
use keepalive_kit::servers::{origin_config, start_origin, start_proxy_configured, Proxy};
use keepalive_kit::timing::quiet_timers;
use keepalive_proxy::{UpstreamProtocol, Workers};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const ACTIVE: &str = "origin_streams_active";
const CLIENT_GONE: &str = "origin_streams_ended_total{reason=\"client_gone\"}";

/// A proxy speaking h2 to `upstream`, on one worker thread so that its streams share one connection.
async fn h2_proxy(upstream: std::net::SocketAddr) -> Proxy {
    start_proxy_configured(upstream, quiet_timers(), |config| {
        config.upstream_protocol = UpstreamProtocol::H2;
        config.workers = Workers::parse("1").expect("one worker");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_opens_its_upstream_connection_with_the_http2_preface() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy = h2_proxy(upstream.local_addr().expect("addr")).await;
    let addr = proxy.addr;
    let asked = tokio::spawn(async move {
        raw_request(addr, &get("/polls/", ""), Duration::from_secs(2)).await
    });
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(2), upstream.accept())
        .await
        .expect("the proxy connected to the upstream")
        .expect("accept");
    let mut preface = [0u8; 24];
    conn.read_exact(&mut preface).await.expect("the preface");
    assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    drop(conn);
    drop(asked);
}

/// Passes the proxy's connections on to `origin`, counting them.
struct Relay {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn to(origin: std::net::SocketAddr) -> Self {
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = front.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = front.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut to) = tokio::net::TcpStream::connect(origin).await {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut to).await;
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_arrive_whole_over_one_upstream_connection() {
    let origin = start_origin(origin_config()).await;
    let relay = Relay::to(origin.addr).await;
    let proxy = h2_proxy(relay.addr).await;
    let mut streams = Vec::new();
    for _ in 0..8 {
        let addr = proxy.addr;
        streams.push(tokio::spawn(async move {
            raw_request(
                addr,
                &get("/polls/streamed?sleep=0.3&lines=3", ""),
                Duration::from_secs(5),
            )
            .await
        }));
    }
    for stream in streams {
        let transcript = stream.await.expect("stream task");
        let text = String::from_utf8_lossy(&transcript.bytes);
        assert_eq!(transcript.response().status, 200, "{text}");
        assert!(
            text.ends_with("0\r\n\r\n"),
            "not a complete chunked body: {text}"
        );
    }
    assert_eq!(
        relay.connections(),
        1,
        "eight streams on one HTTP/2 connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_ends_its_origin_stream_and_no_other() {
    let origin = start_origin(origin_config()).await;
    let relay = Relay::to(origin.addr).await;
    let proxy = h2_proxy(relay.addr).await;
    let staying = open_stream(
        proxy.addr,
        "/polls/streamed?sleep=1&heartbeat=100ms&lines=3",
    )
    .await;
    let leaving = open_stream(proxy.addr, "/polls/streamed?sleep=1&heartbeat=100ms").await;
    wait_for_metric(origin.addr, ACTIVE, 2.0, Duration::from_secs(1)).await;

    drop(leaving);
    wait_for_metric(origin.addr, ACTIVE, 1.0, Duration::from_secs(1)).await;
    assert_eq!(metric(origin.addr, CLIENT_GONE).await, 1.0);
    // The stream that stayed shares the connection the reset went over, and goes on to its end.
    let rest = staying.finish(Duration::from_secs(8)).await;
    let text = String::from_utf8_lossy(&rest.bytes);
    assert!(
        text.ends_with("0\r\n\r\n"),
        "the other stream was cut: {text}"
    );
    assert_eq!(metric(origin.addr, CLIENT_GONE).await, 1.0);
    assert_eq!(
        relay.connections(),
        1,
        "both streams on one HTTP/2 connection"
    );
}
