//! `PROXY_TLS_SELF_SIGNED=FILE`: TLS without bringing a certificate, for a lab on one machine. A new
//! certificate and key are made at each start for the names a local client uses (`localhost`,
//! `127.0.0.1`, `::1`), and the certificate alone is written to FILE, so that a client can trust
//! exactly it (`curl --cacert FILE`). The key never leaves the process: a key on disk would be one
//! more thing to protect, and the next start makes a new pair anyway.

use std::path::Path;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::SetupError;

/// The names the certificate is valid for; IP addresses become IP subject alternative names.
pub const NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A certificate made at start, and its key.
pub struct SelfSigned {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl SelfSigned {
    /// Makes a certificate for [`NAMES`] and writes it, as PEM, to `path` (creating its directory).
    pub fn make_and_write(path: &Path) -> Result<Self, SetupError> {
        let made = rcgen::generate_simple_self_signed(NAMES.map(str::to_owned).to_vec())
            .map_err(|err| SetupError::MakeCertificate(err.to_string()))?;
        let write = |source| SetupError::WriteCertificate {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write)?;
        }
        std::fs::write(path, made.cert.pem()).map_err(write)?;
        Ok(Self {
            cert: made.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()).into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keepalive_common::tls::CertFile;

    #[test]
    fn the_certificate_is_written_where_asked_and_the_key_is_not() {
        let dir =
            std::env::temp_dir().join(format!("keepalive-self-signed-{}", std::process::id()));
        let path = dir.join("nested").join("proxy-cert.pem");
        let made = SelfSigned::make_and_write(&path).expect("made and written");
        let written = CertFile::read(&path).expect("a PEM certificate");
        assert_eq!(written.certs.as_slice(), [made.cert]);
        let text = std::fs::read_to_string(&path).expect("read back");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_unwritable_path_is_named() {
        let err = SelfSigned::make_and_write(Path::new("/proc/keepalive/cert.pem"))
            .err()
            .expect("/proc is not writable");
        let line = err.to_string();
        assert!(
            line.contains("PROXY_TLS_SELF_SIGNED=/proc/keepalive/cert.pem"),
            "{line}"
        );
    }
}
