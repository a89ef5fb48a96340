//! Keeping the replica set true while the proxy runs: every interval, names are resolved again (new
//! and vanished addresses join and leave without a restart), and each replica is asked `GET /healthz`
//! (HAProxy's `check`, Envoy's active health checking): a 200 within the interval is healthy,
//! anything else (a draining origin's 503, a refused connect, silence) is not.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::task::JoinSet;

use super::upstream::{Target, Upstream};
use super::Replicas;
use crate::timeouts::connect::ConnectTimeout;
use crate::tls::upstream::UpstreamConnector;

/// How often names are resolved again when active checks are off.
const RESOLVE_EVERY: Duration = Duration::from_secs(5);
/// The longest a health check may take, however long the interval.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Every replica the upstream's targets stand for now; `None` when a name did not resolve, so that
/// a DNS hiccup never empties the set. An `https://` name stays one replica under its name: its
/// certificate is for the name, which TLS must be given, not for an address.
pub async fn resolve(upstream: &Upstream) -> Option<Vec<String>> {
    let mut addrs = Vec::new();
    for target in upstream.targets() {
        match target {
            Target::Addr(addr) => addrs.push(addr.to_string()),
            Target::Name { host, port } if upstream.is_https() => {
                addrs.push(format!("{host}:{port}"))
            }
            Target::Name { host, port } => {
                match tokio::net::lookup_host((host.as_str(), port)).await {
                    Ok(found) => addrs.extend(found.map(|addr: SocketAddr| addr.to_string())),
                    Err(err) => {
                        tracing::warn!(%host, %err, "cannot resolve an upstream name: keeping the replicas as they were");
                        return None;
                    }
                }
            }
        }
    }
    addrs.sort();
    addrs.dedup();
    Some(addrs)
}

/// Resolves and checks every `interval` (`None`: resolves every few seconds, checks nothing) until
/// dropped.
pub async fn run(
    replicas: Replicas,
    upstream: Upstream,
    connector: UpstreamConnector,
    interval: Option<Duration>,
) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        // A check on a fresh connection each time, as HAProxy's are: a pooled connection would
        // tell nothing of whether the replica still accepts.
        .pool_max_idle_per_host(0)
        .build(ConnectTimeout::new(connector, Some(CHECK_TIMEOUT)));
    let mut ticks = tokio::time::interval(interval.unwrap_or(RESOLVE_EVERY));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Some(addrs) = resolve(&upstream).await {
            replicas.update(&addrs);
        }
        let Some(interval) = interval else { continue };
        let limit = interval.min(CHECK_TIMEOUT);
        let mut checks = JoinSet::new();
        for replica in replicas.all() {
            let (client, scheme) = (client.clone(), upstream.scheme().clone());
            checks.spawn(async move {
                let outcome = check(&client, scheme, &replica.label, limit).await;
                (replica, outcome)
            });
        }
        while let Some(Ok((replica, outcome))) = checks.join_next().await {
            match outcome {
                Ok(()) => replicas.checked(&replica, true, "/healthz answered 200"),
                Err(why) => replicas.checked(&replica, false, &why),
            }
        }
    }
}

/// One health check: `Ok` for a 2xx within `limit`, else why not.
async fn check<C>(
    client: &Client<C, Empty<Bytes>>,
    scheme: http::uri::Scheme,
    replica: &str,
    limit: Duration,
) -> Result<(), String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let uri = Uri::builder()
        .scheme(scheme)
        .authority(replica)
        .path_and_query("/healthz")
        .build()
        .map_err(|err| err.to_string())?;
    let request = Request::get(uri)
        .body(Empty::new())
        .map_err(|err| err.to_string())?;
    let response = tokio::time::timeout(limit, client.request(request))
        .await
        .map_err(|_| {
            format!(
                "/healthz did not answer within {}",
                keepalive_common::duration::display(limit)
            )
        })?
        .map_err(|err| format!("/healthz failed: {err}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("/healthz answered {}", response.status()))
    }
}
