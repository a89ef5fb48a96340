//! The lifecycle of every stream as it happens, for a page or a script to follow (`GET /events`,
//! server-sent events): started, headers (the first byte), data and heartbeat chunks, a timer that
//! fired, a client or an origin that went away, a cut, and the end with its termination flags.
//!
//! Events go through a broadcast channel: a follower that falls behind loses the oldest and is told
//! how many (a `lagged` event), and the proxy never waits for a follower. With nobody following,
//! an event costs one atomic load (the followers are counted apart from the channel, whose own
//! count takes a lock): it is not even built.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::streams::Tracked;

/// Events kept for a follower that is behind; beyond, it loses the oldest.
const BACKLOG: usize = 4096;

/// One event, encoded once for every follower.
#[derive(Debug)]
pub struct Event {
    pub seq: u64,
    pub kind: &'static str,
    /// A JSON object: `stream`, `at` (Unix seconds), `elapsed` (seconds since the stream began)
    /// and the event's own fields.
    pub data: String,
}

#[derive(Clone)]
pub struct Events {
    sender: broadcast::Sender<Arc<Event>>,
    followers: Arc<AtomicUsize>,
    /// The last event's number; held while an event is numbered and sent, so that followers get
    /// them in the order of their numbers.
    seq: Arc<Mutex<u64>>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BACKLOG).0,
            followers: Arc::default(),
            seq: Arc::default(),
        }
    }
}

/// One follower of the feed; counted while it lives.
pub struct Follower {
    pub receiver: broadcast::Receiver<Arc<Event>>,
    followers: Arc<AtomicUsize>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.followers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Events {
    pub fn follow(&self) -> Follower {
        self.followers.fetch_add(1, Ordering::Relaxed);
        Follower {
            receiver: self.sender.subscribe(),
            followers: Arc::clone(&self.followers),
        }
    }

    fn followed(&self) -> bool {
        self.followers.load(Ordering::Relaxed) > 0
    }

    /// Sends `kind` about `stream` with the fields `detail` makes, if anyone follows.
    pub fn emit(&self, kind: &'static str, stream: &Tracked, detail: impl FnOnce() -> Value) {
        if !self.followed() {
            return;
        }
        let mut data = Map::new();
        data.insert("stream".to_owned(), Value::from(stream.id));
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        data.insert("at".to_owned(), Value::from(at));
        data.insert(
            "elapsed".to_owned(),
            Value::from((Instant::now() - stream.started).as_secs_f64()),
        );
        if let Value::Object(fields) = detail() {
            data.extend(fields);
        }
        let data = Value::Object(data).to_string();
        let mut seq = self.seq.lock().unwrap_or_else(PoisonError::into_inner);
        *seq += 1;
        let event = Event {
            seq: *seq,
            kind,
            data,
        };
        // Nobody may follow any more by now, which is no error.
        let _ = self.sender.send(Arc::new(event));
    }
}

#[cfg(test)]
mod tests {
    use http::Method;
    use serde_json::json;

    use super::super::streams::Streams;
    use super::*;

    #[tokio::test]
    async fn a_follower_gets_each_event_numbered_with_the_stream_id() {
        let events = Events::default();
        let streams = Streams::default();
        let entry = streams.open(None, Method::GET, "/".to_owned(), None);
        events.emit("started", &entry.tracked, || {
            panic!("built with nobody following")
        });
        let mut follower = events.follow();
        events.emit("timer", &entry.tracked, || json!({"timer": "idle"}));
        let event = follower.receiver.recv().await.expect("an event");
        assert_eq!((event.seq, event.kind), (1, "timer"));
        let data: Value = serde_json::from_str(&event.data).expect("JSON");
        assert_eq!(data["stream"], entry.tracked.id);
        assert_eq!(data["timer"], "idle");
        drop(follower);
        events.emit("ended", &entry.tracked, || {
            panic!("built after the last follower left")
        });
    }
}
