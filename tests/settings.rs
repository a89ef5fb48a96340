//! The lab's own settings refused as all three programs refuse theirs: exit 2 and one line naming
//! the setting, the value and the accepted form.

use keepalive_kit::program::{assert_refused, run_with_settings};

const LAB: &str = env!("CARGO_BIN_EXE_keepalive-lab");

#[test]
fn a_bad_number_of_streams_names_the_value_and_what_is_expected() {
    let output = run_with_settings(LAB, &["bench", "--soak", "1m", "--streams", "many"], &[]);
    assert_refused(&output, "--streams", "many");
    let line = String::from_utf8_lossy(&output.stderr);
    assert!(line.contains("a whole number from 1 to 25000"), "{line}");
}

#[test]
fn a_bad_address_names_the_variable_the_value_and_the_forms() {
    let output = run_with_settings(LAB, &[], &[("PROXY_ADDR", "example.test:80".to_owned())]);
    assert_refused(&output, "PROXY_ADDR", "example.test:80");
    let line = String::from_utf8_lossy(&output.stderr);
    assert!(line.contains("localhost:8080 or :8080"), "{line}");
}

#[test]
fn a_bad_switch_names_the_variable_the_value_and_the_words() {
    let output = run_with_settings(
        LAB,
        &[],
        &[("PROXY_BUFFERING_IGNORE_HEADER", "sometimes".to_owned())],
    );
    assert_refused(&output, "PROXY_BUFFERING_IGNORE_HEADER", "sometimes");
    let line = String::from_utf8_lossy(&output.stderr);
    assert!(line.contains("1, 0, true, false"), "{line}");
}
