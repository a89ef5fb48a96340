//! The streams open through the proxy, as the control API lists them and cuts them.
//!
//! The edge registers each exchange when it arrives ([`Streams::open`]) and drops it from the table
//! when it ends; what changes while it runs (bytes, chunks, the last byte, the idle timer's wait) is
//! kept in atomics that the edge and the timers write without a lock, so that listing costs a
//! stream nothing. A cut is a message to the stream's own body ([`Tracked::cut_requested`]): the
//! body is the one place that can end it in a chosen style, and it does so at its next poll, which
//! the message wakes.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::cut_style::CutStyle;
use crate::faults::reset::ResetSwitch;
use crate::timeouts::stream::StreamTimeouts;

/// Not yet: an offset of zero never stands for a moment that has happened.
const NEVER: u64 = 0;

/// How long a cut waits for the stream's body to end it before closing its connection.
pub const GRACE: Duration = Duration::from_millis(200);

/// An HTTP/1.1 connection's way out: closes it (the connection's task listens), with a RST when
/// its reset switch is flipped first.
#[derive(Clone)]
pub struct Hangup {
    close: Arc<Notify>,
    reset: ResetSwitch,
}

impl Hangup {
    pub fn new(close: Arc<Notify>, reset: ResetSwitch) -> Self {
        Self { close, reset }
    }

    fn now(&self, style: CutStyle) {
        if style == CutStyle::Reset {
            self.reset.flip();
        }
        // A permit is kept if the connection's task is not waiting at this instant.
        self.close.notify_one();
    }
}

/// What asking to cut a stream did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The stream will end in the style asked.
    Asked,
    /// It is already ending: its body is done, another cut or a timer got there first, or the
    /// proxy is sending its own answer.
    Ending,
    /// No such stream is open.
    NotOpen,
}

/// One open exchange, shared by its edge, its timers and the table.
pub struct Tracked {
    pub id: u64,
    pub client: Option<SocketAddr>,
    pub method: Method,
    pub path: String,
    pub started: Instant,
    replica: Mutex<Option<String>>,
    timeouts: OnceLock<StreamTimeouts>,
    /// Offsets from `started` in microseconds, plus one so that zero means "not yet".
    headers_at: AtomicU64,
    last_byte_at: AtomicU64,
    waiting_since: AtomicU64,
    bytes: AtomicU64,
    chunks: AtomicU64,
    /// Taken by the first cut, or when the stream can no longer be cut.
    cut: Mutex<Option<oneshot::Sender<CutStyle>>>,
    hangup: Option<Hangup>,
}

impl Tracked {
    fn offset(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_micros())
            .unwrap_or(u64::MAX - 1)
            + 1
    }

    fn since(&self, offset: u64) -> Option<Instant> {
        (offset != NEVER).then(|| self.started + Duration::from_micros(offset - 1))
    }

    /// The replica the request went to; a retry replaces it, so that it is the one that answered.
    pub fn sent_to(&self, replica: &str) {
        *self.replica.lock().unwrap_or_else(PoisonError::into_inner) = Some(replica.to_owned());
    }

    pub fn replica(&self) -> Option<String> {
        self.replica
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The limits the stream's timers run with, as they read them at its call.
    pub fn timed(&self, timeouts: StreamTimeouts) {
        let _ = self.timeouts.set(timeouts);
    }

    /// The stream is ending (its body is done or cut, or the proxy answers itself): a cut asked
    /// from now on would change nothing.
    pub fn ending(&self) {
        self.cut
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    pub fn headers_arrived(&self) {
        self.headers_at
            .store(self.offset(Instant::now()), Ordering::Relaxed);
    }

    pub fn headers_at(&self) -> Option<Instant> {
        self.since(self.headers_at.load(Ordering::Relaxed))
    }

    /// A body chunk of `bytes` went to the client `at`.
    pub fn sent(&self, bytes: u64, at: Instant) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.chunks.fetch_add(1, Ordering::Relaxed);
        self.last_byte_at.store(self.offset(at), Ordering::Relaxed);
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn chunks(&self) -> u64 {
        self.chunks.load(Ordering::Relaxed)
    }

    /// The idle timer started a wait for the upstream's next chunk, or (`None`) a chunk came.
    pub fn waiting(&self, since: Option<Instant>) {
        let offset = since.map_or(NEVER, |at| self.offset(at));
        self.waiting_since.store(offset, Ordering::Relaxed);
    }

    /// What `keepalive-lab ctl streams` shows: ages and times left in seconds.
    pub fn to_json(&self, now: Instant) -> Value {
        let seconds = |duration: Duration| duration.as_secs_f64();
        // Read once: the stream's thread may set it meanwhile, and the status and the timers
        // listed must tell the same story.
        let headers = self.headers_at();
        let last_byte = self
            .since(self.last_byte_at.load(Ordering::Relaxed))
            .or(headers);
        let timers = self.timers_left(now, headers);
        json!({
            "id": self.id,
            "client": self.client.map(|addr| addr.to_string()),
            "method": self.method.as_str(),
            "path": self.path,
            "replica": self.replica(),
            "age": seconds(now - self.started),
            "status": if headers.is_some() { "streaming" } else { "waiting for headers" },
            "bytes": self.bytes(),
            "chunks": self.chunks(),
            "since_last_byte": last_byte.map(|at| seconds(now - at)),
            "timers": timers,
        })
    }

    /// Each armed timer of the exchange and the seconds before it fires. Before headers the
    /// `first_byte`, `idle` and `max_duration` timers all run from the call; after them `idle` runs
    /// only while the proxy waits for the upstream, and is absent while a chunk is on its way.
    fn timers_left(&self, now: Instant, headers: Option<Instant>) -> Value {
        let Some(timeouts) = self.timeouts.get() else {
            return json!({});
        };
        let left = |from: Instant, limit: Option<Duration>| {
            limit.map(|limit| (from + limit).saturating_duration_since(now).as_secs_f64())
        };
        let mut timers = serde_json::Map::new();
        let mut arm = |name: &str, seconds: Option<f64>| {
            if let Some(seconds) = seconds {
                timers.insert(name.to_owned(), Value::from(seconds));
            }
        };
        arm("max_duration", left(self.started, timeouts.max_duration));
        if headers.is_none() {
            arm("first_byte", left(self.started, timeouts.first_byte));
            arm("idle", left(self.started, timeouts.idle));
        } else if let Some(since) = self.since(self.waiting_since.load(Ordering::Relaxed)) {
            arm("idle", left(since, timeouts.idle));
        }
        Value::Object(timers)
    }
}

/// The table of open streams.
#[derive(Clone, Default)]
pub struct Streams {
    table: Arc<Mutex<BTreeMap<u64, Arc<Tracked>>>>,
    next: Arc<AtomicU64>,
}

/// A stream's place in the table: the stream leaves it when this is dropped.
pub struct Entry {
    pub tracked: Arc<Tracked>,
    /// Where the control API's cut arrives; `None` once it has.
    cut: Option<oneshot::Receiver<CutStyle>>,
    streams: Streams,
}

impl Entry {
    /// The style of a cut asked and not yet acted on: the body was not polled to see it (the
    /// connection is being closed under it).
    pub fn asked(&mut self) -> Option<CutStyle> {
        let style = self.cut.as_mut()?.try_recv().ok()?;
        self.cut = None;
        Some(style)
    }

    /// `Ready(style)` once, when the control API asks to cut this stream; registers `cx` to be
    /// woken when it does.
    pub fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<CutStyle> {
        let Some(receiver) = self.cut.as_mut() else {
            return Poll::Pending;
        };
        match Pin::new(receiver).poll(cx) {
            Poll::Ready(Ok(style)) => {
                self.cut = None;
                Poll::Ready(style)
            }
            // The sender lives as long as the stream's `Tracked`: this cannot happen.
            Poll::Ready(Err(_)) => {
                self.cut = None;
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.streams.lock().remove(&self.tracked.id);
    }
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Tracked>>> {
        // A panic elsewhere while holding the lock leaves the table as consistent as ever.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a stream; `hangup` is its HTTP/1.1 connection's (see the module docs).
    pub fn open(
        &self,
        client: Option<SocketAddr>,
        method: Method,
        path: String,
        hangup: Option<Hangup>,
    ) -> Entry {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (sender, cut) = oneshot::channel();
        let tracked = Arc::new(Tracked {
            id,
            client,
            method,
            path,
            started: Instant::now(),
            replica: Mutex::new(None),
            timeouts: OnceLock::new(),
            headers_at: AtomicU64::new(NEVER),
            last_byte_at: AtomicU64::new(NEVER),
            waiting_since: AtomicU64::new(NEVER),
            bytes: AtomicU64::new(0),
            chunks: AtomicU64::new(0),
            cut: Mutex::new(Some(sender)),
            hangup,
        });
        self.lock().insert(id, Arc::clone(&tracked));
        Entry {
            tracked,
            cut: Some(cut),
            streams: self.clone(),
        }
    }

    /// The open streams, oldest first.
    pub fn list(&self) -> Vec<Arc<Tracked>> {
        let mut streams: Vec<_> = self.lock().values().cloned().collect();
        streams.sort_by_key(|tracked| tracked.id);
        streams
    }

    fn is_open(&self, id: u64) -> bool {
        self.lock().contains_key(&id)
    }

    /// Asks stream `id` to end in `style`, and closes its HTTP/1.1 connection if it has not ended
    /// within [`GRACE`].
    pub fn cut(&self, id: u64, style: CutStyle) -> Cut {
        let Some(tracked) = self.lock().get(&id).cloned() else {
            return Cut::NotOpen;
        };
        let sender = tracked
            .cut
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if sender.is_none_or(|sender| sender.send(style).is_err()) {
            return Cut::Ending;
        }
        if let Some(hangup) = tracked.hangup.clone() {
            let streams = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(GRACE).await;
                if streams.is_open(id) {
                    hangup.now(style);
                }
            });
        }
        Cut::Asked
    }

    /// Asks every open stream to end in `style`; the ids asked.
    pub fn cut_all(&self, style: CutStyle) -> Vec<u64> {
        self.list()
            .into_iter()
            .filter(|tracked| self.cut(tracked.id, style) == Cut::Asked)
            .map(|tracked| tracked.id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stream_is_listed_while_open_with_its_timers_counting_down() {
        let streams = Streams::default();
        let entry = streams.open(None, Method::GET, "/polls/streamed".to_owned(), None);
        entry.tracked.timed(StreamTimeouts {
            first_byte: Some(Duration::from_secs(30)),
            idle: Some(Duration::from_secs(5)),
            max_duration: None,
        });
        tokio::time::advance(Duration::from_secs(2)).await;
        let listed = streams.list();
        assert_eq!(listed.len(), 1);
        let shown = listed[0].to_json(Instant::now());
        assert_eq!(shown["path"], "/polls/streamed");
        assert_eq!(shown["timers"]["idle"], 3.0);
        assert_eq!(shown["timers"]["first_byte"], 28.0);
        assert!(shown["timers"].get("max_duration").is_none(), "{shown}");

        entry.tracked.headers_arrived();
        entry.tracked.sent(10, Instant::now());
        assert!(streams.list()[0].to_json(Instant::now())["timers"]
            .get("idle")
            .is_none());
        entry.tracked.waiting(Some(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        let shown = streams.list()[0].to_json(Instant::now());
        assert_eq!(shown["timers"]["idle"], 4.0);
        assert_eq!(shown["since_last_byte"], 1.0);
        assert_eq!(shown["bytes"], 10);
        drop(entry);
        assert!(streams.list().is_empty());
    }

    #[tokio::test]
    async fn a_cut_reaches_the_stream_once() {
        let streams = Streams::default();
        let mut entry = streams.open(None, Method::GET, "/".to_owned(), None);
        let id = entry.tracked.id;
        assert_eq!(streams.cut(id + 1, CutStyle::Clean), Cut::NotOpen);
        assert_eq!(streams.cut(id, CutStyle::Reset), Cut::Asked);
        assert_eq!(streams.cut(id, CutStyle::Clean), Cut::Ending, "cut twice");
        let style = std::future::poll_fn(|cx| entry.poll_cut(cx)).await;
        assert_eq!(style, CutStyle::Reset);
        let again = std::future::poll_fn(|cx| Poll::Ready(entry.poll_cut(cx))).await;
        assert!(again.is_pending(), "a cut arrives once");
    }

    #[tokio::test]
    async fn a_stream_that_is_ending_cannot_be_cut() {
        let streams = Streams::default();
        let entry = streams.open(None, Method::GET, "/".to_owned(), None);
        entry.tracked.ending();
        assert_eq!(streams.cut(entry.tracked.id, CutStyle::Reset), Cut::Ending);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_the_body_does_not_act_on_closes_the_connection_after_the_grace() {
        let streams = Streams::default();
        let close = Arc::new(Notify::new());
        let reset = ResetSwitch::default();
        let mut entry = streams.open(
            None,
            Method::GET,
            "/".to_owned(),
            Some(Hangup::new(Arc::clone(&close), reset.clone())),
        );
        assert_eq!(streams.cut(entry.tracked.id, CutStyle::Reset), Cut::Asked);
        let closed = close.notified();
        tokio::pin!(closed);
        assert!(
            tokio::time::timeout(GRACE / 2, closed.as_mut())
                .await
                .is_err(),
            "the body gets its chance first"
        );
        tokio::time::timeout(GRACE, closed)
            .await
            .expect("then the connection is closed");
        assert!(reset.is_flipped(), "with a RST, as asked");
        assert_eq!(entry.asked(), Some(CutStyle::Reset));
    }
}
