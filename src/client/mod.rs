//! The lab's HTTP client, shared by `watch`, `watch --resume`, `probe` and the experiments: one
//! connection per request, so that what a balancer does to one stream cannot hide behind a pool,
//! speaking `http://` and `https://` (rustls), HTTP/1.1 or HTTP/2 as ALPN settles (or as
//! `--http1.1`/`--http2` force), with curl's flags for reaching a balancer by address.
//!
//! What a user gives with `-H Host:` replaces the URL's host, never adds a second `Host` (which
//! nginx answers 400): over HTTP/2 it becomes the `:authority`.

pub mod route;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use clap::Args;
use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keepalive_common::tls::CertFile;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use route::{ConnectTo, Destination, Resolve, Routes};
use tls::{EndIo, EndWatch, TlsEnd, TlsSetupError, Versions};

/// Plain defaults: the public roots, ALPN h2 and http/1.1, no rerouting (the experiments).
impl Default for Client {
    fn default() -> Self {
        Self::new(&ClientArgs::default()).unwrap_or_else(|err| {
            // Only a CA file or a provider without safe protocol versions can fail, and neither
            // is involved without arguments.
            unreachable!("default TLS configuration: {err}")
        })
    }
}

/// How the client reaches a URL: TLS trust, HTTP version, and where it really connects.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientArgs {
    /// Trust the CA certificates in this PEM file instead of the built-in public roots, as curl's
    /// --cacert does (a self-signed certificate is its own CA)
    #[arg(long, value_name = "FILE", value_parser = CertFile::parse, help_heading = "Connection")]
    pub cacert: Option<CertFile>,

    /// Accept any server certificate, as curl's -k/--insecure does: the connection is encrypted,
    /// but nobody vouches for the server. For labs with self-signed certificates
    #[arg(short = 'k', long, help_heading = "Connection")]
    pub insecure: bool,

    /// Connect to ADDR:PORT for requests to HOST:PORT, keeping HOST for TLS (SNI and the
    /// certificate check) and Host, as curl's --connect-to does: probe a balancer by address. An
    /// empty HOST or PORT matches any; repeatable
    #[arg(long, value_name = "HOST:PORT:ADDR:PORT", value_parser = ConnectTo::parse, help_heading = "Connection")]
    pub connect_to: Vec<ConnectTo>,

    /// Resolve HOST:PORT to these IP addresses, as curl's --resolve does; repeatable
    #[arg(long, value_name = "HOST:PORT:ADDR[,ADDR]", value_parser = Resolve::parse, help_heading = "Connection")]
    pub resolve: Vec<Resolve>,

    /// Speak HTTP/1.1 only (ALPN http/1.1). Without --http1.1 or --http2, https:// offers h2 and
    /// http/1.1 and the server chooses; http:// speaks HTTP/1.1
    #[arg(
        long = "http1.1",
        conflicts_with = "http2",
        help_heading = "Connection"
    )]
    pub http1: bool,

    /// Speak HTTP/2 only: ALPN h2 over https:// (a server that does not agree fails), h2c with prior
    /// knowledge over http:// (curl's --http2-prior-knowledge)
    #[arg(long, help_heading = "Connection")]
    pub http2: bool,
}

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "HTTP/1.1",
            Self::Http2 => "HTTP/2",
        }
    }
}

/// What a connection turned out to be: the version, TLS (with its version and what ALPN chose),
/// and the address it reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    pub protocol: Protocol,
    /// `TLSv1.3`, `TLSv1.2`; `None` over plain TCP.
    pub tls: Option<&'static str>,
    pub alpn: Option<String>,
    pub peer: Option<SocketAddr>,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.protocol.as_str())?;
        match (self.tls, &self.alpn) {
            (Some(tls), Some(alpn)) => write!(f, " over {tls} (ALPN {alpn})")?,
            (Some(tls), None) => write!(f, " over {tls} (no ALPN)")?,
            (None, _) if self.protocol == Protocol::Http2 => {
                f.write_str(" (h2c, prior knowledge)")?
            }
            (None, _) => {}
        }
        if let Some(peer) = self.peer {
            write!(f, " with {peer}")?;
        }
        Ok(())
    }
}

/// Why a request got no answer, or its answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL, as given.
    #[error("{0} has no host")]
    NoHost(String),
    #[error("{0}: only http:// and https:// URLs are supported")]
    Scheme(String),
    #[error("cannot connect to {destination}{via}: {source}")]
    Connect {
        destination: String,
        /// ` (for HOST:PORT)` when --connect-to or --resolve sent the connection elsewhere.
        via: String,
        source: std::io::Error,
    },
    #[error("{host} is not a name or address TLS can check a certificate against")]
    ServerName { host: String },
    #[error("TLS handshake with {destination} failed: {source}{hint}")]
    Tls {
        destination: String,
        source: std::io::Error,
        /// What to do about a certificate that was not trusted.
        hint: &'static str,
    },
    #[error("{destination} does not speak HTTP/2 over TLS (ALPN chose {alpn}): drop --http2")]
    NoHttp2 { destination: String, alpn: String },
    #[error("cannot set up TLS: {0}")]
    TlsSetup(#[from] TlsSetupError),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] http::Error),
    #[error("no response: {0}")]
    NoResponse(#[source] hyper::Error),
    #[error("body failed: {0}")]
    Body(#[source] hyper::Error),
}

impl ClientError {
    /// curl's exit code for the same failure: 60 for a certificate nobody vouches for, 35 for
    /// another TLS failure, 7 when there was no answer at all.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Tls { hint, .. } if !hint.is_empty() => 60,
            Self::Tls { .. } | Self::NoHttp2 { .. } => 35,
            _ => 7,
        }
    }
}

/// [`Client::fetch`] failed: which request, and why.
#[derive(Debug, thiserror::Error)]
#[error("{method} {url}: {source}")]
pub struct FetchError {
    pub method: Method,
    pub url: String,
    pub source: ClientError,
}

/// The lab's client; cheap to clone.
#[derive(Clone)]
pub struct Client {
    tls: Arc<rustls::ClientConfig>,
    versions: Versions,
    routes: Arc<Routes>,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Self, TlsSetupError> {
        let versions = match (args.http1, args.http2) {
            (true, _) => Versions::Http1,
            (_, true) => Versions::Http2,
            _ => Versions::Any,
        };
        Ok(Self {
            tls: Arc::new(tls::config(args.cacert.as_ref(), args.insecure, versions)?),
            versions,
            routes: Arc::new(Routes {
                connect_to: args.connect_to.clone(),
                resolve: args.resolve.clone(),
            }),
        })
    }

    /// A new connection to `url`'s host (or where `--connect-to`/`--resolve` send it).
    pub async fn connect(&self, url: &Uri) -> Result<Connection, ClientError> {
        let authority = url
            .authority()
            .ok_or_else(|| ClientError::NoHost(url.to_string()))?;
        let secure = match url.scheme_str() {
            None | Some("http") => false,
            Some("https") => true,
            Some(_) => return Err(ClientError::Scheme(url.to_string())),
        };
        // `[::1]` in a URL is `::1` to the resolver and to TLS.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let destination = self.routes.destination(host, port);
        let via = if destination == Destination::Name(host.to_owned(), port) {
            String::new()
        } else {
            format!(" (for {host}:{port})")
        };
        let connected = match &destination {
            Destination::Name(name, port) => TcpStream::connect((name.as_str(), *port)).await,
            Destination::Addrs(addrs) => TcpStream::connect(addrs.as_slice()).await,
        };
        let tcp = connected.map_err(|source| ClientError::Connect {
            destination: destination.to_string(),
            via: via.clone(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let peer = tcp.peer_addr().ok();
        let target = Target {
            scheme: if secure { Scheme::HTTPS } else { Scheme::HTTP },
            authority: default_authority(authority),
        };
        if !secure {
            let protocol = match self.versions {
                Versions::Http2 => Protocol::Http2,
                _ => Protocol::Http1,
            };
            let transport = Transport {
                protocol,
                tls: None,
                alpn: None,
                peer,
            };
            return Connection::start(TokioIo::new(tcp), transport, target, None).await;
        }
        let name = ServerName::try_from(host.to_owned()).map_err(|_| ClientError::ServerName {
            host: host.to_owned(),
        })?;
        let stream = TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .map_err(|source| ClientError::Tls {
                destination: format!("{host}:{port}{}", via_addr(&destination, &via)),
                hint: certificate_hint(&source),
                source,
            })?;
        let session = stream.get_ref().1;
        let alpn = session
            .alpn_protocol()
            .map(|alpn| String::from_utf8_lossy(alpn).into_owned());
        let protocol = match alpn.as_deref() {
            Some("h2") => Protocol::Http2,
            _ if self.versions == Versions::Http2 => {
                return Err(ClientError::NoHttp2 {
                    destination: format!("{host}:{port}"),
                    alpn: alpn.unwrap_or_else(|| "nothing".to_owned()),
                })
            }
            _ => Protocol::Http1,
        };
        let transport = Transport {
            protocol,
            tls: session.protocol_version().map(|version| match version {
                rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
                rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
                _ => "TLS",
            }),
            alpn,
            peer,
        };
        let watch = Arc::new(EndWatch::default());
        let io = TokioIo::new(EndIo::new(stream, Arc::clone(&watch)));
        Connection::start(io, transport, target, Some(watch)).await
    }

    /// One request with an empty body, its whole answer read: for small answers (a job's JSON, an
    /// origin's metrics), not for streams, which [`crate::watch::observe`] follows.
    pub async fn fetch(
        &self,
        method: Method,
        url: &Uri,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<(StatusCode, Bytes), FetchError> {
        self.exchange(&method, url, headers)
            .await
            .map_err(|source| FetchError {
                method,
                url: url.to_string(),
                source,
            })
    }

    async fn exchange(
        &self,
        method: &Method,
        url: &Uri,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut connection = self.connect(url).await?;
        let request = connection.request(method.clone(), url, headers)?;
        let response = connection
            .send(request)
            .await
            .map_err(ClientError::NoResponse)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(ClientError::Body)?
            .to_bytes();
        Ok((status, body))
    }
}

fn via_addr(destination: &Destination, via: &str) -> String {
    if via.is_empty() {
        String::new()
    } else {
        format!(" at {destination}")
    }
}

/// What to do about a handshake that failed on the server's certificate; empty for other failures.
fn certificate_hint(err: &std::io::Error) -> &'static str {
    use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(NotValidForName | NotValidForNameContext { .. })) => {
            " (put a name the certificate is for in the URL, with --connect-to NAME:PORT:ADDR:PORT to reach this address, or skip the check with --insecure)"
        }
        Some(rustls::Error::InvalidCertificate(_)) => {
            " (trust its CA with --cacert FILE, or skip the check with --insecure)"
        }
        _ => "",
    }
}

/// The URL's authority as `Host` carries it: host and port as written, never user info.
fn default_authority(authority: &Authority) -> String {
    match authority.port() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_owned(),
    }
}

/// What requests on a connection are addressed to.
struct Target {
    scheme: Scheme,
    authority: String,
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// One connection, its requests addressed as the URL (and `-H Host:`) say.
pub struct Connection {
    sender: Sender,
    /// Dropped with the request's future too (a `--max-time` timeout), so the connection closes.
    _driver: AbortOnDrop,
    pub transport: Transport,
    target: Target,
    tls_end: Option<Arc<EndWatch>>,
}

impl Connection {
    async fn start<IO>(
        io: IO,
        transport: Transport,
        target: Target,
        tls_end: Option<Arc<EndWatch>>,
    ) -> Result<Self, ClientError>
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, driver) = match transport.protocol {
            Protocol::Http1 => {
                let (sender, connection) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(ClientError::Handshake)?;
                (Sender::Http1(sender), tokio::spawn(connection))
            }
            Protocol::Http2 => {
                let (sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(ClientError::Handshake)?;
                (Sender::Http2(sender), tokio::spawn(connection))
            }
        };
        Ok(Self {
            sender,
            _driver: AbortOnDrop(driver),
            transport,
            target,
            tls_end,
        })
    }

    /// A request for `url`'s path with `headers`. A `Host` among them replaces the URL's authority
    /// (HTTP/1.1's `Host`, HTTP/2's `:authority`) instead of being sent beside it.
    pub fn request(
        &self,
        method: Method,
        url: &Uri,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Request<Empty<Bytes>>, ClientError> {
        let path = url.path_and_query().map_or("/", |path| path.as_str());
        let host = headers
            .iter()
            .rev()
            .find(|(name, _)| name == http::header::HOST)
            .map(|(_, value)| value.clone());
        let mut request = match self.transport.protocol {
            Protocol::Http1 => {
                let host = match host {
                    Some(host) => host,
                    None => HeaderValue::try_from(self.target.authority.as_str())
                        .map_err(http::Error::from)?,
                };
                Request::builder()
                    .method(method)
                    .uri(path)
                    .header(http::header::HOST, host)
            }
            Protocol::Http2 => {
                let authority = match &host {
                    Some(host) => {
                        Authority::try_from(host.as_bytes()).map_err(http::Error::from)?
                    }
                    None => Authority::try_from(self.target.authority.as_str())
                        .map_err(http::Error::from)?,
                };
                let uri = Uri::builder()
                    .scheme(self.target.scheme.clone())
                    .authority(authority)
                    .path_and_query(path)
                    .build()?;
                Request::builder().method(method).uri(uri)
            }
        };
        for (name, value) in headers {
            if name != http::header::HOST {
                request = request.header(name, value);
            }
        }
        Ok(request.body(Empty::new())?)
    }

    pub async fn send(
        &mut self,
        request: Request<Empty<Bytes>>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match &mut self.sender {
            Sender::Http1(sender) => sender.send_request(request).await,
            Sender::Http2(sender) => sender.send_request(request).await,
        }
    }

    /// How the server ended TLS, once it has (HTTP/1.1 over TLS only; HTTP/2 ends streams itself).
    pub fn tls_end(&self) -> Option<TlsEnd> {
        self.tls_end.as_ref().and_then(|watch| watch.end())
    }
}

/// The task driving the connection, aborted when the request is done with it.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection to nobody (the other end is returned, to be kept open): only its request
    /// building is under test.
    async fn connection(protocol: Protocol) -> (Connection, tokio::io::DuplexStream) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let target = Target {
            scheme: Scheme::HTTPS,
            authority: "lb.example".to_owned(),
        };
        let transport = Transport {
            protocol,
            tls: None,
            alpn: None,
            peer: None,
        };
        let connection = Connection::start(TokioIo::new(client), transport, target, None)
            .await
            .expect("handshake");
        (connection, server)
    }

    fn host_header(value: &'static str) -> Vec<(HeaderName, HeaderValue)> {
        vec![(http::header::HOST, HeaderValue::from_static(value))]
    }

    #[tokio::test]
    async fn a_host_header_replaces_the_url_s_host_over_http1() {
        let (connection, _server) = connection(Protocol::Http1).await;
        let url: Uri = "http://10.0.0.5:8080/polls/streamed".parse().expect("url");
        let request = connection
            .request(Method::GET, &url, &host_header("example.com"))
            .expect("request");
        let hosts: Vec<_> = request
            .headers()
            .get_all(http::header::HOST)
            .iter()
            .collect();
        assert_eq!(hosts, ["example.com"]);
        assert_eq!(request.uri(), "/polls/streamed");
        let plain = connection.request(Method::GET, &url, &[]).expect("request");
        assert_eq!(plain.headers()[http::header::HOST], "lb.example");
    }

    #[tokio::test]
    async fn a_host_header_becomes_the_authority_over_http2() {
        let (connection, _server) = connection(Protocol::Http2).await;
        let url: Uri = "https://10.0.0.5/polls/".parse().expect("url");
        let request = connection
            .request(Method::GET, &url, &host_header("example.com:8443"))
            .expect("request");
        assert!(request.headers().get(http::header::HOST).is_none());
        assert_eq!(request.uri(), "https://example.com:8443/polls/");
    }

    #[test]
    fn transports_say_what_they_are() {
        let tls = Transport {
            protocol: Protocol::Http2,
            tls: Some("TLSv1.3"),
            alpn: Some("h2".to_owned()),
            peer: Some("127.0.0.1:8443".parse().expect("addr")),
        };
        assert_eq!(
            tls.to_string(),
            "HTTP/2 over TLSv1.3 (ALPN h2) with 127.0.0.1:8443"
        );
        let h2c = Transport {
            protocol: Protocol::Http2,
            tls: None,
            alpn: None,
            peer: None,
        };
        assert_eq!(h2c.to_string(), "HTTP/2 (h2c, prior knowledge)");
    }
}
