//! The innermost service: sends the request to a replica of the configured upstream (`replicas`
//! chooses it) over hyper-util's pooled client and hands back the replica's response untouched but
//! for hop-by-hop fields.
//!
//! Retries only where safe, as nginx's `proxy_next_upstream error timeout`: a request whose body
//! was empty goes to another replica when its replica could not be connected to (refused, the
//! connect timer, a failed TLS handshake: it never reached an origin), or, for an idempotent
//! method, when the replica failed before any response head. Never once a response has begun, and
//! never a request with a body, which cannot be sent twice.
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

use http::header::HOST;
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use thread_local::ThreadLocal;
use tower::Service;

use crate::config::UpstreamProtocol;
use crate::control::streams::Tracked;
use crate::deny::DenyPaths;
use crate::edge::chain;
use crate::headers::{
    append_via, client_value, set_forwarded, settle_host, strip_hop_by_hop, HostError,
};
use crate::metrics::Metrics;
use crate::replicas::{Replica, Replicas};
use crate::request_body::{RequestBody, ResponseTie, UpstreamBody};
use crate::timeouts::connect::ConnectTimeout;
use crate::tls::upstream::UpstreamConnector;
use crate::BoxError;

pub use crate::replicas::upstream::Upstream;

/// The client's address, put in each request's extensions by the connection that received it, and
/// its `X-Forwarded-For` value, written once per connection rather than once per request.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    pub addr: SocketAddr,
    pub forwarded_for: http::HeaderValue,
}

impl ClientAddr {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            forwarded_for: client_value(addr.ip()),
        }
    }
}

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

/// HTTP/2's largest window (RFC 9113 6.9.1), for the connection every stream to a replica shares.
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;
/// What one HTTP/2 stream from the upstream may have in flight, unread by its client: about what a
/// loopback TCP connection would buffer for it over HTTP/1.1.
const STREAM_WINDOW: u32 = 256 * 1024;

/// How long an idle connection to the upstream stays pooled.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Cloned for every request, as tower services are: one reference count to bump, not one per part.
#[derive(Clone)]
pub struct Forward(Arc<Parts>);

pub struct Parts {
    /// One client, and so one pool of upstream connections, per worker thread: a connection's task
    /// runs where it was made, and a request sent over another thread's connection would cross
    /// threads twice (nginx's workers each keep their own upstream connections too).
    clients: ThreadLocal<Upstreams>,
    connector: ConnectTimeout<UpstreamConnector>,
    protocol: UpstreamProtocol,
    scheme: Scheme,
    replicas: Replicas,
    deny: DenyPaths,
    metrics: Metrics,
}

/// What a request with an empty body needs to be sent again.
struct Replay {
    method: Method,
    path: PathAndQuery,
    headers: http::HeaderMap,
}

impl Forward {
    pub fn new(
        upstream: &Upstream,
        protocol: UpstreamProtocol,
        replicas: Replicas,
        connector: ConnectTimeout<UpstreamConnector>,
        deny: DenyPaths,
        metrics: Metrics,
    ) -> Self {
        Self(Arc::new(Parts {
            clients: ThreadLocal::new(),
            connector,
            protocol,
            scheme: upstream.scheme().clone(),
            replicas,
            deny,
            metrics,
        }))
    }
}

type Upstreams = Client<ConnectTimeout<UpstreamConnector>, RequestBody>;

impl Parts {
    /// This thread's client.
    fn client(&self) -> &Upstreams {
        self.clients.get_or(|| {
            let mut builder = Client::builder(TokioExecutor::new());
            // An idle pooled connection is let go before an upstream would close it
            // (keepalive-server after 60 s, nginx's keepalive_timeout 75 s): reusing one just as
            // the upstream closes it fails a request that never reached the upstream.
            builder
                .pool_idle_timeout(POOL_IDLE)
                .pool_timer(TokioTimer::new());
            if self.protocol == UpstreamProtocol::H2 {
                // Prior knowledge for http:// (h2c); https:// offers only h2 in its ALPN. Every
                // stream to a replica shares one connection, so its window must never be what
                // stops them: a client that stops reading holds its own stream's window, at most
                // STREAM_WINDOW, and no one else's.
                builder
                    .http2_only(true)
                    .http2_initial_connection_window_size(CONNECTION_WINDOW)
                    .http2_initial_stream_window_size(STREAM_WINDOW)
                    .timer(TokioTimer::new());
            }
            builder.build(self.connector.clone())
        })
    }

    /// The request as the upstream gets it, but for the replica its target names (set when one is
    /// chosen); an error, never the client's own target, when it cannot be pointed at the upstream
    /// (that would make this an open proxy): a [`ClientError`].
    fn upstream_request(
        &self,
        request: Request<Incoming>,
    ) -> Result<(Request<RequestBody>, ResponseTie, Option<Replay>), BoxError> {
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
        strip_hop_by_hop(&mut parts.headers);
        if let Some(client) = parts.extensions.get::<ClientAddr>() {
            let over_tls = parts.extensions.get::<ClientTls>().is_some();
            set_forwarded(&mut parts.headers, &client.forwarded_for, over_tls);
        }
        if self.protocol == UpstreamProtocol::H2 {
            // Over HTTP/2 the replica's address is the `:authority`, and a `Host` naming the
            // client's site beside it would make a malformed request (RFC 9113 8.3.1); the client's
            // is in `X-Forwarded-Host`, set above.
            parts.headers.remove(HOST);
        }
        append_via(&mut parts.headers, parts.version);
        parts.version = Version::HTTP_11;
        parts.uri = Uri::from(path.clone());
        // Only a request that can go to another replica is worth keeping a copy of.
        let replay = (body.is_end_stream() && self.replicas.several()).then(|| Replay {
            method: parts.method.clone(),
            path,
            headers: parts.headers.clone(),
        });
        let (body, tie) = RequestBody::new(body);
        Ok((Request::from_parts(parts, body), tie, replay))
    }
}

/// Points `request` at `replica`; the scheme is what tells the connector to speak TLS.
fn aim(
    request: &mut Request<RequestBody>,
    scheme: &Scheme,
    replica: &Replica,
) -> Result<(), BoxError> {
    let mut target = http::uri::Parts::default();
    target.scheme = Some(scheme.clone());
    target.authority = Some(replica.authority()?);
    target.path_and_query = request.uri().path_and_query().cloned();
    *request.uri_mut() = Uri::from_parts(target)?;
    Ok(())
}

impl Service<Request<Incoming>> for Forward {
    type Response = Response<UpstreamBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let tracked = request.extensions().get::<Arc<Tracked>>().cloned();
        let (request, tie, replay) = match self.0.upstream_request(request) {
            Ok(request) => request,
            Err(err) => return Box::pin(std::future::ready(Err(err))),
        };
        let this = Arc::clone(&self.0);
        Box::pin(async move {
            let mut first = Some(request);
            let mut tried: Vec<String> = Vec::new();
            loop {
                let replica = this.replicas.choose(&tried).ok_or(NoReplica)?;
                if let Some(tracked) = &tracked {
                    tracked.sent_to(&replica.label);
                }
                let mut sending = match (first.take(), &replay) {
                    (Some(first), _) => first,
                    (None, Some(replay)) => replay.request(),
                    // Only a request that can be replayed is ever retried.
                    (None, None) => return Err(NoReplica.into()),
                };
                aim(&mut sending, &this.scheme, &replica)?;
                let open = this.replicas.open(&replica);
                match this.client().request(sending).await {
                    Ok(mut response) => {
                        if response.status().is_server_error() {
                            let why = format!("answered {}", response.status());
                            this.replicas.failed(&replica, &why);
                        } else {
                            this.replicas.succeeded(&replica);
                        }
                        let version = response.version();
                        strip_hop_by_hop(response.headers_mut());
                        append_via(response.headers_mut(), version);
                        return Ok(response.map(|body| tie.body(body, open)));
                    }
                    Err(err) => {
                        drop(open);
                        let unreached = err.is_connect();
                        if unreached {
                            this.replicas.failed(&replica, &chain(&err));
                        }
                        let safe = replay
                            .as_ref()
                            .is_some_and(|replay| unreached || is_idempotent(&replay.method));
                        tried.push(replica.label.clone());
                        if safe && this.replicas.choose(&tried).is_some() {
                            this.metrics.retried();
                            tracing::info!(replica = %replica.label, error = %chain(&err), "no response from a replica: trying another");
                            continue;
                        }
                        return Err(err.into());
                    }
                }
            }
        })
    }
}

impl Replay {
    /// The request once more, with an empty body, its target to be aimed.
    fn request(&self) -> Request<RequestBody> {
        let mut again = Request::new(RequestBody::empty());
        *again.method_mut() = self.method.clone();
        *again.uri_mut() = Uri::from(self.path.clone());
        *again.headers_mut() = self.headers.clone();
        again
    }
}

/// RFC 9110 9.2.2: a request that may be sent twice with the effect of once.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Every replica was tried, or none is known yet (a name that has not resolved).
#[derive(Debug, thiserror::Error)]
#[error("no upstream replica to send the request to")]
pub struct NoReplica;
