//! An HTTP/2 client (h2c, prior knowledge) through the proxy: a cut stream must reach it as a stream
//! reset, never as a clean end of body, or it would take a truncated stream for a complete one.

use std::time::Duration;

use http_body_util::BodyExt;
use keepalive_kit::echo::{echoed_headers, start_echo, values};
use keepalive_kit::h2c;
use keepalive_kit::metrics::{metric, wait_for_metric};
use keepalive_kit::servers::{start_origin_and_proxy, start_proxy};
use keepalive_kit::timing::{assert_around, ms, quiet_timers};
use keepalive_proxy::TimerSet;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_cut_resets_the_h2c_stream() {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        idle: ms(400),
        ..quiet_timers()
    })
    .await;
    let mut sender = h2c::handshake(proxy.addr).await;
    let (mut body, sent) =
        h2c::first_line(&mut sender, proxy.addr, "/polls/streamed?sleep=3").await;
    let err = match h2c::ending(&mut body).await {
        Err(err) => err,
        Ok(()) => panic!("a cut stream ended cleanly: an h2 client would take it as complete"),
    };
    assert_around(sent.elapsed(), Duration::from_millis(400), "h2 idle cut");
    h2c::assert_reset(&err);
    assert_eq!(
        metric(proxy.admin, "proxy_timeouts_total{timer=\"idle\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_going_away_ends_the_origins_stream() {
    let (origin, proxy) = start_origin_and_proxy(quiet_timers()).await;
    let mut sender = h2c::handshake(proxy.addr).await;
    let (body, _) = h2c::first_line(&mut sender, proxy.addr, "/polls/streamed?sleep=10").await;
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
    let mut sender = h2c::handshake(proxy.addr).await;
    let response = h2c::send(&mut sender, proxy.addr, "/echo", &[]).await;
    assert_eq!(response.status(), 200);
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

/// One GET /polls/ over an h2c connection, with the client pinging or not; asserts the idle
/// connection is then closed by the keep-alive timer (1.5 s), not the header timer (600 ms).
async fn assert_idle_h2c_connection_closed_by_keepalive(ping: bool) {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        header: ms(600),
        keepalive: ms(1_500),
        ..quiet_timers()
    })
    .await;
    let (mut sender, closed) = h2c::connection(proxy.addr, ping).await;
    // Let the SETTINGS exchange finish first, so that its ACK cannot arrive after the response: the
    // idle period then holds no client frame at all unless this test sends PINGs.
    // 100 ms is ample on loopback and well within the header limit, which runs from accept.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = h2c::send(&mut sender, proxy.addr, "/polls/", &[]).await;
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
