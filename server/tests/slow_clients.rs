//! The origin's header timer over a real socket (`SERVER_HEADER_TIMEOUT`, scaled down to 300 ms): a
//! client that sends nothing, or its head a byte at a time (slowloris), is closed at the timer; a
//! stream that runs longer than the timer is not. Only a TCP connection can show a connection that
//! was never answered being closed.

use std::time::Duration;

use keepalive_kit::client::{get, raw_request, Ending, RawConn};
use keepalive_kit::servers::{origin_config, start_origin};
use keepalive_server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

const HEADER_TIMEOUT: Duration = Duration::from_millis(300);
/// Far above the timer, for a loaded machine; a connection still open then is held for good.
const PATIENCE: Duration = Duration::from_secs(5);

fn config() -> ServerConfig {
    ServerConfig {
        header_timeout: Some(HEADER_TIMEOUT),
        ..origin_config()
    }
}

/// Closed, not earlier than the timer and well before [`PATIENCE`].
#[track_caller]
fn assert_closed_at_the_timer(ending: Ending, at: Duration, what: &str) {
    assert!(ending.is_closed(), "{what}: still {ending:?} after {at:?}");
    assert!(
        at >= HEADER_TIMEOUT - Duration::from_millis(50) && at < PATIENCE,
        "{what}: closed at {at:?}, the timer is {HEADER_TIMEOUT:?}"
    );
}

/// hyper-util's version detection has no timeout of its own: a connection that sends nothing was
/// kept for ever.
#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let origin = start_origin(config()).await;
    let conn = RawConn::connect(origin.addr).await;
    let transcript = conn.finish(PATIENCE).await;
    assert_closed_at_the_timer(
        transcript.ending,
        transcript.ended_at,
        "a silent connection",
    );
    assert!(transcript.bytes.is_empty(), "{}", transcript.text());
}

/// Writes `head` a byte every 50 ms on `stream` until the origin closes it; when that was.
async fn trickle(stream: &mut TcpStream, head: &[u8]) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    for byte in head.iter().cycle() {
        if start.elapsed() > PATIENCE {
            return None;
        }
        if stream.write_all(&[*byte]).await.is_err() {
            return Some(start.elapsed());
        }
        // Anything the origin sends now (a 408, a FIN) ends the head.
        if let Ok(read) = timeout(Duration::from_millis(50), stream.read(&mut buf)).await {
            match read {
                Ok(0) | Err(_) => return Some(start.elapsed()),
                Ok(_) => {}
            }
        }
    }
    None
}

/// Slowloris: a head that never ends, a byte at a time, as the first request of a connection and as
/// the second one of a kept-alive connection.
#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_is_cut_at_the_header_timeout() {
    let origin = start_origin(config()).await;
    let slow_head = b"GET /polls/ HTTP/1.1\r\nHost: keepalive.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa";

    let mut first = TcpStream::connect(origin.addr).await.expect("connect");
    let cut = trickle(&mut first, slow_head).await;
    let cut = cut.unwrap_or_else(|| panic!("a first head trickled for {PATIENCE:?} was not cut"));
    assert_closed_at_the_timer(Ending::Eof, cut, "a slow first head");

    let mut second = TcpStream::connect(origin.addr).await.expect("connect");
    second
        .write_all(get("/polls/", "").as_bytes())
        .await
        .expect("a first request");
    let mut answered = Vec::new();
    let mut buf = [0u8; 4096];
    while !answered.ends_with(b"You're at the polls index.") {
        let read = timeout(PATIENCE, second.read(&mut buf))
            .await
            .expect("the first request is answered")
            .expect("read");
        assert_ne!(read, 0, "closed before the first answer");
        answered.extend_from_slice(&buf[..read]);
    }
    let cut = trickle(&mut second, slow_head).await;
    let cut = cut.unwrap_or_else(|| panic!("a second head trickled for {PATIENCE:?} was not cut"));
    assert_closed_at_the_timer(Ending::Eof, cut, "a slow second head");
}

/// The timer bounds the head only: a response that takes longer than it is never cut.
#[tokio::test]
async fn a_stream_longer_than_the_header_timeout_is_not_cut() {
    let origin = start_origin(config()).await;
    let started = Instant::now();
    let transcript = raw_request(
        origin.addr,
        &get(
            "/polls/streamed?sleep=400ms&lines=3",
            "Connection: close\r\n",
        ),
        PATIENCE,
    )
    .await;
    assert!(
        started.elapsed() >= HEADER_TIMEOUT * 2,
        "{:?}",
        started.elapsed()
    );
    let body = transcript.response().data();
    assert!(
        body.complete,
        "a stream of 800 ms under a 300 ms header timer was cut: {:?} ({:?})",
        String::from_utf8_lossy(&body.data),
        transcript.ending
    );
    assert_eq!(
        String::from_utf8_lossy(&body.data).lines().count(),
        3,
        "{:?}",
        String::from_utf8_lossy(&body.data)
    );
}

/// A client that keeps its connection busy with requests is not cut either: each head is timed
/// on its own.
#[tokio::test]
async fn requests_in_turn_on_one_connection_each_get_the_whole_timer() {
    let origin = start_origin(config()).await;
    let mut conn = TcpStream::connect(origin.addr).await.expect("connect");
    let mut buf = [0u8; 4096];
    for _ in 0..4 {
        sleep(HEADER_TIMEOUT / 2).await;
        conn.write_all(get("/healthz", "").as_bytes())
            .await
            .expect("a request on a kept-alive connection");
        let read = timeout(PATIENCE, conn.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        assert!(
            buf[..read].starts_with(b"HTTP/1.1 200 "),
            "{:?}",
            String::from_utf8_lossy(&buf[..read])
        );
    }
}
