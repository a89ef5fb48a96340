//! TLS towards an `https://` upstream: hyper-rustls's `HttpsConnector` around hyper-util's
//! `HttpConnector`, trusting the public roots built into the binary, or exactly the CAs of
//! `PROXY_UPSTREAM_CA` (as curl's `--cacert` does, so a self-signed certificate made by
//! `openssl req -x509`, which calls itself a CA, is trusted as the upstream's own). The server name (SNI, and the name the
//! certificate must be valid for) is the upstream's host. ALPN offers the one protocol
//! `PROXY_UPSTREAM_PROTOCOL` names: pooled HTTP/1.1 connections by default, as nginx keeps, or `h2`.
//!
//! The connect timer wraps this whole connector, so that it bounds the TCP connect and the handshake
//! together, as nginx's `proxy_connect_timeout` does. What failed is told apart here, where it is
//! known, rather than guessed from messages at the edge: a failed TCP connect comes out as it always
//! did (refused: 502, as before), and anything after it, the handshake, as an [`UpstreamTlsError`],
//! which the edge answers with a 502 that says so.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use keepalive_common::tls::{provider, verifier, CertFile};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tower::Service;

use super::SetupError;
use crate::config::UpstreamProtocol;
use crate::forward::Upstream;
use crate::BoxError;

/// The handshake with an https upstream failed (its certificate is not trusted or not valid for its
/// name, it does not speak TLS, it closed); the source says how.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with the upstream failed")]
pub struct UpstreamTlsError(#[source] BoxError);

/// Connects to the upstream: plain TCP for `http://`, TCP then a TLS handshake for `https://`.
#[derive(Clone)]
pub struct UpstreamConnector {
    inner: HttpsConnector<Tcp>,
}

impl UpstreamConnector {
    /// `ca`: the CAs to trust instead of the public roots (`PROXY_UPSTREAM_CA`). An https
    /// upstream's host must be one TLS can name (SNI, the certificate check): found here, not at
    /// every request's handshake.
    pub fn new(
        upstream: &Upstream,
        ca: Option<&CertFile>,
        protocol: UpstreamProtocol,
    ) -> Result<Self, SetupError> {
        if upstream.is_https() {
            for host in upstream.hosts() {
                // An IPv6 literal is bracketed in a URL, never in a server name.
                let host = host.trim_start_matches('[').trim_end_matches(']');
                ServerName::try_from(host.to_owned()).map_err(|err| SetupError::UpstreamName {
                    upstream: upstream.to_string(),
                    reason: err.to_string(),
                })?;
            }
        }
        let mut tcp = HttpConnector::new();
        // Streams are latency-sensitive: a heartbeat must not wait for Nagle.
        tcp.set_nodelay(true);
        // The scheme decides TLS one level up; this connector only connects.
        tcp.enforce_http(false);
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| SetupError::Provider(err.to_string()))?
            // Dangerous in name only: webpki's check, plus trusting a pinned self-signed certificate.
            .dangerous()
            .with_custom_certificate_verifier(
                verifier(ca, provider()).map_err(SetupError::UpstreamCa)?,
            )
            .with_no_client_auth();
        config.alpn_protocols = vec![match protocol {
            UpstreamProtocol::Http1 => b"http/1.1".to_vec(),
            UpstreamProtocol::H2 => b"h2".to_vec(),
        }];
        Ok(Self {
            inner: HttpsConnector::from((Tcp(tcp), config)),
        })
    }
}

impl Service<Uri> for UpstreamConnector {
    type Response = MaybeHttpsStream<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            connecting
                .await
                .map_err(|err| match err.downcast::<TcpFailed>() {
                    // The connect's own error, as it would be without TLS.
                    Ok(tcp) => tcp.0,
                    Err(other) => UpstreamTlsError(other).into(),
                })
        })
    }
}

/// The TCP connect under the handshake, its failures marked as its own.
#[derive(Clone)]
struct Tcp(HttpConnector);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TcpFailed(BoxError);

impl Service<Uri> for Tcp {
    type Response = TokioIo<TcpStream>;
    type Error = TcpFailed;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, TcpFailed>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TcpFailed>> {
        self.0
            .poll_ready(cx)
            .map_err(|err| TcpFailed(Box::new(err)))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { connecting.await.map_err(|err| TcpFailed(Box::new(err))) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_https_host_tls_cannot_name_is_refused_at_start_naming_the_upstream() {
        for good in [
            "https://origin.example:8443",
            "https://127.0.0.1:8443",
            "https://[::1]:8443",
            // Plain HTTP names no server: any host the URL allows.
            "http://a..b:8000",
        ] {
            let upstream: Upstream = good.parse().expect(good);
            assert!(
                UpstreamConnector::new(&upstream, None, UpstreamProtocol::Http1).is_ok(),
                "{good}"
            );
        }
        let upstream: Upstream = "https://a..b:8443".parse().expect("a URL's host");
        let Err(err) = UpstreamConnector::new(&upstream, None, UpstreamProtocol::Http1) else {
            panic!("accepted a..b as a TLS server name");
        };
        assert!(
            err.to_string().contains("PROXY_UPSTREAM=https://a..b:8443"),
            "{err}"
        );
    }
}
