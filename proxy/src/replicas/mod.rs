//! The replicas behind the proxy and which one gets the next request, as real balancers spread
//! load: `upstream` (what the operator wrote), this file (the live set, readiness and the choice),
//! `refresh` (names resolved again, active health checks).
//!
//! A replica is *ready* while its last health check passed and no failure ejected it. The choice
//! is among ready replicas; when none is, among all of them (Envoy's panic mode): a guess is better
//! than a 502 for every request while the health checks catch up.
//!
//! `least-streams` is power of two choices (tower's `p2c`) over the number of responses a replica
//! is still sending, counted until the response body ends, not until its headers arrive: a stream
//! holds its replica for as long as it lasts, and a replica holding a thousand streams must get
//! fewer new ones than an idle one.

pub mod refresh;
pub mod upstream;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::{Metrics, ReplicaSeries};

/// How the next replica is chosen (`PROXY_BALANCE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Balance {
    /// Of two ready replicas picked at random, the one with fewer open streams.
    #[default]
    LeastStreams,
    /// Each ready replica in turn, as nginx and HAProxy do by default.
    RoundRobin,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeastStreams => "least-streams",
            Self::RoundRobin => "round-robin",
        }
    }
}

/// The first ejection's length; each further failure in a row doubles it, up to [`EJECT_MAX`].
const EJECT_BASE: Duration = Duration::from_secs(1);
const EJECT_MAX: Duration = Duration::from_secs(30);

/// One replica: where requests go (an address, or for an `https://` name the name itself, which
/// TLS needs), and what the proxy knows of it.
pub struct Replica {
    /// The URI authority requests to it carry, and the metrics' `replica` label.
    pub label: String,
    /// `label` parsed once, not for every request; `None` if it is not an authority.
    authority: Option<http::uri::Authority>,
    open: AtomicUsize,
    healthy: AtomicBool,
    failures: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    /// Left the set: its streams go on, but its metric series are gone and must stay gone.
    departed: AtomicBool,
    series: ReplicaSeries,
}

impl Replica {
    fn new(label: String, metrics: &Metrics) -> Self {
        Self {
            series: metrics.replica_series(&label),
            authority: label.parse().ok(),
            label,
            open: AtomicUsize::new(0),
            // Until its first check says otherwise: a new replica is tried at once, and a dead one
            // costs a retry, never a client's failure.
            healthy: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            departed: AtomicBool::new(false),
        }
    }

    /// Where requests to this replica go.
    pub fn authority(&self) -> Result<http::uri::Authority, BadReplica> {
        self.authority
            .clone()
            .ok_or_else(|| BadReplica(self.label.clone()))
    }

    fn departed(&self) -> bool {
        self.departed.load(Ordering::Relaxed)
    }

    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn is_ready(&self, now: Instant) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self
                .ejected_until
                .lock()
                .map(|until| until.is_none_or(|until| now >= until))
                .unwrap_or(true)
    }
}

/// A replica whose address cannot be a request's target.
#[derive(Debug, thiserror::Error)]
#[error("replica {0:?} is not a host and port")]
pub struct BadReplica(String);

/// Held while a replica answers one request; dropped with the response body (or the failure).
pub struct OpenStream {
    replica: Arc<Replica>,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.replica.open.fetch_sub(1, Ordering::Relaxed);
        self.replica.series.streams.dec();
    }
}

/// The live set of replicas; cheap to clone.
#[derive(Clone)]
pub struct Replicas {
    set: Arc<RwLock<Vec<Arc<Replica>>>>,
    balance: Balance,
    next: Arc<AtomicUsize>,
    metrics: Metrics,
}

impl Replicas {
    pub fn new(balance: Balance, metrics: Metrics) -> Self {
        Self {
            set: Arc::default(),
            balance,
            next: Arc::default(),
            metrics,
        }
    }

    /// Whether there is more than one replica, so that a request may be retried on another.
    pub fn several(&self) -> bool {
        self.set.read().is_ok_and(|set| set.len() > 1)
    }

    /// Every replica now in the set.
    pub fn all(&self) -> Vec<Arc<Replica>> {
        self.set.read().map(|set| set.clone()).unwrap_or_default()
    }

    /// Makes the set exactly `addrs`: new addresses join (ready), vanished ones leave (their open
    /// streams go on; only new requests stop going there).
    pub fn update(&self, addrs: &[String]) {
        let Ok(mut set) = self.set.write() else {
            return;
        };
        set.retain(|replica| {
            let keep = addrs.contains(&replica.label);
            if !keep {
                tracing::info!(replica = %replica.label, open_streams = replica.open_streams(), "replica left the upstream set");
                replica.departed.store(true, Ordering::Relaxed);
                self.metrics.replica_removed(&replica.label);
            }
            keep
        });
        for addr in addrs {
            if !set.iter().any(|replica| replica.label == *addr) {
                let replica = Arc::new(Replica::new(addr.clone(), &self.metrics));
                tracing::info!(replica = %replica.label, "replica joined the upstream set");
                self.metrics.replica_ready(&replica.label, true);
                set.push(replica);
            }
        }
    }

    /// The replica for the next request, never one of `tried`; `None` when every replica was tried.
    pub fn choose(&self, tried: &[String]) -> Option<Arc<Replica>> {
        let set = self.set.read().ok()?;
        let untried: Vec<&Arc<Replica>> = set
            .iter()
            .filter(|replica| !tried.contains(&replica.label))
            .collect();
        let now = Instant::now();
        let ready: Vec<&Arc<Replica>> = untried
            .iter()
            .copied()
            .filter(|replica| replica.is_ready(now))
            .collect();
        let pool = if ready.is_empty() { untried } else { ready };
        let chosen = match (self.balance, pool.len()) {
            (_, 0) => return None,
            (_, 1) => pool[0],
            (Balance::RoundRobin, n) => pool[self.next.fetch_add(1, Ordering::Relaxed) % n],
            (Balance::LeastStreams, n) => {
                let first = fastrand::usize(..n);
                let second = (first + 1 + fastrand::usize(..n - 1)) % n;
                let (a, b) = (pool[first], pool[second]);
                if b.open_streams() < a.open_streams() {
                    b
                } else {
                    a
                }
            }
        };
        Some(Arc::clone(chosen))
    }

    /// Counts a request on `replica` until the returned guard is dropped.
    pub fn open(&self, replica: &Arc<Replica>) -> OpenStream {
        replica.open.fetch_add(1, Ordering::Relaxed);
        replica.series.requests.inc();
        replica.series.streams.inc();
        OpenStream {
            replica: Arc::clone(replica),
        }
    }

    /// Passive ejection (nginx's `max_fails`, Envoy's outlier detection): a replica that failed to
    /// connect or answered 5xx gets no new requests for a while, longer with each failure in a row.
    pub fn failed(&self, replica: &Replica, why: &str) {
        let failures = replica.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let backoff = EJECT_BASE
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
            .min(EJECT_MAX);
        if let Ok(mut until) = replica.ejected_until.lock() {
            *until = Some(Instant::now() + backoff);
        }
        if !replica.departed() {
            self.metrics.replica_ejected(&replica.label);
            self.metrics.replica_ready(&replica.label, false);
        }
        tracing::warn!(replica = %replica.label, %why, failures, ejected_for = %keepalive_common::duration::display(backoff), "replica ejected");
    }

    /// A response came: failures in a row start again from none.
    pub fn succeeded(&self, replica: &Replica) {
        replica.failures.store(0, Ordering::Relaxed);
    }

    /// An active health check's answer. A passing one also ends an ejection: the replica has just
    /// shown it answers.
    pub fn checked(&self, replica: &Replica, healthy: bool, why: &str) {
        let was = replica.is_ready(Instant::now());
        replica.healthy.store(healthy, Ordering::Relaxed);
        if healthy {
            replica.failures.store(0, Ordering::Relaxed);
            if let Ok(mut until) = replica.ejected_until.lock() {
                *until = None;
            }
        }
        let now = replica.is_ready(Instant::now());
        if !replica.departed() {
            self.metrics.replica_ready(&replica.label, now);
        }
        if was != now {
            if now {
                tracing::info!(replica = %replica.label, "replica ready: its health check passed");
            } else {
                tracing::warn!(replica = %replica.label, %why, open_streams = replica.open_streams(), "replica not ready: no new requests (its open streams go on)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> String {
        format!("127.0.0.1:{port}")
    }

    fn port(replica: &Replica) -> u16 {
        replica
            .label
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("a port")
    }

    fn replicas(balance: Balance, ports: &[u16]) -> Replicas {
        let replicas = Replicas::new(balance, Metrics::new());
        replicas.update(&ports.iter().map(|port| addr(*port)).collect::<Vec<_>>());
        replicas
    }

    #[tokio::test(start_paused = true)]
    async fn least_streams_never_picks_the_loaded_replica_while_another_is_lighter() {
        let replicas = replicas(Balance::LeastStreams, &[1, 2, 3]);
        let loaded = replicas.choose(&[]).expect("a replica");
        let _held: Vec<OpenStream> = (0..100).map(|_| replicas.open(&loaded)).collect();
        // A fixed seed: the spread of random picks is what is checked, not luck.
        fastrand::seed(7);
        let mut got = std::collections::HashMap::new();
        let mut streams = Vec::new();
        for _ in 0..60 {
            let chosen = replicas.choose(&[]).expect("a replica");
            *got.entry(chosen.label.clone()).or_insert(0) += 1;
            streams.push(replicas.open(&chosen));
        }
        assert_eq!(got.get(&loaded.label), None, "{got:?}");
        // The other two share the new streams, each kept near the other's load.
        let counts: Vec<i32> = got.values().copied().collect();
        assert_eq!(counts.iter().sum::<i32>(), 60);
        assert!(counts.iter().all(|n| (25..=35).contains(n)), "{got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_counts_until_its_guard_is_dropped() {
        let replicas = replicas(Balance::LeastStreams, &[1]);
        let one = replicas.choose(&[]).expect("a replica");
        let stream = replicas.open(&one);
        assert_eq!(one.open_streams(), 1);
        drop(stream);
        assert_eq!(one.open_streams(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_takes_each_in_turn() {
        let replicas = replicas(Balance::RoundRobin, &[1, 2, 3]);
        let picks: Vec<u16> = (0..6)
            .map(|_| port(&replicas.choose(&[]).expect("a replica")))
            .collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_replica_is_skipped_for_a_growing_backoff_and_back_after_it() {
        let replicas = replicas(Balance::RoundRobin, &[1, 2]);
        let one = replicas.all().remove(0);
        replicas.failed(&one, "connect refused");
        for _ in 0..4 {
            assert_eq!(port(&replicas.choose(&[]).expect("a replica")), 2);
        }
        tokio::time::advance(EJECT_BASE).await;
        let ports: Vec<u16> = (0..2)
            .map(|_| port(&replicas.choose(&[]).expect("a replica")))
            .collect();
        assert!(ports.contains(&1), "back after 1 s: {ports:?}");
        // A second failure in a row: two seconds.
        replicas.failed(&one, "connect refused");
        tokio::time::advance(EJECT_BASE).await;
        assert!((0..4).all(|_| port(&replicas.choose(&[]).expect("a replica")) == 2));
        tokio::time::advance(EJECT_BASE).await;
        assert!((0..2).any(|_| port(&replicas.choose(&[]).expect("a replica")) == 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_health_check_takes_a_replica_out_and_a_passing_one_brings_it_back() {
        let replicas = replicas(Balance::RoundRobin, &[1, 2]);
        let one = replicas.all().remove(0);
        replicas.checked(&one, false, "503");
        assert!((0..4).all(|_| port(&replicas.choose(&[]).expect("a replica")) == 2));
        replicas.failed(&one, "refused");
        replicas.checked(&one, true, "200");
        assert!((0..2).any(|_| port(&replicas.choose(&[]).expect("a replica")) == 1));
    }

    #[tokio::test(start_paused = true)]
    async fn with_none_ready_any_untried_replica_is_chosen_and_none_once_all_were_tried() {
        let replicas = replicas(Balance::LeastStreams, &[1, 2]);
        for replica in replicas.all() {
            replicas.checked(&replica, false, "503");
        }
        let first = replicas.choose(&[]).expect("panic mode: still a replica");
        let second = replicas
            .choose(std::slice::from_ref(&first.label))
            .expect("the other");
        assert_ne!(first.label, second.label);
        assert!(replicas
            .choose(&[first.label.clone(), second.label.clone()])
            .is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_set_follows_the_addresses_given() {
        let replicas = replicas(Balance::RoundRobin, &[1, 2]);
        let kept = replicas.all().remove(1);
        let _stream = replicas.open(&kept);
        replicas.update(&[addr(2), addr(3)]);
        let ports: Vec<u16> = replicas.all().iter().map(|r| port(r)).collect();
        assert_eq!(ports, [2, 3]);
        assert_eq!(
            replicas.all()[0].open_streams(),
            1,
            "a kept replica keeps its load"
        );
    }

    #[test]
    fn a_replica_that_left_with_an_open_stream_leaves_no_series_behind() {
        let metrics = Metrics::new();
        let replicas = Replicas::new(Balance::LeastStreams, metrics.clone());
        replicas.update(&[addr(1)]);
        let gone = replicas.choose(&[]).expect("a replica");
        let stream = replicas.open(&gone);
        replicas.update(&[addr(2)]);
        replicas.failed(&gone, "refused");
        drop(stream);
        let text = metrics.encode();
        assert!(!text.contains(&addr(1)), "{text}");
    }
}
