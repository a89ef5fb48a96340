//! The one `Host` the upstream gets (RFC 9112 3.2): a request naming no host or two is answered 400 by
//! the proxy, never forwarded for the upstream to guess; a target's own authority (absolute-form, h2's
//! `:authority`) wins over `Host` and replaces it; `X-Forwarded-Host` is always the `Host` forwarded.
//! The echo upstream answers 200 to everything, so a 400 here is the proxy's own.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use keepalive_kit::client::RawConn;
use keepalive_kit::echo::{echoed_headers, start_echo, values};
use keepalive_kit::h2c;
use keepalive_kit::metrics::metric;
use keepalive_kit::response::{is_complete_response, RawResponse};
use keepalive_kit::servers::start_proxy;
use keepalive_kit::timing::quiet_timers;

/// Sends `request` on a new connection and returns the first whole response.
async fn answer(addr: SocketAddr, request: &str) -> RawResponse {
    let mut conn = RawConn::connect(addr).await;
    conn.send(request.as_bytes()).await;
    assert!(
        conn.read_until(Duration::from_secs(3), is_complete_response)
            .await,
        "a whole response to {request:?}: {:?}",
        String::from_utf8_lossy(conn.received())
    );
    conn.finish(Duration::ZERO).await.response()
}

/// Asserts that each request is answered 400 by the proxy, and counted as the client's error.
async fn assert_refused(requests: &[&str]) {
    let echo = start_echo().await;
    let proxy = start_proxy(echo.addr, quiet_timers()).await;
    for request in requests {
        let response = answer(proxy.addr, request).await;
        assert_eq!(response.status, 400, "{request:?}: {}", response.text());
        assert_eq!(
            response.header("x-upstream"),
            None,
            "{request:?} was forwarded"
        );
    }
    assert_eq!(
        metric(proxy.admin, "proxy_client_errors_total{kind=\"host\"}").await,
        requests.len() as f64
    );
    assert_eq!(
        metric(proxy.admin, "proxy_upstream_errors_total").await,
        0.0
    );
}

#[tokio::test]
async fn two_host_fields_are_refused_with_400() {
    assert_refused(&[
        "GET /polls/ HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        "GET /polls/ HTTP/1.1\r\nHost: a.test\r\nhost: a.test\r\n\r\n",
        // Even when the target's authority would settle it: the message itself is malformed.
        "GET http://a.test/polls/ HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        "GET /polls/ HTTP/1.0\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
    ])
    .await;
}

#[tokio::test]
async fn http_1_1_without_host_is_refused_with_400() {
    assert_refused(&[
        "GET /polls/ HTTP/1.1\r\n\r\n",
        "GET http://a.test/polls/ HTTP/1.1\r\n\r\n",
    ])
    .await;
}

#[tokio::test]
async fn a_host_that_is_not_an_authority_is_refused_with_400() {
    assert_refused(&[
        "GET /polls/ HTTP/1.1\r\nHost: a.test/elsewhere\r\n\r\n",
        "GET /polls/ HTTP/1.1\r\nHost: user@a.test\r\n\r\n",
        "GET http://user@a.test/polls/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
    ])
    .await;
}

#[tokio::test]
async fn http_1_0_without_host_is_forwarded() {
    let echo = start_echo().await;
    let proxy = start_proxy(echo.addr, quiet_timers()).await;
    let response = answer(proxy.addr, "GET /echo HTTP/1.0\r\n\r\n").await;
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.text();
    assert!(body.starts_with("GET /echo\n"), "{body}");
    assert_eq!(
        values(&echoed_headers(&body), "x-forwarded-host"),
        Vec::<&str>::new(),
        "no host was asked for: {body}"
    );
}

#[tokio::test]
async fn absolute_form_authority_replaces_host_and_x_forwarded_host_agrees() {
    let echo = start_echo().await;
    let proxy = start_proxy(echo.addr, quiet_timers()).await;
    let response = answer(
        proxy.addr,
        "GET http://b.test:8080/echo HTTP/1.1\r\n\
         Host: a.test\r\n\
         X-Forwarded-Host: spoofed.test\r\n\
         \r\n",
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.text();
    let seen = echoed_headers(&body);
    assert_eq!(values(&seen, "host"), ["b.test:8080"], "{body}");
    assert_eq!(values(&seen, "x-forwarded-host"), ["b.test:8080"], "{body}");
}

#[tokio::test]
async fn h2c_authority_replaces_a_disagreeing_host() {
    let echo = start_echo().await;
    let proxy = start_proxy(echo.addr, quiet_timers()).await;
    let mut sender = h2c::handshake(proxy.addr).await;
    let response = h2c::send(&mut sender, proxy.addr, "/echo", &[("host", "a.test")]).await;
    assert_eq!(response.status(), 200);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the whole body")
        .to_bytes();
    let body = String::from_utf8(body.to_vec()).expect("UTF-8 body");
    let seen = echoed_headers(&body);
    let authority = proxy.addr.to_string();
    assert_eq!(values(&seen, "host"), [authority.as_str()], "{body}");
    assert_eq!(
        values(&seen, "x-forwarded-host"),
        [authority.as_str()],
        "{body}"
    );
}
