//! `keepalive-lab bench --soak`, short: the streams it holds reach both programs (their descriptors
//! and their own gauges say so), and once closed both programs are back at their baseline, which the
//! verdict reports as no leak. The soak starts keepalive-server and keepalive-proxy from beside the
//! lab's binary: `cargo test --workspace` (or `cargo build`) builds them.

use std::process::Command;
use std::time::Duration;

use keepalive_kit::program::{clear_settings, run_to_exit};
use serde_json::Value;

const STREAMS: u64 = 50;

fn number(report: &Value, path: &str) -> u64 {
    report
        .pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no {path} in {report}")) as u64
}

#[test]
fn a_short_soak_holds_every_stream_and_finds_them_all_let_go() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keepalive-lab"));
    clear_settings(&mut command);
    command.args([
        "bench",
        "--soak",
        "2s",
        "--streams",
        &STREAMS.to_string(),
        "--json",
    ]);
    let output = run_to_exit(command, Duration::from_secs(90));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}\n{stdout}");
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["leak"], false, "{report}");
    assert!(
        report["verdict"]
            .as_str()
            .is_some_and(|v| v.starts_with("no leak")),
        "{report}"
    );
    assert_eq!(number(&report, "/streams_cut"), 0, "{report}");
    for program in ["proxy", "origin"] {
        let at =
            |phase: &str, figure: &str| number(&report, &format!("/{program}/{phase}/{figure}"));
        assert_eq!(at("before", "streams_active"), 0, "{program}: {report}");
        assert_eq!(
            at("opened", "streams_active"),
            STREAMS,
            "{program}: {report}"
        );
        assert_eq!(at("closed", "streams_active"), 0, "{program}: {report}");
        // One descriptor a stream at the origin, two at the proxy (client and upstream).
        assert!(
            at("held", "descriptors") >= at("before", "descriptors") + STREAMS,
            "{program}: {report}"
        );
        assert!(
            at("closed", "descriptors") <= at("before", "descriptors") + 8,
            "{program}: {report}"
        );
        assert!(
            at("held", "rss_kib") > 0 && at("held", "threads") > 0,
            "{report}"
        );
    }
}
