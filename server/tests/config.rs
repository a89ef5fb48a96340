//! The real keepalive-server binary, as an operator starts it: a bad env var stops it at once with
//! exit code 2 and one line naming the variable and the value, and an unusable data directory is
//! named. Cargo builds the binary for these tests (`CARGO_BIN_EXE_*`).

use keepalive_kit::ports;
use keepalive_kit::program::{assert_refused, run_with_settings};

const SERVER: &str = env!("CARGO_BIN_EXE_keepalive-server");

#[test]
fn server_refuses_a_bad_sleep_with_exit_code_2_and_one_line() {
    let output = run_with_settings(
        SERVER,
        &[],
        &[
            ("SERVER_SLEEP", "abc".to_owned()),
            ("SERVER_ADDR", ports::free_for_test()),
        ],
    );
    assert_refused(&output, "SERVER_SLEEP", "abc");
}

#[test]
fn server_refuses_a_default_sleep_above_its_maximum() {
    let output = run_with_settings(
        SERVER,
        &[],
        &[
            ("SERVER_SLEEP", "2h".to_owned()),
            ("SERVER_ADDR", ports::free_for_test()),
        ],
    );
    assert_refused(&output, "SERVER_SLEEP", "2h");
}

#[test]
fn server_refuses_an_unusable_data_dir() {
    let output = run_with_settings(
        SERVER,
        &[],
        &[
            ("SERVER_DATA_DIR", "/proc/keepalive-data".to_owned()),
            ("SERVER_ADDR", ports::free_for_test()),
        ],
    );
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/proc/keepalive-data"),
        "the refusal names the directory: {stderr}"
    );
}

/// `SERVER_HEARTBEAT=1ns` once ran: 3 MB of spaces in 3 s per stream, a core busy.
#[test]
fn server_refuses_a_heartbeat_below_the_query_parameters_floor() {
    let output = run_with_settings(
        SERVER,
        &[],
        &[
            ("SERVER_HEARTBEAT", "1ns".to_owned()),
            ("SERVER_DATA_DIR", ":memory:".to_owned()),
            ("SERVER_ADDR", ports::free_for_test()),
        ],
    );
    assert_refused(&output, "SERVER_HEARTBEAT", "1ns");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("at least 10ms"),
        "names the floor: {stderr}"
    );
}
