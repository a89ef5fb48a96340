//! `PROXY_MAX_CONNECTIONS` over real sockets, on small numbers: connections beyond the cap are
//! answered 503 and closed at once, those within it are served as before, and a slot freed by a
//! closing connection is served again.

use std::num::NonZeroUsize;
use std::time::Duration;

use keepalive_kit::client::{get, raw_request, read_to_end_or_deadline, Ending, RawConn};
use keepalive_kit::response::is_complete_response;
use keepalive_kit::servers::{origin_config, start_origin, start_proxy_configured};
use keepalive_kit::timing::{quiet_timers, wait_until};
use keepalive_proxy::MaxConnections;
use tokio::net::TcpStream;
use tokio::time::Instant;

#[tokio::test]
async fn connections_beyond_the_cap_are_answered_503_and_closed() {
    let origin = start_origin(origin_config()).await;
    let proxy = start_proxy_configured(origin.addr, quiet_timers(), |config| {
        config.max_connections = MaxConnections::At(NonZeroUsize::new(2).expect("non-zero"));
    })
    .await;
    // Two silent connections fill the cap (the header timer would close them only after 5 s).
    let first = RawConn::connect(proxy.addr).await;
    let mut second = RawConn::connect(proxy.addr).await;

    let mut third = TcpStream::connect(proxy.addr)
        .await
        .expect("the kernel still completes the handshake");
    let started = Instant::now();
    let mut received = Vec::new();
    let (ending, ended_at) = read_to_end_or_deadline(
        &mut third,
        &mut received,
        started,
        started + Duration::from_secs(2),
    )
    .await;
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 503 ") && text.contains("connection limit"),
        "a connection beyond the cap is told so: {text:?}"
    );
    assert_eq!(ending, Ending::Eof, "and closed at once ({ended_at:?})");
    assert!(
        ended_at < Duration::from_secs(1),
        "closed after {ended_at:?}"
    );

    // Connections within the cap are served as before.
    second.send(get("/polls/", "").as_bytes()).await;
    assert!(
        second
            .read_until(Duration::from_secs(3), is_complete_response)
            .await,
        "a connection within the cap is served: {:?}",
        String::from_utf8_lossy(second.received())
    );
    assert!(second.received().starts_with(b"HTTP/1.1 200 "));

    // Once one closes, its slot serves a new connection.
    drop(first);
    let served = wait_until(Duration::from_secs(3), || async {
        let transcript = raw_request(
            proxy.addr,
            &get("/polls/", "Connection: close\r\n"),
            Duration::from_secs(2),
        )
        .await;
        transcript.bytes.starts_with(b"HTTP/1.1 200 ")
    })
    .await;
    assert!(
        served.is_some(),
        "a new connection is served once one of the two closed"
    );
}
