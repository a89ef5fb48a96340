//! The proxy's Prometheus metrics, served on the admin listener. The names are a public contract
//! (dashboards, the lab CLI and the README use them); labels use the same vocabulary as env vars and logs
//! (`timer="idle"`).

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::faults::Fault;
use crate::timeouts::Timer;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimerLabel {
    timer: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabel {
    fault: &'static str,
}

/// A replica by its address: bounded by the upstream set, which the operator configures.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabel {
    replica: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Every metric the proxy exports; cheap to clone (the counters are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: std::sync::Arc<Registry>,
    requests: Family<StatusLabel, Counter>,
    streams_active: Gauge,
    draining: Gauge,
    timeouts: Family<TimerLabel, Counter>,
    client_disconnects: Counter,
    upstream_errors: Family<KindLabel, Counter>,
    client_errors: Family<KindLabel, Counter>,
    faults_injected: Family<FaultLabel, Counter>,
    replica_requests: Family<ReplicaLabel, Counter>,
    replica_streams: Family<ReplicaLabel, Gauge>,
    replica_ready: Family<ReplicaLabel, Gauge>,
    replica_ejections: Family<ReplicaLabel, Counter>,
    retries: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<StatusLabel, Counter>::default();
        registry.register(
            "proxy_requests",
            "Responses sent to clients, by status",
            requests.clone(),
        );
        let streams_active = Gauge::default();
        registry.register(
            "proxy_streams_active",
            "Requests whose response is still being forwarded",
            streams_active.clone(),
        );
        let draining = Gauge::default();
        registry.register(
            "proxy_draining",
            "1 from SIGTERM until open streams have drained (/healthz answers 503 meanwhile), else 0",
            draining.clone(),
        );
        let timeouts = Family::<TimerLabel, Counter>::default();
        registry.register(
            "proxy_timeouts",
            "Timer firings, by timer",
            timeouts.clone(),
        );
        let client_disconnects = Counter::default();
        registry.register(
            "proxy_client_disconnects",
            "Clients that went away before their response ended",
            client_disconnects.clone(),
        );
        let upstream_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "proxy_upstream_errors",
            "Failures talking to the upstream, by kind",
            upstream_errors.clone(),
        );
        // Apart from the upstream's failures: a client's bad request must not page whoever watches those.
        let client_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "proxy_client_errors",
            "Requests the proxy refused itself for what the client sent, by kind",
            client_errors.clone(),
        );
        let faults_injected = Family::<FaultLabel, Counter>::default();
        registry.register(
            "proxy_faults_injected",
            "Faults that acted on a response, by fault",
            faults_injected.clone(),
        );
        let replica_requests = Family::<ReplicaLabel, Counter>::default();
        registry.register(
            "proxy_replica_requests",
            "Requests sent to each replica (retries included)",
            replica_requests.clone(),
        );
        let replica_streams = Family::<ReplicaLabel, Gauge>::default();
        registry.register(
            "proxy_replica_open_streams",
            "Requests each replica is answering, until their response body ends: the least-streams load",
            replica_streams.clone(),
        );
        let replica_ready = Family::<ReplicaLabel, Gauge>::default();
        registry.register(
            "proxy_replica_ready",
            "1 while a replica gets new requests (healthy and not ejected), else 0",
            replica_ready.clone(),
        );
        let replica_ejections = Family::<ReplicaLabel, Counter>::default();
        registry.register(
            "proxy_replica_ejections",
            "Times a replica was taken out of rotation after a connect failure or a 5xx",
            replica_ejections.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "proxy_retries",
            "Requests sent to another replica after one could not be reached",
            retries.clone(),
        );
        // Every timer and fault shows up as 0 from the start, so a dashboard can tell "never fired"
        // from "unknown".
        for timer in Timer::ALL {
            drop(timeouts.get_or_create(&TimerLabel {
                timer: timer.as_str(),
            }));
        }
        for fault in Fault::ALL {
            drop(faults_injected.get_or_create(&FaultLabel {
                fault: fault.as_str(),
            }));
        }
        Self {
            registry: std::sync::Arc::new(registry),
            requests,
            streams_active,
            draining,
            timeouts,
            client_disconnects,
            upstream_errors,
            client_errors,
            faults_injected,
            replica_requests,
            replica_streams,
            replica_ready,
            replica_ejections,
            retries,
        }
    }

    pub fn replica_request(&self, replica: &str) {
        self.replica_requests.get_or_create(&label(replica)).inc();
    }

    pub fn replica_stream_opened(&self, replica: &str) {
        self.replica_streams.get_or_create(&label(replica)).inc();
    }

    pub fn replica_stream_closed(&self, replica: &str) {
        self.replica_streams.get_or_create(&label(replica)).dec();
    }

    pub fn replica_ready(&self, replica: &str, ready: bool) {
        self.replica_ready
            .get_or_create(&label(replica))
            .set(i64::from(ready));
    }

    pub fn replica_ejected(&self, replica: &str) {
        self.replica_ejections.get_or_create(&label(replica)).inc();
    }

    /// A replica left the set (its name no longer resolves to it): its series go with it.
    pub fn replica_removed(&self, replica: &str) {
        let label = label(replica);
        self.replica_requests.remove(&label);
        self.replica_streams.remove(&label);
        self.replica_ready.remove(&label);
        self.replica_ejections.remove(&label);
    }

    pub fn retried(&self) {
        self.retries.inc();
    }

    pub fn response_sent(&self, status: http::StatusCode) {
        self.requests
            .get_or_create(&StatusLabel {
                status: status.as_u16(),
            })
            .inc();
    }

    pub fn stream_opened(&self) {
        self.streams_active.inc();
    }

    pub fn stream_closed(&self) {
        self.streams_active.dec();
    }

    /// Shutdown has begun: from now on the proxy is draining, and says so on `/healthz`.
    pub fn drain_started(&self) {
        self.draining.set(1);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get() != 0
    }

    pub fn timer_fired(&self, timer: Timer) {
        self.timeouts
            .get_or_create(&TimerLabel {
                timer: timer.as_str(),
            })
            .inc();
    }

    pub fn client_disconnected(&self) {
        self.client_disconnects.inc();
    }

    pub fn fault_injected(&self, fault: Fault) {
        self.faults_injected
            .get_or_create(&FaultLabel {
                fault: fault.as_str(),
            })
            .inc();
    }

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    pub fn client_error(&self, kind: &'static str) {
        self.client_errors.get_or_create(&KindLabel { kind }).inc();
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn label(replica: &str) -> ReplicaLabel {
    ReplicaLabel {
        replica: replica.to_owned(),
    }
}
