//! What a client's TLS connection sends when the proxy lets go of it: a `close_notify` alert before
//! the TCP FIN, as nginx sends on every close, its truncating cut included.
//!
//! It matters to TLS clients: told nothing but a FIN, a client cannot tell the peer's close from an
//! attacker's truncation of the stream, and strict ones report it as such (a rustls client reads an
//! `UnexpectedEof` error, not the end of the stream); curl, which asks OpenSSL to take a bare FIN
//! for an end, exits 18 on a truncated body either way. hyper shuts a connection down (tokio-rustls
//! then sends the alert) only when it ends it gracefully; on a body error, a truncating cut, it drops
//! the IO without a word. So [`ClosingTls`] queues the alert when it is dropped and writes it without
//! waiting: a socket whose buffer is full (a client that stopped reading, the send timer's case) gets
//! what fits, perhaps part of a record, then its FIN, which the client reads as no close_notify;
//! never a blocked drop.
//!
//! When the connection's reset switch is flipped (the `reset` cut style, the reset fault) nothing is
//! sent: the socket's close is to be a RST, and an alert before it would be one more orderly goodbye.

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

use crate::faults::reset::ResetSwitch;

/// A client's TLS stream that sends `close_notify` when dropped, unless its reset switch is flipped.
pub struct ClosingTls<IO: AsyncWrite + Unpin> {
    stream: TlsStream<IO>,
    reset: ResetSwitch,
}

impl<IO: AsyncWrite + Unpin> ClosingTls<IO> {
    pub fn new(stream: TlsStream<IO>, reset: ResetSwitch) -> Self {
        Self { stream, reset }
    }

    /// The protocol the client and the proxy agreed on by ALPN, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.stream.get_ref().1.alpn_protocol()
    }
}

impl<IO: AsyncWrite + Unpin> Drop for ClosingTls<IO> {
    fn drop(&mut self) {
        if self.reset.is_flipped() {
            return;
        }
        let (io, session) = self.stream.get_mut();
        // A no-op when hyper's shutdown already sent it.
        session.send_close_notify();
        let mut cx = Context::from_waker(Waker::noop());
        let mut socket = NoWait { io, cx: &mut cx };
        while session.wants_write() {
            match session.write_tls(&mut socket) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

/// The socket as a `std::io::Write` that never waits: a write that would block fails with
/// `WouldBlock`, which ends the attempt.
struct NoWait<'a, 'c, IO> {
    io: &'a mut IO,
    cx: &'a mut Context<'c>,
}

impl<IO: AsyncWrite + Unpin> Write for NoWait<'_, '_, IO> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClosingTls<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClosingTls<IO> {
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
        // As for the drop: a connection to be reset gets no close_notify (and ResetIo sends no FIN).
        if self.reset.is_flipped() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
