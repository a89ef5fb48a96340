//! The real keepalive-proxy binary on SIGTERM, as a balancer in front sees it: the admin `/healthz`
//! answers 503 at once and keeps answering while an open stream drains, the stream goes on meanwhile,
//! a new connection the balancer still sends is served (and told `Connection: close`), and the admin
//! listener closes only when the drain ends. Cargo builds the binary for these tests
//! (`CARGO_BIN_EXE_*`).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use keepalive_kit::client::{get, open_stream, raw_request};
use keepalive_kit::ports;
use keepalive_kit::program::{clear_settings, Program};
use keepalive_kit::response::RawResponse;
use keepalive_kit::servers::{origin_config, start_origin};
use keepalive_kit::timing::wait_until;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::net::TcpStream;
use tokio::time::Instant;

const PROXY: &str = env!("CARGO_BIN_EXE_keepalive-proxy");

/// The status `/healthz` at `admin` answers with, or `None` when nothing listens.
async fn healthz(admin: SocketAddr) -> Option<u16> {
    TcpStream::connect(admin).await.ok()?;
    let transcript = raw_request(
        admin,
        &get("/healthz", "Connection: close\r\n"),
        Duration::from_secs(2),
    )
    .await;
    RawResponse::parse(&transcript.bytes).map(|response| response.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_healthz_answers_503_until_the_drain_ends() {
    let origin = start_origin(origin_config()).await;
    let addr: SocketAddr = ports::free_for_test().parse().expect("an address");
    let admin: SocketAddr = ports::free_for_test().parse().expect("an address");
    let mut command = Command::new(PROXY);
    clear_settings(&mut command);
    command
        .env("PROXY_ADDR", addr.to_string())
        .env("PROXY_ADMIN_ADDR", admin.to_string())
        .env("PROXY_UPSTREAM", format!("http://{}", origin.addr))
        .env("PROXY_DRAIN_TIMEOUT", "2s")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut proxy =
        Program::start("keepalive-proxy", command).unwrap_or_else(|err| panic!("{err}"));
    proxy
        .listening(admin, Duration::from_secs(10))
        .unwrap_or_else(|err| panic!("{err}"));
    proxy
        .listening(addr, Duration::from_secs(10))
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(healthz(admin).await, Some(200));

    let stream = open_stream(addr, "/polls/streamed?sleep=10&heartbeat=100ms").await;
    let pid = Pid::from_raw(i32::try_from(proxy.pid()).expect("a pid fits an i32"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM the proxy");
    let signalled = Instant::now();

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        healthz(admin).await,
        Some(503),
        "a draining proxy tells its balancer at once"
    );
    let late = raw_request(addr, &get("/polls/", ""), Duration::from_secs(2))
        .await
        .response();
    assert_eq!(
        late.status, 200,
        "a connection made during the drain is served"
    );
    assert!(
        late.headers
            .iter()
            .any(|(name, value)| name.eq_ignore_ascii_case("connection") && value == "close"),
        "and told it will not be kept: {:?}",
        late.headers
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        healthz(admin).await,
        Some(503),
        "and keeps telling it while the stream drains"
    );

    // The stream went on through the drain and is cut at its end (2 s); then the process exits and
    // the admin listener with it.
    let transcript = stream.finish(Duration::from_secs(5)).await;
    assert!(
        transcript.ending.is_closed() && signalled.elapsed() >= Duration::from_millis(1_900),
        "the stream lasted until the drain timeout: {:?} {:?} after SIGTERM",
        transcript.ending,
        signalled.elapsed()
    );
    let exited = wait_until(Duration::from_secs(3), || {
        let exited = proxy.exited().unwrap_or_else(|err| panic!("{err}"));
        async move { exited.is_some() }
    })
    .await;
    assert!(exited.is_some(), "the proxy exits once drained");
    let status = proxy.stop().unwrap_or_else(|err| panic!("{err}"));
    assert!(
        status.success(),
        "the proxy exits 0 after draining: {status}"
    );
    assert_eq!(healthz(admin).await, None, "the admin listener is gone");
}
