//! How the lab's `watch` and `probe` judge the proxy's cuts in every cut style: a clean cut (the
//! stream ends as if complete) is still told from a real end, by what the stream owed (its lines, its
//! SSE end event), and a compressed body is not judged by its bytes. The wire itself, style by style,
//! is tested in the proxy's `tests/cut_style.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Uri};
use keepalive_kit::servers::{
    origin_config, start_cutting_proxy, start_origin, start_origin_and_cutting_proxy,
    start_proxy_configured, Running, FIRST_LINE,
};
use keepalive_kit::timing::{assert_around, cutting_timers, ms, OFF};
use keepalive_lab::client::Client;
use keepalive_lab::expect::Shortfall;
use keepalive_lab::probe::{measure, Findings, Trials};
use keepalive_lab::watch::{observe, Observation, Verdict};
use keepalive_proxy::config::Compression;
use keepalive_proxy::cut_style::{CutStyle, CUT_STYLE_HEADER};
use keepalive_proxy::faults::LIMIT_BYTES_HEADER;
use keepalive_proxy::TimerSet;

const IDLE: Duration = Duration::from_millis(400);

fn url(addr: SocketAddr, target: &str) -> Uri {
    format!("http://{addr}{target}").parse().expect("a URL")
}

/// `keepalive-lab watch` on `target` at `addr`, for 3 s at most.
async fn watch(addr: SocketAddr, target: &str, style: Option<&'static str>) -> Observation {
    let headers: Vec<_> = style
        .map(|style| (CUT_STYLE_HEADER, HeaderValue::from_static(style)))
        .into_iter()
        .collect();
    observe(
        &Client::default(),
        &url(addr, target),
        &headers,
        Some(Duration::from_secs(3)),
        |_| {},
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_calls_a_clean_cut_silent_truncation_and_a_real_end_complete() {
    let (_origin, proxy) =
        start_origin_and_cutting_proxy(cutting_timers(Some(IDLE), OFF), CutStyle::Clean).await;
    let (endless, short, whole, truncated) = tokio::join!(
        watch(proxy.addr, "/polls/streamed?sleep=3", None),
        watch(proxy.addr, "/polls/streamed?lines=2&sleep=3", None),
        watch(proxy.addr, "/polls/streamed?lines=2&sleep=0", None),
        // The same cut asked for in truncate style is an ordinary truncation.
        watch(proxy.addr, "/polls/streamed?sleep=3", Some("truncate")),
    );
    assert!(
        matches!(endless.verdict, Verdict::SilentlyTruncated(_)),
        "{:?}",
        endless.verdict
    );
    assert_eq!(endless.verdict.exit_code(), 65);
    assert_eq!(endless.body_bytes(), FIRST_LINE.len());
    assert_around(endless.ended_at, IDLE, "clean idle cut seen by watch");

    assert_eq!(
        short.verdict,
        Verdict::SilentlyTruncated(Shortfall {
            expected: "2 lines".to_owned(),
            received: "1 lines".to_owned(),
        })
    );
    assert_eq!(short.verdict.exit_code(), 65);
    assert_around(short.ended_at, IDLE, "clean idle cut of a finite stream");

    assert_eq!(whole.verdict, Verdict::Completed, "{:?}", whole.chunks);
    assert_eq!(whole.verdict.exit_code(), 0);
    assert_eq!(whole.body_bytes(), 33 + 42);

    assert_eq!(truncated.verdict, Verdict::Truncated);
    assert_eq!(truncated.verdict.exit_code(), 18);
}

async fn probe(origin: &Running, style: CutStyle) -> Findings {
    let timers = TimerSet {
        first_byte: ms(1_000),
        header: OFF,
        keepalive: OFF,
        ..cutting_timers(ms(1_000), OFF)
    };
    let proxy = start_cutting_proxy(origin.addr, timers, style).await;
    measure(
        &Trials::default(),
        &url(proxy.addr, "/polls/streamed"),
        Duration::from_secs(4),
        |_| {},
    )
    .await
    .expect("the probe ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_how_the_idle_cut_looks_in_each_style() {
    let origin = start_origin(origin_config()).await;
    let (clean, reset, truncated) = tokio::join!(
        probe(&origin, CutStyle::Clean),
        probe(&origin, CutStyle::Reset),
        probe(&origin, CutStyle::Truncate),
    );
    for (findings, look) in [(clean, "clean"), (reset, "reset"), (truncated, "truncated")] {
        let idle = findings
            .idle_timeout_s
            .unwrap_or_else(|| panic!("{look}: no idle timeout measured: {findings:?}"));
        assert_around(
            Duration::from_secs_f64(idle),
            Duration::from_secs(1),
            &format!("{look}: idle measured by the probe ({findings:?})"),
        );
        assert_eq!(findings.idle_cut.as_deref(), Some(look), "{findings:?}");
        assert_eq!(
            findings.first_byte_cut.as_deref(),
            Some("http 504"),
            "{findings:?}"
        );
        assert!(findings.heartbeat_survives, "{look}: {findings:?}");
        assert_eq!(findings.max_duration_s, None, "{look}: {findings:?}");
    }
}

/// What arrived whole is what counts: a clean end in the middle of a line or of an SSE end event is
/// still a cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_counts_only_whole_lines_and_whole_end_events() {
    let (_origin, proxy) =
        start_origin_and_cutting_proxy(cutting_timers(OFF, OFF), CutStyle::Clean).await;
    let limited = |bytes: &'static str| vec![(LIMIT_BYTES_HEADER, HeaderValue::from_static(bytes))];
    let observe_limited = |target: &'static str, bytes: &'static str| {
        let url = url(proxy.addr, target);
        let headers = limited(bytes);
        async move {
            observe(
                &Client::default(),
                &url,
                &headers,
                Some(Duration::from_secs(3)),
                |_| {},
            )
            .await
        }
    };
    // 70 bytes: the first line (33) and most of the second (42).
    let mid_line = observe_limited("/polls/streamed?lines=2&sleep=50ms", "70").await;
    assert!(
        matches!(mid_line.verdict, Verdict::SilentlyTruncated(_)),
        "{:?}",
        mid_line.verdict
    );
    // Both SSE lines and the start of the end event, cut inside it.
    let whole = observe(
        &Client::default(),
        &url(proxy.addr, "/polls/streamed?lines=2&sleep=0&format=sse"),
        &[],
        Some(Duration::from_secs(3)),
        |_| {},
    )
    .await;
    assert_eq!(whole.verdict, Verdict::Completed);
    let cut_inside_end = (whole.body_bytes() - 4).to_string();
    let url = url(proxy.addr, "/polls/streamed?lines=2&sleep=0&format=sse");
    let headers = vec![(
        LIMIT_BYTES_HEADER,
        HeaderValue::try_from(cut_inside_end).expect("a header value"),
    )];
    let mid_event = observe(
        &Client::default(),
        &url,
        &headers,
        Some(Duration::from_secs(3)),
        |_| {},
    )
    .await;
    assert!(
        matches!(mid_event.verdict, Verdict::SilentlyTruncated(_)),
        "{:?}",
        mid_event.verdict
    );
}

/// `watch` does not judge a compressed body by its bytes: a gzip stream that ends whole is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_calls_a_whole_compressed_stream_complete() {
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy_configured(origin.addr, cutting_timers(Some(IDLE), OFF), |config| {
        config.cut_style = CutStyle::Clean;
        config.compression = Compression::Gzip;
        config.compression_ignore_no_transform = true;
    })
    .await;
    let gzip = [(
        http::header::ACCEPT_ENCODING,
        HeaderValue::from_static("gzip"),
    )];
    let complete = observe(
        &Client::default(),
        &url(proxy.addr, "/polls/streamed?lines=2&sleep=0"),
        &gzip,
        Some(Duration::from_secs(3)),
        |_| {},
    )
    .await;
    assert_eq!(
        complete.verdict,
        Verdict::Completed,
        "{:?}",
        complete.headers
    );
}
