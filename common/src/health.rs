//! `--healthcheck`: a binary asks the server it would run (the same address settings) for
//! `/healthz`, so that a container HEALTHCHECK needs no curl in a slim image and follows
//! `SERVER_ADDR` or `PROXY_ADMIN_ADDR` wherever they point.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than any healthy answer takes, shorter than Docker's default 30 s check timeout.
const WITHIN: Duration = Duration::from_secs(3);

/// Asks `listen_addr` (an address a server listens on) for `GET /healthz`; exit 0 on a 200, else 1
/// with one line on stderr saying what was seen.
pub async fn exit_code(program: &str, listen_addr: SocketAddr) -> ExitCode {
    match check(listen_addr).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("{program}: unhealthy: {reason}");
            ExitCode::FAILURE
        }
    }
}

async fn check(listen_addr: SocketAddr) -> Result<(), String> {
    let addr = reachable(listen_addr);
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|err| format!("cannot connect to {addr}: {err}"))?;
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|err| format!("cannot ask {addr}: {err}"))?;
        let mut head = Vec::new();
        let mut buf = [0u8; 256];
        while !head.windows(2).any(|pair| pair == b"\r\n") && head.len() < 1024 {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(err) => return Err(format!("no answer from {addr}: {err}")),
            }
        }
        let text = String::from_utf8_lossy(&head);
        let status_line = text.lines().next().unwrap_or_default();
        if status_line.split_whitespace().nth(1) == Some("200") {
            Ok(())
        } else {
            Err(format!("http://{addr}/healthz answered {status_line:?}"))
        }
    };
    tokio::time::timeout(WITHIN, exchange)
        .await
        .map_err(|_| format!("no answer from http://{addr}/healthz within {WITHIN:?}"))?
}

/// A wildcard listen address (`0.0.0.0`, `::`) is reached on loopback.
fn reachable(listen_addr: SocketAddr) -> SocketAddr {
    let ip = match listen_addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen_addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers one request with `response`.
    async fn answering(response: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(response.as_bytes()).await;
        });
        addr
    }

    #[tokio::test]
    async fn a_200_is_healthy_and_a_wildcard_address_is_reached_on_loopback() {
        let addr = answering("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let wildcard = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
        assert_eq!(check(wildcard).await, Ok(()));
    }

    #[tokio::test]
    async fn anything_else_is_unhealthy_and_says_what_it_saw() {
        let addr = answering("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        let reason = check(addr).await.expect_err("503 is not healthy");
        assert!(reason.contains("503"), "{reason}");

        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = closed.local_addr().expect("address");
        drop(closed);
        let reason = check(addr).await.expect_err("nobody listens");
        assert!(reason.contains("cannot connect"), "{reason}");
    }
}
