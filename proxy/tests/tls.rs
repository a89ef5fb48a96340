//! TLS on both sides of the proxy, over real sockets. Towards clients: ALPN gives h2 to a client
//! that offers it and HTTP/1.1 otherwise; every timer, cut style and fault acts as it does in
//! cleartext; a cut HTTP/1.1 connection closes with close_notify (as nginx's does) unless it is to be
//! reset; the header timer bounds the handshake; the upstream is told `X-Forwarded-Proto: https`.
//! Towards an `https://` upstream: the proxy trusts exactly `upstream_ca` and answers a failed
//! handshake with a 502 that says so. The binary refuses unusable TLS settings with exit code 2 and
//! one line, and `PROXY_TLS_SELF_SIGNED` writes a certificate a client can trust. curl, the client
//! operators reach for, is checked last.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use keepalive_common::tls::{provider, CertFile};
use keepalive_kit::client::{
    get, open_stream_on, raw_request, read_to_end_or_deadline, Ending, RawConn, Transcript,
};
use keepalive_kit::echo::{echoed_headers, start_echo, values};
use keepalive_kit::h2c::{self, Reason};
use keepalive_kit::metrics::{metric, wait_for_metric};
use keepalive_kit::ports;
use keepalive_kit::program::{self, clear_settings, run_to_exit, run_with_settings, Program};
use keepalive_kit::servers::{
    origin_config, start_origin, start_proxy_configured, Proxy, Running, FIRST_LINE,
};
use keepalive_kit::timing::{assert_around, cutting_timers, ms, quiet_timers, wait_until, OFF};
use keepalive_kit::tls::{self as kit_tls, Https, TestCert, H2_AND_HTTP1, HTTP1};
use keepalive_proxy::cut_style::CutStyle;
use keepalive_proxy::faults::FaultSettings;
use keepalive_proxy::{ProxyConfig, TimerSet};
use tokio::io::{copy_bidirectional, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

const PROXY: &str = env!("CARGO_BIN_EXE_keepalive-proxy");

const IDLE: Duration = Duration::from_millis(400);
const HANDSHAKE_ERRORS: &str = "proxy_client_errors_total{kind=\"tls_handshake\"}";
const UPSTREAM_HANDSHAKE_ERRORS: &str = "proxy_upstream_errors_total{kind=\"tls_handshake\"}";
const UPSTREAM_TLS_FAILED: &str = "502 Bad Gateway: TLS handshake with the upstream failed\n";
const ACTIVE: &str = "origin_streams_active";
/// The poem's second line, whatever second it comes at.
const SECOND_LINE_END: &str = "] Jumped into the blue water\n";

fn timeouts(timer: &str) -> String {
    format!("proxy_timeouts_total{{timer=\"{timer}\"}}")
}

/// The origin, and a proxy in front of it serving clients over TLS with `cert`, with exactly
/// `timers` and whatever `configure` changes.
async fn origin_and_tls_proxy(
    cert: &TestCert,
    timers: TimerSet,
    configure: impl FnOnce(&mut ProxyConfig),
) -> (Running, Proxy) {
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy_configured(origin.addr, timers, |config| {
        config.tls_cert = Some(cert.cert_file());
        config.tls_key = Some(cert.key_file());
        configure(config);
    })
    .await;
    (origin, proxy)
}

fn localhost_cert() -> TestCert {
    TestCert::localhost().expect("make the test certificate")
}

// ALPN.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_gives_h2_to_a_client_offering_h2_and_http1_and_a_stream_works_on_it() {
    let cert = localhost_cert();
    let (_origin, proxy) = origin_and_tls_proxy(&cert, quiet_timers(), |_| {}).await;
    let stream = kit_tls::connect(proxy.addr, &cert, H2_AND_HTTP1).await;
    assert_eq!(kit_tls::negotiated(&stream).as_deref(), Some("h2"));
    let (mut sender, _closed) = h2c::connection_over(stream, false).await;
    let (mut body, _) = h2c::first_line(
        &mut sender,
        Https(proxy.addr),
        "/polls/streamed?sleep=0&lines=1",
    )
    .await;
    assert!(
        h2c::ending(&mut body).await.is_ok(),
        "a one-line stream ends with END_STREAM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_gives_http1_to_a_client_offering_only_http1_and_a_stream_works_on_it() {
    let cert = localhost_cert();
    let (_origin, proxy) = origin_and_tls_proxy(&cert, quiet_timers(), |_| {}).await;
    let stream = kit_tls::connect(proxy.addr, &cert, HTTP1).await;
    assert_eq!(kit_tls::negotiated(&stream).as_deref(), Some("http/1.1"));
    let mut conn = RawConn::over(stream);
    conn.send(get("/polls/streamed?sleep=0&lines=1", "Connection: close\r\n").as_bytes())
        .await;
    let transcript = conn.finish(Duration::from_secs(3)).await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    assert!(response.data().complete, "{}", transcript.text());
    assert_eq!(response.text(), FIRST_LINE);
    // Connection: close is a graceful end: close_notify, then FIN.
    assert_eq!(transcript.ending, Ending::Eof, "{}", transcript.text());
}

/// GET /echo through a TLS proxy in front of the echo upstream, over h2 or HTTP/1.1: what the
/// upstream saw.
async fn echoed_over_tls(http2: bool) -> String {
    let cert = localhost_cert();
    let echo = start_echo().await;
    let proxy = start_proxy_configured(echo.addr, quiet_timers(), |config| {
        config.tls_cert = Some(cert.cert_file());
        config.tls_key = Some(cert.key_file());
    })
    .await;
    if http2 {
        let mut sender = kit_tls::h2_handshake(proxy.addr, &cert).await;
        let response = h2c::send(&mut sender, Https(proxy.addr), "/echo", &[]).await;
        assert_eq!(response.status(), 200);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("the whole body")
            .to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    } else {
        let transcript = kit_tls::raw_request(
            proxy.addr,
            &cert,
            &get("/echo", "Connection: close\r\n"),
            Duration::from_secs(3),
        )
        .await;
        let response = transcript.response();
        assert_eq!(response.status, 200, "{}", transcript.text());
        response.text()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_is_told_the_client_came_over_https_on_http1() {
    let body = echoed_over_tls(false).await;
    assert_eq!(
        values(&echoed_headers(&body), "x-forwarded-proto"),
        ["https"],
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_is_told_the_client_came_over_https_on_h2() {
    let body = echoed_over_tls(true).await;
    assert_eq!(
        values(&echoed_headers(&body), "x-forwarded-proto"),
        ["https"],
        "{body}"
    );
}

// Cuts over TLS.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_cut_over_tls_http1_truncates_the_body_and_closes_with_close_notify() {
    let cert = localhost_cert();
    let (origin, proxy) =
        origin_and_tls_proxy(&cert, cutting_timers(Some(IDLE), OFF), |_| {}).await;
    let conn = open_stream_on(
        kit_tls::raw_conn(proxy.addr, &cert).await,
        "/polls/streamed?sleep=3",
    )
    .await;
    let transcript = conn.finish(Duration::from_secs(3)).await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    assert!(response.is_chunked(), "{:?}", response.headers);
    let body = response.data();
    assert!(
        !body.complete && !response.body.ends_with(b"0\r\n\r\n"),
        "a truncated body has no terminating chunk: {}",
        transcript.text()
    );
    assert_eq!(String::from_utf8_lossy(&body.data), FIRST_LINE);
    // A rustls client reads close_notify then FIN as the end of the stream; a bare FIN would be
    // Error(UnexpectedEof).
    assert_eq!(
        transcript.ending,
        Ending::Eof,
        "the cut closes with close_notify, as nginx's does: {}",
        transcript.text()
    );
    assert_around(transcript.ended_at, IDLE, "TLS HTTP/1.1 idle cut");
    assert_eq!(metric(proxy.admin, &timeouts("idle")).await, 1.0);
    wait_for_metric(
        origin.addr,
        "origin_streams_ended_total{reason=\"client_gone\"}",
        1.0,
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_cut_over_tls_h2_resets_the_stream_with_internal_error() {
    let cert = localhost_cert();
    let (_origin, proxy) =
        origin_and_tls_proxy(&cert, cutting_timers(Some(IDLE), OFF), |_| {}).await;
    let mut sender = kit_tls::h2_handshake(proxy.addr, &cert).await;
    let (mut body, sent) =
        h2c::first_line(&mut sender, Https(proxy.addr), "/polls/streamed?sleep=3").await;
    let err = match h2c::ending(&mut body).await {
        Err(err) => err,
        Ok(()) => panic!("a cut stream ended cleanly: an h2 client would take it as complete"),
    };
    assert_around(sent.elapsed(), IDLE, "TLS h2 idle cut");
    assert_eq!(
        h2c::reset_reason(&err),
        Some(Reason::INTERNAL_ERROR),
        "RST_STREAM(INTERNAL_ERROR): {err:?}"
    );
    assert_eq!(metric(proxy.admin, &timeouts("idle")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_h2_stream_over_tls_alive_past_the_idle_limit_to_a_clean_end() {
    let cert = localhost_cert();
    let (_origin, proxy) = origin_and_tls_proxy(&cert, cutting_timers(ms(300), OFF), |_| {}).await;
    let mut sender = kit_tls::h2_handshake(proxy.addr, &cert).await;
    // The second line comes after a second of silence but for a space every 100 ms: more than
    // three idle limits.
    let (body, sent) = h2c::first_line(
        &mut sender,
        Https(proxy.addr),
        "/polls/streamed?sleep=1&heartbeat=100ms&lines=2",
    )
    .await;
    let rest = timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("the stream ends within 5 s")
        .expect("a clean end (END_STREAM), not a reset")
        .to_bytes();
    let ended = sent.elapsed();
    let rest = String::from_utf8_lossy(&rest).into_owned();
    let beats = rest
        .find('[')
        .map(|at| &rest[..at])
        .unwrap_or_else(|| panic!("the second line arrives: {rest:?}"));
    assert!(rest.ends_with(SECOND_LINE_END), "{rest:?}");
    assert!(
        beats.len() >= 3 && beats.bytes().all(|b| b == b' '),
        "heartbeat spaces fill the wait: {rest:?}"
    );
    assert!(
        ended >= Duration::from_millis(900),
        "the stream outlived three idle limits: {ended:?}"
    );
    assert_eq!(metric(proxy.admin, &timeouts("idle")).await, 0.0);
}

/// Asserts that `conn` ends with a TCP reset: no close_notify, which would read as `Eof`, and no
/// bare FIN, which would read as `Error(UnexpectedEof)`.
async fn assert_reset_without_close_notify(conn: RawConn, at: Duration, what: &str) {
    let transcript = conn.finish(Duration::from_secs(3)).await;
    assert_eq!(
        transcript.ending,
        Ending::Reset,
        "{what}: a RST, no close_notify before it: {}",
        transcript.text()
    );
    assert!(
        !transcript.response().data().complete,
        "a reset stream must not look complete: {}",
        transcript.text()
    );
    assert_around(transcript.ended_at, at, what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_style_cut_over_tls_resets_the_connection_without_close_notify() {
    let cert = localhost_cert();
    let (_origin, proxy) = origin_and_tls_proxy(&cert, cutting_timers(Some(IDLE), OFF), |config| {
        config.cut_style = CutStyle::Reset;
    })
    .await;
    let conn = open_stream_on(
        kit_tls::raw_conn(proxy.addr, &cert).await,
        "/polls/streamed?sleep=3",
    )
    .await;
    assert_reset_without_close_notify(conn, IDLE, "reset-style idle cut over TLS").await;
    assert_eq!(metric(proxy.admin, &timeouts("idle")).await, 1.0);
}

fn all_requests(faults: FaultSettings) -> FaultSettings {
    FaultSettings {
        probability: 1.0,
        ..faults
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_fault_over_tls_resets_the_connection_without_close_notify() {
    let cert = localhost_cert();
    let (_origin, proxy) = origin_and_tls_proxy(&cert, quiet_timers(), |config| {
        *config = config.clone().with_faults(all_requests(FaultSettings {
            reset_after: ms(400),
            ..FaultSettings::default()
        }));
    })
    .await;
    let conn = open_stream_on(
        kit_tls::raw_conn(proxy.addr, &cert).await,
        "/polls/streamed?sleep=100ms",
    )
    .await;
    assert_reset_without_close_notify(conn, Duration::from_millis(400), "reset fault over TLS")
        .await;
    assert_eq!(
        metric(
            proxy.admin,
            "proxy_faults_injected_total{fault=\"reset_after\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_bytes_fault_over_tls_forwards_that_many_bytes_then_closes_with_close_notify() {
    let cert = localhost_cert();
    let (_origin, proxy) = origin_and_tls_proxy(&cert, quiet_timers(), |config| {
        *config = config.clone().with_faults(all_requests(FaultSettings {
            limit_bytes: Some(70),
            ..FaultSettings::default()
        }));
    })
    .await;
    let transcript = kit_tls::raw_request(
        proxy.addr,
        &cert,
        &get("/polls/streamed?sleep=50ms", ""),
        Duration::from_secs(3),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    let body = response.data();
    assert_eq!(
        body.data.len(),
        70,
        "{:?}",
        String::from_utf8_lossy(&body.data)
    );
    assert!(!body.complete, "a cut body has no terminating chunk");
    assert_eq!(transcript.ending, Ending::Eof, "{}", transcript.text());
    wait_for_metric(
        proxy.admin,
        "proxy_faults_injected_total{fault=\"limit_bytes\"}",
        1.0,
        Duration::from_secs(1),
    )
    .await;
}

// The handshake.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timer_closes_a_connection_that_never_sends_its_client_hello() {
    let cert = localhost_cert();
    let header = Duration::from_millis(400);
    let (_origin, proxy) = origin_and_tls_proxy(
        &cert,
        TimerSet {
            header: Some(header),
            ..quiet_timers()
        },
        |_| {},
    )
    .await;
    let mut tcp = TcpStream::connect(proxy.addr)
        .await
        .expect("connect to the proxy");
    let clock = Instant::now();
    let mut received = Vec::new();
    let (ending, at) = read_to_end_or_deadline(
        &mut tcp,
        &mut received,
        clock,
        clock + Duration::from_secs(3),
    )
    .await;
    assert!(
        ending.is_closed(),
        "the proxy closes a silent connection: {ending:?}"
    );
    assert!(received.is_empty(), "nothing was sent: {received:?}");
    assert_around(at, header, "the header timer on a handshake never begun");
    assert_eq!(metric(proxy.admin, &timeouts("header")).await, 1.0);
    assert_eq!(metric(proxy.admin, HANDSHAKE_ERRORS).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_fails_the_handshake_and_is_counted() {
    let cert = localhost_cert();
    let (origin, proxy) = origin_and_tls_proxy(&cert, quiet_timers(), |_| {}).await;
    let transcript = raw_request(
        proxy.addr,
        &get("/polls/streamed?sleep=0&lines=1", "Connection: close\r\n"),
        Duration::from_secs(3),
    )
    .await;
    assert!(
        transcript.ending.is_closed(),
        "the connection is closed at once, not held: {:?}",
        transcript.ending
    );
    assert!(
        !transcript.bytes.starts_with(b"HTTP/"),
        "no HTTP answer over the TLS port: {}",
        transcript.text()
    );
    wait_for_metric(proxy.admin, HANDSHAKE_ERRORS, 1.0, Duration::from_secs(1)).await;
    assert_eq!(
        metric(origin.addr, "origin_streams_started_total").await,
        0.0,
        "nothing reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_before_its_handshake_is_not_counted_as_a_handshake_error() {
    let cert = localhost_cert();
    let (_origin, proxy) = origin_and_tls_proxy(&cert, quiet_timers(), |_| {}).await;
    // Port probes, as TCP health checks make them: connect, then close.
    for _ in 0..3 {
        drop(TcpStream::connect(proxy.addr).await.expect("connect"));
    }
    // Then one real failure, which is counted, so the count is known to be up to date.
    raw_request(
        proxy.addr,
        &get("/polls/", "Connection: close\r\n"),
        Duration::from_secs(3),
    )
    .await;
    wait_for_metric(proxy.admin, HANDSHAKE_ERRORS, 1.0, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        metric(proxy.admin, HANDSHAKE_ERRORS).await,
        1.0,
        "the probes are not counted"
    );
}

// The send timer.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_timer_cuts_a_tls_client_that_stopped_reading() {
    let cert = localhost_cert();
    let (origin, proxy) = origin_and_tls_proxy(
        &cert,
        TimerSet {
            send: ms(500),
            ..quiet_timers()
        },
        |_| {},
    )
    .await;
    // A tiny receive buffer, set before connecting, so that the proxy's writes stall soon.
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("set SO_RCVBUF before connecting");
    let tcp = socket
        .connect(proxy.addr)
        .await
        .expect("connect to the proxy");
    let mut client = kit_tls::handshake(tcp, &cert, HTTP1)
        .await
        .expect("the TLS handshake");
    // 66 MB at full speed: more than every buffer between the origin and the client.
    client
        .write_all(get("/polls/streamed?sleep=0&lines=2000000", "").as_bytes())
        .await
        .expect("send the request");
    client.flush().await.expect("flush the request");
    wait_for_metric(origin.addr, ACTIVE, 1.0, Duration::from_secs(2)).await;
    // The buffers fill first (seconds in a debug build), then a write stalls for 500 ms; 10 s is
    // for a loaded machine, and the counters below say which timer let go.
    let freed = wait_until(Duration::from_secs(10), || async {
        metric(origin.addr, ACTIVE).await == 0.0
    })
    .await;
    assert!(
        freed.is_some(),
        "the origin's stream is still held 10 s after the TLS client stopped reading"
    );
    assert_eq!(metric(proxy.admin, &timeouts("send")).await, 1.0);
    assert_eq!(metric(proxy.admin, &timeouts("idle")).await, 0.0);
    wait_for_metric(
        proxy.admin,
        "proxy_streams_active",
        0.0,
        Duration::from_secs(1),
    )
    .await;
    drop(client);
}

// An https upstream.

/// A TLS front for `backend` serving `cert`: each connection's handshake, then its bytes relayed to
/// and from a new plain connection to `backend`, so that the real origin is an https upstream.
async fn start_tls_front(cert: &TestCert, backend: SocketAddr) -> Running {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(cert.cert_file().certs.to_vec(), cert.key_file().key())
        .expect("the test certificate and its key make a server configuration");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the TLS front");
    let addr = listener.local_addr().expect("its address");
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        // Dropped on stop: the relays end with the front.
        let mut relays = JoinSet::new();
        loop {
            let (tcp, _) = tokio::select! {
                () = stopped.cancelled() => return Ok(()),
                accepted = listener.accept() => accepted?,
            };
            let acceptor = acceptor.clone();
            relays.spawn(async move {
                // A handshake the proxy refused ends this connection only: it is the test's subject.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                // How the relay ended is the proxy's or the origin's to report.
                let _ = copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    Running::spawned(addr, stop, task)
}

/// A plain-HTTP proxy whose upstream is `https://localhost:{upstream's port}`, trusting `ca`.
async fn proxy_to_https(upstream: SocketAddr, ca: Option<CertFile>) -> Proxy {
    start_proxy_configured(upstream, quiet_timers(), |config| {
        config.upstream = format!("https://localhost:{}", upstream.port())
            .parse()
            .expect("an https upstream");
        config.upstream_ca = ca;
    })
    .await
}

async fn get_one_line(proxy: &Proxy) -> Transcript {
    raw_request(
        proxy.addr,
        &get("/polls/streamed?sleep=0&lines=1", "Connection: close\r\n"),
        Duration::from_secs(3),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_trusted_by_its_ca_serves_the_stream() {
    let cert = localhost_cert();
    let origin = start_origin(origin_config()).await;
    let front = start_tls_front(&cert, origin.addr).await;
    let proxy = proxy_to_https(front.addr, Some(cert.cert_file())).await;
    let transcript = get_one_line(&proxy).await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    assert!(response.data().complete, "{}", transcript.text());
    assert_eq!(response.text(), FIRST_LINE);
    assert_eq!(
        metric(proxy.admin, "proxy_upstream_errors_total").await,
        0.0
    );
}

/// Asserts the 502 of an https upstream whose handshake failed, and that it was counted as one.
async fn assert_upstream_handshake_failed(proxy: &Proxy, origin: &Running) {
    let transcript = get_one_line(proxy).await;
    let response = transcript.response();
    assert_eq!(response.status, 502, "{}", transcript.text());
    assert_eq!(response.text(), UPSTREAM_TLS_FAILED);
    assert_eq!(metric(proxy.admin, UPSTREAM_HANDSHAKE_ERRORS).await, 1.0);
    assert_eq!(
        metric(origin.addr, "origin_streams_started_total").await,
        0.0,
        "no request reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_an_openssl_style_self_signed_certificate_is_trusted_by_it() {
    // CA:TRUE, as `openssl req -x509` makes it: webpki alone would refuse it as a server's own.
    let cert = TestCert::openssl_style().expect("make the test certificate");
    let origin = start_origin(origin_config()).await;
    let front = start_tls_front(&cert, origin.addr).await;
    let proxy = proxy_to_https(front.addr, Some(cert.cert_file())).await;
    let transcript = get_one_line(&proxy).await;
    assert_eq!(transcript.response().status, 200, "{}", transcript.text());
    assert_eq!(transcript.response().text(), FIRST_LINE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_not_trusted_by_the_public_roots_answers_502_saying_so() {
    let cert = localhost_cert();
    let origin = start_origin(origin_config()).await;
    let front = start_tls_front(&cert, origin.addr).await;
    // Without upstream_ca the public roots decide, and none of them signed the test certificate.
    let proxy = proxy_to_https(front.addr, None).await;
    assert_upstream_handshake_failed(&proxy, &origin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_speaking_plain_http_answers_502_saying_so() {
    let cert = localhost_cert();
    let origin = start_origin(origin_config()).await;
    let proxy = proxy_to_https(origin.addr, Some(cert.cert_file())).await;
    assert_upstream_handshake_failed(&proxy, &origin).await;
}

// The binary.

fn listen_settings() -> Vec<(&'static str, String)> {
    vec![
        ("PROXY_ADDR", ports::free_for_test()),
        ("PROXY_ADMIN_ADDR", ports::free_for_test()),
    ]
}

fn path_text(path: &std::path::Path) -> String {
    path.to_str().expect("a UTF-8 temp path").to_owned()
}

#[test]
fn binary_refuses_a_tls_cert_without_a_key_naming_proxy_tls_key() {
    let cert = localhost_cert();
    let mut env = listen_settings();
    env.push(("PROXY_TLS_CERT", path_text(&cert.cert)));
    let output = run_with_settings(PROXY, &[], &env);
    program::assert_refused(&output, "PROXY_TLS_KEY", &path_text(&cert.cert));
}

#[test]
fn binary_refuses_a_key_that_is_not_the_certificates_naming_both() {
    let cert = localhost_cert();
    let other = localhost_cert();
    let mut env = listen_settings();
    env.push(("PROXY_TLS_CERT", path_text(&cert.cert)));
    env.push(("PROXY_TLS_KEY", path_text(&other.key)));
    let output = run_with_settings(PROXY, &[], &env);
    program::assert_refused(&output, "PROXY_TLS_KEY", &path_text(&other.key));
    program::assert_refused(&output, "PROXY_TLS_CERT", &path_text(&cert.cert));
}

/// A directory removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("keepalive-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Self(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_with_tls_self_signed_serves_tls_with_the_certificate_it_wrote() {
    let origin = start_origin(origin_config()).await;
    let scratch = ScratchDir::new("self-signed");
    // A directory the proxy must create, as the setting promises.
    let written = scratch.0.join("certs").join("proxy-cert.pem");
    let addr = ports::free().expect("a free port");
    let mut command = Command::new(PROXY);
    clear_settings(&mut command);
    command
        .env("PROXY_ADDR", addr.to_string())
        .env("PROXY_ADMIN_ADDR", ports::free_for_test())
        .env("PROXY_UPSTREAM", format!("http://{}", origin.addr))
        .env("PROXY_TLS_SELF_SIGNED", &written)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut proxy = Program::start("keepalive-proxy", command).expect("start keepalive-proxy");
    // Program's waits are blocking; the origin goes on being served by the runtime's other worker.
    tokio::task::block_in_place(|| proxy.listening(addr, Duration::from_secs(10)))
        .expect("keepalive-proxy listens");

    // The certificate is written before the proxy listens.
    let ca = CertFile::read(&written).expect("the certificate PROXY_TLS_SELF_SIGNED wrote");
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let stream = kit_tls::handshake_trusting(tcp, &ca, HTTP1)
        .await
        .expect("a handshake trusting exactly the written certificate");
    let mut conn = RawConn::over(stream);
    conn.send(get("/polls/streamed?sleep=0&lines=1", "Connection: close\r\n").as_bytes())
        .await;
    let transcript = conn.finish(Duration::from_secs(3)).await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{}", transcript.text());
    assert_eq!(response.text(), FIRST_LINE);

    let status = tokio::task::block_in_place(|| proxy.stop()).expect("stop keepalive-proxy");
    assert!(status.success(), "a graceful stop exits 0: {status}");
}

// curl.

/// curl, which must be installed and speak HTTP/2: these tests fail, never skip, without it.
fn curl() -> PathBuf {
    const NEEDS: &str = "needs curl with HTTP/2 (apt-get install curl)";
    let curl = program::installed("curl").unwrap_or_else(|err| panic!("{NEEDS}: {err}"));
    let version = run_to_exit(
        {
            let mut command = Command::new(&curl);
            command.arg("--version");
            command
        },
        Duration::from_secs(10),
    );
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("HTTP2"),
        "{NEEDS}: {}",
        String::from_utf8_lossy(&version.stdout)
    );
    curl
}

/// `curl --cacert cert -sSN --http1.1|--http2 https://localhost:PORT{target}`, to its exit (10 s at
/// most, by curl's own --max-time), off the runtime's workers.
async fn run_curl(cert: &TestCert, proxy: &Proxy, http: &str, target: &str) -> Output {
    let mut command = Command::new(curl());
    let port = proxy.addr.port();
    command
        .arg("--cacert")
        .arg(&cert.cert)
        .arg(http)
        .args(["-sSN", "--max-time", "10"])
        // The proxy listens on 127.0.0.1 alone: no attempt at ::1 first.
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg(format!("https://localhost:{port}{target}"));
    tokio::task::spawn_blocking(move || run_to_exit(command, Duration::from_secs(20)))
        .await
        .expect("curl's runner")
}

#[track_caller]
fn assert_exit(output: &Output, code: i32, what: &str) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}: curl's stderr: {}; stdout: {:?}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs curl with HTTP/2 (apt-get install curl)"]
async fn curl_over_https_http1_exits_18_at_the_idle_cut() {
    let cert = localhost_cert();
    let (_origin, proxy) =
        origin_and_tls_proxy(&cert, cutting_timers(Some(IDLE), OFF), |_| {}).await;
    let output = run_curl(&cert, &proxy, "--http1.1", "/polls/streamed?sleep=3").await;
    assert_exit(&output, 18, "a truncated body (CURLE_PARTIAL_FILE)");
    assert_eq!(String::from_utf8_lossy(&output.stdout), FIRST_LINE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs curl with HTTP/2 (apt-get install curl)"]
async fn curl_over_https_http2_exits_92_at_the_idle_cut() {
    let cert = localhost_cert();
    let (_origin, proxy) =
        origin_and_tls_proxy(&cert, cutting_timers(Some(IDLE), OFF), |_| {}).await;
    let output = run_curl(&cert, &proxy, "--http2", "/polls/streamed?sleep=3").await;
    assert_exit(&output, 92, "a reset stream (CURLE_HTTP2_STREAM)");
    assert_eq!(String::from_utf8_lossy(&output.stdout), FIRST_LINE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs curl with HTTP/2 (apt-get install curl)"]
async fn curl_over_https_http2_heartbeats_keep_the_stream_alive_and_it_exits_0() {
    let cert = localhost_cert();
    let (_origin, proxy) = origin_and_tls_proxy(&cert, cutting_timers(ms(300), OFF), |_| {}).await;
    let output = run_curl(
        &cert,
        &proxy,
        "--http2",
        "/polls/streamed?sleep=1&heartbeat=100ms&lines=2",
    )
    .await;
    assert_exit(&output, 0, "a whole stream kept alive by heartbeats");
    let body = String::from_utf8_lossy(&output.stdout);
    assert!(
        body.starts_with(FIRST_LINE) && body.ends_with(SECOND_LINE_END),
        "{body:?}"
    );
    assert_eq!(metric(proxy.admin, &timeouts("idle")).await, 0.0);
}
