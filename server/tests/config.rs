//! The real keepalive-server binary, as an operator starts it: a bad env var stops it at once with
//! exit code 2 and one line naming the variable and the value, and an unusable data directory is
//! named. Cargo builds the binary for these tests (`CARGO_BIN_EXE_*`).

use std::process::{Command, Output};
use std::time::Duration;

use keepalive_kit::ports;
use keepalive_kit::program::{assert_refused, clear_settings, run_to_exit};

/// Longest the binary may take to refuse its settings.
const EXIT_WITHIN: Duration = Duration::from_secs(20);

/// The origin with only `env` set of its settings, run to its exit.
fn run(env: &[(&str, String)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keepalive-server"));
    clear_settings(&mut command);
    command.envs(env.iter().map(|(key, value)| (key, value)));
    run_to_exit(command, EXIT_WITHIN)
}

/// A port free right now, so that a binary that wrongly started would not collide with anything.
fn free_addr() -> String {
    ports::free().expect("a free port").to_string()
}

#[test]
fn server_refuses_a_bad_sleep_with_exit_code_2_and_one_line() {
    let output = run(&[
        ("SERVER_SLEEP", "abc".to_owned()),
        ("SERVER_ADDR", free_addr()),
    ]);
    assert_refused(&output, "SERVER_SLEEP", "abc");
}

#[test]
fn server_refuses_a_default_sleep_above_its_maximum() {
    let output = run(&[
        ("SERVER_SLEEP", "2h".to_owned()),
        ("SERVER_ADDR", free_addr()),
    ]);
    assert_refused(&output, "SERVER_SLEEP", "2h");
}

#[test]
fn server_refuses_an_unusable_data_dir() {
    let output = run(&[
        ("SERVER_DATA_DIR", "/proc/keepalive-data".to_owned()),
        ("SERVER_ADDR", free_addr()),
    ]);
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/proc/keepalive-data"),
        "the refusal names the directory: {stderr}"
    );
}
