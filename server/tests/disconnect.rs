//! The origin over a real socket: what only a TCP connection can show, that a client going away (or the
//! server shutting down) really ends the stream. Routing and parameters are tested without a socket in
//! the crate itself; end-to-end runs through the proxy live in the workspace's `tests/`.

use std::time::Duration;

use keepalive_server::jobs::Storage;
use keepalive_server::{serve, ServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

struct Origin {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

/// The documented defaults, with jobs in memory: a test leaves no data directory behind.
fn in_memory() -> ServerConfig {
    ServerConfig {
        data_dir: Storage::Memory,
        ..ServerConfig::default()
    }
}

async fn start_origin(config: ServerConfig) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, config, async {
        let _ = stopped.await;
    }));
    Origin { addr, stop, server }
}

/// Sends a GET and returns the connection, positioned after the first poem line.
async fn open_stream(origin: &Origin, path: &str) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(origin.addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: origin\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !line.contains("Little brown lady") {
        line.clear();
        let read = timeout(Duration::from_secs(5), reader.read_line(&mut line))
            .await
            .expect("first line within 5 s")
            .expect("read");
        assert_ne!(read, 0, "connection closed before the first line");
    }
    assert_eq!(line, "[         0 s] Little brown lady\n");
    reader
}

/// One sample of the origin's `/metrics`, read over its own HTTP connection.
async fn metric(origin: &Origin, sample: &str) -> f64 {
    let mut stream = TcpStream::connect(origin.addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read metrics");
    response
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {sample} in:\n{response}"))
        .trim()
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn client_gone_ends_the_stream_within_a_second() {
    let origin = start_origin(in_memory()).await;
    let client_gone = r#"origin_streams_ended_total{reason="client_gone"}"#;

    let stream = open_stream(&origin, "/polls/streamed?sleep=5").await;
    assert_eq!(metric(&origin, "origin_streams_active").await, 1.0);
    assert_eq!(metric(&origin, client_gone).await, 0.0);
    drop(stream);

    let closed = Instant::now();
    while metric(&origin, "origin_streams_active").await != 0.0 {
        assert!(
            closed.elapsed() < Duration::from_secs(1),
            "the origin still streams 1 s after the client went away"
        );
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&origin, client_gone).await, 1.0);

    origin.stop.send(()).expect("server running");
    origin.server.await.expect("no panic").expect("served");
}

#[tokio::test]
async fn shutdown_closes_infinite_streams_after_the_drain_timeout() {
    let origin = start_origin(ServerConfig {
        drain_timeout: Duration::from_millis(300),
        ..in_memory()
    })
    .await;
    let mut stream = open_stream(&origin, "/polls/streamed?sleep=10").await;

    let stopped = Instant::now();
    origin.stop.send(()).expect("server running");
    timeout(Duration::from_secs(5), origin.server)
        .await
        .expect("serve returns after the drain timeout")
        .expect("no panic")
        .expect("served");
    assert!(
        stopped.elapsed() >= Duration::from_millis(300),
        "the stream got its drain time"
    );

    let mut rest = Vec::new();
    // A FIN or a reset will do: what matters is that the connection does not outlive `serve`.
    let _ended = timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the connection is closed once serve returns");
    assert!(
        !rest.ends_with(b"0\r\n\r\n"),
        "an infinite stream cut by shutdown must not look complete"
    );
}
