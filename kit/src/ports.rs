//! Loopback ports, never fixed ones, so that tests running in parallel (and anything else on the
//! machine) never collide: from the kernel for our own listeners, and for a child program a port no
//! one else is handed before the child binds it.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

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
/// us). It is picked below the kernel's ephemeral range (Linux's starts at 32768), where neither a
/// client's source port nor a listener bound to port 0 ever lands: between our look and the child's
/// bind nobody else is handed it, unless another explicit pick, which [`NEXT`] keeps apart within
/// this process (and the process id spreads across processes). Were it taken all the same, the child
/// fails to start, which its starter reports, rather than serve on a port someone else answers.
pub fn free() -> io::Result<SocketAddr> {
    let span = u32::from(LAST - FIRST);
    let start = std::process::id() % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = FIRST + u16::try_from(offset).map_err(io::Error::other)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        format!("no free port from {FIRST} to {LAST}"),
    ))
}

/// The ports [`free`] picks from.
const FIRST: u16 = 20_000;
const LAST: u16 = 32_000;
/// How far this process's picks have gone: each pick starts past the last.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// [`free`] as `127.0.0.1:port`, for a test: a binary that wrongly started would collide with nothing.
pub fn free_for_test() -> String {
    free().expect("a free port on 127.0.0.1").to_string()
}
