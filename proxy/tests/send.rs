//! The `send` timer over real sockets: a client that asks for a long stream and stops reading is cut
//! once the proxy's writes to it have stalled for the limit, and the origin's stream ends with it; a
//! client that reads is never cut, however long its stream.

use std::net::SocketAddr;
use std::time::Duration;

use keepalive_kit::client::{get, raw_request};
use keepalive_kit::h2c;
use keepalive_kit::metrics::{metric, wait_for_metric};
use keepalive_kit::servers::{
    origin_config, start_origin, start_origin_and_proxy, start_proxy_configured,
};
use keepalive_kit::timing::{ms, quiet_timers, wait_until, OFF};
use keepalive_proxy::TimerSet;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const ACTIVE: &str = "origin_streams_active";
const CLIENT_GONE: &str = "origin_streams_ended_total{reason=\"client_gone\"}";
const SEND: &str = "proxy_timeouts_total{timer=\"send\"}";

/// 2,000,000 lines at full speed: 66 MB, more than every buffer between the origin and the client.
const FLOOD: &str = "/polls/streamed?sleep=0&lines=2000000";

/// A client with a tiny receive buffer that sends `GET target` and never reads.
async fn stalled_client(proxy: SocketAddr, target: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("set SO_RCVBUF before connecting");
    let mut stream = socket.connect(proxy).await.expect("connect to the proxy");
    stream
        .write_all(get(target, "").as_bytes())
        .await
        .expect("send the request");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_timer_cuts_a_client_that_stopped_reading_and_ends_the_origins_stream() {
    let (origin, proxy) = start_origin_and_proxy(TimerSet {
        send: ms(500),
        ..quiet_timers()
    })
    .await;
    let client = stalled_client(proxy.addr, FLOOD).await;
    wait_for_metric(origin.addr, ACTIVE, 1.0, Duration::from_secs(2)).await;
    // The proxy's socket buffer to the client fills first (about a second in a debug build, 33-byte
    // lines at a time), then its writes stall for 500 ms. 10 s is for a loaded machine; the counters
    // below prove that the send timer, not another, let go.
    let freed = wait_until(Duration::from_secs(10), || async {
        metric(origin.addr, ACTIVE).await == 0.0
    })
    .await;
    assert!(
        freed.is_some(),
        "the origin's stream is still held 10 s after the client stopped reading"
    );
    assert_eq!(metric(origin.addr, CLIENT_GONE).await, 1.0);
    assert_eq!(metric(proxy.admin, SEND).await, 1.0);
    assert_eq!(
        metric(proxy.admin, "proxy_timeouts_total{timer=\"idle\"}").await,
        0.0
    );
    wait_for_metric(
        proxy.admin,
        "proxy_streams_active",
        0.0,
        Duration::from_secs(1),
    )
    .await;
    // The proxy cut this client: the cut is the send timer's, not a client that went away.
    assert_eq!(
        metric(proxy.admin, "proxy_client_disconnects_total").await,
        0.0
    );
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_send_timer_a_client_that_stopped_reading_holds_the_origins_stream() {
    // The finding the timer fixes, kept visible: with `send` off nothing else lets go.
    let (origin, proxy) = start_origin_and_proxy(TimerSet {
        send: OFF,
        ..quiet_timers()
    })
    .await;
    let client = stalled_client(proxy.addr, FLOOD).await;
    wait_for_metric(origin.addr, ACTIVE, 1.0, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(metric(origin.addr, ACTIVE).await, 1.0);
    assert_eq!(metric(proxy.admin, SEND).await, 0.0);
    drop(client);
    wait_for_metric(origin.addr, ACTIVE, 0.0, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_timer_never_cuts_a_client_that_reads() {
    // 50,000 lines (1.6 MB, far more than the socket buffers hold) at full speed through a 100 ms
    // send timer: a client that keeps reading never leaves a write stalled that long, however much
    // it is sent. The patience is generous: a debug build on a loaded machine is slow, not stalled.
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        send: ms(100),
        ..quiet_timers()
    })
    .await;
    let transcript = raw_request(
        proxy.addr,
        &get(
            "/polls/streamed?sleep=0&lines=50000",
            "Connection: close\r\n",
        ),
        Duration::from_secs(60),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200);
    assert!(
        response.body.ends_with(b"0\r\n\r\n"),
        "the whole body arrived, its last chunk too ({:?} at {:?})",
        transcript.ending,
        transcript.ended_at
    );
    assert_eq!(metric(proxy.admin, SEND).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_timer_cuts_an_h2_client_that_stopped_reading_its_stream() {
    // An h2 client that stops reading a stream stops granting it window: its connection goes on
    // reading frames, so the proxy's socket never stalls; the stream does. (A 64 KiB buffering hop,
    // deaf to the origin's X-Accel-Buffering: no, makes the proxy send large DATA frames: the h2
    // client library answers unread 33-byte frames with ENHANCE_YOUR_CALM long before the stream's
    // window fills.)
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy_configured(
        origin.addr,
        TimerSet {
            send: ms(500),
            ..quiet_timers()
        },
        |config| {
            config.buffering = Some(64 * 1024);
            config.buffering_ignore_header = true;
        },
    )
    .await;
    let mut sender = h2c::handshake(proxy.addr).await;
    let response = h2c::send(&mut sender, proxy.addr, FLOOD, &[]).await;
    assert_eq!(response.status(), 200);
    wait_for_metric(origin.addr, ACTIVE, 1.0, Duration::from_secs(2)).await;
    let freed = wait_until(Duration::from_secs(10), || async {
        metric(origin.addr, ACTIVE).await == 0.0
    })
    .await;
    assert!(
        freed.is_some(),
        "the origin's stream is still held 10 s after the h2 client stopped reading it"
    );
    assert_eq!(metric(origin.addr, CLIENT_GONE).await, 1.0);
    assert_eq!(metric(proxy.admin, SEND).await, 1.0);
    drop(response);
}
