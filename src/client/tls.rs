//! The lab client's TLS: whom it trusts (`--cacert`, or the public roots, as
//! `keepalive_common::tls::verifier` decides; `--insecure` trusts anyone), which protocols it offers
//! by ALPN, and how a TLS connection ended.
//!
//! How it ended matters to a verdict. Over HTTP/1.1 a server that closes TLS properly sends a
//! close_notify alert first; a connection that just stops (a TCP FIN under TLS) could also be an
//! attacker or a crashed hop cutting the stream, and for a body without a length that absence is the
//! only sign of a cut. rustls reads a close_notify as a clean end of data and a bare FIN as
//! `UnexpectedEof`; [`EndIo`] notes which it was before hyper turns both into "incomplete body".

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use keepalive_common::tls::{provider, verifier, CertFile, VerifierError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Which HTTP versions the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Versions {
    /// h2 and http/1.1 by ALPN, the server picks (plain http://: HTTP/1.1).
    #[default]
    Any,
    Http1,
    /// h2 only by ALPN; over plain http://, h2c with prior knowledge.
    Http2,
}

/// Why the client's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(transparent)]
    Verifier(#[from] VerifierError),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The client configuration for `versions`, trusting `cacert` (or the public roots), or anyone.
pub fn config(
    cacert: Option<&CertFile>,
    insecure: bool,
    versions: Versions,
) -> Result<ClientConfig, TlsSetupError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier(cacert, provider)?)
            .with_no_client_auth()
    };
    config.alpn_protocols = match versions {
        Versions::Any => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Versions::Http1 => vec![b"http/1.1".to_vec()],
        Versions::Http2 => vec![b"h2".to_vec()],
    };
    Ok(config)
}

/// `--insecure`: any certificate for any name is accepted, while the handshake's signatures are
/// still checked, so that the connection is at least TLS with whoever holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How the server's side of a TLS connection ended, as far as the client has read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsEnd {
    /// A close_notify alert, then the end: TLS closed properly.
    CloseNotify,
    /// The connection ended without a close_notify.
    NoCloseNotify,
}

/// Shared between the connection's IO and whoever judges its end.
#[derive(Debug, Default)]
pub struct EndWatch(AtomicU8);

impl EndWatch {
    const OPEN: u8 = 0;
    const CLOSE_NOTIFY: u8 = 1;
    const NO_CLOSE_NOTIFY: u8 = 2;

    pub fn end(&self) -> Option<TlsEnd> {
        match self.0.load(Ordering::Acquire) {
            Self::CLOSE_NOTIFY => Some(TlsEnd::CloseNotify),
            Self::NO_CLOSE_NOTIFY => Some(TlsEnd::NoCloseNotify),
            _ => None,
        }
    }

    fn note(&self, end: u8) {
        // The first end seen is the one: a read after it says nothing new.
        let _ = self
            .0
            .compare_exchange(Self::OPEN, end, Ordering::AcqRel, Ordering::Acquire);
    }
}

pin_project_lite::pin_project! {
    /// A TLS stream that tells its [`EndWatch`] how the server ended it.
    pub struct EndIo<IO> {
        #[pin]
        io: IO,
        watch: Arc<EndWatch>,
    }
}

impl<IO> EndIo<IO> {
    pub fn new(io: IO, watch: Arc<EndWatch>) -> Self {
        Self { io, watch }
    }
}

impl<IO: AsyncRead> AsyncRead for EndIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let wanted = buf.remaining() > 0;
        let result = this.io.poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) if wanted && buf.filled().len() == before => {
                this.watch.note(EndWatch::CLOSE_NOTIFY);
            }
            Poll::Ready(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                this.watch.note(EndWatch::NO_CLOSE_NOTIFY);
            }
            _ => {}
        }
        result
    }
}

impl<IO: AsyncWrite> AsyncWrite for EndIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
