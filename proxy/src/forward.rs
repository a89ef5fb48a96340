//! The innermost service: sends the request to the configured upstream over hyper-util's pooled
//! client and hands back the upstream's response untouched but for hop-by-hop fields.
//!
//! The request's own target is ignored except for its path and query: whatever authority a client
//! writes (absolute-form, `Host`, `:authority`), the request goes to the one upstream, so this is never
//! an open proxy. What the client got wrong (its `Host`, its body, a tunnel, a denied path) fails
//! as a [`ClientError`], which the edge answers 4xx and never counts as the upstream's failure.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::Service;

use crate::deny::DenyPaths;
use crate::headers::{append_via, set_forwarded, settle_host, strip_hop_by_hop, HostError};
use crate::request_body::{RequestBody, ResponseTie, UpstreamBody};
use crate::timeouts::connect::ConnectTimeout;
use crate::tls::upstream::UpstreamConnector;
use crate::BoxError;

/// The upstream this proxy forwards to: one authority, over plain HTTP or over TLS (`https://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
}

impl Upstream {
    /// Whether the proxy speaks TLS to the upstream.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The upstream's host, as the URL spells it (an IPv6 address in brackets).
    pub fn host(&self) -> &str {
        self.authority.host()
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl std::str::FromStr for Upstream {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        const FORM: &str = "expected an http:// or https:// URL with a host and port, like http://127.0.0.1:8000 or https://origin.example:8443";
        let uri: Uri = value.parse().map_err(|_| FORM.to_owned())?;
        let scheme = match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTP || *scheme == Scheme::HTTPS => scheme.clone(),
            _ => {
                return Err(format!(
                    "only http:// and https:// upstreams are supported; {FORM}"
                ))
            }
        };
        let path_is_root = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
        match uri.authority() {
            Some(authority) if path_is_root => Ok(Self {
                scheme,
                authority: authority.clone(),
            }),
            _ => Err(FORM.to_owned()),
        }
    }
}

/// The client's address, put in each request's extensions by the connection that received it.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Put in a request's extensions when its connection is TLS the proxy terminated: the upstream is
/// told `X-Forwarded-Proto: https`, as nginx's `$scheme` would say.
#[derive(Debug, Clone, Copy)]
pub struct ClientTls;

/// A request the proxy refuses because of what the client sent. Its own words are what the client
/// reads; the cause (hyper's account of a broken body) goes to the log only.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A client tried to use the proxy as a tunnel.
    #[error("CONNECT is not supported: this proxy only forwards requests to its upstream")]
    Connect,
    #[error(transparent)]
    Host(#[from] HostError),
    /// The request body broke off or was malformed (bad chunked framing, shorter than announced).
    #[error("the request body is malformed or incomplete")]
    Body(#[source] Arc<hyper::Error>),
    /// One of `PROXY_DENY_PATHS`: an upstream's operator route.
    #[error("the proxy does not forward this path (PROXY_DENY_PATHS)")]
    Denied,
}

impl ClientError {
    /// What the client is answered.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Connect => StatusCode::METHOD_NOT_ALLOWED,
            Self::Host(_) | Self::Body(_) => StatusCode::BAD_REQUEST,
            Self::Denied => StatusCode::NOT_FOUND,
        }
    }

    /// The `kind` label of `proxy_client_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Host(_) => "host",
            Self::Body(_) => "body",
            Self::Denied => "denied_path",
        }
    }
}

/// How long an idle connection to the upstream stays pooled.
const POOL_IDLE: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Forward {
    client: Client<ConnectTimeout<UpstreamConnector>, RequestBody>,
    upstream: Upstream,
    deny: DenyPaths,
}

impl Forward {
    pub fn new(
        upstream: Upstream,
        connector: ConnectTimeout<UpstreamConnector>,
        deny: DenyPaths,
    ) -> Self {
        // An idle pooled connection is let go before an upstream would close it (keepalive-server
        // after 60 s, nginx's keepalive_timeout 75 s): reusing one just as the upstream closes it
        // fails a request that never reached the upstream.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self {
            client,
            upstream,
            deny,
        }
    }

    /// The request as the upstream gets it; an error, never the client's own target, when it cannot be
    /// pointed at the upstream (that would make this an open proxy): a [`ClientError`], or an
    /// `http::Error` for a target the upstream's authority cannot be put in.
    fn upstream_request(
        &self,
        request: Request<Incoming>,
    ) -> Result<(Request<RequestBody>, ResponseTie), BoxError> {
        if request.method() == Method::CONNECT {
            return Err(ClientError::Connect.into());
        }
        if self.deny.denies(request.uri().path()) {
            return Err(ClientError::Denied.into());
        }
        let (mut parts, body) = request.into_parts();
        // Before the target is replaced: its authority (absolute-form, HTTP/2's `:authority`) wins.
        settle_host(&mut parts.headers, parts.uri.authority(), parts.version)
            .map_err(ClientError::from)?;
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut target = http::uri::Parts::default();
        // The scheme is what tells the connector to speak TLS to the upstream.
        target.scheme = Some(self.upstream.scheme.clone());
        target.authority = Some(self.upstream.authority.clone());
        target.path_and_query = Some(path);
        parts.uri = Uri::from_parts(target)?;
        strip_hop_by_hop(&mut parts.headers);
        if let Some(ClientAddr(client)) = parts.extensions.get::<ClientAddr>() {
            let over_tls = parts.extensions.get::<ClientTls>().is_some();
            set_forwarded(&mut parts.headers, client.ip(), over_tls);
        }
        append_via(&mut parts.headers, parts.version);
        parts.version = Version::HTTP_11;
        let (body, tie) = RequestBody::new(body);
        Ok((Request::from_parts(parts, body), tie))
    }
}

impl Service<Request<Incoming>> for Forward {
    type Response = Response<UpstreamBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let (request, tie) = match self.upstream_request(request) {
            Ok(request) => request,
            Err(err) => return Box::pin(std::future::ready(Err(err))),
        };
        let sending = self.client.request(request);
        Box::pin(async move {
            let mut response = sending.await?;
            let version = response.version();
            strip_hop_by_hop(response.headers_mut());
            append_via(response.headers_mut(), version);
            Ok(response.map(|body| tie.body(body)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_is_an_http_or_https_authority() {
        let upstream: Upstream = "http://127.0.0.1:8000".parse().expect("valid");
        assert_eq!(upstream.to_string(), "http://127.0.0.1:8000");
        assert!(!upstream.is_https());
        assert!("http://server:8000/".parse::<Upstream>().is_ok());
        let https: Upstream = "https://origin.example:8443".parse().expect("valid");
        assert_eq!(https.to_string(), "https://origin.example:8443");
        assert!(https.is_https());
        for bad in [
            "ftp://a:1",
            "127.0.0.1:8000",
            "http://a:1/prefix",
            "https://a:1/prefix",
            "not a url",
            "",
        ] {
            assert!(bad.parse::<Upstream>().is_err(), "{bad} accepted");
        }
    }
}
