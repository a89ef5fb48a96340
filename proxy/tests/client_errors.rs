//! A client's own mistake is answered as the client's, not blamed on the upstream: a malformed
//! request body is a 400 counted in `proxy_client_errors_total{kind="body"}`, never a 502 in
//! `proxy_upstream_errors_total`, and no response carries hyper's error chain (the log line does).
//! Also when the body breaks off after the upstream began its response, where hyper's client only
//! reports a bare "connection error" on the response.

use std::time::Duration;

use keepalive_kit::client::RawConn;
use keepalive_kit::echo::start_echo;
use keepalive_kit::metrics::{metric, wait_for_metric};
use keepalive_kit::response::{is_complete_response, RawResponse};
use keepalive_kit::servers::{start_proxy, Running};
use keepalive_kit::timing::quiet_timers;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn malformed_chunked_body_is_a_400_counted_as_the_clients_error() {
    // The echo upstream reads the whole body before it answers: the body's failure comes first.
    let echo = start_echo().await;
    let proxy = start_proxy(echo.addr, quiet_timers()).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(
        b"POST /polls/ HTTP/1.1\r\n\
          Host: x\r\n\
          Transfer-Encoding: chunked\r\n\
          \r\n\
          ZZ\r\nabcd\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        conn.read_until(Duration::from_secs(3), is_complete_response)
            .await,
        "a whole response: {:?}",
        String::from_utf8_lossy(conn.received())
    );
    let response = conn.finish(Duration::ZERO).await.response();
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(
        response.text(),
        "400 Bad Request: the request body is malformed or incomplete\n",
        "the proxy's own words only: hyper's error chain belongs in the log"
    );
    assert_eq!(
        metric(proxy.admin, "proxy_client_errors_total{kind=\"body\"}").await,
        1.0
    );
    assert_eq!(
        metric(proxy.admin, "proxy_upstream_errors_total").await,
        0.0
    );
    assert_eq!(
        metric(proxy.admin, "proxy_requests_total{status=\"400\"}").await,
        1.0
    );
}

/// An upstream that answers the request head at once with a chunked response's first chunk, then
/// reads the request body until the proxy closes the connection.
async fn start_eager_upstream() -> Running {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the eager upstream");
    let addr = listener.local_addr().expect("its address");
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        let (mut tcp, _) = tokio::select! {
            () = stopped.cancelled() => return,
            accepted = listener.accept() => accepted.expect("accept"),
        };
        let mut buf = [0u8; 4096];
        let mut request = Vec::new();
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
        if tcp.write_all(head).await.is_err() {
            return;
        }
        while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    Running::new(addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_breaking_off_mid_response_is_the_clients_error() {
    let upstream = start_eager_upstream().await;
    let proxy = start_proxy(upstream.addr, quiet_timers()).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(
        b"POST /upload HTTP/1.1\r\n\
          Host: x\r\n\
          Transfer-Encoding: chunked\r\n\
          \r\n\
          4\r\nabcd\r\n",
    )
    .await;
    assert!(
        conn.read_until(Duration::from_secs(3), |bytes| {
            RawResponse::parse(bytes).is_some_and(|response| response.data().data == b"hello")
        })
        .await,
        "the upstream's first chunk arrives: {:?}",
        String::from_utf8_lossy(conn.received())
    );
    conn.send(b"ZZ\r\nabcd\r\n0\r\n\r\n").await;
    let transcript = conn.finish(Duration::from_secs(3)).await;
    assert!(
        transcript.ending.is_closed(),
        "the connection ends: {:?}",
        transcript.ending
    );
    let response = transcript.response();
    assert!(
        !response.data().complete,
        "a response cut short must not look complete: {}",
        transcript.text()
    );
    wait_for_metric(
        proxy.admin,
        "proxy_client_errors_total{kind=\"body\"}",
        1.0,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        metric(proxy.admin, "proxy_upstream_errors_total").await,
        0.0
    );
}
