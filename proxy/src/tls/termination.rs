//! TLS termination towards clients: the server configuration built once at start from
//! `PROXY_TLS_CERT` and `PROXY_TLS_KEY`, or from a certificate made for `PROXY_TLS_SELF_SIGNED`, and
//! the handshake of each connection.
//!
//! ALPN offers `h2` first, then `http/1.1`, as balancers do: a client that can speak HTTP/2 gets it,
//! and the connection then speaks what the client sends (the server's version detection reads the
//! first bytes either way). A client that offers no ALPN speaks HTTP/1.1 or sends the HTTP/2 preface.
//!
//! The handshake runs in the connection's own task, under its header timer (`server.rs`): a client
//! that connects and stalls its handshake is closed at the header limit, and the accept loop never
//! waits for anyone's handshake.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use keepalive_common::tls::{provider, CertFile, KeyFile};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{Accept, TlsAcceptor};

use super::self_signed::SelfSigned;
use super::SetupError;

/// The protocols offered to clients, in the order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Where the certificate the proxy serves comes from, for the log.
#[derive(Debug, Clone)]
pub enum Source {
    /// `PROXY_TLS_CERT` (and its key).
    Files { cert: PathBuf },
    /// Made at start; the certificate was written to `written_to`.
    SelfSigned { written_to: PathBuf },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Files { cert } => write!(f, "on (certificate {})", cert.display()),
            Self::SelfSigned { written_to } => write!(
                f,
                "on (self-signed for localhost, certificate written to {})",
                written_to.display()
            ),
        }
    }
}

/// TLS towards clients, ready to accept handshakes; cheap to clone.
#[derive(Clone)]
pub struct Termination {
    acceptor: TlsAcceptor,
    source: Arc<Source>,
}

impl Termination {
    /// TLS from the settings: `None` when none of them is set. A certificate with a key that is not
    /// its own, half a pair, or both ways of choosing a certificate at once are refused; a
    /// self-signed certificate is made and written now.
    pub fn from_settings(
        cert: Option<&CertFile>,
        key: Option<&KeyFile>,
        self_signed: Option<&PathBuf>,
    ) -> Result<Option<Self>, SetupError> {
        match (cert, key, self_signed) {
            (None, None, None) => Ok(None),
            (Some(cert), _, Some(self_signed)) => Err(SetupError::SelfSignedAndCert {
                self_signed: self_signed.clone(),
                cert: cert.path.clone(),
            }),
            (Some(cert), None, None) => Err(SetupError::CertWithoutKey {
                cert: cert.path.clone(),
            }),
            (None, Some(key), Some(self_signed)) => Err(SetupError::KeyWithSelfSigned {
                key: key.path.clone(),
                self_signed: self_signed.clone(),
            }),
            (None, Some(key), None) => Err(SetupError::KeyWithoutCert {
                key: key.path.clone(),
            }),
            (Some(cert), Some(key), None) => {
                let config = server_config(cert.certs.to_vec(), key.key()).map_err(|err| {
                    SetupError::Certificate {
                        cert: cert.path.clone(),
                        key: key.path.clone(),
                        reason: err.to_string(),
                    }
                })?;
                Ok(Some(Self::new(
                    config,
                    Source::Files {
                        cert: cert.path.clone(),
                    },
                )))
            }
            (None, None, Some(path)) => {
                let made = SelfSigned::make_and_write(path)?;
                let config = server_config(vec![made.cert], made.key)
                    .map_err(|err| SetupError::MakeCertificate(err.to_string()))?;
                Ok(Some(Self::new(
                    config,
                    Source::SelfSigned {
                        written_to: path.clone(),
                    },
                )))
            }
        }
    }

    fn new(config: ServerConfig, source: Source) -> Self {
        Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            source: Arc::new(source),
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The handshake with a client on `io`.
    pub fn accept<IO: AsyncRead + AsyncWrite + Unpin>(&self, io: IO) -> Accept<IO> {
        self.acceptor.accept(io)
    }
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = ALPN.map(<[u8]>::to_vec).to_vec();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key file of its own (the pair's certificate does not matter to these refusals).
    fn key_file(dir: &std::path::Path) -> KeyFile {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a certificate");
        let path = dir.join("key.pem");
        std::fs::write(&path, made.signing_key.serialize_pem()).expect("write the key");
        KeyFile::read(&path).expect("a PEM key")
    }

    fn refusal(
        cert: Option<&CertFile>,
        key: Option<&KeyFile>,
        self_signed: Option<&PathBuf>,
    ) -> String {
        match Termination::from_settings(cert, key, self_signed) {
            Ok(_) => panic!("accepted"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn settings_that_choose_no_single_certificate_are_refused_naming_their_variables() {
        let dir =
            std::env::temp_dir().join(format!("keepalive-termination-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let key = key_file(&dir);
        let cert = CertFile {
            path: dir.join("cert.pem"),
            certs: Arc::default(),
        };
        let self_signed = dir.join("self-signed.pem");

        let line = refusal(Some(&cert), None, None);
        assert!(
            line.contains("PROXY_TLS_CERT=") && line.contains("without PROXY_TLS_KEY"),
            "{line}"
        );
        let line = refusal(None, Some(&key), None);
        assert!(
            line.contains("PROXY_TLS_KEY=") && line.contains("without PROXY_TLS_CERT"),
            "{line}"
        );
        let line = refusal(None, Some(&key), Some(&self_signed));
        assert!(
            line.contains("PROXY_TLS_KEY=") && line.contains("PROXY_TLS_SELF_SIGNED="),
            "{line}"
        );
        let line = refusal(Some(&cert), Some(&key), Some(&self_signed));
        assert!(
            line.contains("PROXY_TLS_CERT=") && line.contains("PROXY_TLS_SELF_SIGNED="),
            "{line}"
        );
        assert!(
            !self_signed.exists(),
            "nothing is made for refused settings"
        );
        assert!(Termination::from_settings(None, None, None)
            .expect("no TLS")
            .is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
