//! What the proxy and the lab share about TLS: one crypto provider, PEM files read with errors that
//! name the file and what was wrong with it, and the roots a client trusts.
//!
//! The provider is named rather than left to rustls's process default: the default is only chosen
//! automatically while exactly one provider is compiled in, and any dependency turning on another
//! (aws-lc-rs is rustls's own default) would make every handshake panic at run time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The crypto every TLS configuration here is built with: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a PEM file could not be used; each names the file.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("{path} is not usable as a trust anchor: {reason}")]
    Anchor { path: PathBuf, reason: String },
}

/// A PEM file of certificates, read when the setting is parsed, so that a bad file stops a program
/// at start with the setting's name.
#[derive(Debug, Clone)]
pub struct CertFile {
    pub path: PathBuf,
    pub certs: Arc<Vec<CertificateDer<'static>>>,
}

impl CertFile {
    /// Reads every certificate in the PEM file at `path`: at least one.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, PemError> {
        let path = path.as_ref().to_owned();
        let read = |reason: String| PemError::Read {
            path: path.clone(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(&path)
            .map_err(|err| read(pem_reason(err)))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| read(pem_reason(err)))?;
        if certs.is_empty() {
            return Err(PemError::NoCertificate { path });
        }
        Ok(Self {
            path,
            certs: Arc::new(certs),
        })
    }

    /// For a clap `value_parser`: the setting's value is the file's path.
    pub fn parse(value: &str) -> Result<Self, PemError> {
        Self::read(value)
    }

    /// A trust store of exactly these certificates (curl's `--cacert` replaces the default roots too).
    pub fn roots(&self) -> Result<RootCertStore, PemError> {
        let mut roots = RootCertStore::empty();
        for cert in self.certs.iter() {
            roots
                .add(cert.clone())
                .map_err(|err| PemError::Anchor {
                    path: self.path.clone(),
                    reason: err.to_string(),
                })?;
        }
        Ok(roots)
    }
}

/// A PEM private key file, read when the setting is parsed.
#[derive(Debug, Clone)]
pub struct KeyFile {
    pub path: PathBuf,
    key: Arc<PrivateKeyDer<'static>>,
}

impl KeyFile {
    pub fn read(path: impl AsRef<Path>) -> Result<Self, PemError> {
        let path = path.as_ref().to_owned();
        let key = PrivateKeyDer::from_pem_file(&path).map_err(|err| match err {
            rustls_pki_types::pem::Error::NoItemsFound => PemError::NoKey { path: path.clone() },
            err => PemError::Read {
                path: path.clone(),
                reason: pem_reason(err),
            },
        })?;
        Ok(Self {
            path,
            key: Arc::new(key),
        })
    }

    /// For a clap `value_parser`: the setting's value is the file's path.
    pub fn parse(value: &str) -> Result<Self, PemError> {
        Self::read(value)
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

fn pem_reason(err: rustls_pki_types::pem::Error) -> String {
    match err {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        err => format!("not a PEM file ({err})"),
    }
}

/// The public web's roots (Mozilla's, as curl and browsers ship them), built into the binary so
/// that a container without a CA bundle verifies servers all the same.
pub fn public_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// The roots a client trusts: exactly `ca` when given, the public roots otherwise.
pub fn roots(ca: Option<&CertFile>) -> Result<RootCertStore, PemError> {
    ca.map_or_else(|| Ok(public_roots()), CertFile::roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keepalive-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write");
        path
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = CertFile::read("/nonexistent/cert.pem").expect_err("no file");
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }

    #[test]
    fn a_file_without_certificates_or_key_says_what_it_lacks() {
        let path = temp_file("empty.pem", "just text\n");
        let err = CertFile::read(&path).expect_err("no certificate");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let err = KeyFile::read(&path).expect_err("no key");
        assert!(err.to_string().contains("no PEM private key"), "{err}");
    }

    #[test]
    fn a_certificate_and_its_key_are_read_and_trusted() {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let cert = temp_file("cert.pem", &made.cert.pem());
        let key = temp_file("key.pem", &made.signing_key.serialize_pem());
        let certs = CertFile::read(&cert).expect("certificate");
        assert_eq!(certs.certs.len(), 1);
        assert_eq!(roots(Some(&certs)).expect("roots").len(), 1);
        assert!(matches!(
            KeyFile::read(&key).expect("key").key(),
            PrivateKeyDer::Pkcs8(_)
        ));
    }

    #[test]
    fn public_roots_are_built_in() {
        assert!(public_roots().len() > 50);
        assert_eq!(roots(None).expect("roots").len(), public_roots().len());
    }
}
