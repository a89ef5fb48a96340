//! The real keepalive-proxy binary, as an operator starts it: a bad env var stops it at once with
//! exit code 2 and one line naming the variable and the value, and `keepalive-proxy --help` documents
//! every preset and every env var. Cargo builds the binary for these tests (`CARGO_BIN_EXE_*`).

use keepalive_kit::ports;
use keepalive_kit::program::{assert_refused, run_with_settings};

const PROXY: &str = env!("CARGO_BIN_EXE_keepalive-proxy");

#[test]
fn proxy_refuses_a_bad_idle_timeout_with_exit_code_2_and_one_line() {
    let output = run_with_settings(
        PROXY,
        &[],
        &[
            ("PROXY_IDLE_TIMEOUT", "soon".to_owned()),
            ("PROXY_ADDR", ports::free_for_test()),
            ("PROXY_ADMIN_ADDR", ports::free_for_test()),
        ],
    );
    assert_refused(&output, "PROXY_IDLE_TIMEOUT", "soon");
}

#[test]
fn proxy_refuses_an_unknown_preset_listing_the_known_ones() {
    let output = run_with_settings(
        PROXY,
        &[],
        &[
            ("PROXY_PRESET", "apache".to_owned()),
            ("PROXY_ADDR", ports::free_for_test()),
            ("PROXY_ADMIN_ADDR", ports::free_for_test()),
        ],
    );
    assert_refused(&output, "PROXY_PRESET", "apache");
    let line = String::from_utf8_lossy(&output.stderr);
    assert!(
        line.contains("aws-alb") && line.contains("heroku"),
        "{line}"
    );
}

#[test]
fn proxy_refuses_an_unknown_cut_style_listing_the_known_ones() {
    let output = run_with_settings(
        PROXY,
        &[],
        &[
            ("PROXY_CUT_STYLE", "polite".to_owned()),
            ("PROXY_ADDR", ports::free_for_test()),
            ("PROXY_ADMIN_ADDR", ports::free_for_test()),
        ],
    );
    assert_refused(&output, "PROXY_CUT_STYLE", "polite");
    let line = String::from_utf8_lossy(&output.stderr);
    assert!(
        line.contains("truncate") && line.contains("clean") && line.contains("reset"),
        "{line}"
    );
}

#[test]
fn proxy_refuses_a_bad_rust_log_instead_of_hiding_logs() {
    let output = run_with_settings(
        PROXY,
        &[],
        &[
            ("RUST_LOG", "keepalive_proxy=loud".to_owned()),
            ("PROXY_ADDR", ports::free_for_test()),
            ("PROXY_ADMIN_ADDR", ports::free_for_test()),
        ],
    );
    assert_refused(&output, "RUST_LOG", "keepalive_proxy=loud");
}

fn proxy_help() -> String {
    let output = run_with_settings(PROXY, &["--help"], &[]);
    assert!(output.status.success(), "--help exits 0: {output:?}");
    String::from_utf8(output.stdout).expect("UTF-8 help")
}

#[test]
fn proxy_help_lists_every_preset_and_timer_env_var() {
    let help = proxy_help();
    for preset in [
        "nginx",
        "haproxy",
        "envoy",
        "aws-alb",
        "heroku",
        "cloudflare",
        "gcp",
    ] {
        assert!(
            help.contains(preset),
            "--help lacks preset {preset}:\n{help}"
        );
    }
    for env in [
        "PROXY_ADDR",
        "PROXY_UPSTREAM",
        "PROXY_ADMIN_ADDR",
        "PROXY_PRESET",
        "PROXY_CONNECT_TIMEOUT",
        "PROXY_FIRST_BYTE_TIMEOUT",
        "PROXY_IDLE_TIMEOUT",
        "PROXY_MAX_DURATION",
        "PROXY_HEADER_TIMEOUT",
        "PROXY_KEEPALIVE_TIMEOUT",
        "PROXY_SEND_TIMEOUT",
        "PROXY_MAX_CONNECTIONS",
        "PROXY_DENY_PATHS",
        "PROXY_DRAIN_TIMEOUT",
        "PROXY_CUT_STYLE",
        "PROXY_FAULT_LATENCY",
        "PROXY_FAULT_BANDWIDTH",
        "PROXY_FAULT_LIMIT_BYTES",
        "PROXY_FAULT_RESET_AFTER",
        "PROXY_FAULT_BLACKHOLE_AFTER",
        "PROXY_FAULT_PROBABILITY",
        "PROXY_BUFFERING",
        "PROXY_BUFFERING_IGNORE_HEADER",
        "PROXY_FAULT_HEADERS",
        "PROXY_COMPRESSION",
        "PROXY_COMPRESSION_IGNORE_NO_TRANSFORM",
        "LOG_FORMAT",
    ] {
        assert!(help.contains(env), "--help lacks {env}:\n{help}");
    }
}

#[test]
fn proxy_help_explains_the_logging_env_vars() {
    let help = proxy_help();
    for env in ["RUST_LOG", "LOG_FORMAT"] {
        assert!(help.contains(env), "{env} missing from --help:\n{help}");
    }
}

#[test]
fn proxy_refuses_an_admin_listener_beyond_loopback_without_a_token() {
    let admin = format!("0.0.0.0:{}", ports::free().expect("a free port").port());
    let output = run_with_settings(
        PROXY,
        &[],
        &[
            ("PROXY_ADDR", ports::free_for_test()),
            ("PROXY_ADMIN_ADDR", admin.clone()),
        ],
    );
    assert_refused(&output, "PROXY_ADMIN_ADDR", &admin);
    let line = String::from_utf8_lossy(&output.stderr);
    assert!(
        line.contains("PROXY_ADMIN_TOKEN"),
        "says how to allow it: {line}"
    );
}
