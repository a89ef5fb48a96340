//! The real binaries, as an operator starts them: a bad env var stops them at once with exit code 2 and
//! one line naming the variable and the value, and `keepalive-proxy --help` documents every preset and
//! every env var.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Longest a binary may take to refuse its settings or print its help.
const EXIT_WITHIN: Duration = Duration::from_secs(20);

/// Path of a workspace binary, next to `keepalive-lab` (the root package's only binary, which cargo
/// builds for these tests). `cargo test --workspace` builds keepalive-server's binary for its own tests
/// but not keepalive-proxy's, and a binary left from an earlier build may be stale, so both are built
/// once here: a no-op when they are up to date. Cargo no longer holds the build lock while tests run.
fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let lab = Path::new(env!("CARGO_BIN_EXE_keepalive-lab"));
    let path = lab.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if let Err(err) = BUILT.get_or_init(|| build_binaries(lab)) {
        // Without cargo (a test binary copied elsewhere), binaries already there will do.
        assert!(path.exists(), "{err}");
    }
    assert!(path.exists(), "{} does not exist", path.display());
    path
}

fn build_binaries(lab: &Path) -> Result<(), String> {
    let profile_dir = lab.parent().ok_or("keepalive-lab has no directory")?;
    let target_dir = profile_dir
        .parent()
        .ok_or("the profile directory has no parent")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "-p", "keepalive-proxy", "-p", "keepalive-server"])
        .arg("--target-dir")
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|dir| dir == "release") {
        build.arg("--release");
    }
    let output = build
        .output()
        .map_err(|err| format!("cannot run cargo build: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cargo build -p keepalive-proxy -p keepalive-server failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A port free right now, so that a binary that wrongly started would not collide with anything.
fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("the bound address")
        .to_string()
}

/// Runs `command` with the lab's own env vars cleared and `env` set; kills it after [`EXIT_WITHIN`].
fn run(mut command: Command, env: &[(&str, String)]) -> Output {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("PROXY_") || key.starts_with("SERVER_") || key == "LOG_FORMAT" {
            command.env_remove(key.as_ref());
        }
    }
    command.envs(env.iter().map(|(key, value)| (key, value)));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");
    let started = Instant::now();
    loop {
        match child.try_wait().expect("poll the child") {
            Some(_) => return child.wait_with_output().expect("the child's output"),
            None if started.elapsed() > EXIT_WITHIN => {
                child.kill().expect("kill the child");
                let output = child.wait_with_output().expect("the child's output");
                panic!(
                    "still running after {EXIT_WITHIN:?}; stderr: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Asserts exit code 2 and a single stderr line naming `variable` and `value`.
fn assert_refused(output: &Output, variable: &str, value: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    let line = stderr.trim_end();
    assert!(!line.contains('\n'), "one line, got: {stderr:?}");
    assert!(line.contains(variable), "names {variable}: {line:?}");
    assert!(line.contains(value), "names the value {value}: {line:?}");
}

#[test]
fn proxy_refuses_a_bad_idle_timeout_with_exit_code_2_and_one_line() {
    let output = run(
        Command::new(binary("keepalive-proxy")),
        &[
            ("PROXY_IDLE_TIMEOUT", "soon".to_owned()),
            ("PROXY_ADDR", free_addr()),
            ("PROXY_ADMIN_ADDR", free_addr()),
        ],
    );
    assert_refused(&output, "PROXY_IDLE_TIMEOUT", "soon");
}

#[test]
fn server_refuses_a_bad_sleep_with_exit_code_2_and_one_line() {
    let output = run(
        Command::new(binary("keepalive-server")),
        &[
            ("SERVER_SLEEP", "abc".to_owned()),
            ("SERVER_ADDR", free_addr()),
        ],
    );
    assert_refused(&output, "SERVER_SLEEP", "abc");
}

#[test]
fn server_refuses_a_default_sleep_above_its_maximum() {
    let output = run(
        Command::new(binary("keepalive-server")),
        &[
            ("SERVER_SLEEP", "2h".to_owned()),
            ("SERVER_ADDR", free_addr()),
        ],
    );
    assert_refused(&output, "SERVER_SLEEP", "2h");
}

#[test]
fn proxy_refuses_an_unknown_preset_listing_the_known_ones() {
    let output = run(
        Command::new(binary("keepalive-proxy")),
        &[
            ("PROXY_PRESET", "apache".to_owned()),
            ("PROXY_ADDR", free_addr()),
            ("PROXY_ADMIN_ADDR", free_addr()),
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
    let output = run(
        Command::new(binary("keepalive-proxy")),
        &[
            ("PROXY_CUT_STYLE", "polite".to_owned()),
            ("PROXY_ADDR", free_addr()),
            ("PROXY_ADMIN_ADDR", free_addr()),
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
fn server_refuses_an_unusable_data_dir() {
    let output = run(
        Command::new(binary("keepalive-server")),
        &[
            ("SERVER_DATA_DIR", "/proc/keepalive-data".to_owned()),
            ("SERVER_ADDR", free_addr()),
        ],
    );
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/proc/keepalive-data"),
        "the refusal names the directory: {stderr}"
    );
}

#[test]
fn proxy_refuses_a_bad_rust_log_instead_of_hiding_logs() {
    let output = run(
        Command::new(binary("keepalive-proxy")),
        &[
            ("RUST_LOG", "keepalive_proxy=loud".to_owned()),
            ("PROXY_ADDR", free_addr()),
            ("PROXY_ADMIN_ADDR", free_addr()),
        ],
    );
    assert_refused(&output, "RUST_LOG", "keepalive_proxy=loud");
}

fn proxy_help() -> String {
    let mut command = Command::new(binary("keepalive-proxy"));
    command.arg("--help");
    let output = run(command, &[]);
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
