//! The stream itself: the Django tutorial's poem, byte for byte, as a body that yields one frame per line and per
//! heartbeat.
//!
//! The body is a stream that owns a [`StreamGuard`]. hyper drops a response body as soon as it sees the
//! client's FIN or RST while the body is pending (HTTP/1 half-close stays off, and nothing between the
//! handler and hyper buffers or detaches the body), so the guard's `Drop` is the one place that learns
//! a stream ended, whichever way it ended: it logs, counts the ending and brings the active gauge back
//! down exactly once. Lines are scheduled on an absolute clock (line k at start + k * sleep) so that
//! heartbeats and slow writes never make the elapsed labels drift from the Django tutorial's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderName};
use axum::response::{IntoResponse, IntoResponseParts, Response};
use bytes::Bytes;
use futures_util::stream;
use keepalive_common::duration;
use tokio::time::Instant;

use crate::drain::DrainState;
use crate::metrics::{EndReason, Metrics};
use crate::params::{Format, StreamParams};

/// The Django tutorial's three lines, sent in this order, forever.
pub const POEM: [&str; 3] = [
    "Little brown lady",
    "Jumped into the blue water",
    "And smiled",
];
/// Sent between two verses, right before the next verse's first line; not counted as a line.
pub const BANNER: &str = "=========== Here we go again ===========";
/// How a finite text stream asked for `end=marker` says it is over; SSE sends an `end` event.
/// A consumer should treat a finite stream without it as cut, however cleanly it closed.
pub fn end_marker_line(lines: u64) -> String {
    format!("=========== end of stream: {lines} lines ===========\n")
}

/// Proxies (nginx, Cloudflare) must neither buffer nor rewrite a stream whose point is its timing.
const NO_BUFFERING: [(HeaderName, &str); 2] = [
    (header::CACHE_CONTROL, "no-cache, no-transform"),
    (HeaderName::from_static("x-accel-buffering"), "no"),
];

/// Starts the poem for one request; the stream's clock starts now, after any `delay`.
pub fn response(
    params: StreamParams,
    metrics: Metrics,
    drain: DrainState,
    peer: Option<SocketAddr>,
) -> Response {
    let format = params.format;
    let poem = Poem::start(params, metrics, drain, peer);
    let chunks = stream::unfold(poem, |mut poem| async move {
        let chunk = poem.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), poem))
    });
    (head(format), Body::from_stream(chunks)).into_response()
}

/// The stream's headers without the stream, for `HEAD`: a balancer's health check must not start a
/// poem, nor count as a stream and a client gone.
pub fn head_only(params: &StreamParams) -> Response {
    (head(params.format), ()).into_response()
}

fn head(format: Format) -> impl IntoResponseParts {
    let content_type = match format {
        Format::Text => "text/plain; charset=utf-8",
        Format::Sse => "text/event-stream",
    };
    ([(header::CONTENT_TYPE, content_type)], NO_BUFFERING)
}

struct Poem {
    sleep: Duration,
    heartbeat: Option<Duration>,
    format: Format,
    lines: Option<u64>,
    /// Still owed after the last line: the end marker, when the request wants one.
    end_marker_owed: bool,
    next_line_due: Instant,
    last_chunk_sent: Instant,
    /// The third line of a verse went out: the banner goes first when the next line is due.
    verse_ended: bool,
    guard: StreamGuard,
}

impl Poem {
    fn start(
        params: StreamParams,
        metrics: Metrics,
        drain: DrainState,
        peer: Option<SocketAddr>,
    ) -> Self {
        let guard = StreamGuard::start(&params, metrics, drain, peer);
        Self {
            sleep: params.sleep,
            heartbeat: params.heartbeat,
            format: params.format,
            lines: params.lines,
            end_marker_owed: params.end_marker,
            next_line_due: guard.started,
            last_chunk_sent: guard.started,
            verse_ended: false,
            guard,
        }
    }

    /// The next frame of the body, or `None` right after the last line when `lines` was given.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(limit) = self.lines.filter(|limit| self.guard.lines_sent >= *limit) {
            self.guard.completed = true;
            if std::mem::take(&mut self.end_marker_owed) {
                return Some(self.end_marker(limit));
            }
            return None;
        }
        if let Some(due) = self.heartbeat_due() {
            wait_until(due).await;
            self.guard.heartbeat_sent();
            return Some(self.sent(self.heartbeat_chunk()));
        }
        wait_until(self.next_line_due).await;
        if self.verse_ended {
            self.verse_ended = false;
            return Some(self.sent(self.banner_chunk()));
        }
        let (chunk, index_in_verse) = self.line_chunk();
        self.guard.line_sent();
        self.verse_ended = index_in_verse == POEM.len() - 1;
        self.next_line_due = later(self.next_line_due, self.sleep);
        Some(self.sent(chunk))
    }

    /// When a heartbeat is owed: one period after the last chunk, if that comes before the next line.
    fn heartbeat_due(&self) -> Option<Instant> {
        let due = later(self.last_chunk_sent, self.heartbeat?);
        (due < self.next_line_due).then_some(due)
    }

    fn sent(&mut self, chunk: Bytes) -> Bytes {
        self.last_chunk_sent = Instant::now();
        chunk
    }

    /// The next line's chunk, and where that line stands in its verse.
    fn line_chunk(&self) -> (Bytes, usize) {
        let number = self.guard.lines_sent + 1;
        let index_in_verse = (self.guard.lines_sent % POEM.len() as u64) as usize;
        let line = POEM[index_in_verse];
        let elapsed = self.guard.started.elapsed().as_secs();
        let chunk = match self.format {
            Format::Text => format!("[{elapsed:>10} s] {line}\n"),
            Format::Sse => format!("id: {number}\ndata: [{elapsed:>10} s] {line}\n\n"),
        };
        (Bytes::from(chunk), index_in_verse)
    }

    fn banner_chunk(&self) -> Bytes {
        Bytes::from(match self.format {
            Format::Text => format!("{BANNER}\n"),
            Format::Sse => format!("data: {BANNER}\n\n"),
        })
    }

    fn end_marker(&self, lines: u64) -> Bytes {
        Bytes::from(match self.format {
            Format::Text => end_marker_line(lines),
            Format::Sse => format!("event: end\ndata: {{\"lines\":{lines}}}\n\n"),
        })
    }

    fn heartbeat_chunk(&self) -> Bytes {
        Bytes::from_static(match self.format {
            // The Django tutorial's suggestion: whitespace a text client can ignore.
            Format::Text => b" ",
            // A comment line, which EventSource clients discard by specification.
            Format::Sse => b":\n\n",
        })
    }
}

/// Waits for `due`, without a trip through the timer when it has already passed (`sleep=0`).
async fn wait_until(due: Instant) {
    if due > Instant::now() {
        tokio::time::sleep_until(due).await;
    }
}

/// `instant + by`, capped at tokio's "never" (about 30 years): `Instant` addition panics on overflow,
/// and an operator may allow absurd sleeps through `SERVER_MAX_SLEEP`.
fn later(instant: Instant, by: Duration) -> Instant {
    const NEVER: Duration = Duration::from_secs(86_400 * 365 * 30);
    instant + by.min(NEVER)
}

/// Accounts for one stream from its start to its drop, whichever way it ends.
struct StreamGuard {
    metrics: Metrics,
    drain: DrainState,
    peer: Option<SocketAddr>,
    started: Instant,
    lines_sent: u64,
    heartbeats_sent: u64,
    completed: bool,
}

impl StreamGuard {
    fn start(
        params: &StreamParams,
        metrics: Metrics,
        drain: DrainState,
        peer: Option<SocketAddr>,
    ) -> Self {
        metrics.stream_started();
        tracing::info!(
            sleep = %duration::display(params.sleep),
            heartbeat = %params.heartbeat.map_or_else(|| "off".to_owned(), duration::display),
            format = %params.format.as_str(),
            lines = %params.lines.map_or_else(|| "forever".to_owned(), |lines| lines.to_string()),
            peer = peer.map(tracing::field::display),
            "stream started"
        );
        Self {
            metrics,
            drain,
            peer,
            started: Instant::now(),
            lines_sent: 0,
            heartbeats_sent: 0,
            completed: false,
        }
    }

    fn line_sent(&mut self) {
        self.lines_sent += 1;
        self.metrics.line_sent();
    }

    fn heartbeat_sent(&mut self) {
        self.heartbeats_sent += 1;
        self.metrics.heartbeat_sent();
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // The accept loop drops a stream still open at the drain limit; only the drain's phase tells
        // that apart from a client gone.
        let cut = self.drain.stream_ended(self.completed);
        let reason = if self.completed {
            EndReason::Completed
        } else if cut {
            EndReason::Drained
        } else {
            EndReason::ClientGone
        };
        self.metrics.stream_ended(reason);
        tracing::info!(
            reason = %reason.as_str(),
            duration = %duration::display(self.started.elapsed()),
            lines = self.lines_sent,
            heartbeats = self.heartbeats_sent,
            peer = self.peer.map(tracing::field::display),
            "stream ended: {}",
            match reason {
                EndReason::ClientGone => "client gone",
                EndReason::Completed => "completed",
                EndReason::Drained => "cut at the drain limit",
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use keepalive_common::accept::Phase;

    fn params(sleep: Duration, heartbeat: Option<Duration>, format: Format) -> StreamParams {
        StreamParams {
            sleep,
            heartbeat,
            delay: Duration::ZERO,
            format,
            lines: None,
            end_marker: format == Format::Sse,
        }
    }

    async fn next_frame(body: &mut Body) -> Option<String> {
        let frame = body.frame().await?.expect("the poem never fails");
        let data = frame.into_data().expect("only data frames");
        Some(String::from_utf8(data.to_vec()).expect("utf-8"))
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_fill_the_sleep_and_labels_keep_to_the_clock() {
        let metrics = Metrics::new();
        let params = params(
            Duration::from_secs(1),
            Some(Duration::from_millis(300)),
            Format::Text,
        );
        let mut body = response(params, metrics.clone(), DrainState::never(), None).into_body();
        let start = Instant::now();

        let mut frames = Vec::new();
        for _ in 0..13 {
            let frame = next_frame(&mut body).await.expect("infinite stream");
            frames.push((start.elapsed().as_millis(), frame));
        }
        let line = |seconds, text| format!("[{seconds:>10} s] {text}\n");
        let beat = " ".to_owned();
        assert_eq!(
            frames,
            [
                (0, line(0, POEM[0])),
                (300, beat.clone()),
                (600, beat.clone()),
                (900, beat.clone()),
                (1000, line(1, POEM[1])),
                (1300, beat.clone()),
                (1600, beat.clone()),
                (1900, beat.clone()),
                (2000, line(2, POEM[2])),
                (2300, beat.clone()),
                (2600, beat.clone()),
                (2900, beat.clone()),
                (3000, format!("{BANNER}\n")),
            ]
        );
        assert_eq!(
            next_frame(&mut body).await,
            Some(line(3, POEM[0])),
            "the banner is followed at once by the next verse"
        );
        let text = metrics.encode();
        assert!(text.contains("origin_lines_sent_total 4\n"), "{text}");
        assert!(text.contains("origin_heartbeats_sent_total 9\n"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn sse_heartbeats_are_comments() {
        let params = params(
            Duration::from_secs(1),
            Some(Duration::from_millis(600)),
            Format::Sse,
        );
        let mut body = response(params, Metrics::new(), DrainState::never(), None).into_body();
        let mut frames = Vec::new();
        for _ in 0..3 {
            frames.push(next_frame(&mut body).await.expect("infinite stream"));
        }
        assert_eq!(
            frames,
            [
                "id: 1\ndata: [         0 s] Little brown lady\n\n",
                ":\n\n",
                "id: 2\ndata: [         1 s] Jumped into the blue water\n\n",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_reader_does_not_shift_the_schedule() {
        let params = params(Duration::from_secs(2), None, Format::Text);
        let mut body = response(params, Metrics::new(), DrainState::never(), None).into_body();
        next_frame(&mut body).await;
        tokio::time::sleep(Duration::from_millis(4500)).await;
        assert_eq!(
            next_frame(&mut body).await.as_deref(),
            Some("[         4 s] Jumped into the blue water\n"),
            "line 1 was due at 2 s: sent at once, labelled with the real elapsed time"
        );
        let before = Instant::now();
        next_frame(&mut body).await;
        assert_eq!(
            before.elapsed(),
            Duration::from_millis(0),
            "line 2 was due at 4 s: no sleep"
        );
    }

    #[tokio::test]
    async fn dropping_the_body_mid_stream_counts_client_gone() {
        let metrics = Metrics::new();
        let params = params(Duration::from_secs(5), None, Format::Text);
        let mut body = response(params, metrics.clone(), DrainState::never(), None).into_body();
        assert_eq!(metrics.streams_active(), 1);
        next_frame(&mut body).await;
        drop(body);
        assert_eq!(metrics.streams_active(), 0);
        let text = metrics.encode();
        assert!(
            text.contains("origin_streams_ended_total{reason=\"client_gone\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("origin_streams_ended_total{reason=\"completed\"} 0\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_stream_dropped_at_the_drain_limit_counts_drained() {
        let metrics = Metrics::new();
        let (phase, following) = tokio::sync::watch::channel(Phase::Serving);
        let drain = DrainState::following(following);
        let params = params(Duration::from_secs(5), None, Format::Text);
        let mut body = response(params, metrics.clone(), drain.clone(), None).into_body();
        next_frame(&mut body).await;
        phase.send_replace(Phase::Cutting);
        drop(body);
        let text = metrics.encode();
        assert!(
            text.contains("origin_streams_ended_total{reason=\"drained\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("origin_streams_ended_total{reason=\"client_gone\"} 0\n"),
            "{text}"
        );
        assert_eq!(drain.streams().cut, 1);
    }

    #[tokio::test]
    async fn a_finite_stream_counts_completed() {
        let metrics = Metrics::new();
        let params = StreamParams {
            lines: Some(2),
            ..params(Duration::ZERO, None, Format::Text)
        };
        let body = response(params, metrics.clone(), DrainState::never(), None).into_body();
        body.collect().await.expect("the poem never fails");
        assert_eq!(metrics.streams_active(), 0);
        let text = metrics.encode();
        assert!(text.contains("origin_streams_started_total 1\n"), "{text}");
        assert!(
            text.contains("origin_streams_ended_total{reason=\"completed\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("origin_streams_ended_total{reason=\"client_gone\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("origin_lines_sent_total 2\n"), "{text}");
    }
}
