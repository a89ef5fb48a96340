//! The proxy's Prometheus metrics, served on the admin listener. The names are a public contract
//! (dashboards, the lab CLI and the README use them); labels use the same vocabulary as env vars and logs
//! (`timer="idle"`).

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::access::Termination;
use crate::faults::Fault;
use crate::preset::TimerSet;
use crate::timeouts::Timer;

/// Seconds from well under a millisecond (a loopback origin) to the ten minutes some balancers
/// allow a response to take.
const SECONDS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Streams last up to hours; silences between two chunks, up to the longest idle timers (an hour).
const LONG_SECONDS: [f64; 16] = [
    0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    14400.0,
];

fn seconds_histogram() -> Histogram {
    Histogram::new(LONG_SECONDS)
}

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

/// How a stream ended: [`Termination::ender`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndedLabel {
    ended: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Every metric the proxy exports; cheap to clone: one reference count, where cloning the families
/// themselves would touch one per metric, on every request and from every thread.
#[derive(Clone)]
pub struct Metrics(Arc<Families>);

impl std::ops::Deref for Metrics {
    type Target = Families;

    fn deref(&self) -> &Families {
        &self.0
    }
}

pub struct Families {
    registry: Registry,
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
    api_cuts: Counter,
    first_byte: Histogram,
    stream_duration: Family<EndedLabel, Histogram, fn() -> Histogram>,
    longest_gap: Histogram,
    stream_bytes: Histogram,
    timer_limits: Family<TimerLabel, Gauge<f64, AtomicU64>>,
    max_connections: Gauge,
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
        let api_cuts = Counter::default();
        registry.register(
            "proxy_api_cuts",
            "Streams cut by the control API",
            api_cuts.clone(),
        );
        let first_byte = Histogram::new(SECONDS);
        registry.register(
            "proxy_first_byte_seconds",
            "Time from a request's arrival to the upstream's response headers",
            first_byte.clone(),
        );
        let stream_duration =
            Family::<EndedLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                seconds_histogram,
            );
        registry.register(
            "proxy_stream_duration_seconds",
            "Time from a request's arrival to the end of its exchange, by who ended it (completed, client, origin, timer, fault, api)",
            stream_duration.clone(),
        );
        let longest_gap = Histogram::new(LONG_SECONDS);
        registry.register(
            "proxy_stream_longest_gap_seconds",
            "Per response body, the longest silence between two chunks (heartbeats count as chunks): an idle timer above all of these cuts none of them",
            longest_gap.clone(),
        );
        // 64 bytes to 1 GiB, a factor of 4 apart.
        let stream_bytes = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(64.0, 4.0, 13),
        );
        registry.register(
            "proxy_stream_bytes",
            "Body bytes sent to the client per exchange",
            stream_bytes.clone(),
        );
        let timer_limits = Family::<TimerLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "proxy_timer_limit_seconds",
            "The limit each timer enforces on what starts now (0: off); changed by the control API",
            timer_limits.clone(),
        );
        let max_connections = Gauge::default();
        registry.register(
            "proxy_max_connections",
            "The most client connections served at once (PROXY_MAX_CONNECTIONS, auto resolved)",
            max_connections.clone(),
        );
        // Every timer and fault shows up as 0 from the start, so a dashboard can tell "never fired"
        // from "unknown".
        for timer in Timer::ALL {
            drop(timeouts.get_or_create(&TimerLabel {
                timer: timer.as_str(),
            }));
        }
        for ended in Termination::ENDERS {
            drop(stream_duration.get_or_create(&EndedLabel { ended }));
        }
        for fault in Fault::ALL {
            drop(faults_injected.get_or_create(&FaultLabel {
                fault: fault.as_str(),
            }));
        }
        Self(Arc::new(Families {
            registry,
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
            api_cuts,
            first_byte,
            stream_duration,
            longest_gap,
            stream_bytes,
            timer_limits,
            max_connections,
        }))
    }

    pub fn max_connections(&self, max: usize) {
        self.max_connections
            .set(i64::try_from(max).unwrap_or(i64::MAX));
    }

    /// The timers' limits now in force, for `proxy_timer_limit_seconds`.
    pub fn limits(&self, timers: &TimerSet) {
        for (timer, limit) in [
            (Timer::Connect, timers.connect),
            (Timer::FirstByte, timers.first_byte),
            (Timer::Idle, timers.idle),
            (Timer::MaxDuration, timers.max_duration),
            (Timer::Header, timers.header),
            (Timer::Keepalive, timers.keepalive),
            (Timer::Send, timers.send),
        ] {
            self.timer_limits
                .get_or_create(&TimerLabel {
                    timer: timer.as_str(),
                })
                .set(limit.map_or(0.0, |limit| limit.as_secs_f64()));
        }
    }

    pub fn api_cut(&self) {
        self.api_cuts.inc();
    }

    /// The upstream's response headers arrived `after` the request.
    pub fn first_byte(&self, after: Duration) {
        self.first_byte.observe(after.as_secs_f64());
    }

    /// An exchange ended: how, after how long, with how many bytes, and (when it had a body) its
    /// longest silence between two chunks.
    pub fn stream_ended(
        &self,
        termination: Termination,
        duration: Duration,
        bytes: u64,
        longest_gap: Option<Duration>,
    ) {
        self.stream_duration
            .get_or_create(&EndedLabel {
                ended: termination.ender(),
            })
            .observe(duration.as_secs_f64());
        // Precision is lost only past 2^53 bytes.
        #[allow(clippy::cast_precision_loss)]
        self.stream_bytes.observe(bytes as f64);
        if let Some(gap) = longest_gap {
            self.longest_gap.observe(gap.as_secs_f64());
        }
    }

    /// A replica's request counter and open-streams gauge, looked up once when it joins: per
    /// request, a lookup would build its label and hash it under the family's lock, three times.
    /// Once the replica leaves ([`Metrics::replica_removed`]) they count for no series.
    pub fn replica_series(&self, replica: &str) -> ReplicaSeries {
        ReplicaSeries {
            requests: self.replica_requests.get_or_create(&label(replica)).clone(),
            streams: self.replica_streams.get_or_create(&label(replica)).clone(),
        }
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

/// See [`Metrics::replica_series`].
pub struct ReplicaSeries {
    pub requests: Counter,
    pub streams: Gauge,
}

fn label(replica: &str) -> ReplicaLabel {
    ReplicaLabel {
        replica: replica.to_owned(),
    }
}
