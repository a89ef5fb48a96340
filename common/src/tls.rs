//! What the proxy and the lab share about TLS: one crypto provider, PEM files read with errors that
//! name the file and what was wrong with it, and how a client decides whom it trusts.
//!
//! The provider is named rather than left to rustls's process default: the default is only chosen
//! automatically while exactly one provider is compiled in, and any dependency turning on another
//! (aws-lc-rs is rustls's own default) would make every handshake panic at run time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_name, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

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
            roots.add(cert.clone()).map_err(|err| PemError::Anchor {
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

/// Why a client's certificate check could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VerifierError {
    #[error(transparent)]
    Roots(#[from] PemError),
    #[error("cannot check certificates against these roots: {0}")]
    Build(String),
}

/// How a client checks a server's certificate: against `ca` when given (curl's `--cacert`), else
/// against the public roots.
///
/// One case goes beyond webpki: a self-signed certificate that is its own CA (what `openssl req
/// -x509` makes) and is also the server's certificate. webpki refuses a CA used as an end entity;
/// OpenSSL, hence curl and nginx, accept a certificate that is itself in the trust store. A lab's
/// balancer usually has exactly such a certificate, so when webpki refuses it for that reason only,
/// and it is byte for byte one of `ca`'s, it is accepted for the names it carries.
pub fn verifier(
    ca: Option<&CertFile>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, VerifierError> {
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
        .build()
        .map_err(|err| VerifierError::Build(err.to_string()))?;
    Ok(match ca {
        Some(ca) => Arc::new(Pinned {
            webpki,
            certs: Arc::clone(&ca.certs),
        }),
        None => webpki,
    })
}

#[derive(Debug)]
struct Pinned {
    webpki: Arc<WebPkiServerVerifier>,
    certs: Arc<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(other)))
                if matches!(
                    other.0.downcast_ref::<webpki::Error>(),
                    Some(webpki::Error::CaUsedAsEndEntity)
                ) && self
                    .certs
                    .iter()
                    .any(|cert| cert.as_ref() == end_entity.as_ref()) =>
            {
                verify_server_name(&ParsedCertificate::try_from(end_entity)?, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
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

    /// A self-signed certificate for `localhost` that is its own CA, as `openssl req -x509` makes.
    fn ca_for_localhost() -> (CertificateDer<'static>, PathBuf) {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let path = temp_file(&format!("ca-{}.pem", next_id()), &cert.pem());
        (cert.der().clone(), path)
    }

    /// Distinct file names for certificates made in one test process.
    fn next_id() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    fn check(verifier: &dyn ServerCertVerifier, cert: &CertificateDer<'_>, name: &str) -> bool {
        let name = ServerName::try_from(name.to_owned()).expect("a name");
        verifier
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn a_self_signed_ca_given_as_cacert_is_trusted_as_the_server_s_own_certificate() {
        let (cert, path) = ca_for_localhost();
        let ca = CertFile::read(&path).expect("read");
        let pinned = verifier(Some(&ca), provider()).expect("verifier");
        assert!(check(pinned.as_ref(), &cert, "localhost"));
        assert!(
            !check(pinned.as_ref(), &cert, "other.example"),
            "its names only"
        );
        let (other, other_path) = ca_for_localhost();
        assert!(
            !check(pinned.as_ref(), &other, "localhost"),
            "that certificate only"
        );
        let public = verifier(None, provider()).expect("verifier");
        assert!(
            !check(public.as_ref(), &cert, "localhost"),
            "not without --cacert"
        );
        let other_ca = CertFile::read(&other_path).expect("read");
        assert!(check(
            verifier(Some(&other_ca), provider())
                .expect("verifier")
                .as_ref(),
            &other,
            "localhost"
        ));
    }

    #[test]
    fn public_roots_are_built_in() {
        assert!(public_roots().len() > 50);
        assert_eq!(roots(None).expect("roots").len(), public_roots().len());
    }
}
