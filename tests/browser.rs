//! The live page in a real browser: headless Chromium, driven through chromedriver (WebDriver),
//! loads the proxy's `/live` with its settings as query parameters and `run=1`, and the verdict the
//! page writes (`data-verdict`) is what happened: an idle cut is truncated, a heartbeated stream
//! completes, and a durable job cut by the total timer resumes with every line once. The same page,
//! with its three runs side by side, is the README's screenshot: `KEEPALIVE_SCREENSHOT=docs/live.png`
//! writes it there. Ignored by plain `cargo test`, since it needs Debian's `chromium` and
//! `chromium-driver`; the full test command runs it and fails where they are missing.

use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use keepalive_kit::ports;
use keepalive_kit::program::{installed, run_to_exit, Program};
use keepalive_kit::servers::start_origin_and_proxy;
use keepalive_kit::timing::{cutting_timers, OFF};
use serde_json::json;

/// chromedriver on a free port, a headless Chromium session through it, and the session's profile
/// directory (for the test to remove).
async fn browser() -> (Program, Client, std::path::PathBuf) {
    let driver = installed("chromedriver")
        .unwrap_or_else(|err| panic!("{err} (apt-get install chromium chromium-driver)"));
    let chromium = installed("chromium")
        .unwrap_or_else(|err| panic!("{err} (apt-get install chromium chromium-driver)"));
    let port = ports::free().expect("a free port").port();
    let mut command = Command::new(driver);
    command
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let program = Program::start("chromedriver", command).unwrap_or_else(|err| panic!("{err}"));
    let profile = std::env::temp_dir().join(format!("keepalive-chromium-{port}"));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000",
                     format!("--user-data-dir={}", profile.display())],
        }),
    );
    // An autorun page keeps loading until its verdict: navigation must not wait for it.
    capabilities.insert("pageLoadStrategy".to_owned(), json!("none"));
    let mut last = None;
    for _ in 0..50 {
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return (program, client, profile),
            Err(err) => last = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no WebDriver session through chromedriver: {last:?}");
}

/// The verdict run `n` (from 1) shows once it has one that is no longer `open`, within `within`.
async fn verdict(client: &Client, n: usize, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let value = client
            .execute(
                "const run = document.querySelectorAll('.run .verdict')[arguments[0] - 1];
                 return (run && run.dataset.verdict) || '';",
                vec![json!(n)],
            )
            .await
            .expect("the page answers");
        last = value.as_str().unwrap_or_default().to_owned();
        if !last.is_empty() && !last.starts_with("open") {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("run {n}'s verdict is still {last:?} after {within:?}");
}

/// Fills the page's form with `settings` and presses Run, as a person would.
async fn run_from_the_form(client: &Client, settings: serde_json::Value) {
    client
        .execute(
            "const form = document.getElementById('settings');
             for (const [key, value] of Object.entries(arguments[0])) form.elements[key].value = value;
             form.querySelector('button').click();",
            vec![settings],
        )
        .await
        .expect("the form runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver (apt-get install chromium chromium-driver)"]
async fn the_live_page_shows_an_idle_cut_a_heartbeat_save_and_a_job_resume() {
    let (_origin, proxy) =
        start_origin_and_proxy(cutting_timers(Some(Duration::from_secs(1)), OFF)).await;
    let (_driver, client, profile) = browser().await;
    let page = |query: &str| format!("http://{}/live?{query}", proxy.admin);

    // Linked with its settings and run=1: a line every 3 s, past the proxy's 1 s idle limit.
    client
        .goto(&page("sleep=3s&run=1"))
        .await
        .expect("the page loads");
    let cut = verdict(&client, 1, Duration::from_secs(15)).await;
    assert!(cut.starts_with("truncated"), "an idle cut: {cut:?}");
    assert!(cut.contains("idle"), "the page names the timer: {cut:?}");

    // The same stream with a heartbeat: nothing is ever silent for 1 s.
    run_from_the_form(
        &client,
        json!({"sleep": "1500ms", "heartbeat": "300ms", "lines": "3"}),
    )
    .await;
    let saved = verdict(&client, 2, Duration::from_secs(15)).await;
    assert_eq!(saved, "completed", "a heartbeat saves the stream");

    // A durable job, cut every 1.5 s by the total timer the page sets: EventSource resumes it.
    run_from_the_form(
        &client,
        json!({"format": "job", "sleep": "400ms", "heartbeat": "", "lines": "8", "max_duration": "1500ms"}),
    )
    .await;
    let resumed = verdict(&client, 3, Duration::from_secs(30)).await;
    assert!(
        resumed.starts_with("completed: 8 lines, each once, across "),
        "the job resumes across cuts: {resumed:?}"
    );
    assert!(
        !resumed.contains("across 0 reconnects"),
        "it was cut: {resumed:?}"
    );

    let runs = client
        .execute(
            "return document.querySelectorAll('.run svg').length",
            vec![],
        )
        .await
        .expect("the page answers");
    assert_eq!(runs, json!(3), "the three runs side by side");
    let png = client.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    if let Some(path) = std::env::var_os("KEEPALIVE_SCREENSHOT") {
        std::fs::write(&path, &png).unwrap_or_else(|err| panic!("write {path:?}: {err}"));
    }
    client.close().await.expect("the session ends");
    let _ = std::fs::remove_dir_all(profile);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium (apt-get install chromium)"]
async fn a_browser_that_dumps_the_page_once_loaded_dumps_the_autoruns_verdict() {
    let (_origin, proxy) =
        start_origin_and_proxy(cutting_timers(Some(Duration::from_secs(1)), OFF)).await;
    let chromium =
        installed("chromium").unwrap_or_else(|err| panic!("{err} (apt-get install chromium)"));
    let profile =
        std::env::temp_dir().join(format!("keepalive-chromium-dump-{}", proxy.admin.port()));
    let mut command = Command::new(chromium);
    command
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://{}/live?sleep=3s&run=1", proxy.admin))
        .stderr(Stdio::null());
    let output = tokio::task::spawn_blocking(move || run_to_exit(command, Duration::from_secs(60)))
        .await
        .expect("chromium ran");
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&output.stdout);
    let body = dom
        .split("<body")
        .nth(1)
        .and_then(|rest| rest.split('>').next())
        .unwrap_or_default();
    assert!(
        body.contains(r#"data-verdict="truncated"#),
        "the page finished loading with its verdict: <body{body}>"
    );
}
