//! What a fault may make the proxy hold: a stream held back by latency or bandwidth stops being read
//! once the proxy holds a bounded amount of it, so the upstream waits, as behind a slow real link, and
//! no header or setting turns the proxy into an unbounded buffer. The upstream here is a firehose that
//! writes as fast as the proxy reads and counts what the proxy took: without the bound, the proxy
//! takes all of it in well under a second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keepalive_kit::client::{get, RawConn};
use keepalive_kit::servers::{start_proxy_configured, Proxy};
use keepalive_kit::timing::{ms, quiet_timers};
use keepalive_proxy::faults::FaultSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the firehose offers in all: far more than the proxy may hold.
const OFFERED: u64 = 256 * 1024 * 1024;
/// What the proxy may have taken from it: the fault's own bound (1 MiB), hyper's read buffer, and
/// the loopback socket buffers on both sides, which the kernel grows to a few MiB each.
const TAKEN_AT_MOST: u64 = 48 * 1024 * 1024;

/// An upstream that answers one request with a chunked body of [`OFFERED`] bytes, written as fast as
/// the proxy takes them; the count says how many the proxy took.
async fn firehose() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the firehose");
    let addr = listener.local_addr().expect("the firehose's address");
    let taken = Arc::new(AtomicU64::new(0));
    let counter = taken.clone();
    tokio::spawn(async move {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        let mut head = vec![0; 4096];
        // The request head fits one read; its content does not matter.
        if tcp.read(&mut head).await.is_err() {
            return;
        }
        let response =
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
        if tcp.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        let payload = vec![b'x'; 64 * 1024];
        let chunk = [
            format!("{:x}\r\n", payload.len()).as_bytes(),
            &payload,
            b"\r\n",
        ]
        .concat();
        while counter.load(Ordering::Relaxed) < OFFERED {
            if tcp.write_all(&chunk).await.is_err() {
                return;
            }
            counter.fetch_add(payload.len() as u64, Ordering::Relaxed);
        }
    });
    (addr, taken)
}

async fn faulty_proxy(upstream: std::net::SocketAddr, faults: FaultSettings) -> Proxy {
    start_proxy_configured(upstream, quiet_timers(), |config| {
        *config = config.clone().with_faults(faults);
    })
    .await
}

/// Opens the stream and keeps its connection while the proxy reads what it will; what it took.
async fn taken_after_a_while(proxy: &Proxy, taken: &AtomicU64) -> u64 {
    let mut client = RawConn::connect(proxy.addr).await;
    client.send(get("/", "").as_bytes()).await;
    // Unbounded, the proxy would take the whole offer from loopback in a fraction of this.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let count = taken.load(Ordering::Relaxed);
    drop(client);
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_stops_reading_the_upstream_once_it_holds_its_bound() {
    let (upstream, taken) = firehose().await;
    let proxy = faulty_proxy(
        upstream,
        FaultSettings {
            // The longest the proxy's settings allow: nothing leaves during the test.
            latency: ms(365 * 24 * 3600 * 1000),
            probability: 1.0,
            ..FaultSettings::default()
        },
    )
    .await;
    let count = taken_after_a_while(&proxy, &taken).await;
    assert!(
        count <= TAKEN_AT_MOST,
        "the proxy took {count} bytes of a stream it holds for a year (at most {TAKEN_AT_MOST})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_stops_reading_the_upstream_once_it_holds_its_bound() {
    let (upstream, taken) = firehose().await;
    let proxy = faulty_proxy(
        upstream,
        FaultSettings {
            bandwidth: Some(1),
            probability: 1.0,
            ..FaultSettings::default()
        },
    )
    .await;
    let count = taken_after_a_while(&proxy, &taken).await;
    assert!(
        count <= TAKEN_AT_MOST,
        "the proxy took {count} bytes of a stream it forwards at 1 byte a second (at most {TAKEN_AT_MOST})"
    );
}
