//! `PROXY_CUT_STYLE` and `x-keepalive-cut-style`: how a cut the proxy makes mid-stream (idle timer,
//! max_duration, byte-limit fault) ends for the client. HTTP/1.1: truncate closes without the last
//! chunk, clean sends it (the cut looks like a normal end), reset sends a TCP RST. HTTP/2: clean is
//! END_STREAM, the others RST_STREAM. An origin breaking off is a truncation whatever the style, and
//! the origin learns the client is gone in every style. (How the lab's `watch` and `probe` judge these
//! cuts is tested with the lab, in the workspace's `tests/cuts.rs`.)

use std::net::SocketAddr;
use std::time::Duration;

use keepalive_kit::client::{get, raw_request, Ending, RawConn};
use keepalive_kit::echo::{echoed_headers, start_echo};
use keepalive_kit::h2c;
use keepalive_kit::metrics::{metric, wait_for_metric};
use keepalive_kit::response::{is_complete_response, RawResponse};
use keepalive_kit::servers::{
    origin_config, start_cutting_proxy, start_origin, start_origin_and_cutting_proxy,
    start_proxy_configured, Proxy, Running, FIRST_LINE,
};
use keepalive_kit::timing::{assert_around, cutting_timers, ms, OFF};
use keepalive_proxy::cut_style::CutStyle;
use keepalive_proxy::faults::policy::FaultHeaders;

const CLIENT_GONE: &str = "origin_streams_ended_total{reason=\"client_gone\"}";
const IDLE: Duration = Duration::from_millis(400);
const STYLES: [CutStyle; 3] = [CutStyle::Truncate, CutStyle::Clean, CutStyle::Reset];

/// What one keep-alive HTTP/1.1 exchange saw: the response as far as it came, how the connection
/// ended (`None`: still open after a whole response), and when (since the request).
struct Seen {
    conn: RawConn,
    response: Option<RawResponse>,
    ending: Option<Ending>,
    at: Duration,
}

impl Seen {
    fn describe(&self) -> String {
        format!(
            "ended {:?} at {:?}: {:?}",
            self.ending,
            self.at,
            String::from_utf8_lossy(self.conn.received())
        )
    }

    /// A 200 whose chunked body ended with its terminating chunk, holding exactly `data`.
    #[track_caller]
    fn assert_complete(&self, data: &[u8]) {
        let response = self.response.as_ref().expect("a response head");
        assert_eq!(response.status, 200, "{}", self.describe());
        assert!(response.is_chunked(), "{:?}", response.headers);
        let body = response.data();
        assert!(
            body.complete && response.body.ends_with(b"0\r\n\r\n"),
            "a clean cut sends the terminating chunk: {}",
            self.describe()
        );
        assert_eq!(
            String::from_utf8_lossy(&body.data),
            String::from_utf8_lossy(data)
        );
    }

    /// A 200 closed by a FIN without its terminating chunk, after exactly `data`.
    #[track_caller]
    fn assert_truncated(&self, data: &[u8]) {
        assert_eq!(self.ending, Some(Ending::Eof), "{}", self.describe());
        let response = self.response.as_ref().expect("a response head");
        assert_eq!(response.status, 200, "{}", self.describe());
        let body = response.data();
        assert!(
            !body.complete && !response.body.ends_with(b"0\r\n\r\n"),
            "a truncated body has no terminating chunk: {}",
            self.describe()
        );
        assert_eq!(
            String::from_utf8_lossy(&body.data),
            String::from_utf8_lossy(data)
        );
    }

    /// A connection reset, never a complete body before it.
    #[track_caller]
    fn assert_reset(&self) {
        assert_eq!(self.ending, Some(Ending::Reset), "{}", self.describe());
        assert!(
            !is_complete_response(self.conn.received()),
            "a reset stream must not look complete: {}",
            self.describe()
        );
    }

    #[track_caller]
    fn assert_as(&self, style: CutStyle, data: &[u8]) {
        match style {
            CutStyle::Truncate => self.assert_truncated(data),
            CutStyle::Clean => self.assert_complete(data),
            CutStyle::Reset => self.assert_reset(),
        }
    }
}

/// GET `target` with `headers` (CRLF-terminated lines) on a new keep-alive connection, read until a
/// whole response has arrived or the connection ends (3 s at most).
async fn fetch(addr: SocketAddr, target: &str, headers: &str) -> Seen {
    let mut conn = RawConn::connect(addr).await;
    conn.send(get(target, headers).as_bytes()).await;
    conn.read_until(Duration::from_secs(3), is_complete_response)
        .await;
    let (ending, at) = match conn.ended() {
        Some((ending, at)) => (Some(ending), at),
        None => (None, conn.clock().elapsed()),
    };
    Seen {
        response: RawResponse::parse(conn.received()),
        conn,
        ending,
        at,
    }
}

fn style_header(style: CutStyle) -> String {
    format!("x-keepalive-cut-style: {}\r\n", style.as_str())
}

async fn wait_for_client_gone(origin: &Running, streams: f64) {
    wait_for_metric(origin.addr, CLIENT_GONE, streams, Duration::from_secs(2)).await;
}

/// An idle cut over HTTP/1.1 in `style`, checked; the servers are returned to outlive the connection.
async fn idle_cut_over_http1(style: CutStyle) -> (Seen, Running, Proxy) {
    let (origin, proxy) =
        start_origin_and_cutting_proxy(cutting_timers(Some(IDLE), OFF), style).await;
    let seen = fetch(proxy.addr, "/polls/streamed?sleep=3", "").await;
    seen.assert_as(style, FIRST_LINE.as_bytes());
    assert_around(seen.at, IDLE, &format!("{} idle cut", style.as_str()));
    wait_for_client_gone(&origin, 1.0).await;
    wait_for_metric(
        proxy.admin,
        "proxy_timeouts_total{timer=\"idle\"}",
        1.0,
        Duration::from_secs(1),
    )
    .await;
    (seen, origin, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_style_idle_cut_closes_without_the_last_chunk() {
    idle_cut_over_http1(CutStyle::Truncate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_style_idle_cut_sends_the_last_chunk_at_the_idle_limit() {
    let (mut seen, _origin, _proxy) = idle_cut_over_http1(CutStyle::Clean).await;
    // The body looked complete, so the connection may be kept alive; if it is, it must serve the
    // next request properly (no leftovers of the cut stream on it).
    let first = seen.conn.received().len();
    let more = seen
        .conn
        .read_until(Duration::from_millis(200), |bytes| bytes.len() > first)
        .await;
    assert!(!more, "nothing may follow the terminating chunk");
    if seen.conn.ended().is_none() {
        seen.conn
            .send(get("/polls/streamed?sleep=0&lines=1", "Connection: close\r\n").as_bytes())
            .await;
        let transcript = seen.conn.finish(Duration::from_secs(3)).await;
        let next = RawResponse::parse(&transcript.bytes[first..])
            .unwrap_or_else(|| panic!("a second response: {}", transcript.text()));
        assert_eq!(next.status, 200, "{}", transcript.text());
        assert!(next.data().complete, "{}", transcript.text());
        assert_eq!(next.text(), FIRST_LINE);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_style_idle_cut_resets_the_connection() {
    idle_cut_over_http1(CutStyle::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_header_overrides_the_configured_style() {
    let origin = start_origin(origin_config()).await;
    // (configured, asked for by header)
    let cases = [
        (CutStyle::Truncate, CutStyle::Clean),
        (CutStyle::Clean, CutStyle::Reset),
        (CutStyle::Reset, CutStyle::Truncate),
        (CutStyle::Clean, CutStyle::Truncate),
    ];
    for (n, (configured, asked)) in cases.into_iter().enumerate() {
        let proxy =
            start_cutting_proxy(origin.addr, cutting_timers(Some(IDLE), OFF), configured).await;
        let seen = fetch(proxy.addr, "/polls/streamed?sleep=3", &style_header(asked)).await;
        seen.assert_as(asked, FIRST_LINE.as_bytes());
        assert_around(seen.at, IDLE, &format!("{configured:?} asked {asked:?}"));
        wait_for_client_gone(&origin, (n + 1) as f64).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cut_style_header_answers_400_naming_it_without_reaching_the_origin() {
    let (origin, proxy) =
        start_origin_and_cutting_proxy(cutting_timers(Some(IDLE), OFF), CutStyle::Clean).await;
    let transcript = raw_request(
        proxy.addr,
        &get(
            "/polls/streamed?sleep=3",
            "x-keepalive-cut-style: polite\r\nConnection: close\r\n",
        ),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 400, "{}", transcript.text());
    let text = response.text();
    assert!(
        text.contains("x-keepalive-cut-style") && text.contains("polite"),
        "the body names the header and the value: {text:?}"
    );
    assert!(transcript.ended_at < IDLE, "answered at once");
    assert_eq!(
        metric(proxy.admin, "proxy_requests_total{status=\"400\"}").await,
        1.0
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        metric(origin.addr, "origin_streams_started_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cut_style_header_never_reaches_the_origin_and_is_ignored_without_fault_headers() {
    let echo = start_echo().await;
    let proxy = start_proxy_configured(echo.addr, cutting_timers(OFF, OFF), |_| {}).await;
    let transcript = raw_request(
        proxy.addr,
        &get(
            "/echo",
            "x-keepalive-cut-style: clean\r\nConnection: close\r\n",
        ),
        Duration::from_secs(3),
    )
    .await;
    let headers = echoed_headers(&transcript.response().text());
    assert!(
        headers
            .iter()
            .all(|(name, _)| name != "x-keepalive-cut-style"),
        "{headers:?}"
    );

    // PROXY_FAULT_HEADERS=off: the configured style alone decides, whatever the request says.
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy_configured(origin.addr, cutting_timers(Some(IDLE), OFF), |config| {
        config.cut_style = CutStyle::Clean;
        config.fault_headers = FaultHeaders::Off;
    })
    .await;
    let seen = fetch(
        proxy.addr,
        "/polls/streamed?sleep=3",
        &style_header(CutStyle::Reset),
    )
    .await;
    seen.assert_complete(FIRST_LINE.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_limit_fault_follows_the_style() {
    let origin = start_origin(origin_config()).await;
    let proxy =
        start_cutting_proxy(origin.addr, cutting_timers(OFF, OFF), CutStyle::Truncate).await;
    let mut client_gone = 0.0;
    for style in STYLES {
        let seen = fetch(
            proxy.addr,
            "/polls/streamed?sleep=50ms",
            &format!(
                "x-keepalive-fault-limit-bytes: 70\r\n{}",
                style_header(style)
            ),
        )
        .await;
        // 70 bytes: the first line (33) and 37 of the second.
        let lines = format!("{FIRST_LINE}[         0 s] Jumped into the blue water\n");
        seen.assert_as(style, &lines.as_bytes()[..70]);
        client_gone += 1.0;
        wait_for_client_gone(&origin, client_gone).await;
    }
    assert_eq!(
        metric(
            proxy.admin,
            "proxy_faults_injected_total{fault=\"limit_bytes\"}"
        )
        .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_style_max_duration_cut_ends_a_heartbeated_stream_as_if_complete() {
    let (origin, proxy) =
        start_origin_and_cutting_proxy(cutting_timers(ms(300), ms(1_000)), CutStyle::Clean).await;
    let seen = fetch(
        proxy.addr,
        "/polls/streamed?sleep=400ms&heartbeat=100ms",
        "",
    )
    .await;
    let response = seen.response.as_ref().expect("a response head");
    let body = response.data();
    let text = String::from_utf8_lossy(&body.data);
    assert!(
        body.complete && response.body.ends_with(b"0\r\n\r\n"),
        "{}",
        seen.describe()
    );
    assert!(
        text.starts_with(FIRST_LINE) && text.contains("Jumped into the blue water"),
        "lines and heartbeats flowed until the cut: {text:?}"
    );
    assert_eq!(seen.ending, None, "{}", seen.describe());
    assert_around(seen.at, Duration::from_millis(1_000), "max_duration cut");
    wait_for_client_gone(&origin, 1.0).await;
    assert_eq!(
        metric(proxy.admin, "proxy_timeouts_total{timer=\"max_duration\"}").await,
        1.0
    );
    assert_eq!(
        metric(proxy.admin, "proxy_timeouts_total{timer=\"idle\"}").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_breaking_off_is_truncated_even_in_clean_style() {
    let (origin, proxy) =
        start_origin_and_cutting_proxy(cutting_timers(ms(5_000), OFF), CutStyle::Clean).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(get("/polls/streamed?sleep=10", "").as_bytes())
        .await;
    assert!(
        conn.read_until(Duration::from_secs(3), |bytes| {
            bytes.ends_with(b"Little brown lady\n\r\n")
        })
        .await,
        "the first line arrives: {:?}",
        String::from_utf8_lossy(conn.received())
    );
    // The origin's drain timeout is 100 ms: after it, the origin closes the stream mid-body.
    drop(origin);
    let transcript = conn.finish(Duration::from_secs(3)).await;
    let response = transcript.response();
    assert!(
        transcript.ending.is_closed(),
        "the client still waits after the origin went away: {:?}",
        transcript.ending
    );
    assert!(
        !response.data().complete && !response.body.ends_with(b"0\r\n\r\n"),
        "an origin's failure must never look like a complete body: {:?}",
        transcript.text()
    );
    assert_eq!(response.data().data, FIRST_LINE.as_bytes());
    wait_for_metric(
        proxy.admin,
        "proxy_upstream_errors_total{kind=\"body_failed\"}",
        1.0,
        Duration::from_secs(1),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------------
// HTTP/2 (h2c)
// ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_idle_cut_is_end_stream_for_clean_and_rst_stream_otherwise() {
    let origin = start_origin(origin_config()).await;
    for (n, style) in STYLES.into_iter().enumerate() {
        let proxy = start_cutting_proxy(origin.addr, cutting_timers(Some(IDLE), OFF), style).await;
        let mut sender = h2c::handshake(proxy.addr).await;
        let (mut body, sent) =
            h2c::first_line(&mut sender, proxy.addr, "/polls/streamed?sleep=3").await;
        let ending = h2c::ending(&mut body).await;
        assert_around(sent.elapsed(), IDLE, &format!("h2 {style:?} idle cut"));
        match (style, ending) {
            (CutStyle::Clean, Ok(())) => {}
            (CutStyle::Clean, Err(err)) => panic!("a clean cut ends the stream: {err:?}"),
            (_, Ok(())) => panic!("{style:?}: a cut h2 stream ended cleanly"),
            (_, Err(err)) => h2c::assert_reset(&err),
        }
        wait_for_client_gone(&origin, (n + 1) as f64).await;
        // Whatever the style, only the stream was cut: the connection serves the next request.
        let (mut next, _) =
            h2c::first_line(&mut sender, proxy.addr, "/polls/streamed?sleep=0&lines=1").await;
        assert!(
            h2c::ending(&mut next).await.is_ok(),
            "{style:?}: the connection still works"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_origin_breaking_off_resets_the_stream_even_in_clean_style() {
    let (origin, proxy) =
        start_origin_and_cutting_proxy(cutting_timers(ms(5_000), OFF), CutStyle::Clean).await;
    let mut sender = h2c::handshake(proxy.addr).await;
    let (mut body, _) = h2c::first_line(&mut sender, proxy.addr, "/polls/streamed?sleep=10").await;
    drop(origin);
    match h2c::ending(&mut body).await {
        Ok(()) => panic!("an origin's failure ended the h2 stream cleanly"),
        Err(err) => h2c::assert_reset(&err),
    }
}

/// A body of announced length cannot end early and look complete: `clean` falls back to the nginx
/// way (HTTP/1: close short of the length; HTTP/2: RST_STREAM, never a malformed END_STREAM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_style_truncates_a_body_of_known_length() {
    let echo = start_echo().await;
    let proxy = start_proxy_configured(echo.addr, cutting_timers(OFF, OFF), |config| {
        config.cut_style = CutStyle::Clean;
    })
    .await;
    let limit = "x-keepalive-fault-limit-bytes: 10\r\n";
    let seen = fetch(proxy.addr, "/echo", limit).await;
    assert_eq!(seen.ending, Some(Ending::Eof), "{}", seen.describe());
    let response = seen.response.as_ref().expect("a response head");
    assert!(
        response.header("content-length").is_some(),
        "{:?}",
        response.headers
    );
    assert_eq!(response.body.len(), 10, "{}", seen.describe());

    let mut sender = h2c::handshake(proxy.addr).await;
    let limit = ("x-keepalive-fault-limit-bytes", "10");
    let received = h2c::bytes_before_early_reset(&mut sender, proxy.addr, "/echo", limit).await;
    // Over HTTP/2 the limit promises "never more", not "all of them": hyper answers the cut with
    // send_reset, which drops whatever h2 still had queued for the stream, and nothing tells the
    // proxy when h2 has written it (waiting would be a guess). What must hold is the reset itself.
    assert!(received <= 10, "{received} bytes got past a 10-byte limit");
}

/// The reset fault on an HTTP/2 stream resets that stream only: the connection, and whatever else
/// it carries, goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_reset_fault_resets_the_stream_not_the_connection() {
    let (_origin, proxy) =
        start_origin_and_cutting_proxy(cutting_timers(OFF, OFF), CutStyle::Truncate).await;
    let mut sender = h2c::handshake(proxy.addr).await;
    let reset = ("x-keepalive-fault-reset-after", "300ms");
    h2c::bytes_before_reset(&mut sender, proxy.addr, "/polls/streamed?sleep=3", reset).await;
    let (mut next, _) =
        h2c::first_line(&mut sender, proxy.addr, "/polls/streamed?sleep=0&lines=1").await;
    assert!(
        h2c::ending(&mut next).await.is_ok(),
        "the connection outlived the stream's reset"
    );
}

/// A gzip hop cannot end its stream early and look complete (the trailer would be missing): the
/// clean style truncates there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_style_never_cuts_a_compressed_stream_cleanly() {
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy_configured(origin.addr, cutting_timers(Some(IDLE), OFF), |config| {
        config.cut_style = CutStyle::Clean;
        config.compression = keepalive_proxy::config::Compression::Gzip;
        config.compression_ignore_no_transform = true;
    })
    .await;
    let seen = fetch(
        proxy.addr,
        "/polls/streamed?sleep=3",
        "Accept-Encoding: gzip\r\n",
    )
    .await;
    assert_eq!(seen.ending, Some(Ending::Eof), "{}", seen.describe());
    let response = seen.response.as_ref().expect("a response head");
    assert_eq!(response.header("content-encoding"), Some("gzip"));
    assert!(
        !response.body.ends_with(b"0\r\n\r\n"),
        "a gzip stream cut cleanly would lose its trailer: {}",
        seen.describe()
    );
}
