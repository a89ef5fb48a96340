//! The origin over a real socket, without the proxy: the Django tutorial's bytes exactly as a client on the wire
//! receives them, and the elapsed labels measured against a real clock.

use std::time::Duration;

use keepalive_kit::client::{get, open_stream, raw_request};
use keepalive_kit::servers::{origin_config, start_origin};

#[tokio::test]
async fn polls_index_is_the_tutorials_text() {
    let origin = start_origin(origin_config()).await;
    let transcript = raw_request(
        origin.addr,
        &get("/polls/", "Connection: close\r\n"),
        Duration::from_secs(5),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    assert_eq!(response.text(), "Hello, world. You're at the polls index.");
}

#[tokio::test]
async fn finite_stream_is_the_tutorials_bytes_in_chunks_with_a_clean_end() {
    let origin = start_origin(origin_config()).await;
    let transcript = raw_request(
        origin.addr,
        &get("/polls/streamed?lines=4&sleep=0", "Connection: close\r\n"),
        Duration::from_secs(5),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    assert!(response.is_chunked(), "{:?}", response.headers);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        response.header("cache-control"),
        Some("no-cache, no-transform")
    );
    assert_eq!(response.header("x-accel-buffering"), Some("no"));
    let body = response.data();
    assert!(
        body.complete,
        "a finite stream ends with the last chunk: {:?}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(
        String::from_utf8(body.data).expect("UTF-8 body"),
        "[         0 s] Little brown lady\n\
         [         0 s] Jumped into the blue water\n\
         [         0 s] And smiled\n\
         =========== Here we go again ===========\n\
         [         0 s] Little brown lady\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elapsed_labels_are_whole_seconds_since_the_stream_began() {
    let origin = start_origin(origin_config()).await;
    let transcript = raw_request(
        origin.addr,
        &get("/polls/streamed?sleep=1&lines=3", "Connection: close\r\n"),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    let body = response.data();
    assert!(
        body.complete,
        "three lines a second apart end within 3 s; got {:?} ending {:?} at {:?}",
        String::from_utf8_lossy(&body.data),
        transcript.ending,
        transcript.ended_at
    );
    assert_eq!(
        String::from_utf8(body.data).expect("UTF-8 body"),
        "[         0 s] Little brown lady\n\
         [         1 s] Jumped into the blue water\n\
         [         2 s] And smiled\n"
    );
    let last = transcript.last_byte_at.expect("bytes arrived");
    assert!(
        last >= Duration::from_millis(1950),
        "the third line is due 2 s after the first, arrived at {last:?}"
    );
}

#[tokio::test]
async fn healthz_answers_ok() {
    let origin = start_origin(origin_config()).await;
    let transcript = raw_request(
        origin.addr,
        &get("/healthz", "Connection: close\r\n"),
        Duration::from_secs(5),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    assert_eq!(response.text().trim_end(), "ok");
}

/// `sleep=0` without `lines` was an endless stream at full speed: four of them cut the origin's
/// other answers tenfold. It is refused at once, naming both parameters; with `lines` (as many as
/// 2,000,000, enough to fill every buffer up to a stalled client) it streams.
#[tokio::test]
async fn a_full_speed_stream_must_say_when_it_ends() {
    let origin = start_origin(origin_config()).await;
    let transcript = raw_request(
        origin.addr,
        &get("/polls/streamed?sleep=0", "Connection: close\r\n"),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        transcript.ending.is_closed(),
        "answered and closed, not streamed: {:?} after {} bytes",
        transcript.ending,
        transcript.bytes.len()
    );
    let response = transcript.response();
    assert_eq!(response.status, 400, "{}", transcript.text());
    let body: serde_json::Value = serde_json::from_str(&response.text()).expect("a JSON error");
    assert_eq!(body["parameter"], "sleep", "{body}");
    assert_eq!(body["value"], "0", "{body}");
    let detail = body["detail"].as_str().expect("detail");
    assert!(detail.contains("lines"), "names lines too: {detail}");

    let stream = open_stream(origin.addr, "/polls/streamed?sleep=0&lines=2000000").await;
    assert!(
        stream.received().starts_with(b"HTTP/1.1 200 "),
        "{:?}",
        String::from_utf8_lossy(&stream.received()[..64.min(stream.received().len())])
    );
}
