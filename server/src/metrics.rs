//! The origin's Prometheus metrics: how many streams run, how they end, what they sent.
//!
//! The names are a public contract: the lab CLI, the acceptance checks and dashboards read
//! them. prometheus-client appends `_total` to counters itself, so they are registered without it.
//! Every `reason` label set is created up front: a counter that appears only after its first
//! increment cannot be compared before and after (`rate()` and the acceptance checks both need the 0).

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// How a stream ended, from the origin's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// The connection went away (or the server closed it) before the last line.
    ClientGone,
    /// `lines` were all sent.
    Completed,
    /// Still streaming when the drain limit passed (`SERVER_DRAIN_TIMEOUT` after SIGTERM), and cut.
    Drained,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientGone => "client_gone",
            Self::Completed => "completed",
            Self::Drained => "drained",
        }
    }
}

// Written by hand: the derive would print the variant's name (`ClientGone`), not the label value.
impl EncodeLabelValue for EndReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndLabels {
    reason: EndReason,
}

/// What the job runners count; the store's owner holds them.
#[derive(Debug, Clone, Default)]
pub struct JobMetrics {
    /// Jobs whose runner is in this origin now.
    pub running: Gauge,
    /// Running jobs this origin took over from another (or from its own previous run).
    pub taken_over: Counter,
}

/// Handles on the origin's metrics; clones share the same values.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    jobs: JobMetrics,
    streams_active: Gauge,
    draining: Gauge,
    streams_started: Counter,
    streams_ended: Family<EndLabels, Counter>,
    lines_sent: Counter,
    heartbeats_sent: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let streams_active = Gauge::default();
        let draining = Gauge::default();
        let streams_started = Counter::default();
        let streams_ended = Family::<EndLabels, Counter>::default();
        let lines_sent = Counter::default();
        let heartbeats_sent = Counter::default();
        let jobs = JobMetrics::default();
        for reason in [
            EndReason::ClientGone,
            EndReason::Completed,
            EndReason::Drained,
        ] {
            // Creating the sample is the point; the read guard it returns is not needed.
            drop(streams_ended.get_or_create(&EndLabels { reason }));
        }

        let mut registry = Registry::default();
        registry.register(
            "origin_streams_active",
            "Streams of /polls/streamed being sent right now",
            streams_active.clone(),
        );
        registry.register(
            "origin_streams_started",
            "Streams of /polls/streamed started",
            streams_started.clone(),
        );
        registry.register(
            "origin_streams_ended",
            "Streams of /polls/streamed ended, by reason: client_gone, completed or drained",
            streams_ended.clone(),
        );
        registry.register(
            "origin_draining",
            "1 from SIGTERM or Ctrl-C until the origin exits: /healthz answers 503",
            draining.clone(),
        );
        registry.register(
            "origin_lines_sent",
            "Poem lines sent, all streams together",
            lines_sent.clone(),
        );
        registry.register(
            "origin_heartbeats_sent",
            "Heartbeat chunks sent while waiting for a line, all streams together",
            heartbeats_sent.clone(),
        );

        registry.register(
            "origin_jobs_running",
            "Durable jobs whose runner is in this origin now",
            jobs.running.clone(),
        );
        registry.register(
            "origin_jobs_taken_over",
            "Running jobs this origin took over: their runner's lease lapsed (it died) or was handed back (it stopped)",
            jobs.taken_over.clone(),
        );

        Self {
            registry: Arc::new(registry),
            jobs,
            streams_active,
            draining,
            streams_started,
            streams_ended,
            lines_sent,
            heartbeats_sent,
        }
    }

    pub(crate) fn stream_started(&self) {
        self.streams_started.inc();
        self.streams_active.inc();
    }

    pub(crate) fn stream_ended(&self, reason: EndReason) {
        self.streams_active.dec();
        self.streams_ended
            .get_or_create(&EndLabels { reason })
            .inc();
    }

    pub(crate) fn drain_started(&self) {
        self.draining.set(1);
    }

    pub(crate) fn line_sent(&self) {
        self.lines_sent.inc();
    }

    pub(crate) fn heartbeat_sent(&self) {
        self.heartbeats_sent.inc();
    }

    /// The job runners' counts, for [`crate::jobs::Jobs::open`].
    pub fn jobs(&self) -> JobMetrics {
        self.jobs.clone()
    }

    /// Streams being sent right now.
    pub fn streams_active(&self) -> i64 {
        self.streams_active.get()
    }

    /// The OpenMetrics text exposition, which Prometheus scrapes as is.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail, and every label value is one of the fixed strings above.
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("metrics encode into a String");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_end_reason_shows_as_zero_from_the_start() {
        let text = Metrics::new().encode();
        for sample in [
            "origin_streams_active 0\n",
            "origin_streams_started_total 0\n",
            "origin_streams_ended_total{reason=\"client_gone\"} 0\n",
            "origin_streams_ended_total{reason=\"completed\"} 0\n",
            "origin_streams_ended_total{reason=\"drained\"} 0\n",
            "origin_draining 0\n",
            "origin_lines_sent_total 0\n",
            "origin_heartbeats_sent_total 0\n",
        ] {
            assert!(text.contains(sample), "no {sample:?} in:\n{text}");
        }
    }

    #[test]
    fn a_stream_is_active_until_it_ends() {
        let metrics = Metrics::new();
        metrics.stream_started();
        assert_eq!(metrics.streams_active(), 1);
        metrics.stream_ended(EndReason::ClientGone);
        assert_eq!(metrics.streams_active(), 0);
        let text = metrics.encode();
        assert!(text.contains("origin_streams_started_total 1\n"), "{text}");
        assert!(
            text.contains("origin_streams_ended_total{reason=\"client_gone\"} 1\n"),
            "{text}"
        );
    }
}
