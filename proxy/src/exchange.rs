//! One exchange's bookkeeping, from the request's arrival to the end (or abandonment) of its body:
//! its place in the table of open streams (where the control API lists it and may cut it), its
//! lifecycle events, `proxy_streams_active` and the histograms, the client connection's in-flight
//! guard, noticing a client that went away, and the access-log line with its termination flags
//! when it ends. The edge (`edge.rs`) decides what the client gets; this records what happened.

use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, StatusCode};
use keepalive_common::duration::display;
use serde_json::json;
use tokio::time::Instant;

use crate::access::{self, Ender, Phase, Termination};
use crate::control::streams::{Entry, Hangup};
use crate::control::Control;
use crate::cut_style::CutStyle;
use crate::faults::reset::ResetSwitch;
use crate::forward::ClientAddr;
use crate::metrics::Metrics;
use crate::server::ConnectionCut;
use crate::timeouts::client_conn::InFlight;

/// One request/response through the proxy, from arrival to the end (or abandonment) of the body.
pub(crate) struct Exchange {
    pub(crate) metrics: Metrics,
    pub(crate) control: Control,
    /// Its place in the table of open streams, which also counts its bytes and chunks.
    pub(crate) entry: Entry,
    pub(crate) request_id: HeaderValue,
    pub(crate) cut_style: CutStyle,
    /// The client connection's reset switch: HTTP/1 only, where a reset ends the whole connection.
    pub(crate) reset: Option<ResetSwitch>,
    pub(crate) cut: Option<ConnectionCut>,
    pub(crate) _in_flight: Option<InFlight>,
    pub(crate) status: Option<StatusCode>,
    /// From the request's arrival to the upstream's response headers.
    pub(crate) first_byte: Option<Duration>,
    /// Whether the upstream's body is being forwarded: only then are its silences measured.
    pub(crate) bodied: bool,
    /// When the client last got a chunk (or the headers), and a chunk that was not a heartbeat.
    pub(crate) last_chunk: Instant,
    pub(crate) last_data: Instant,
    pub(crate) longest_gap: Option<Duration>,
    pub(crate) ended: Option<Termination>,
}

impl Exchange {
    pub(crate) fn begin<B>(
        request: &Request<B>,
        metrics: &Metrics,
        control: &Control,
        cut_style: CutStyle,
    ) -> Self {
        metrics.stream_opened();
        let path = request
            .uri()
            .path_and_query()
            .map_or_else(|| request.uri().path(), |path| path.as_str())
            .to_owned();
        let client = request
            .extensions()
            .get::<ClientAddr>()
            .map(|client| client.addr);
        let hangup = request.extensions().get::<Hangup>().cloned();
        let entry = control
            .streams
            .open(client, request.method().clone(), path, hangup);
        let started = entry.tracked.started;
        let exchange = Self {
            metrics: metrics.clone(),
            control: control.clone(),
            entry,
            request_id: request
                .headers()
                .get("x-request-id")
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("-")),
            cut_style,
            reset: request
                .extensions()
                .get::<ResetSwitch>()
                .filter(|_| request.version() < http::Version::HTTP_2)
                .cloned(),
            cut: request.extensions().get::<ConnectionCut>().cloned(),
            _in_flight: request.extensions().get::<InFlight>().cloned(),
            status: None,
            first_byte: None,
            bodied: false,
            last_chunk: started,
            last_data: started,
            longest_gap: None,
            ended: None,
        };
        exchange.event("started", || {
            let tracked = &exchange.entry.tracked;
            json!({
                "client": tracked.client.map(|addr| addr.to_string()),
                "method": tracked.method.as_str(),
                "path": tracked.path,
                "request_id": exchange.request_id(),
            })
        });
        exchange
    }

    pub(crate) fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    pub(crate) fn path(&self) -> &str {
        &self.entry.tracked.path
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.entry.tracked.started.elapsed()
    }

    pub(crate) fn event(&self, kind: &'static str, detail: impl FnOnce() -> serde_json::Value) {
        self.control.events.emit(kind, &self.entry.tracked, detail);
    }

    pub(crate) fn end(&mut self, by: Ender, phase: Phase) {
        self.ended.get_or_insert(Termination::new(by, phase));
    }

    /// The upstream's response headers arrived.
    pub(crate) fn headers_arrived(&mut self, status: StatusCode) {
        let now = Instant::now();
        let after = now - self.entry.tracked.started;
        self.first_byte = Some(after);
        self.last_chunk = now;
        self.last_data = now;
        self.entry.tracked.headers_arrived();
        self.metrics.first_byte(after);
        self.event(
            "headers",
            || json!({"status": status.as_u16(), "replica": self.entry.tracked.replica()}),
        );
    }

    /// A chunk of the body went to the client.
    pub(crate) fn sent(&mut self, data: &Bytes) {
        let now = Instant::now();
        let gap = now - self.last_chunk;
        self.silence(gap);
        self.last_chunk = now;
        self.entry.tracked.sent(data.len() as u64, now);
        if is_heartbeat(data) {
            let silent = now - self.last_data;
            self.event(
                "heartbeat",
                || json!({"bytes": data.len(), "silent": silent.as_secs_f64()}),
            );
        } else {
            self.last_data = now;
            self.event(
                "data",
                || json!({"bytes": data.len(), "gap": gap.as_secs_f64()}),
            );
        }
    }

    /// A silence of the upstream's body, between its headers, its chunks and its end; the proxy's own
    /// answers (a 504's text) have none.
    pub(crate) fn silence(&mut self, gap: Duration) {
        if self.bodied {
            self.longest_gap = Some(self.longest_gap.map_or(gap, |longest| longest.max(gap)));
        }
    }

    /// The control API's cut, in `style`, in `phase`: counted, logged with `how` (the rest of the
    /// line: how the client got it), and reported (`connection`: by closing the client's connection, the body never polled).
    pub(crate) fn cut_by_api(
        &mut self,
        style: CutStyle,
        phase: Phase,
        how: &str,
        connection: bool,
    ) {
        self.end(Ender::Api, phase);
        self.entry.tracked.ending();
        self.metrics.api_cut();
        let elapsed = display(self.elapsed());
        tracing::info!(
            cut_style = style.as_str(),
            %elapsed,
            bytes = self.entry.tracked.bytes(),
            request_id = self.request_id(),
            path = %self.path(),
            "cut by the control API{how}",
        );
        let before_headers = phase == Phase::Headers;
        self.event("cut", || {
            let mut detail =
                json!({"by": "api", "style": style.as_str(), "before_headers": before_headers});
            if connection {
                detail["connection"] = json!(true);
            }
            detail
        });
    }

    /// The exchange was dropped unfinished in `phase`: its connection closed under it, by one of
    /// the proxy's timers (which said so where it fired), by a cut of the control API the body
    /// never saw (a client that stopped reading), or by the client.
    pub(crate) fn gone(&mut self, phase: Phase) {
        let before_headers = phase == Phase::Headers;
        if let Some(style) = self.entry.asked() {
            self.cut_by_api(
                style,
                phase,
                ": the client was not reading, so its connection was closed",
                true,
            );
            return;
        }
        if let Some(timer) = self.cut.as_ref().and_then(ConnectionCut::timer) {
            self.end(Ender::Timer(timer), phase);
            self.event("timer", || {
                json!({"timer": timer.as_str(), "before_headers": before_headers, "connection": true})
            });
            return;
        }
        self.end(Ender::Client, phase);
        self.metrics.client_disconnected();
        let elapsed = display(self.elapsed());
        let when = if before_headers {
            "before the response headers"
        } else {
            "mid-stream"
        };
        tracing::info!(
            %elapsed,
            bytes = self.entry.tracked.bytes(),
            request_id = self.request_id(),
            path = %self.path(),
            "client went away {when}: closing the upstream's connection",
        );
        self.event("client_gone", || json!({"before_headers": before_headers}));
    }
}

/// A chunk that only keeps the connection alive: whitespace (the Django tutorial's heartbeat) or
/// server-sent-event comment lines, which EventSource discards.
fn is_heartbeat(data: &[u8]) -> bool {
    !data.is_empty()
        && (data.iter().all(u8::is_ascii_whitespace)
            || data
                .split(|byte| *byte == b'\n')
                .all(|line| line.is_empty() || line == b"\r" || line.starts_with(b":")))
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // Dropped without a response: the connection went while the upstream's headers were
        // awaited (hyper drops the exchange with it), closed by one of the proxy's timers or by
        // the client.
        if self.ended.is_none() {
            self.gone(Phase::Headers);
        }
        let termination = self
            .ended
            .unwrap_or(Termination::new(Ender::Client, Phase::Headers));
        let duration = self.elapsed();
        // The last silence counts too: it is the one that got a stream cut.
        self.silence(self.last_chunk.elapsed());
        let tracked = &self.entry.tracked;
        let bytes = tracked.bytes();
        self.metrics
            .stream_ended(termination, duration, bytes, self.longest_gap);
        let replica = tracked.replica();
        access::write(&access::Record {
            request_id: self.request_id(),
            client: tracked.client,
            method: &tracked.method,
            path: &tracked.path,
            status: self.status,
            replica: replica.as_deref(),
            duration,
            first_byte: self.first_byte,
            bytes,
            chunks: tracked.chunks(),
            longest_gap: self.longest_gap,
            termination,
        });
        self.event("ended", || {
            json!({
                "status": self.status.map(|status| status.as_u16()),
                "termination": termination.to_string(),
                "ended_by": termination.ender(),
                "cause": termination.cause(),
                "duration": duration.as_secs_f64(),
                "bytes": bytes,
                "chunks": tracked.chunks(),
                "longest_gap": self.longest_gap.map(|gap| gap.as_secs_f64()),
            })
        });
        self.metrics.stream_closed();
    }
}
