//! Every proxy timer over real sockets, at hundreds of milliseconds: what a raw HTTP/1.1 client sees
//! when it fires (a 504 before headers, a chunked body without its last chunk after them, a closed
//! connection between requests), when it fires, and that it is counted under its own name.

use std::time::Duration;

use keepalive_kit::client::{get, raw_request, read_to_end_or_deadline, Ending, RawConn};
use keepalive_kit::metrics::{metric, wait_for_metric};
use keepalive_kit::response::is_complete_response;
use keepalive_kit::servers::{start_origin_and_proxy, FIRST_LINE};
use keepalive_kit::timing::{assert_around, ms, quiet_timers, OFF};
use keepalive_proxy::TimerSet;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

fn timeouts(timer: &str) -> String {
    format!("proxy_timeouts_total{{timer=\"{timer}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_a_stream_alive_across_five_times_the_idle_limit() {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        idle: ms(300),
        ..quiet_timers()
    })
    .await;
    let transcript = raw_request(
        proxy.addr,
        &get(
            "/polls/streamed?sleep=2&heartbeat=100ms&lines=2",
            "Connection: close\r\n",
        ),
        Duration::from_secs(5),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    assert!(response.is_chunked(), "{:?}", response.headers);
    assert!(
        response.body.ends_with(b"0\r\n\r\n"),
        "the body ends with the terminating chunk; ended {:?} at {:?}: {:?}",
        transcript.ending,
        transcript.ended_at,
        String::from_utf8_lossy(&response.body)
    );
    let body = String::from_utf8(response.data().data).expect("UTF-8 body");
    let second = "[         2 s] Jumped into the blue water\n";
    let beats = body
        .strip_prefix(FIRST_LINE)
        .and_then(|rest| rest.strip_suffix(second))
        .unwrap_or_else(|| panic!("want first line, spaces, second line; got {body:?}"));
    assert!(
        beats.len() >= 5 && beats.bytes().all(|b| b == b' '),
        "heartbeat spaces fill the 2 s wait: {beats:?}"
    );
    let last = transcript.last_byte_at.expect("bytes arrived");
    assert!(
        last >= Duration::from_millis(1500),
        "the stream outlived five idle limits: {last:?}"
    );
    assert_eq!(metric(proxy.admin, &timeouts("idle")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timer_truncates_chunked_body_like_nginx() {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        idle: ms(400),
        ..quiet_timers()
    })
    .await;
    let transcript = raw_request(
        proxy.addr,
        &get("/polls/streamed?sleep=3", ""),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    assert!(response.is_chunked(), "{:?}", response.headers);
    let body = response.data();
    assert_eq!(
        String::from_utf8_lossy(&body.data),
        FIRST_LINE,
        "the first line went through before the cut"
    );
    assert!(
        !body.complete && !response.body.ends_with(b"0\r\n\r\n"),
        "a cut body must not end with the terminating chunk: {:?}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(
        transcript.ending,
        Ending::Eof,
        "nginx closes the connection"
    );
    assert_around(transcript.ended_at, Duration::from_millis(400), "idle cut");
    wait_for_metric(proxy.admin, &timeouts("idle"), 1.0, Duration::from_secs(1)).await;
    assert_eq!(metric(proxy.admin, &timeouts("max_duration")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_cuts_a_stream_despite_heartbeats() {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        idle: ms(300),
        max_duration: ms(1_000),
        ..quiet_timers()
    })
    .await;
    let transcript = raw_request(
        proxy.addr,
        &get("/polls/streamed?sleep=400ms&heartbeat=100ms", ""),
        Duration::from_secs(4),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    let body = response.data();
    let text = String::from_utf8_lossy(&body.data);
    assert!(
        text.starts_with(FIRST_LINE) && text.contains("Jumped into the blue water"),
        "lines flowed until the cut: {text:?}"
    );
    assert!(
        !body.complete,
        "a cut body must not end with the terminating chunk: {:?}",
        String::from_utf8_lossy(&response.body)
    );
    assert!(
        transcript.ending.is_closed(),
        "ended {:?}",
        transcript.ending
    );
    assert_around(
        transcript.ended_at,
        Duration::from_millis(1_000),
        "max_duration cut",
    );
    wait_for_metric(
        proxy.admin,
        &timeouts("max_duration"),
        1.0,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(metric(proxy.admin, &timeouts("idle")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_timer_answers_504_naming_the_timer() {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        first_byte: ms(400),
        idle: OFF,
        ..quiet_timers()
    })
    .await;
    let transcript = raw_request(
        proxy.addr,
        &get("/polls/streamed?delay=2&lines=1", "Connection: close\r\n"),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 504, "{}", transcript.text());
    assert_eq!(response.header("x-keepalive-timer"), Some("first_byte"));
    assert!(
        response.text().contains("first_byte"),
        "the body names the timer: {:?}",
        response.text()
    );
    assert_around(
        transcript.first_byte_at.expect("a response arrived"),
        Duration::from_millis(400),
        "504 from first_byte",
    );
    wait_for_metric(
        proxy.admin,
        &timeouts("first_byte"),
        1.0,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        metric(proxy.admin, "proxy_requests_total{status=\"504\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timer_before_headers_answers_504_when_first_byte_is_off() {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        first_byte: OFF,
        idle: ms(400),
        ..quiet_timers()
    })
    .await;
    let transcript = raw_request(
        proxy.addr,
        &get("/polls/streamed?delay=2&lines=1", "Connection: close\r\n"),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 504, "{}", transcript.text());
    assert_eq!(response.header("x-keepalive-timer"), Some("idle"));
    assert!(
        response.text().contains("idle"),
        "the body names the timer: {:?}",
        response.text()
    );
    assert_around(
        transcript.first_byte_at.expect("a response arrived"),
        Duration::from_millis(400),
        "504 from idle",
    );
    wait_for_metric(proxy.admin, &timeouts("idle"), 1.0, Duration::from_secs(1)).await;
    assert_eq!(metric(proxy.admin, &timeouts("first_byte")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timer_closes_a_silent_client() {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        header: ms(500),
        keepalive: ms(5_000),
        ..quiet_timers()
    })
    .await;
    // The clock starts at connect, as the proxy's does at accept.
    let silent = RawConn::connect(proxy.addr).await;
    let transcript = silent.finish(Duration::from_secs(3)).await;
    assert!(
        transcript.ending.is_closed(),
        "a client that sends nothing is closed, not kept forever: {:?} at {:?}",
        transcript.ending,
        transcript.ended_at
    );
    assert_around(
        transcript.ended_at,
        Duration::from_millis(500),
        "header timer on a silent client",
    );
    assert!(
        transcript.bytes.is_empty() || transcript.text().starts_with("HTTP/1.1 408"),
        "nothing but a 408 may be sent: {:?}",
        transcript.text()
    );
    wait_for_metric(
        proxy.admin,
        &timeouts("header"),
        1.0,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(metric(proxy.admin, &timeouts("keepalive")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timer_closes_a_dribbling_client_despite_its_bytes() {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        header: ms(500),
        keepalive: ms(5_000),
        ..quiet_timers()
    })
    .await;
    let stream = TcpStream::connect(proxy.addr)
        .await
        .expect("connect to the proxy");
    stream.set_nodelay(true).expect("set TCP_NODELAY");
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    // Slowloris: a request head that keeps coming, one byte every 100 ms, and never ends.
    let dribbler = tokio::spawn(async move {
        if writer.write_all(b"GET / HTTP/1.1\r\n").await.is_err() {
            return;
        }
        for byte in b"X-Slow: ".iter().chain([b'a'; 100].iter()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
    });
    let mut received = Vec::new();
    let (ending, ended_at) = read_to_end_or_deadline(
        &mut reader,
        &mut received,
        started,
        started + Duration::from_secs(3),
    )
    .await;
    dribbler.abort();
    assert!(
        ending.is_closed(),
        "a dribbling client is closed at the header limit: {ending:?} at {ended_at:?}"
    );
    assert_around(
        ended_at,
        Duration::from_millis(500),
        "header timer on a dribbling client",
    );
    assert!(
        received.is_empty() || received.starts_with(b"HTTP/1.1 408"),
        "nothing but a 408 may be sent: {:?}",
        String::from_utf8_lossy(&received)
    );
    wait_for_metric(
        proxy.admin,
        &timeouts("header"),
        1.0,
        Duration::from_secs(1),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_timer_closes_an_idle_connection_after_a_request() {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        header: ms(5_000),
        keepalive: ms(500),
        ..quiet_timers()
    })
    .await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(get("/polls/", "").as_bytes()).await;
    assert!(
        conn.read_until(Duration::from_secs(3), is_complete_response)
            .await,
        "one whole response on the keep-alive connection: {:?}",
        String::from_utf8_lossy(conn.received())
    );
    let answered = Instant::now();
    let clock = conn.clock();
    let transcript = conn.finish(Duration::from_secs(3)).await;
    assert_eq!(
        transcript.ending,
        Ending::Eof,
        "the idle connection is closed"
    );
    let idle_for = (clock + transcript.ended_at).saturating_duration_since(answered);
    assert_around(
        idle_for,
        Duration::from_millis(500),
        "keepalive close after the response",
    );
    wait_for_metric(
        proxy.admin,
        &timeouts("keepalive"),
        1.0,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(metric(proxy.admin, &timeouts("header")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timer_does_not_close_an_idle_keepalive_connection() {
    // hyper's own header_read_timeout would close this connection at 300 ms: the keep-alive limit,
    // not the header limit, governs a connection idle between requests.
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        header: ms(300),
        keepalive: ms(1_200),
        ..quiet_timers()
    })
    .await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(get("/polls/", "").as_bytes()).await;
    assert!(
        conn.read_until(Duration::from_secs(3), is_complete_response)
            .await,
        "one whole response on the keep-alive connection: {:?}",
        String::from_utf8_lossy(conn.received())
    );
    let answered = Instant::now();
    let received = conn.received().len();
    assert!(
        !conn
            .read_until(Duration::from_millis(800), |bytes| bytes.len() > received)
            .await
            && conn.ended().is_none(),
        "the connection is still open 800 ms after the response, past the 300 ms header limit: {:?}",
        conn.ended()
    );
    let clock = conn.clock();
    let transcript = conn.finish(Duration::from_secs(3)).await;
    assert_eq!(
        transcript.ending,
        Ending::Eof,
        "closed at the keepalive limit"
    );
    let idle_for = (clock + transcript.ended_at).saturating_duration_since(answered);
    assert_around(
        idle_for,
        Duration::from_millis(1_200),
        "keepalive close after the response",
    );
    wait_for_metric(
        proxy.admin,
        &timeouts("keepalive"),
        1.0,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(metric(proxy.admin, &timeouts("header")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_before_headers_answers_504_naming_the_timer() {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        first_byte: OFF,
        idle: OFF,
        max_duration: ms(400),
        ..quiet_timers()
    })
    .await;
    let transcript = raw_request(
        proxy.addr,
        &get("/polls/streamed?delay=2&lines=1", "Connection: close\r\n"),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 504, "{}", transcript.text());
    assert_eq!(response.header("x-keepalive-timer"), Some("max_duration"));
    assert_around(
        transcript.first_byte_at.expect("a response arrived"),
        Duration::from_millis(400),
        "504 from max_duration",
    );
    wait_for_metric(
        proxy.admin,
        &timeouts("max_duration"),
        1.0,
        Duration::from_secs(1),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_timer_stops_once_headers_arrive() {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        first_byte: ms(300),
        idle: ms(2_000),
        ..quiet_timers()
    })
    .await;
    // Headers at once, then a body that lasts three first-byte limits.
    let transcript = raw_request(
        proxy.addr,
        &get(
            "/polls/streamed?sleep=900ms&lines=2",
            "Connection: close\r\n",
        ),
        Duration::from_secs(4),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    let body = response.data();
    assert!(
        body.complete,
        "the stream completed: ended {:?} at {:?}, {:?}",
        transcript.ending,
        transcript.ended_at,
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(
        String::from_utf8_lossy(&body.data),
        "[         0 s] Little brown lady\n[         0 s] Jumped into the blue water\n"
    );
    assert_eq!(metric(proxy.admin, &timeouts("first_byte")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_serves_complete_streams_after_an_idle_cut() {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        idle: ms(300),
        ..quiet_timers()
    })
    .await;
    let cut = raw_request(
        proxy.addr,
        &get("/polls/streamed?sleep=3", ""),
        Duration::from_secs(3),
    )
    .await;
    assert!(!cut.response().data().complete, "the first stream was cut");
    wait_for_metric(
        proxy.admin,
        "proxy_streams_active",
        0.0,
        Duration::from_secs(1),
    )
    .await;
    // The upstream connection the cut stream used must not be handed to the next request.
    for attempt in 0..3 {
        let transcript = raw_request(
            proxy.addr,
            &get("/polls/streamed?sleep=0&lines=3", "Connection: close\r\n"),
            Duration::from_secs(3),
        )
        .await;
        let response = transcript.response();
        assert_eq!(
            response.status,
            200,
            "attempt {attempt}: {}",
            transcript.text()
        );
        assert!(
            response.data().complete,
            "attempt {attempt}: {:?}",
            String::from_utf8_lossy(&response.body)
        );
    }
    assert_eq!(metric(proxy.admin, &timeouts("idle")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_and_header_timers_never_cut_a_response_in_flight() {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        idle: ms(3_000),
        header: ms(300),
        keepalive: ms(300),
        ..quiet_timers()
    })
    .await;
    // A second of silence mid-response: the client connection is busy, not idle.
    let transcript = raw_request(
        proxy.addr,
        &get("/polls/streamed?sleep=1&lines=2", "Connection: close\r\n"),
        Duration::from_secs(4),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    assert!(
        response.data().complete,
        "the response completed: ended {:?} at {:?}, {:?}",
        transcript.ending,
        transcript.ended_at,
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(metric(proxy.admin, &timeouts("keepalive")).await, 0.0);
    assert_eq!(metric(proxy.admin, &timeouts("header")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timer_runs_from_the_first_byte_of_the_next_request() {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        header: ms(400),
        keepalive: ms(3_000),
        ..quiet_timers()
    })
    .await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(get("/polls/", "").as_bytes()).await;
    assert!(
        conn.read_until(Duration::from_secs(3), is_complete_response)
            .await,
        "one whole response: {:?}",
        String::from_utf8_lossy(conn.received())
    );
    // Idle for longer than the header limit: only the keep-alive timer applies here.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(conn.ended().is_none());
    let started = Instant::now();
    let clock = conn.clock();
    conn.send(b"GET /polls/ HTTP/1.1\r\nHost: keepalive.test\r\n")
        .await;
    let transcript = conn.finish(Duration::from_secs(3)).await;
    assert!(
        transcript.ending.is_closed(),
        "a request head that never ends is closed: {:?}",
        transcript.ending
    );
    assert_around(
        (clock + transcript.ended_at).saturating_duration_since(started),
        Duration::from_millis(400),
        "header timer from the next request's first byte",
    );
    wait_for_metric(
        proxy.admin,
        &timeouts("header"),
        1.0,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(metric(proxy.admin, &timeouts("keepalive")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_header_timer_the_keepalive_timer_closes_a_silent_connection() {
    // The gcp, envoy and cloudflare presets have no header timer: a client that connects and sends
    // nothing must still be closed, at the keep-alive limit counted from accept.
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        header: OFF,
        keepalive: ms(500),
        ..quiet_timers()
    })
    .await;
    let conn = RawConn::connect(proxy.addr).await;
    let transcript = conn.finish(Duration::from_secs(3)).await;
    assert!(
        transcript.ending.is_closed(),
        "a silent connection is closed: {:?} at {:?}",
        transcript.ending,
        transcript.ended_at
    );
    assert!(transcript.bytes.is_empty(), "{}", transcript.text());
    assert_around(
        transcript.ended_at,
        Duration::from_millis(500),
        "keepalive close of a silent connection",
    );
    wait_for_metric(
        proxy.admin,
        &timeouts("keepalive"),
        1.0,
        Duration::from_secs(1),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_header_timer_the_keepalive_timer_closes_a_dribbling_client() {
    let (_origin, proxy) = start_origin_and_proxy(TimerSet {
        header: OFF,
        keepalive: ms(500),
        ..quiet_timers()
    })
    .await;
    let stream = TcpStream::connect(proxy.addr)
        .await
        .expect("connect to the proxy");
    stream.set_nodelay(true).expect("set TCP_NODELAY");
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    // A head that keeps coming, a byte every 100 ms, and never ends: its bytes must not hold the
    // connection open past the keep-alive limit.
    let dribbler = tokio::spawn(async move {
        for byte in b"GET / HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain([b'a'; 100].iter())
        {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut received = Vec::new();
    let (ending, ended_at) = read_to_end_or_deadline(
        &mut reader,
        &mut received,
        started,
        started + Duration::from_secs(3),
    )
    .await;
    dribbler.abort();
    assert!(
        ending.is_closed(),
        "a dribbling client is closed at the keep-alive limit: {ending:?} at {ended_at:?}"
    );
    assert_around(
        ended_at,
        Duration::from_millis(500),
        "keepalive close of a dribbling client",
    );
}
