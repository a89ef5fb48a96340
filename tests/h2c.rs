//! An HTTP/2 client (h2c, prior knowledge) through the proxy: a cut stream must reach it as a stream
//! reset, never as a clean end of body, or it would take a truncated stream for a complete one.

mod support;

use std::error::Error;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keepalive_proxy::TimerSet;
use support::{
    assert_around, echoed_headers, metric, ms, start_echo, start_origin_and_proxy, start_proxy,
    values, wait_for_metric, OFF,
};
use tokio::time::Instant;

fn quiet_timers() -> TimerSet {
    TimerSet {
        connect: ms(2_000),
        first_byte: ms(5_000),
        idle: ms(5_000),
        max_duration: OFF,
        header: ms(5_000),
        keepalive: ms(5_000),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_cut_resets_the_h2c_stream() {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        idle: ms(400),
        ..quiet_timers()
    })
    .await;
    let client = h2c_client();
    let request = Request::get(format!("http://{}/polls/streamed?sleep=3", proxy.addr))
        .body(Empty::new())
        .expect("a request");
    let sent = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(3), client.request(request))
        .await
        .expect("response headers within 3 s")
        .expect("an h2c response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_2);
    let mut body = response.into_body();

    let first = tokio::time::timeout(Duration::from_secs(3), body.frame())
        .await
        .expect("the first line within 3 s")
        .expect("a first frame, not the end")
        .expect("the first frame is not an error");
    assert_eq!(
        first.into_data().expect("a data frame"),
        "[         0 s] Little brown lady\n"
    );

    let next = tokio::time::timeout(Duration::from_secs(3), body.frame())
        .await
        .expect("the cut reaches the client within 3 s");
    let err = match next {
        Some(Err(err)) => err,
        Some(Ok(frame)) => panic!("the origin sends nothing for 3 s, yet a frame came: {frame:?}"),
        None => panic!("a cut stream ended cleanly: an h2 client would take it as complete"),
    };
    assert_around(sent.elapsed(), Duration::from_millis(400), "h2 idle cut");
    let mut cause: Option<&(dyn Error + 'static)> = Some(&err);
    let reset = loop {
        match cause {
            Some(e) => match e.downcast_ref::<h2::Error>() {
                Some(h2) => break h2,
                None => cause = e.source(),
            },
            None => panic!("not an HTTP/2 error: {err:?}"),
        }
    };
    assert!(
        reset.is_reset() && reset.is_remote(),
        "the proxy reset the stream (RST_STREAM): {reset:?}"
    );
    assert_eq!(
        metric(proxy.admin, "proxy_timeouts_total{timer=\"idle\"}").await,
        1.0
    );
}

fn h2c_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_going_away_ends_the_origins_stream() {
    let (origin, proxy) = start_origin_and_proxy(quiet_timers()).await;
    let client = h2c_client();
    let request = Request::get(format!("http://{}/polls/streamed?sleep=10", proxy.addr))
        .body(Empty::new())
        .expect("a request");
    let response = tokio::time::timeout(Duration::from_secs(3), client.request(request))
        .await
        .expect("response headers within 3 s")
        .expect("an h2c response");
    let mut body = response.into_body();
    tokio::time::timeout(Duration::from_secs(3), body.frame())
        .await
        .expect("the first line within 3 s")
        .expect("a first frame")
        .expect("not an error");
    assert_eq!(metric(origin.addr, "origin_streams_active").await, 1.0);

    // Dropping the body resets the stream (RST_STREAM CANCEL); the connection itself stays up.
    drop(body);
    wait_for_metric(
        origin.addr,
        "origin_streams_active",
        0.0,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        metric(
            origin.addr,
            "origin_streams_ended_total{reason=\"client_gone\"}"
        )
        .await,
        1.0
    );
    wait_for_metric(
        proxy.admin,
        "proxy_client_disconnects_total",
        1.0,
        Duration::from_secs(1),
    )
    .await;
}

#[tokio::test]
async fn h2c_request_reaches_the_upstream_with_its_authority_and_via_2() {
    let echo = start_echo().await;
    let proxy = start_proxy(echo.addr, quiet_timers()).await;
    let request = Request::get(format!("http://{}/echo", proxy.addr))
        .body(Empty::new())
        .expect("a request");
    let response = tokio::time::timeout(Duration::from_secs(3), h2c_client().request(request))
        .await
        .expect("a response within 3 s")
        .expect("an h2c response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_2);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the whole body")
        .to_bytes();
    let body = String::from_utf8(body.to_vec()).expect("UTF-8 body");
    assert!(body.starts_with("GET /echo\n"), "{body}");
    let seen = echoed_headers(&body);
    let authority = proxy.addr.to_string();
    assert_eq!(values(&seen, "host"), [authority.as_str()], "{body}");
    assert_eq!(
        values(&seen, "x-forwarded-host"),
        [authority.as_str()],
        "{body}"
    );
    assert_eq!(values(&seen, "via"), ["2 keepalive-proxy"], "{body}");
    assert_eq!(values(&seen, "x-forwarded-for"), ["127.0.0.1"], "{body}");
}

/// Opens an h2c connection to `addr`, whose client PINGs every 100 ms, idle or not, when `ping`; the
/// returned receiver yields when the connection ends.
async fn h2c_connection(
    addr: std::net::SocketAddr,
    ping: bool,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::sync::oneshot::Receiver<Instant>,
) {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(hyper_util::rt::TokioTimer::new());
    if ping {
        builder
            .keep_alive_interval(Duration::from_millis(100))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
    }
    let (sender, connection) = builder
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("an h2c handshake");
    let (closed, on_closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        // How it ended does not matter here, only when.
        let _ = connection.await;
        let _ = closed.send(Instant::now());
    });
    (sender, on_closed)
}

/// One GET /polls/ over an h2c connection, with the client pinging or not; asserts the idle
/// connection is then closed by the keep-alive timer (1.5 s), not the header timer (600 ms).
async fn assert_idle_h2c_connection_closed_by_keepalive(ping: bool) {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        header: ms(600),
        keepalive: ms(1_500),
        ..quiet_timers()
    })
    .await;
    let (mut sender, closed) = h2c_connection(proxy.addr, ping).await;
    // Let the SETTINGS exchange finish first, so that its ACK cannot arrive after the response: the
    // idle period then holds no client frame at all unless this test sends PINGs.
    // 100 ms is ample on loopback and well within the header limit, which runs from accept.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let request = Request::get(format!("http://{}/polls/", proxy.addr))
        .body(Empty::new())
        .expect("a request");
    let response = tokio::time::timeout(Duration::from_secs(3), sender.send_request(request))
        .await
        .expect("a response within 3 s")
        .expect("an h2c response");
    assert_eq!(response.status(), 200);
    response
        .into_body()
        .collect()
        .await
        .expect("the whole body");
    let answered = Instant::now();

    let closed_at = tokio::time::timeout(Duration::from_secs(4), closed)
        .await
        .expect("the idle connection is closed within 4 s")
        .expect("the connection task reports its end");
    let header_fired = metric(proxy.admin, "proxy_timeouts_total{timer=\"header\"}").await;
    assert_around(
        closed_at.saturating_duration_since(answered),
        Duration::from_millis(1_500),
        &format!(
            "keepalive close of an idle h2c connection (client pings: {ping}; \
             header timer fired {header_fired} times)"
        ),
    );
    assert_eq!(
        metric(proxy.admin, "proxy_timeouts_total{timer=\"keepalive\"}").await,
        1.0
    );
    assert_eq!(header_fired, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_idle_connection_is_closed_by_the_keepalive_timer_not_the_header_timer() {
    assert_idle_h2c_connection_closed_by_keepalive(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_pings_do_not_start_the_header_timer_on_an_idle_connection() {
    // PINGs are connection management, not a request head: the keep-alive timer still governs.
    assert_idle_h2c_connection_closed_by_keepalive(true).await;
}
