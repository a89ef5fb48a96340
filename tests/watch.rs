//! `keepalive-lab watch`: each way a stream ends gets its own verdict and curl's exit code, with the
//! chunks and heartbeats the client really received.

use std::process::Command;
use std::time::Duration;

use http::{HeaderValue, StatusCode, Uri};
use keepalive_kit::echo::{echoed_headers, start_echo, values};
use keepalive_kit::program::run_to_exit;
use keepalive_kit::servers::{
    origin_config, start_origin, start_origin_and_proxy, start_proxy_configured, Proxy, Running,
};
use keepalive_kit::timing::{assert_around, ms, OFF};
use keepalive_kit::tls::TestCert;
use keepalive_lab::client::route::ConnectTo;
use keepalive_lab::client::{Client, ClientArgs, ClientError, Protocol};
use keepalive_lab::watch::{observe, Reset, Verdict};
use keepalive_proxy::faults::RESET_AFTER_HEADER;
use keepalive_proxy::TimerSet;

fn timers() -> TimerSet {
    TimerSet {
        connect: ms(2000),
        first_byte: ms(400),
        idle: ms(500),
        max_duration: OFF,
        header: OFF,
        keepalive: OFF,
        send: OFF,
    }
}

fn url(addr: std::net::SocketAddr, target: &str) -> Uri {
    format!("http://{addr}{target}").parse().expect("a URL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finite_stream_is_completed_chunk_by_chunk() {
    let (_origin, proxy) = start_origin_and_proxy(timers()).await;
    let seen = observe(
        &Client::default(),
        &url(proxy.addr, "/polls/streamed?sleep=100ms&lines=3"),
        &[],
        Some(Duration::from_secs(5)),
        |_| {},
    )
    .await;
    assert_eq!(seen.verdict, Verdict::Completed);
    assert_eq!(seen.status, Some(StatusCode::OK));
    assert_eq!(seen.chunks.len(), 3);
    assert_eq!(seen.body_bytes(), 33 + 42 + 26);
    assert!(
        seen.chunks[2].at >= Duration::from_millis(190),
        "{:?}",
        seen.chunks
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cut_is_truncated_and_heartbeats_are_told_apart() {
    let (_origin, proxy) = start_origin_and_proxy(timers()).await;
    let cut = observe(
        &Client::default(),
        &url(proxy.addr, "/polls/streamed?sleep=2s"),
        &[],
        None,
        |_| {},
    )
    .await;
    assert_eq!(cut.verdict, Verdict::Truncated);
    assert_eq!(cut.verdict.exit_code(), 18);
    assert_around(
        cut.ended_at,
        Duration::from_millis(500),
        "idle cut seen by watch",
    );

    let kept = observe(
        &Client::default(),
        &url(proxy.addr, "/polls/streamed?sleep=1s&heartbeat=150ms"),
        &[],
        Some(Duration::from_millis(1600)),
        |_| {},
    )
    .await;
    assert_eq!(
        kept.verdict,
        Verdict::Timeout,
        "heartbeats beat the idle timer"
    );
    assert_eq!(kept.verdict.exit_code(), 28);
    assert!(kept.heartbeats() >= 6, "{:?}", kept.chunks);
    assert_eq!(kept.chunks.len() - kept.heartbeats(), 2, "two poem lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_reset_is_a_reset() {
    let (_origin, proxy) = start_origin_and_proxy(timers()).await;
    let header = (RESET_AFTER_HEADER, HeaderValue::from_static("300ms"));
    let seen = observe(
        &Client::default(),
        &url(proxy.addr, "/polls/streamed?sleep=100ms"),
        &[header],
        Some(Duration::from_secs(3)),
        |_| {},
    )
    .await;
    assert_eq!(seen.verdict, Verdict::Reset(Reset::Tcp));
    assert_eq!(seen.verdict.exit_code(), 56);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_504_is_an_http_verdict() {
    let (_origin, proxy) = start_origin_and_proxy(timers()).await;
    let seen = observe(
        &Client::default(),
        &url(proxy.addr, "/polls/streamed?delay=2s"),
        &[],
        None,
        |_| {},
    )
    .await;
    assert_eq!(seen.verdict, Verdict::Http(StatusCode::GATEWAY_TIMEOUT));
    assert_eq!(seen.verdict.exit_code(), 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_the_verdict_and_exits_with_its_code() {
    let (_origin, proxy) = start_origin_and_proxy(timers()).await;
    let target = url(proxy.addr, "/polls/streamed?sleep=2s").to_string();
    let output = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keepalive-lab"));
        command.args(["watch", &target, "--json"]);
        run_to_exit(command, Duration::from_secs(20))
    })
    .await
    .expect("the command ran");
    assert_eq!(output.status.code(), Some(18));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a verdict line")).expect("JSON");
    assert_eq!(last["verdict"], "truncated", "{stdout}");
    assert_eq!(last["bytes"], 33, "{stdout}");
}

/// The body of one request for `url` with `headers`, as the echo upstream saw it.
async fn echoed(client: &Client, url: &Uri, headers: &[(http::HeaderName, HeaderValue)]) -> String {
    let seen = observe(client, url, headers, Some(Duration::from_secs(5)), |_| {}).await;
    assert_eq!(seen.verdict, Verdict::Completed, "{seen:?}");
    let body: Vec<u8> = seen
        .chunks
        .iter()
        .flat_map(|chunk| chunk.data.to_vec())
        .collect();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_header_replaces_the_url_s_host_on_the_wire() {
    // Probing a balancer by address: nginx answers two Host headers with 400.
    let echo = start_echo().await;
    let url = url(echo.addr, "/x");
    let host = [(http::header::HOST, HeaderValue::from_static("lb.example"))];
    let body = echoed(&Client::default(), &url, &host).await;
    assert_eq!(
        values(&echoed_headers(&body), "host"),
        ["lb.example"],
        "{body}"
    );
    let body = echoed(&Client::default(), &url, &[]).await;
    let own = echo.addr.to_string();
    assert_eq!(
        values(&echoed_headers(&body), "host"),
        [own.as_str()],
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_reaches_an_address_while_host_keeps_the_name() {
    let echo = start_echo().await;
    let args = ClientArgs {
        connect_to: vec![keepalive_lab::client::route::ConnectTo::parse(&format!(
            "lb.example:80:127.0.0.1:{}",
            echo.addr.port()
        ))
        .expect("a rule")],
        ..ClientArgs::default()
    };
    let client = Client::new(&args).expect("a client");
    let body = echoed(&client, &"http://lb.example/x".parse().expect("URL"), &[]).await;
    assert_eq!(
        values(&echoed_headers(&body), "host"),
        ["lb.example"],
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_http_is_h2c_and_an_idle_cut_is_a_stream_reset() {
    let (_origin, proxy) = start_origin_and_proxy(timers()).await;
    let client = Client::new(&ClientArgs {
        http2: true,
        ..ClientArgs::default()
    })
    .expect("a client");
    let seen = observe(
        &client,
        &url(proxy.addr, "/polls/streamed?sleep=2s"),
        &[],
        Some(Duration::from_secs(5)),
        |_| {},
    )
    .await;
    let transport = seen.transport.as_ref().expect("connected");
    assert_eq!(transport.protocol, Protocol::Http2);
    assert_eq!(transport.tls, None);
    assert_eq!(
        seen.verdict,
        Verdict::Reset(Reset::Stream(h2::Reason::INTERNAL_ERROR)),
        "{seen:?}"
    );
    assert!(
        seen.explain().contains("RST_STREAM INTERNAL_ERROR"),
        "{}",
        seen.explain()
    );
    assert_around(seen.ended_at, Duration::from_millis(500), "h2c idle cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_plain_server_fails_its_tls_handshake() {
    let (_origin, proxy) = start_origin_and_proxy(timers()).await;
    let url: Uri = format!("https://{}/polls/", proxy.addr)
        .parse()
        .expect("URL");
    let seen = observe(
        &Client::default(),
        &url,
        &[],
        Some(Duration::from_secs(5)),
        |_| {},
    )
    .await;
    assert!(
        matches!(seen.verdict, Verdict::Failed(ClientError::Tls { .. })),
        "{seen:?}"
    );
    assert_eq!(seen.verdict.exit_code(), 35);
}

/// The origin, and keepalive-proxy serving HTTPS in front of it with `cert`.
async fn start_https_proxy(cert: &TestCert) -> (Running, Proxy) {
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy_configured(origin.addr, timers(), |config| {
        config.tls_cert = Some(cert.cert_file());
        config.tls_key = Some(cert.key_file());
    })
    .await;
    (origin, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_http2_a_finite_stream_ends_with_end_stream_and_only_its_lines_are_chunks() {
    let cert = TestCert::localhost().expect("a test certificate");
    let (_origin, proxy) = start_https_proxy(&cert).await;
    let client = Client::new(&ClientArgs {
        cacert: Some(cert.cert_file()),
        ..ClientArgs::default()
    })
    .expect("a client");
    let url: Uri = format!(
        "https://localhost:{}/polls/streamed?sleep=100ms&lines=2",
        proxy.addr.port()
    )
    .parse()
    .expect("a URL");
    let seen = observe(&client, &url, &[], Some(Duration::from_secs(5)), |_| {}).await;
    let transport = seen.transport.as_ref().expect("connected");
    assert_eq!(transport.protocol, Protocol::Http2, "ALPN offers h2 first");
    assert_eq!(transport.alpn.as_deref(), Some("h2"));
    assert_eq!(seen.verdict, Verdict::Completed, "{seen:?}");
    // HTTP/2 may end with an empty DATA frame: an end, not a chunk.
    assert_eq!(seen.chunks.len(), 2, "{:?}", seen.chunks);
    assert!(seen.explain().contains("END_STREAM"), "{}", seen.explain());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_fails_with_curls_60_and_says_how_to_trust_it() {
    let cert = TestCert::localhost().expect("a test certificate");
    let (_origin, proxy) = start_https_proxy(&cert).await;
    let url: Uri = format!("https://localhost:{}/polls/", proxy.addr.port())
        .parse()
        .expect("a URL");
    let seen = observe(
        &Client::default(),
        &url,
        &[],
        Some(Duration::from_secs(5)),
        |_| {},
    )
    .await;
    assert!(
        matches!(seen.verdict, Verdict::Failed(_)),
        "{:?}",
        seen.verdict
    );
    assert_eq!(seen.verdict.exit_code(), 60);
    assert!(
        seen.explain().contains("--cacert FILE"),
        "{}",
        seen.explain()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cacert_trusts_an_openssl_style_self_signed_certificate_as_the_servers_own() {
    // CA:TRUE, as `openssl req -x509` makes it; curl --cacert trusts it, and so must the lab.
    let cert = TestCert::openssl_style().expect("a test certificate");
    let (_origin, proxy) = start_https_proxy(&cert).await;
    let client = Client::new(&ClientArgs {
        cacert: Some(cert.cert_file()),
        ..ClientArgs::default()
    })
    .expect("a client");
    let url: Uri = format!(
        "https://localhost:{}/polls/streamed?sleep=100ms&lines=1",
        proxy.addr.port()
    )
    .parse()
    .expect("a URL");
    let seen = observe(&client, &url, &[], Some(Duration::from_secs(5)), |_| {}).await;
    assert_eq!(seen.verdict, Verdict::Completed, "{}", seen.explain());
    // Pinned for its names only: another name at the same address is refused.
    let other: Uri = format!("https://other.example:{}/polls/", proxy.addr.port())
        .parse()
        .expect("a URL");
    let client = Client::new(&ClientArgs {
        cacert: Some(cert.cert_file()),
        connect_to: vec![ConnectTo::parse(&format!(
            "other.example:{0}:127.0.0.1:{0}",
            proxy.addr.port()
        ))
        .expect("a --connect-to")],
        ..ClientArgs::default()
    })
    .expect("a client");
    let seen = observe(&client, &other, &[], Some(Duration::from_secs(5)), |_| {}).await;
    assert_eq!(seen.verdict.exit_code(), 60, "{}", seen.explain());
}
