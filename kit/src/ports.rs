//! Loopback ports from the kernel, never fixed ones, so that tests running in parallel (and anything
//! else on the machine) never collide.

use std::io;
use std::net::{SocketAddr, TcpListener};

use tokio::net::TcpSocket;

/// A port held without listening, for as long as the returned socket lives: connects to it are
/// refused (an upstream that is down), no one else can be given it meanwhile, and
/// [`TcpSocket::listen`] on the socket brings a server up on exactly that port.
pub fn reserved() -> io::Result<(TcpSocket, SocketAddr)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = socket.local_addr()?;
    Ok((socket, addr))
}

/// A port free right now, for a child program that must bind it itself (it takes no listener from
/// us). Another process could take the port before the child binds it; the child then fails to
/// start, which its starter reports, rather than serve on a port someone else answers.
pub fn free() -> io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// [`free`] as `127.0.0.1:port`, for a test: a binary that wrongly started would collide with nothing.
pub fn free_for_test() -> String {
    free().expect("a free port on 127.0.0.1").to_string()
}
