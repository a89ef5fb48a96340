//! The control API over real sockets: a timer changed while the proxy runs applies to the requests
//! that start after the change and never to a stream already open, and `reset` goes back; an open
//! stream is listed with its request and the time its timers have left, and cut now in the style
//! asked (HTTP/1.1 and HTTP/2), before its headers too; the event feed follows a stream from start
//! to end; the histograms count each exchange by who ended it. (Routing, validation and the token
//! are tested beside the API with `oneshot`; the lab's `ctl` in the workspace's `tests/ctl.rs`.)

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};
use keepalive_kit::admin::{call, streams, Feed};
use keepalive_kit::client::{get, Ending, RawConn};
use keepalive_kit::h2c;
use keepalive_kit::metrics::{metric, wait_for_metric};
use keepalive_kit::response::{is_complete_response, RawResponse};
use keepalive_kit::servers::{
    start_origin_and_cutting_proxy, start_origin_and_proxy, start_proxy, FIRST_LINE,
};
use keepalive_kit::timing::{assert_around, cutting_timers, quiet_timers, OFF};
use keepalive_proxy::cut_style::CutStyle;
use keepalive_proxy::TimerSet;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::Instant;

const WITHIN: Duration = Duration::from_secs(3);

async fn set(admin: SocketAddr, changes: Value) -> Value {
    let (status, config) = call(admin, Method::PATCH, "/config", Some(changes), None).await;
    assert_eq!(status, StatusCode::OK, "{config}");
    config
}

/// A GET of `target` on a new connection, its request sent.
async fn open(addr: SocketAddr, target: &str) -> RawConn {
    let mut conn = RawConn::connect(addr).await;
    conn.send(get(target, "").as_bytes()).await;
    conn
}

/// Reads `conn` until its response is complete or the connection ends (within 3 s).
async fn finish(conn: &mut RawConn) -> (Option<RawResponse>, Option<Ending>) {
    conn.read_until(WITHIN, is_complete_response).await;
    (
        RawResponse::parse(conn.received()),
        conn.ended().map(|(ending, _)| ending),
    )
}

/// What the proxy lists of the open stream whose path is `path`, once it is listed in `status`
/// (`waiting for headers`, or `streaming` once they came).
async fn listed(admin: SocketAddr, path: &str, status: &str) -> Value {
    let deadline = Instant::now() + WITHIN;
    loop {
        if let Some(stream) = streams(admin)
            .await
            .into_iter()
            .find(|stream| stream["path"] == path && stream["status"] == status)
        {
            return stream;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never listed among the open streams as {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until stream `id` has left the table.
async fn gone_from_the_list(admin: SocketAddr, id: u64) {
    let deadline = Instant::now() + WITHIN;
    while streams(admin).await.iter().any(|stream| stream["id"] == id) {
        assert!(
            Instant::now() < deadline,
            "stream {id} still listed after its end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_changed_at_run_time_applies_to_new_requests_and_open_streams_keep_theirs() {
    let idle = Duration::from_millis(400);
    let (_origin, proxy) =
        start_origin_and_proxy(cutting_timers(Some(Duration::from_secs(4)), OFF)).await;
    // Two lines 1 s apart: within the 4 s it started with, past the 400 ms set below.
    let target = "/polls/streamed?sleep=1&lines=2";
    let mut before = open(proxy.addr, target).await;
    assert!(
        before
            .read_until(WITHIN, |bytes| String::from_utf8_lossy(bytes)
                .contains(FIRST_LINE))
            .await,
        "the first line before the change"
    );
    let config = set(proxy.admin, json!({"idle": "400ms"})).await;
    assert_eq!(config["idle"], "400ms");
    assert_eq!(config["applies_to"]["idle"], "new requests");

    let started = Instant::now();
    let mut after = open(proxy.addr, target).await;
    let (response, ending) = finish(&mut after).await;
    let response = response.expect("a response head");
    assert!(
        !response.data().complete,
        "the new idle limit cut the new stream"
    );
    assert_eq!(ending, Some(Ending::Eof));
    assert_around(
        started.elapsed(),
        idle,
        "the idle cut under the changed timer",
    );

    let (response, _) = finish(&mut before).await;
    let response = response.expect("a response head");
    assert!(
        response.data().complete,
        "the stream open before the change kept its 4 s idle limit: {:?}",
        String::from_utf8_lossy(&response.body)
    );

    let (status, config) = call(proxy.admin, Method::POST, "/config/reset", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(config["idle"], "4s");
    let mut reset = open(proxy.addr, target).await;
    let (response, _) = finish(&mut reset).await;
    assert!(
        response.expect("a response head").data().complete,
        "after reset the 4 s idle limit is back"
    );
    assert_eq!(
        metric(proxy.admin, "proxy_timer_limit_seconds{timer=\"idle\"}").await,
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_is_listed_and_cut_now_in_each_style() {
    let (_origin, proxy) = start_origin_and_cutting_proxy(
        cutting_timers(Some(Duration::from_secs(5)), OFF),
        CutStyle::Truncate,
    )
    .await;
    for style in [CutStyle::Truncate, CutStyle::Clean, CutStyle::Reset] {
        let target = format!(
            "/polls/streamed?sleep=10&heartbeat=100ms&style={}",
            style.as_str()
        );
        let mut conn = open(proxy.addr, &target).await;
        let stream = listed(proxy.admin, &target, "streaming").await;
        assert_eq!(stream["method"], "GET");
        assert!(stream["client"].is_string(), "{stream}");
        assert!(
            stream["timers"].get("first_byte").is_none(),
            "the first-byte timer is done once headers came: {stream}"
        );
        let id = stream["id"].as_u64().expect("an id");
        let asked = Instant::now();
        let (status, cut) = call(
            proxy.admin,
            Method::POST,
            &format!("/streams/{id}/cut"),
            Some(json!({"style": style.as_str()})),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{cut}");
        assert_eq!(cut, json!({"cut": [id], "style": style.as_str()}));
        let (response, ending) = finish(&mut conn).await;
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "the cut took {:?}",
            asked.elapsed()
        );
        match style {
            CutStyle::Truncate => {
                assert_eq!(
                    ending,
                    Some(Ending::Eof),
                    "{:?}",
                    String::from_utf8_lossy(conn.received())
                );
                assert!(!response.expect("a head").data().complete, "truncated");
            }
            CutStyle::Clean => {
                let response = response.expect("a head");
                assert!(response.data().complete, "a clean cut looks complete");
                assert_eq!(response.status, 200);
            }
            CutStyle::Reset => assert_eq!(ending, Some(Ending::Reset)),
        }
        gone_from_the_list(proxy.admin, id).await;
        let (status, _) = call(
            proxy.admin,
            Method::POST,
            &format!("/streams/{id}/cut"),
            None,
            None,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "a cut stream is no longer open"
        );
    }
    wait_for_metric(
        proxy.admin,
        "proxy_stream_duration_seconds_count{ended=\"api\"}",
        3.0,
        WITHIN,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_a_cut_ends_only_its_own_stream() {
    let (_origin, proxy) = start_origin_and_proxy(quiet_timers()).await;
    let mut sender = h2c::handshake(proxy.addr).await;
    let (mut reset, _) =
        h2c::first_line(&mut sender, proxy.addr, "/polls/streamed?sleep=3&n=1").await;
    let (mut clean, _) =
        h2c::first_line(&mut sender, proxy.addr, "/polls/streamed?sleep=3&n=2").await;
    let (mut untouched, _) = h2c::first_line(
        &mut sender,
        proxy.addr,
        "/polls/streamed?sleep=0.5&lines=2&n=3",
    )
    .await;
    for (path, style) in [
        ("/polls/streamed?sleep=3&n=1", "reset"),
        ("/polls/streamed?sleep=3&n=2", "clean"),
    ] {
        let id = listed(proxy.admin, path, "streaming").await["id"]
            .as_u64()
            .expect("an id");
        let (status, _) = call(
            proxy.admin,
            Method::POST,
            &format!("/streams/{id}/cut"),
            Some(json!({"style": style})),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let err = h2c::ending(&mut reset).await.expect_err("RST_STREAM");
    h2c::assert_reset(&err);
    h2c::ending(&mut clean)
        .await
        .expect("END_STREAM: a clean end");
    let mut rest = Vec::new();
    while let Some(frame) =
        tokio::time::timeout(WITHIN, http_body_util::BodyExt::frame(&mut untouched))
            .await
            .expect("the third stream goes on")
    {
        if let Some(data) = frame.expect("no error on the third stream").data_ref() {
            rest.extend_from_slice(data);
        }
    }
    assert!(!rest.is_empty(), "the third stream's second line came");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_before_its_headers_is_answered_502() {
    // An upstream that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = silent.local_addr().expect("address");
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let proxy = start_proxy(upstream, quiet_timers()).await;
    let mut conn = open(proxy.addr, "/waiting").await;
    // Listed from its arrival; its timers once the request reaches them, a moment later.
    let mut stream = listed(proxy.admin, "/waiting", "waiting for headers").await;
    let deadline = Instant::now() + WITHIN;
    while stream["timers"].get("first_byte").is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        stream = listed(proxy.admin, "/waiting", "waiting for headers").await;
    }
    assert!(
        stream["timers"]["first_byte"].as_f64().is_some(),
        "{stream}"
    );
    let (status, _) = call(proxy.admin, Method::POST, "/streams/cut", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (response, _) = finish(&mut conn).await;
    let response = response.expect("a response");
    assert_eq!(response.status, 502);
    assert!(
        response.text().contains("control API"),
        "{}",
        response.text()
    );
    holding.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_feed_follows_a_stream_from_its_start_to_its_end() {
    let (_origin, proxy) =
        start_origin_and_proxy(cutting_timers(Some(Duration::from_millis(600)), OFF)).await;
    let mut feed = Feed::follow(proxy.admin).await;
    let mut conn = open(
        proxy.addr,
        "/polls/streamed?sleep=2&heartbeat=200ms&lines=2",
    )
    .await;
    let (kind, started) = feed.next(WITHIN).await.expect("an event");
    assert_eq!(kind, "started");
    assert_eq!(
        started["path"],
        "/polls/streamed?sleep=2&heartbeat=200ms&lines=2"
    );
    let id = started["stream"].as_u64().expect("a stream id");
    let id_text = id.to_string();
    // The heartbeats beat the 600 ms idle timer; then the API cuts it.
    let mut kinds = vec![kind];
    while kinds.iter().filter(|kind| *kind == "heartbeat").count() < 3 {
        let (kind, _) = feed.next(WITHIN).await.expect("another event");
        kinds.push(kind);
    }
    let (status, _) = call(
        proxy.admin,
        Method::POST,
        &format!("/streams/{id_text}/cut"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let rest = feed.lifecycle(id, WITHIN).await;
    kinds.extend(rest.iter().map(|(kind, _)| kind.clone()));
    for expected in ["started", "headers", "data", "heartbeat", "cut", "ended"] {
        assert!(
            kinds.iter().any(|kind| kind == expected),
            "no {expected} in {kinds:?}"
        );
    }
    let (_, ended) = rest.last().expect("an end");
    assert_eq!(ended["termination"], "AD", "{ended}");
    assert_eq!(ended["status"], 200);
    finish(&mut conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histograms_count_each_exchange_by_who_ended_it() {
    let idle = Duration::from_millis(300);
    let (_origin, proxy) = start_origin_and_proxy(cutting_timers(Some(idle), OFF)).await;
    let mut completed = open(proxy.addr, "/polls/streamed?sleep=0&lines=2").await;
    finish(&mut completed).await;
    let mut cut = open(proxy.addr, "/polls/streamed?sleep=2").await;
    finish(&mut cut).await;
    wait_for_metric(
        proxy.admin,
        "proxy_stream_duration_seconds_count{ended=\"timer\"}",
        1.0,
        WITHIN,
    )
    .await;
    for (query, expected) in [
        (
            "proxy_stream_duration_seconds_count{ended=\"completed\"}",
            1.0,
        ),
        ("proxy_first_byte_seconds_count", 2.0),
        ("proxy_stream_longest_gap_seconds_count", 2.0),
        ("proxy_stream_bytes_count", 2.0),
        ("proxy_timer_limit_seconds{timer=\"idle\"}", 0.3),
        ("proxy_timer_limit_seconds{timer=\"max_duration\"}", 0.0),
    ] {
        assert_eq!(metric(proxy.admin, query).await, expected, "{query}");
    }
    // The cut stream was silent for its whole idle limit after the first line.
    let sum = metric(proxy.admin, "proxy_stream_longest_gap_seconds_sum").await;
    assert!(sum >= idle.as_secs_f64() * 0.9, "longest gaps sum to {sum}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_reaches_a_client_that_stopped_reading() {
    // No send timer: only the cut can end this stream.
    let (origin, proxy) = start_origin_and_proxy(TimerSet {
        send: OFF,
        ..quiet_timers()
    })
    .await;
    let target = "/polls/streamed?sleep=0&lines=2000000";
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut client = socket.connect(proxy.addr).await.expect("connect");
    client
        .write_all(get(target, "").as_bytes())
        .await
        .expect("send the request");
    let stream = listed(proxy.admin, target, "streaming").await;
    let id = stream["id"].as_u64().expect("an id");
    // Until the proxy's writes to it stall: its byte count stops growing.
    let mut sent = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = listed(proxy.admin, target, "streaming").await["bytes"]
            .as_u64()
            .unwrap_or(0);
        if now == sent {
            break;
        }
        sent = now;
    }
    let asked = Instant::now();
    let (status, _) = call(
        proxy.admin,
        Method::POST,
        &format!("/streams/{id}/cut"),
        Some(json!({"style": "reset"})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    gone_from_the_list(proxy.admin, id).await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "the stalled stream ended {:?} after the cut",
        asked.elapsed()
    );
    wait_for_metric(
        origin.addr,
        "origin_streams_ended_total{reason=\"client_gone\"}",
        1.0,
        WITHIN,
    )
    .await;
    assert_eq!(
        metric(
            proxy.admin,
            "proxy_stream_duration_seconds_count{ended=\"api\"}"
        )
        .await,
        1.0,
        "ended by the API, not counted as a client that left"
    );
    // Reset: whatever the client reads now ends in a RST, never a clean end.
    let mut rest = Vec::new();
    let ending = tokio::time::timeout(WITHIN, client.read_to_end(&mut rest)).await;
    assert!(
        matches!(ending, Ok(Err(ref err)) if err.kind() == std::io::ErrorKind::ConnectionReset),
        "{ending:?}"
    );
}
