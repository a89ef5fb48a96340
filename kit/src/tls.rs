//! Certificates for tests: a self-signed certificate for `localhost` (and `lb.example`, 127.0.0.1,
//! ::1), written as PEM files into a fresh directory that is removed when the certificate is
//! dropped, so that the proxy, nginx and curl take them as they would a real one.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use keepalive_common::tls::{CertFile, KeyFile};

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
    /// A new certificate for [`NAMES`].
    pub fn localhost() -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let made = rcgen::generate_simple_self_signed(NAMES.map(str::to_owned).to_vec())
            .map_err(io::Error::other)?;
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
