//! Certificates for tests: a self-signed certificate for `localhost` (and `lb.example`, 127.0.0.1,
//! ::1), written as PEM files into a fresh directory that is removed when the certificate is
//! dropped, so that the proxy, nginx and curl take them as they would a real one.
//!
//! And HTTPS from a test's side: a rustls client that trusts exactly such a certificate, offers the
//! ALPN protocols a test chooses and reports the one the server chose, under the kit's raw HTTP/1.1
//! client ([`raw_conn`]) or its frame-by-frame HTTP/2 client ([`h2_connection`]).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use keepalive_common::tls::{provider, CertFile, KeyFile};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::client::{RawConn, Transcript};
use crate::h2c::{self, Base};

/// The names the test certificate is valid for: `lb.example` stands for a balancer reached by
/// name while the test connects to an address (`--connect-to`).
pub const NAMES: [&str; 4] = ["localhost", "lb.example", "127.0.0.1", "::1"];

/// A self-signed certificate and its key, as PEM files.
pub struct TestCert {
    dir: PathBuf,
    /// The certificate, which is also the CA a client trusts (`--cacert`).
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCert {
    /// A new certificate for [`NAMES`], a leaf (as rcgen and most tools make one).
    pub fn localhost() -> io::Result<Self> {
        Self::make(false)
    }

    /// A new certificate for [`NAMES`] that also says it is a CA (basic constraints CA:TRUE), as
    /// `openssl req -x509` makes one: what webpki alone refuses as a server's certificate, and
    /// what `--cacert`, like curl, must still trust as the server's own.
    pub fn openssl_style() -> io::Result<Self> {
        Self::make(true)
    }

    fn make(ca: bool) -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut params = rcgen::CertificateParams::new(NAMES.map(str::to_owned).to_vec())
            .map_err(io::Error::other)?;
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let signing_key = rcgen::KeyPair::generate().map_err(io::Error::other)?;
        let cert = params.self_signed(&signing_key).map_err(io::Error::other)?;
        let made = rcgen::CertifiedKey { cert, signing_key };
        let dir = std::env::temp_dir().join(format!(
            "keepalive-cert-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, made.cert.pem())?;
        std::fs::write(&key, made.signing_key.serialize_pem())?;
        Ok(Self { dir, cert, key })
    }

    /// The certificate as the proxy's and the lab's settings read it.
    pub fn cert_file(&self) -> CertFile {
        CertFile::read(&self.cert).unwrap_or_else(|err| panic!("read the test certificate: {err}"))
    }

    pub fn key_file(&self) -> KeyFile {
        KeyFile::read(&self.key).unwrap_or_else(|err| panic!("read the test key: {err}"))
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a client offers by ALPN: HTTP/2 first, as curl and browsers do.
pub const H2_AND_HTTP1: &[&[u8]] = &[b"h2", b"http/1.1"];
/// What a client that speaks only HTTP/1.1 offers.
pub const HTTP1: &[&[u8]] = &[b"http/1.1"];

/// A client's TLS configuration that trusts exactly `cert` (as `curl --cacert` does) and offers
/// `alpn`, most preferred first.
pub fn client_config(cert: &TestCert, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    client_config_trusting(&cert.cert_file(), alpn)
}

/// [`client_config`] trusting exactly the certificates in `ca`, one the test did not make itself
/// (the one `PROXY_TLS_SELF_SIGNED` wrote, say).
pub fn client_config_trusting(ca: &CertFile, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let roots = ca
        .roots()
        .unwrap_or_else(|err| panic!("trust {}: {err}", ca.path.display()));
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` for `localhost`, trusting `cert` and offering `alpn`, once its
/// handshake is done; the handshake's error otherwise (a server that is not trusted, or closed).
pub async fn try_connect(
    addr: SocketAddr,
    cert: &TestCert,
    alpn: &[&[u8]],
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    handshake(tcp, cert, alpn).await
}

/// The client's TLS handshake on `tcp`, a connection made by the caller (with a small receive
/// buffer, say), for `localhost`, trusting `cert` and offering `alpn`.
pub async fn handshake(
    tcp: TcpStream,
    cert: &TestCert,
    alpn: &[&[u8]],
) -> io::Result<TlsStream<TcpStream>> {
    handshake_trusting(tcp, &cert.cert_file(), alpn).await
}

/// [`handshake`] trusting exactly the certificates in `ca` ([`client_config_trusting`]).
pub async fn handshake_trusting(
    tcp: TcpStream,
    ca: &CertFile,
    alpn: &[&[u8]],
) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
    TlsConnector::from(client_config_trusting(ca, alpn))
        .connect(name, tcp)
        .await
}

/// [`try_connect`], for a test: the handshake must succeed.
pub async fn connect(addr: SocketAddr, cert: &TestCert, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    try_connect(addr, cert, alpn)
        .await
        .unwrap_or_else(|err| panic!("TLS handshake with {addr}: {err}"))
}

/// The protocol the server chose by ALPN (`None`: it chose none).
pub fn negotiated(stream: &TlsStream<TcpStream>) -> Option<String> {
    stream
        .get_ref()
        .1
        .alpn_protocol()
        .map(|protocol| String::from_utf8_lossy(protocol).into_owned())
}

/// A server at an address reached over TLS: requests go to `https://localhost:{port}`, the name the
/// test certificate is valid for.
#[derive(Debug, Clone, Copy)]
pub struct Https(pub SocketAddr);

impl Base for Https {
    fn uri(self, target: &str) -> String {
        format!("https://localhost:{}{target}", self.0.port())
    }
}

/// An HTTP/1.1 connection over TLS to `addr` (asserted: ALPN chose `http/1.1`), spoken to in raw bytes.
pub async fn raw_conn(addr: SocketAddr, cert: &TestCert) -> RawConn {
    let stream = connect(addr, cert, HTTP1).await;
    assert_eq!(negotiated(&stream).as_deref(), Some("http/1.1"));
    RawConn::over(stream)
}

/// [`crate::client::raw_request`] over TLS: sends `request` on a new HTTP/1.1 connection and reads
/// until it ends or `within` passes.
pub async fn raw_request(
    addr: SocketAddr,
    cert: &TestCert,
    request: &str,
    within: Duration,
) -> Transcript {
    let mut conn = raw_conn(addr, cert).await;
    conn.send(request.as_bytes()).await;
    conn.finish(within).await
}

/// An HTTP/2 connection over TLS to `addr` (asserted: ALPN chose `h2`), as [`h2c::connection`] makes
/// one in cleartext; requests on it are addressed with [`Https`].
pub async fn h2_connection(
    addr: SocketAddr,
    cert: &TestCert,
    ping: bool,
) -> (SendRequest<Empty<Bytes>>, oneshot::Receiver<Instant>) {
    let stream = connect(addr, cert, H2_AND_HTTP1).await;
    assert_eq!(negotiated(&stream).as_deref(), Some("h2"));
    h2c::connection_over(stream, ping).await
}

/// [`h2_connection`] without pings.
pub async fn h2_handshake(addr: SocketAddr, cert: &TestCert) -> SendRequest<Empty<Bytes>> {
    h2_connection(addr, cert, false).await.0
}
