//! `reset_after`'s means: the client connection's socket, and a switch that makes its close send a
//! TCP RST (SO_LINGER 0) instead of a FIN. A body cannot reach the socket hyper owns, so each
//! connection puts its [`ResetSwitch`] in every request's extensions, and [`ResetIo`] looks at the
//! switch when hyper shuts the connection down or drops it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Flipped once by a fault; the connection then ends with a reset.
#[derive(Debug, Clone, Default)]
pub struct ResetSwitch(Arc<AtomicBool>);

impl ResetSwitch {
    pub fn flip(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the connection is to end with a reset (and nothing orderly before it, TLS's
    /// close_notify included).
    pub(crate) fn is_flipped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A client's TCP stream that closes with a RST once its switch is flipped.
pub struct ResetIo {
    stream: TcpStream,
    switch: ResetSwitch,
}

impl ResetIo {
    pub fn new(stream: TcpStream, switch: ResetSwitch) -> Self {
        Self { stream, switch }
    }

    /// SO_LINGER 0: the close that follows sends a RST and discards unsent data.
    fn arm_reset(&self) {
        if let Err(err) = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO)) {
            tracing::warn!(%err, "cannot set SO_LINGER 0: the connection closes with a FIN instead of a RST");
        }
    }
}

impl Drop for ResetIo {
    fn drop(&mut self) {
        if self.switch.is_flipped() {
            self.arm_reset();
        }
    }
}

impl AsyncRead for ResetIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResetIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A shutdown would send the FIN the reset is meant to replace: the drop that follows resets.
        if self.switch.is_flipped() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
