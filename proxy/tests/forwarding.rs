//! What the proxy does to a request on its way to the origin, and to the answer on its way back: hop-by-
//! hop fields stripped (RFC 9110 7.6.1, and the proxy credentials of 11.7), forwarding fields and `Via`
//! added, a request id propagated, every request sent to the one configured upstream, and the origin's
//! own errors passed through.

use std::net::SocketAddr;
use std::time::Duration;

use keepalive_kit::client::{get, raw_request, RawConn};
use keepalive_kit::echo::{echoed_headers, start_echo, values};
use keepalive_kit::metrics::metric;
use keepalive_kit::ports;
use keepalive_kit::response::is_complete_response;
use keepalive_kit::servers::{start_origin_and_proxy, start_proxy, Running};
use keepalive_kit::timing::{assert_around, ms, OFF};
use keepalive_proxy::TimerSet;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

fn timers() -> TimerSet {
    TimerSet {
        connect: ms(500),
        first_byte: ms(5_000),
        idle: ms(5_000),
        max_duration: OFF,
        header: ms(5_000),
        keepalive: ms(5_000),
        send: ms(5_000),
    }
}

#[tokio::test]
async fn strips_hop_by_hop_headers_and_adds_forwarding_headers() {
    let echo = start_echo().await;
    let proxy = start_proxy(echo.addr, timers()).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(
        b"GET /echo?x=1 HTTP/1.1\r\n\
          Host: front.example\r\n\
          Connection: keep-alive, X-Hop\r\n\
          X-Hop: secret\r\n\
          Keep-Alive: timeout=5\r\n\
          TE: trailers\r\n\
          Proxy-Authorization: Basic cHJveHk6c2VjcmV0\r\n\
          X-Forwarded-For: 203.0.113.7\r\n\
          Accept: text/plain\r\n\
          \r\n",
    )
    .await;
    assert!(
        conn.read_until(Duration::from_secs(3), is_complete_response)
            .await,
        "a whole response: {:?}",
        String::from_utf8_lossy(conn.received())
    );
    let transcript = conn.finish(Duration::ZERO).await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    let body = response.text();
    assert!(body.starts_with("GET /echo?x=1\n"), "{body}");
    let seen = echoed_headers(&body);
    for hop in [
        "connection",
        "keep-alive",
        "te",
        "x-hop",
        "proxy-authorization",
    ] {
        assert!(
            values(&seen, hop).is_empty(),
            "the upstream saw the hop-by-hop {hop}: {body}"
        );
    }
    assert_eq!(
        values(&seen, "x-forwarded-for"),
        ["203.0.113.7, 127.0.0.1"],
        "{body}"
    );
    assert_eq!(values(&seen, "x-forwarded-proto"), ["http"], "{body}");
    assert_eq!(
        values(&seen, "x-forwarded-host"),
        ["front.example"],
        "{body}"
    );
    assert_eq!(values(&seen, "via"), ["1.1 keepalive-proxy"], "{body}");
    assert_eq!(
        values(&seen, "accept"),
        ["text/plain"],
        "end-to-end fields pass"
    );
    let request_id = values(&seen, "x-request-id");
    assert!(
        request_id.len() == 1 && !request_id[0].is_empty(),
        "the proxy minted one request id: {body}"
    );
    assert_eq!(
        response.header("x-request-id"),
        Some(request_id[0]),
        "the client gets the id the upstream saw"
    );
    assert!(
        response
            .header("via")
            .is_some_and(|via| via.contains("1.1 keepalive-proxy")),
        "{:?}",
        response.headers
    );
    assert_eq!(response.header("x-upstream"), Some("echo"));
    for hop in ["x-upstream-hop", "keep-alive"] {
        assert_eq!(
            response.header(hop),
            None,
            "the client saw the upstream's hop-by-hop {hop}: {:?}",
            response.headers
        );
    }
    assert!(
        response
            .header("connection")
            .is_none_or(|value| !value.to_ascii_lowercase().contains("x-upstream-hop")),
        "the upstream's Connection reached the client: {:?}",
        response.headers
    );
}

#[tokio::test]
async fn keeps_the_request_id_a_client_sent() {
    let echo = start_echo().await;
    let proxy = start_proxy(echo.addr, timers()).await;
    let transcript = raw_request(
        proxy.addr,
        &get("/", "X-Request-Id: trace-42\r\nConnection: close\r\n"),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    let body = response.text();
    assert_eq!(
        values(&echoed_headers(&body), "x-request-id"),
        ["trace-42"],
        "{body}"
    );
    assert_eq!(response.header("x-request-id"), Some("trace-42"));
}

#[tokio::test]
async fn absolute_form_request_goes_to_the_configured_upstream_never_elsewhere() {
    let echo = start_echo().await;
    let proxy = start_proxy(echo.addr, timers()).await;
    let transcript = raw_request(
        proxy.addr,
        "GET http://example.com/elsewhere?q=1 HTTP/1.1\r\n\
         Host: example.com\r\n\
         Connection: close\r\n\
         \r\n",
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    let body = response.text();
    // Only the echo upstream answers with the request line it received.
    assert!(
        body.starts_with("GET /elsewhere?q=1\n"),
        "the configured upstream got the request, in origin-form: {body}"
    );
}

#[tokio::test]
async fn connect_method_is_refused_never_tunnelled() {
    let echo = start_echo().await;
    let proxy = start_proxy(echo.addr, timers()).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await;
    assert!(
        conn.read_until(Duration::from_secs(3), is_complete_response)
            .await,
        "a whole response: {:?}",
        String::from_utf8_lossy(conn.received())
    );
    let transcript = conn.finish(Duration::ZERO).await;
    let response = transcript.response();
    assert_eq!(response.status, 405, "{}", transcript.text());
    assert_eq!(
        metric(proxy.admin, "proxy_client_errors_total{kind=\"connect\"}").await,
        1.0
    );
}

#[tokio::test]
async fn request_body_reaches_the_upstream() {
    let echo = start_echo().await;
    let proxy = start_proxy(echo.addr, timers()).await;
    let transcript = raw_request(
        proxy.addr,
        "POST /jobs?lines=3 HTTP/1.1\r\n\
         Host: front.example\r\n\
         Content-Type: text/plain\r\n\
         Content-Length: 11\r\n\
         Connection: close\r\n\
         \r\n\
         hello world",
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    let body = response.text();
    assert!(body.starts_with("POST /jobs?lines=3\n"), "{body}");
    assert!(body.ends_with("\n\nhello world"), "{body}");
    assert_eq!(values(&echoed_headers(&body), "content-length"), ["11"]);
}

#[tokio::test]
async fn refused_connect_answers_502_saying_refused() {
    let (_reserved, refusing) = ports::reserved().expect("reserve a port");
    let proxy = start_proxy(refusing, timers()).await;
    let transcript = raw_request(
        proxy.addr,
        &get("/polls/", "Connection: close\r\n"),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 502, "{}", transcript.text());
    assert!(
        response.text().contains("refused"),
        "the body says the upstream refused: {:?}",
        response.text()
    );
    assert_eq!(
        metric(
            proxy.admin,
            "proxy_upstream_errors_total{kind=\"connect_refused\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(proxy.admin, "proxy_timeouts_total{timer=\"connect\"}").await,
        0.0
    );
}

/// An upstream whose accept queue is full: the kernel drops further SYNs, so connects hang.
async fn unanswered_upstream() -> (TcpListener, Vec<TcpStream>, SocketAddr) {
    let socket = TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("bind");
    let listener = socket.listen(1).expect("listen with a backlog of 1");
    let addr = listener.local_addr().expect("listener's address");
    let mut queued = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(err)) => panic!("filling the accept queue: {err}"),
            // The queue is full: this connect hangs, and so will the proxy's.
            Err(_) => break,
        }
        assert!(queued.len() < 64, "the accept queue never filled up");
    }
    (listener, queued, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timer_answers_504_when_the_upstream_never_accepts() {
    let (_listener, _queued, addr) = unanswered_upstream().await;
    let proxy = start_proxy(
        addr,
        TimerSet {
            connect: ms(400),
            ..timers()
        },
    )
    .await;
    let transcript = raw_request(
        proxy.addr,
        &get("/polls/", "Connection: close\r\n"),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 504, "{}", transcript.text());
    assert_eq!(response.header("x-keepalive-timer"), Some("connect"));
    assert!(
        response.text().contains("connect"),
        "the body says connecting timed out: {:?}",
        response.text()
    );
    assert_around(
        transcript.first_byte_at.expect("a response arrived"),
        Duration::from_millis(400),
        "504 from connect",
    );
    assert_eq!(
        metric(proxy.admin, "proxy_timeouts_total{timer=\"connect\"}").await,
        1.0
    );
}

#[tokio::test]
async fn origin_400s_for_bad_parameters_pass_through_as_json_naming_the_parameter() {
    let (_origin, proxy) = start_origin_and_proxy(timers()).await;
    let cases = [
        ("sleep=abc", "sleep", "abc"),
        ("sleep=-1", "sleep", "-1"),
        ("sleep=NaN", "sleep", "NaN"),
        ("heartbeat=xyz", "heartbeat", "xyz"),
        ("format=xml", "format", "xml"),
        ("delay=-3", "delay", "-3"),
        ("lines=0", "lines", "0"),
    ];
    for (query, parameter, value) in cases {
        let transcript = raw_request(
            proxy.addr,
            &get(&format!("/polls/streamed?{query}"), "Connection: close\r\n"),
            Duration::from_secs(3),
        )
        .await;
        let response = transcript.response();
        assert_eq!(response.status, 400, "{query}: {}", transcript.text());
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{query}"
        );
        let body: serde_json::Value =
            serde_json::from_str(&response.text()).expect("a JSON error body");
        assert_eq!(body["status"], 400, "{query}: {body}");
        assert_eq!(body["parameter"], parameter, "{query}: {body}");
        assert_eq!(body["value"], value, "{query}: {body}");
        let detail = body["detail"].as_str().expect("a detail string");
        assert!(
            detail.contains(parameter) && detail.contains("expected"),
            "{query}: {detail}"
        );
    }
    assert_eq!(
        metric(proxy.admin, "proxy_requests_total{status=\"400\"}").await,
        cases.len() as f64
    );
}

/// An upstream that answers every request with the raw bytes `response`, then breaks the connection
/// off: an origin that crashes mid-response (or, with no bytes, before it).
async fn start_broken_upstream(response: &'static [u8]) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the broken upstream");
    let addr = listener.local_addr().expect("its address");
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = tokio::select! {
                () = stopped.cancelled() => return,
                accepted = listener.accept() => accepted.expect("accept"),
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tokio::io::AsyncWriteExt::write_all(&mut tcp, response).await;
                // Let the proxy forward what was sent before the connection breaks off.
                tokio::time::sleep(Duration::from_millis(200)).await;
            });
        }
    });
    Running::new(addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_breaking_off_a_content_length_body_leaves_the_client_short() {
    let upstream = start_broken_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\nhello",
    )
    .await;
    let proxy = start_proxy(upstream.addr, timers()).await;
    let transcript = raw_request(proxy.addr, &get("/", ""), Duration::from_secs(3)).await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    assert!(
        transcript.ending.is_closed(),
        "the client is not left waiting for 95 bytes: {:?}",
        transcript.ending
    );
    let body = response.data();
    assert!(
        !body.complete,
        "a body shorter than its Content-Length must stay short, not be padded or re-framed: {:?} {:?}",
        response.headers,
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(body.data, b"hello");
    assert_eq!(
        metric(
            proxy.admin,
            "proxy_upstream_errors_total{kind=\"body_failed\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_closing_before_headers_answers_502() {
    let upstream = start_broken_upstream(b"").await;
    let proxy = start_proxy(upstream.addr, timers()).await;
    let transcript = raw_request(
        proxy.addr,
        &get("/", "Connection: close\r\n"),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 502, "{}", transcript.text());
    assert_eq!(response.header("x-keepalive-timer"), None);
    assert_eq!(
        response.text(),
        "502 Bad Gateway: the upstream failed before sending a response\n",
        "the proxy's own words only: hyper's error chain belongs in the log"
    );
    assert_eq!(
        metric(
            proxy.admin,
            "proxy_upstream_errors_total{kind=\"request_failed\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_authenticate_from_the_upstream_never_reaches_the_client() {
    // A challenge for this proxy's credentials, not the client's (RFC 9110 11.7.1).
    let upstream = start_broken_upstream(
        b"HTTP/1.1 200 OK\r\n\
          Proxy-Authenticate: Basic realm=\"upstream\"\r\n\
          X-Upstream: raw\r\n\
          Content-Length: 2\r\n\
          \r\n\
          ok",
    )
    .await;
    let proxy = start_proxy(upstream.addr, timers()).await;
    let transcript = raw_request(
        proxy.addr,
        &get("/", "Connection: close\r\n"),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    assert_eq!(response.header("x-upstream"), Some("raw"));
    assert_eq!(
        response.header("proxy-authenticate"),
        None,
        "{:?}",
        response.headers
    );
}
