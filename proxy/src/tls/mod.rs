//! TLS on both sides of the proxy, as real balancers have it: terminated towards clients
//! (`PROXY_TLS_CERT`/`PROXY_TLS_KEY`, or `PROXY_TLS_SELF_SIGNED`), and spoken towards an `https://`
//! upstream (`PROXY_UPSTREAM_CA`).
//!
//! Towards clients, TLS sits above the connection's own IO wrappers, never below them: the send timer
//! must see the socket's stalls, the header watchdog must bound the handshake too (a client that
//! connects and never finishes its handshake holds a descriptor like a slowloris), and a reset must
//! still reset the TCP connection. Each concern has its file: `termination` (the server configuration
//! and the handshake), `self_signed` (a certificate made at start), `close_notify` (what a dropped
//! connection sends), `upstream` (the connector towards an https upstream).
//!
//! Everything that can be wrong with these settings short of an unreadable file (which the settings'
//! parsers refuse) is found by [`crate::prepare`] before the proxy accepts anyone, as a
//! [`SetupError`] naming the variables involved.

pub mod close_notify;
pub mod self_signed;
pub mod termination;
pub mod upstream;

use std::io;
use std::path::PathBuf;

use keepalive_common::tls::VerifierError;

/// Why the proxy cannot start with its TLS settings (or an admin listener open to all); each names
/// the variables involved, on one line.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("PROXY_TLS_CERT={} is set without PROXY_TLS_KEY: set both (the certificate chain and its private key), or PROXY_TLS_SELF_SIGNED=FILE instead", .cert.display())]
    CertWithoutKey { cert: PathBuf },
    #[error("PROXY_TLS_KEY={} is set without PROXY_TLS_CERT: set both (the certificate chain and its private key), or PROXY_TLS_SELF_SIGNED=FILE instead", .key.display())]
    KeyWithoutCert { key: PathBuf },
    #[error("PROXY_TLS_KEY={} is set with PROXY_TLS_SELF_SIGNED={}, whose key is made at start: unset PROXY_TLS_KEY, or serve your own certificate with PROXY_TLS_CERT and PROXY_TLS_KEY", .key.display(), .self_signed.display())]
    KeyWithSelfSigned { key: PathBuf, self_signed: PathBuf },
    #[error("PROXY_TLS_SELF_SIGNED={} and PROXY_TLS_CERT={} both say which certificate to serve: set one of them", .self_signed.display(), .cert.display())]
    SelfSignedAndCert { self_signed: PathBuf, cert: PathBuf },
    /// rustls refused the pair: most often a key that is not the certificate's.
    #[error("PROXY_TLS_KEY={} cannot serve PROXY_TLS_CERT={}: {reason}", .key.display(), .cert.display())]
    Certificate {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot make the self-signed certificate for PROXY_TLS_SELF_SIGNED: {0}")]
    MakeCertificate(String),
    #[error("cannot write the self-signed certificate to PROXY_TLS_SELF_SIGNED={}: {source}", .path.display())]
    WriteCertificate { path: PathBuf, source: io::Error },
    #[error("PROXY_UPSTREAM={upstream}: its host cannot be a TLS server name ({reason}); use a DNS name or an IP address")]
    UpstreamName { upstream: String, reason: String },
    #[error("PROXY_UPSTREAM_CA: {0}")]
    UpstreamCa(#[source] VerifierError),
    #[error(transparent)]
    Admin(#[from] crate::admin::Exposed),
    /// The crypto provider lacks what the configuration asks for; a build problem, not a setting's.
    #[error("TLS configuration: {0}")]
    Provider(String),
}
