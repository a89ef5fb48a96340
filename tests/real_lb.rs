//! Conformance with real balancers: nginx and HAProxy (from Debian's packages, configured from
//! `lb/`) and keepalive-proxy each put in front of the origin with the same scaled-down timers, and
//! held to the same observable outcome: the idle cut at the same time with the same ending (a
//! chunked body without its last chunk), a 504 before headers, heartbeats that survive, and the
//! probe's numbers. Plus nginx's default `proxy_buffering on` with gzip, which holds heartbeats back
//! unless the origin's `X-Accel-Buffering: no` is honoured.
//!
//! Over HTTPS, nginx with `ssl http2` (`lb/nginx/tls.conf`) and keepalive-proxy terminating TLS are
//! held to the same through the lab's own client: over HTTP/1.1 the idle cut is a truncated body,
//! over HTTP/2 a RST_STREAM, heartbeats keep an HTTP/2 stream alive, and the probe, reaching the
//! balancer by name at its address (`--connect-to`), measures the idle timer.
//!
//! The tests of nginx and HAProxy (their names say which) are ignored by plain `cargo test`, which
//! lists them with what they need; `cargo test -- --include-ignored` (`scripts/test-all`, hence CI)
//! runs them, and fails them where the program is not installed. The programs are stopped
//! gracefully (nginx with SIGQUIT, waited for with its workers), never left running.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use keepalive_kit::client::{get, raw_request, Ending, RawConn, Transcript};
use keepalive_kit::ports;
use keepalive_kit::program::{self, Program};
use keepalive_kit::servers::{
    origin_config, start_origin, start_proxy_configured, Proxy, Running, FIRST_LINE,
};
use keepalive_kit::timing::{assert_around, ms, OFF};
use keepalive_kit::tls::TestCert;
use keepalive_lab::client::route::ConnectTo;
use keepalive_lab::client::tls::TlsEnd;
use keepalive_lab::client::{Client, ClientArgs, Protocol};
use keepalive_lab::probe::{measure, Trials};
use keepalive_lab::watch::{observe, Observation, Reset, Verdict};
use keepalive_proxy::TimerSet;

const IDLE: Duration = Duration::from_millis(1000);

/// The timers every balancer here gets; nginx and HAProxy have one timer for first byte and idle.
fn timers() -> TimerSet {
    TimerSet {
        connect: ms(1000),
        first_byte: Some(IDLE),
        idle: Some(IDLE),
        max_duration: OFF,
        header: ms(5000),
        keepalive: ms(5000),
        send: ms(5000),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Nginx,
    Haproxy,
    KeepaliveProxy,
    /// nginx terminating TLS, HTTP/2 by ALPN.
    NginxTls,
    /// keepalive-proxy terminating TLS, HTTP/2 by ALPN.
    KeepaliveProxyTls,
}

impl Kind {
    fn tls(self) -> bool {
        matches!(self, Kind::NginxTls | Kind::KeepaliveProxyTls)
    }
}

/// A balancer in front of the origin, stopped (and its files removed) on drop.
struct Balancer {
    addr: SocketAddr,
    /// The certificate it serves, over TLS.
    cert: Option<TestCert>,
    _origin: Running,
    _program: Option<Program>,
    _proxy: Option<Proxy>,
}

/// `template` with every `${NAME}` replaced; panics on a field left unfilled.
fn render(template: &Path, fields: &[(&str, String)]) -> String {
    let mut text = std::fs::read_to_string(template)
        .unwrap_or_else(|err| panic!("read {}: {err}", template.display()));
    for (name, value) in fields {
        text = text.replace(&format!("${{{name}}}"), value);
    }
    let config: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !config.contains("${"),
        "unfilled field in {}:\n{config}",
        template.display()
    );
    text
}

fn millis(duration: Option<Duration>) -> String {
    format!(
        "{}ms",
        duration.expect("a timer the balancer has").as_millis()
    )
}

/// `kind` in front of a new origin; nginx gets `nginx_extra` in its location.
async fn start(kind: Kind, nginx_extra: &str) -> Balancer {
    let origin = start_origin(origin_config()).await;
    let timers = timers();
    let cert = kind
        .tls()
        .then(|| TestCert::localhost().expect("a test certificate"));
    match (kind, &cert) {
        (Kind::KeepaliveProxy, _) | (Kind::KeepaliveProxyTls, _) => {
            let proxy = start_proxy_configured(origin.addr, timers, |config| {
                if let Some(cert) = &cert {
                    config.tls_cert = Some(cert.cert_file());
                    config.tls_key = Some(cert.key_file());
                }
            })
            .await;
            return Balancer {
                addr: proxy.addr,
                cert,
                _origin: origin,
                _program: None,
                _proxy: Some(proxy),
            };
        }
        _ => {}
    }
    let name = if kind == Kind::Haproxy {
        "haproxy"
    } else {
        "nginx"
    };
    let addr = ports::free().expect("a free port");
    let dir = std::env::temp_dir().join(format!(
        "keepalive-lab-{name}-{}-{}",
        std::process::id(),
        addr.port()
    ));
    std::fs::create_dir_all(&dir).expect("a run directory");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = |file: fn(&TestCert) -> &Path| {
        cert.as_ref()
            .map_or_else(String::new, |cert| file(cert).display().to_string())
    };
    let fields = [
        ("CERT", path(|cert| &cert.cert)),
        ("KEY", path(|cert| &cert.key)),
        ("LISTEN_PORT", addr.port().to_string()),
        ("UPSTREAM_PORT", origin.addr.port().to_string()),
        ("RUN_DIR", dir.display().to_string()),
        ("CONNECT", millis(timers.connect)),
        ("IDLE", millis(timers.idle)),
        ("HEADER", millis(timers.header)),
        ("KEEPALIVE", millis(timers.keepalive)),
        ("CLIENT", "30s".to_owned()),
        ("EXTRA", nginx_extra.to_owned()),
    ];
    let log = dir.join("stderr.log");
    let stderr = std::fs::File::create(&log).expect("a log file");
    let started = match kind {
        Kind::Nginx | Kind::NginxTls => {
            let config = dir.join("nginx.conf");
            let template = if kind == Kind::NginxTls {
                "lb/nginx/tls.conf"
            } else {
                "lb/nginx/proxy.conf"
            };
            let text = render(&root.join(template), &fields);
            std::fs::write(&config, text).expect("write the config");
            Program::nginx(&config, &dir, stderr.into())
        }
        _ => {
            let config = dir.join("haproxy.cfg");
            let text = render(&root.join("lb/haproxy/proxy.cfg"), &fields);
            std::fs::write(&config, text).expect("write the config");
            program::installed(name).and_then(|binary| {
                let mut command = Command::new(binary);
                command
                    .arg("-db")
                    .arg("-f")
                    .arg(&config)
                    .stdout(Stdio::null())
                    .stderr(stderr);
                Program::start(name, command)
            })
        }
    };
    let mut balancer = match started {
        Ok(balancer) => balancer.scratch(dir),
        Err(err) => {
            let _ = std::fs::remove_dir_all(&dir);
            panic!("{err}");
        }
    };
    // A blocking poll: the test's other worker thread serves the origin meanwhile.
    if let Err(err) =
        tokio::task::block_in_place(|| balancer.listening(addr, Duration::from_secs(5)))
    {
        panic!(
            "{err}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    Balancer {
        addr,
        cert,
        _origin: origin,
        _program: Some(balancer),
        _proxy: None,
    }
}

async fn idle_cut_truncates_the_chunked_body(kind: Kind) {
    let balancer = start(kind, "").await;
    let transcript = raw_request(
        balancer.addr,
        &get("/polls/streamed?sleep=3s", ""),
        Duration::from_secs(4),
    )
    .await;
    let response = transcript.response();
    assert_eq!(response.status, 200, "{kind:?}: {}", transcript.text());
    assert!(response.is_chunked(), "{kind:?}: {:?}", response.headers);
    let body = response.data();
    assert!(
        String::from_utf8_lossy(&body.data).starts_with(FIRST_LINE),
        "{kind:?}: {}",
        transcript.text()
    );
    assert!(!body.complete, "{kind:?}: a cut body has no last chunk");
    assert_eq!(
        transcript.ending,
        Ending::Eof,
        "{kind:?} closes the connection"
    );
    assert_around(transcript.ended_at, IDLE, &format!("{kind:?} idle cut"));
}

async fn answers_504_before_headers(kind: Kind) {
    let balancer = start(kind, "").await;
    let transcript = raw_request(
        balancer.addr,
        &get("/polls/streamed?delay=3s", "Connection: close\r\n"),
        Duration::from_secs(4),
    )
    .await;
    assert_eq!(
        transcript.response().status,
        504,
        "{kind:?}: {}",
        transcript.text()
    );
    let at = transcript.first_byte_at.expect("an answer");
    assert_around(at, IDLE, &format!("{kind:?} 504"));
}

async fn heartbeats_keep_a_stream_alive(kind: Kind) {
    let balancer = start(kind, "").await;
    let mut conn = RawConn::connect(balancer.addr).await;
    conn.send(get("/polls/streamed?sleep=1500ms&heartbeat=300ms", "").as_bytes())
        .await;
    // The third line is due at 3 s: 1.2 s to spare on a loaded machine.
    let transcript = conn.finish(Duration::from_millis(4200)).await;
    assert_eq!(
        transcript.ending,
        Ending::Open,
        "{kind:?}: {}",
        transcript.text()
    );
    let text = String::from_utf8_lossy(&transcript.response().data().data).into_owned();
    assert!(
        text.contains("Jumped into the blue water") && text.contains("And smiled"),
        "{kind:?}: lines 1.5 s apart passed a {IDLE:?} idle timer: {text:?}"
    );
}

async fn probe_measures_the_idle_timer(kind: Kind) {
    let balancer = start(kind, "").await;
    let url = format!("http://{}/polls/streamed", balancer.addr)
        .parse()
        .expect("a URL");
    let findings = measure(&Trials::default(), &url, Duration::from_secs(3), |_| {})
        .await
        .unwrap_or_else(|err| panic!("{kind:?}: {err}"));
    let idle = findings.idle_timeout_s.expect("an idle timeout");
    assert!(
        (idle - 1.0).abs() <= 0.2,
        "{kind:?}: idle {idle}, want 1.0: {findings:?}"
    );
    let first_byte = findings.first_byte_timeout_s.expect("a first-byte timeout");
    assert!((first_byte - 1.0).abs() <= 0.2, "{kind:?}: {findings:?}");
    assert_eq!(
        findings.first_byte_status,
        Some(504),
        "{kind:?}: {findings:?}"
    );
    assert!(findings.heartbeat_survives, "{kind:?}: {findings:?}");
    assert_eq!(findings.max_duration_s, None, "{kind:?}: {findings:?}");
}

macro_rules! conformance {
    ($($(#[$needs:meta])? $kind:ident: $idle:ident, $gateway:ident, $heartbeats:ident, $probe:ident;)+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$needs])?
            async fn $idle() {
                idle_cut_truncates_the_chunked_body(Kind::$kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$needs])?
            async fn $gateway() {
                answers_504_before_headers(Kind::$kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$needs])?
            async fn $heartbeats() {
                heartbeats_keep_a_stream_alive(Kind::$kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$needs])?
            async fn $probe() {
                probe_measures_the_idle_timer(Kind::$kind).await;
            }
        )+
    };
}

conformance! {
    #[ignore = "needs nginx (apt-get install nginx)"]
    Nginx: nginx_idle_cut_truncates_the_chunked_body, nginx_answers_504_before_headers,
        nginx_lets_heartbeats_keep_a_stream_alive, probe_measures_nginx;
    #[ignore = "needs haproxy (apt-get install haproxy)"]
    Haproxy: haproxy_idle_cut_truncates_the_chunked_body, haproxy_answers_504_before_headers,
        haproxy_lets_heartbeats_keep_a_stream_alive, probe_measures_haproxy;
    KeepaliveProxy: keepalive_proxy_idle_cut_truncates_the_chunked_body,
        keepalive_proxy_answers_504_before_headers, keepalive_proxy_lets_heartbeats_keep_a_stream_alive,
        probe_measures_keepalive_proxy;
}

/// The lab's client trusting `balancer`'s certificate, speaking HTTP/2 or HTTP/1.1 only, and
/// reaching `lb.example:443` at the balancer's address.
fn tls_client(balancer: &Balancer, http2: bool) -> Client {
    let cert = balancer.cert.as_ref().expect("a balancer over TLS");
    let rule = format!("lb.example:443:127.0.0.1:{}", balancer.addr.port());
    Client::new(&ClientArgs {
        cacert: Some(cert.cert_file()),
        connect_to: vec![ConnectTo::parse(&rule).expect("a --connect-to rule")],
        http1: !http2,
        http2,
        ..ClientArgs::default()
    })
    .expect("a client")
}

async fn watch_over_tls(kind: Kind, http2: bool, target: &str, max: Duration) -> Observation {
    let balancer = start(kind, "").await;
    let url = format!("https://localhost:{}{target}", balancer.addr.port())
        .parse()
        .expect("a URL");
    let seen = observe(&tls_client(&balancer, http2), &url, &[], Some(max), |_| {}).await;
    let transport = seen
        .transport
        .as_ref()
        .unwrap_or_else(|| panic!("{kind:?}: {seen:?}"));
    let (protocol, alpn) = if http2 {
        (Protocol::Http2, "h2")
    } else {
        (Protocol::Http1, "http/1.1")
    };
    assert_eq!(transport.protocol, protocol, "{kind:?}: {transport}");
    assert_eq!(
        transport.alpn.as_deref(),
        Some(alpn),
        "{kind:?}: {transport}"
    );
    assert!(transport.tls.is_some(), "{kind:?}: {transport}");
    seen
}

async fn https_idle_cut_truncates_the_body(kind: Kind) {
    let seen = watch_over_tls(
        kind,
        false,
        "/polls/streamed?sleep=3s",
        Duration::from_secs(4),
    )
    .await;
    assert_eq!(
        seen.verdict,
        Verdict::Truncated,
        "{kind:?}: {}",
        seen.explain()
    );
    assert_eq!(seen.body_bytes(), FIRST_LINE.len(), "{kind:?}");
    // nginx closes TLS properly before the connection; so does keepalive-proxy's truncate style.
    assert_eq!(
        seen.tls_end,
        Some(TlsEnd::CloseNotify),
        "{kind:?}: {}",
        seen.explain()
    );
    assert_around(seen.ended_at, IDLE, &format!("{kind:?} idle cut over TLS"));
}

async fn https_h2_idle_cut_resets_the_stream(kind: Kind) {
    let seen = watch_over_tls(
        kind,
        true,
        "/polls/streamed?sleep=3s",
        Duration::from_secs(4),
    )
    .await;
    assert_eq!(
        seen.verdict,
        Verdict::Reset(Reset::Stream(h2::Reason::INTERNAL_ERROR)),
        "{kind:?}: {}",
        seen.explain()
    );
    assert_eq!(seen.body_bytes(), FIRST_LINE.len(), "{kind:?}");
    assert_around(seen.ended_at, IDLE, &format!("{kind:?} h2 idle cut"));
}

async fn https_h2_heartbeats_keep_a_stream_alive(kind: Kind) {
    let seen = watch_over_tls(
        kind,
        true,
        "/polls/streamed?sleep=1500ms&heartbeat=300ms",
        Duration::from_millis(4200),
    )
    .await;
    assert_eq!(
        seen.verdict,
        Verdict::Timeout,
        "{kind:?}: {}",
        seen.explain()
    );
    let text: String = seen
        .chunks
        .iter()
        .map(|chunk| String::from_utf8_lossy(&chunk.data).into_owned())
        .collect();
    assert!(
        text.contains("Jumped into the blue water") && text.contains("And smiled"),
        "{kind:?}: lines 1.5 s apart passed a {IDLE:?} idle timer over HTTP/2: {text:?}"
    );
}

async fn probe_measures_over_https_by_address(kind: Kind) {
    let balancer = start(kind, "").await;
    let trials = Trials {
        client: tls_client(&balancer, true),
        headers: Vec::new(),
    };
    let url = "https://lb.example/polls/streamed".parse().expect("a URL");
    let findings = measure(&trials, &url, Duration::from_secs(3), |_| {})
        .await
        .unwrap_or_else(|err| panic!("{kind:?}: {err}"));
    assert_eq!(findings.protocol, "HTTP/2", "{kind:?}: {findings:?}");
    assert!(findings.tls.is_some(), "{kind:?}: {findings:?}");
    let idle = findings.idle_timeout_s.expect("an idle timeout");
    assert!(
        (idle - 1.0).abs() <= 0.2,
        "{kind:?}: idle {idle}, want 1.0: {findings:?}"
    );
    assert_eq!(
        findings.idle_cut.as_deref(),
        Some("reset"),
        "{kind:?}: {findings:?}"
    );
    assert_eq!(
        findings.first_byte_status,
        Some(504),
        "{kind:?}: {findings:?}"
    );
    assert!(findings.heartbeat_survives, "{kind:?}: {findings:?}");
}

macro_rules! conformance_tls {
    ($($(#[$needs:meta])? $kind:ident: $h1:ident, $h2:ident, $heartbeats:ident, $probe:ident;)+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$needs])?
            async fn $h1() {
                https_idle_cut_truncates_the_body(Kind::$kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$needs])?
            async fn $h2() {
                https_h2_idle_cut_resets_the_stream(Kind::$kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$needs])?
            async fn $heartbeats() {
                https_h2_heartbeats_keep_a_stream_alive(Kind::$kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$needs])?
            async fn $probe() {
                probe_measures_over_https_by_address(Kind::$kind).await;
            }
        )+
    };
}

conformance_tls! {
    #[ignore = "needs nginx (apt-get install nginx)"]
    NginxTls: nginx_https_idle_cut_truncates_the_body, nginx_https_h2_idle_cut_resets_the_stream,
        nginx_https_h2_heartbeats_keep_a_stream_alive, probe_measures_nginx_over_https;
    KeepaliveProxyTls: keepalive_proxy_https_idle_cut_truncates_the_body,
        keepalive_proxy_https_h2_idle_cut_resets_the_stream,
        keepalive_proxy_https_h2_heartbeats_keep_a_stream_alive,
        probe_measures_keepalive_proxy_over_https;
}

/// nginx's gzip, as commonly switched on for text; what it holds back depends on buffering.
const NGINX_GZIP: &str = "gzip on; gzip_types text/plain; gzip_proxied any; gzip_min_length 1;";

/// What a gzip-accepting client gets in 2 s of a heartbeated stream through `nginx_extra`.
async fn gzip_client_in_two_seconds(nginx_extra: &str) -> Transcript {
    let balancer = start(Kind::Nginx, nginx_extra).await;
    let mut conn = RawConn::connect(balancer.addr).await;
    conn.send(
        get(
            "/polls/streamed?sleep=5s&heartbeat=200ms",
            "Accept-Encoding: gzip\r\n",
        )
        .as_bytes(),
    )
    .await;
    conn.finish(Duration::from_millis(2000)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx (apt-get install nginx)"]
async fn nginx_buffering_holds_heartbeats_back_unless_the_origin_says_no() {
    // Buffered (X-Accel-Buffering ignored), gzip waits for more data: nothing at all in 2 s, not
    // even the response head, which goes out with the first compressed bytes.
    let ignoring = format!("proxy_ignore_headers X-Accel-Buffering; {NGINX_GZIP}");
    let held = gzip_client_in_two_seconds(&ignoring).await;
    assert_eq!(held.text(), "", "buffered and gzipped, the stream is held");
    assert_eq!(held.ending, Ending::Open);
    // Unbuffered on the origin's word, nginx flushes every chunk through gzip: they pass.
    let passed = gzip_client_in_two_seconds(NGINX_GZIP).await;
    let response = passed.response();
    assert_eq!(response.header("content-encoding"), Some("gzip"));
    let bytes = response.data().data.len();
    assert!(
        bytes > 40,
        "with X-Accel-Buffering: no the heartbeats pass, got {bytes} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx (apt-get install nginx)"]
async fn nginx_buffering_alone_forwards_each_chunk_as_it_comes() {
    // Without a filter that waits for more data, nginx's buffering does not delay a slow stream:
    // it writes what it has whenever the origin has nothing more to read.
    let balancer = start(Kind::Nginx, "proxy_ignore_headers X-Accel-Buffering;").await;
    let mut conn = RawConn::connect(balancer.addr).await;
    conn.send(get("/polls/streamed?sleep=5s&heartbeat=200ms", "").as_bytes())
        .await;
    let transcript = conn.finish(Duration::from_millis(2000)).await;
    let text = String::from_utf8_lossy(&transcript.response().data().data).into_owned();
    let heartbeats = text
        .strip_prefix(FIRST_LINE)
        .map(|rest| rest.matches(' ').count());
    assert!(heartbeats >= Some(5), "{text:?}");
}
