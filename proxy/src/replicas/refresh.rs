//! Keeping the replica set true while the proxy runs: every interval, names are resolved again (new
//! and vanished addresses join and leave without a restart), and each replica is asked `GET /healthz`
//! (HAProxy's `check`, Envoy's active health checking): a 200 within the interval is healthy,
//! anything else (a draining origin's 503, a refused connect, silence) is not.

use std::collections::HashMap;
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
use crate::config::UpstreamProtocol;
use crate::timeouts::connect::ConnectTimeout;
use crate::tls::upstream::UpstreamConnector;

/// How often names are resolved again when active checks are off.
const RESOLVE_EVERY: Duration = Duration::from_secs(5);
/// The longest one name's lookup may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a health check may take, however long the interval.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What each upstream name last resolved to. A name that fails to resolve keeps its last answer,
/// so that a DNS hiccup never empties the set; one that never resolved stands for no replica until
/// it does (a compose service scaled to none, or not started yet), while the others serve.
#[derive(Debug, Default)]
pub struct Resolver {
    names: HashMap<(String, u16), Answer>,
}

#[derive(Debug, Default)]
struct Answer {
    addrs: Vec<SocketAddr>,
    /// The last lookup failed: said once at warn, not at every refresh.
    failing: bool,
}

impl Resolver {
    /// Every replica the upstream's targets stand for now. An `https://` name stays one replica
    /// under its name: its certificate is for the name, which TLS must be given, not for an address.
    pub async fn resolve(&mut self, upstream: &Upstream) -> Vec<String> {
        let mut addrs = Vec::new();
        for target in upstream.targets() {
            match target {
                Target::Addr(addr) => addrs.push(addr.to_string()),
                Target::Name { host, port } if upstream.is_https() => {
                    addrs.push(format!("{host}:{port}"))
                }
                Target::Name { host, port } => {
                    // Bounded: a slow resolver must not hold the health checks that follow.
                    let found = match tokio::time::timeout(
                        RESOLVE_TIMEOUT,
                        tokio::net::lookup_host((host.as_str(), port)),
                    )
                    .await
                    {
                        Ok(found) => found,
                        Err(_) => Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "no answer within {}",
                                keepalive_common::duration::display(RESOLVE_TIMEOUT)
                            ),
                        )),
                    };
                    let answer = self.names.entry((host.clone(), port)).or_default();
                    match found {
                        Ok(found) => {
                            answer.addrs = found.collect();
                            if std::mem::take(&mut answer.failing) {
                                tracing::info!(%host, addresses = answer.addrs.len(), "an upstream name resolves again");
                            }
                        }
                        // A name that never resolved is a replica set not started yet (a compose
                        // profile left off): worth a line, not a warning.
                        Err(err) if !answer.failing && answer.addrs.is_empty() => {
                            answer.failing = true;
                            tracing::info!(%host, %err, "an upstream name does not resolve: it stands for no replica until it does (looked up again at each refresh)");
                        }
                        Err(err) if !answer.failing => {
                            answer.failing = true;
                            tracing::warn!(%host, %err, kept = answer.addrs.len(), "an upstream name no longer resolves: it keeps the addresses it had (looked up again at each refresh)");
                        }
                        Err(err) => {
                            tracing::debug!(%host, %err, "an upstream name still does not resolve")
                        }
                    }
                    addrs.extend(answer.addrs.iter().map(SocketAddr::to_string));
                }
            }
        }
        addrs.sort();
        addrs.dedup();
        addrs
    }
}

/// Resolves (with `resolver`, which remembers what each name was) and checks every `interval`
/// (`None`: resolves every few seconds, checks nothing) until dropped.
pub async fn run(
    replicas: Replicas,
    upstream: Upstream,
    connector: UpstreamConnector,
    protocol: UpstreamProtocol,
    interval: Option<Duration>,
    mut resolver: Resolver,
) {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        // A check on a fresh connection each time, as HAProxy's are: a pooled connection would
        // tell nothing of whether the replica still accepts.
        .pool_max_idle_per_host(0)
        // In the protocol requests go in: an origin may speak only that one.
        .http2_only(protocol == UpstreamProtocol::H2);
    let client: Client<_, Empty<Bytes>> =
        builder.build(ConnectTimeout::new(connector, Some(CHECK_TIMEOUT)));
    let mut ticks = tokio::time::interval(interval.unwrap_or(RESOLVE_EVERY));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        replicas.update(&resolver.resolve(&upstream).await);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_that_does_not_resolve_stands_for_no_replica_and_the_others_serve() {
        // `.invalid` never resolves (RFC 6761): a compose service that is not running.
        let upstream: Upstream =
            "http://127.0.0.1:8001,http://localhost:8000,http://absent.invalid:8000"
                .parse()
                .expect("an upstream list");
        let addrs = Resolver::default().resolve(&upstream).await;
        assert!(addrs.contains(&"127.0.0.1:8001".to_owned()), "{addrs:?}");
        assert!(addrs.contains(&"127.0.0.1:8000".to_owned()), "{addrs:?}");
        assert!(addrs
            .iter()
            .all(|addr| addr.ends_with(":8000") || addr == "127.0.0.1:8001"));
    }

    #[tokio::test]
    async fn a_name_that_stops_resolving_keeps_its_last_addresses() {
        let upstream: Upstream = "http://absent.invalid:8000".parse().expect("an upstream");
        let mut resolver = Resolver::default();
        let last = "10.0.0.7:8000".parse().expect("an address");
        resolver.names.insert(
            ("absent.invalid".to_owned(), 8000),
            Answer {
                addrs: vec![last],
                failing: false,
            },
        );
        assert_eq!(resolver.resolve(&upstream).await, vec!["10.0.0.7:8000"]);
        assert!(resolver.names[&("absent.invalid".to_owned(), 8000)].failing);
    }
}
