//! `PROXY_DENY_PATHS`: the upstream's operator routes (`/metrics` by default) are answered 404 by the
//! proxy and never forwarded, however the path is spelled, while their operator still reads them on the
//! upstream's own address. The echo upstream answers 200 to everything, so a 404 is the proxy's own.
//! The setting itself is checked on the real binary, as an operator meets it.

use std::net::SocketAddr;
use std::time::Duration;

use keepalive_kit::client::{get, RawConn};
use keepalive_kit::echo::start_echo;
use keepalive_kit::metrics::{metric, metrics_text};
use keepalive_kit::ports;
use keepalive_kit::program::{assert_refused, run_with_settings};
use keepalive_kit::response::{is_complete_response, RawResponse};
use keepalive_kit::servers::{start_origin_and_proxy, start_proxy, start_proxy_configured};
use keepalive_kit::timing::quiet_timers;

async fn answer(addr: SocketAddr, target: &str) -> RawResponse {
    let mut conn = RawConn::connect(addr).await;
    conn.send(get(target, "").as_bytes()).await;
    assert!(
        conn.read_until(Duration::from_secs(3), is_complete_response)
            .await,
        "a whole response to {target}: {:?}",
        String::from_utf8_lossy(conn.received())
    );
    conn.finish(Duration::ZERO).await.response()
}

#[tokio::test]
async fn the_upstreams_metrics_are_not_served_through_the_proxy_by_default() {
    let echo = start_echo().await;
    let proxy = start_proxy(echo.addr, quiet_timers()).await;
    let spellings = [
        "/metrics",
        "/metrics?format=text",
        "/metrics/",
        "//metrics",
        "/./metrics",
        "/polls/../metrics",
        "/%6detrics",
        "/metrics;x",
    ];
    for target in spellings {
        let response = answer(proxy.addr, target).await;
        assert_eq!(response.status, 404, "{target}: {}", response.text());
        assert_eq!(
            response.header("x-upstream"),
            None,
            "{target} was forwarded"
        );
    }
    assert_eq!(answer(proxy.addr, "/polls/").await.status, 200);
    assert_eq!(
        metric(
            proxy.admin,
            "proxy_client_errors_total{kind=\"denied_path\"}"
        )
        .await,
        spellings.len() as f64
    );
    assert_eq!(
        metric(proxy.admin, "proxy_upstream_errors_total").await,
        0.0
    );
}

#[tokio::test]
async fn the_origins_metrics_stay_readable_on_its_own_address() {
    let (origin, proxy) = start_origin_and_proxy(quiet_timers()).await;
    assert_eq!(answer(proxy.addr, "/metrics").await.status, 404);
    assert!(
        metrics_text(origin.addr)
            .await
            .contains("origin_streams_active"),
        "the origin serves its metrics itself"
    );
}

#[tokio::test]
async fn deny_paths_off_forwards_every_path() {
    let echo = start_echo().await;
    let proxy = start_proxy_configured(echo.addr, quiet_timers(), |config| {
        config.deny_paths = "off".parse().expect("off is valid");
    })
    .await;
    let response = answer(proxy.addr, "/metrics").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-upstream"), Some("echo"));
}

#[tokio::test]
async fn deny_paths_replace_the_default() {
    let echo = start_echo().await;
    let proxy = start_proxy_configured(echo.addr, quiet_timers(), |config| {
        config.deny_paths = "/admin,/debug".parse().expect("a valid list");
    })
    .await;
    for target in ["/admin", "/admin/users", "/debug/pprof"] {
        assert_eq!(answer(proxy.addr, target).await.status, 404, "{target}");
    }
    for target in ["/metrics", "/administrator"] {
        assert_eq!(answer(proxy.addr, target).await.status, 200, "{target}");
    }
}

const PROXY: &str = env!("CARGO_BIN_EXE_keepalive-proxy");

#[test]
fn proxy_refuses_a_deny_path_that_is_not_a_path_with_exit_code_2_and_one_line() {
    let output = run_with_settings(
        PROXY,
        &[],
        &[
            ("PROXY_DENY_PATHS", "/metrics,admin".to_owned()),
            ("PROXY_ADDR", ports::free_for_test()),
            ("PROXY_ADMIN_ADDR", ports::free_for_test()),
        ],
    );
    assert_refused(&output, "PROXY_DENY_PATHS", "admin");
    let line = String::from_utf8_lossy(&output.stderr);
    assert!(line.contains("starting with /"), "says the form: {line}");
}

#[test]
fn proxy_help_documents_deny_paths_and_its_default() {
    let output = run_with_settings(PROXY, &["--help"], &[]);
    assert!(output.status.success(), "--help exits 0: {output:?}");
    let help = String::from_utf8(output.stdout).expect("UTF-8 help");
    assert!(help.contains("PROXY_DENY_PATHS"), "{help}");
    assert!(help.contains("[default: /metrics]"), "{help}");
}
