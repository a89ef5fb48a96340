//! Durable jobs over a real socket: what only connections that get cut (and an origin that gets
//! killed) can show, that a client resuming with `Last-Event-ID` or `Range` ends up with exactly the
//! bytes of one uninterrupted read. Parsing and rendering are tested without a socket in the crate.
//!
//! The suite runs on both job stores: each test of [`on_both_stores!`] once on SQLite
//! (`sqlite::…`) and once on PostgreSQL (`postgres::…`, ignored unless asked for, as it starts a
//! PostgreSQL server). What only several replicas on one database can show is in [`replicas`]; the
//! store's own guarantees, on both, in [`store`].

/// Each `async fn name(db: Db)` named becomes two tests, `sqlite::name` and `postgres::name`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                #[ignore = "starts a PostgreSQL server (Debian's postgresql package); scripts/test-all runs it"]
                async fn $name() {
                    super::$name(crate::Db::postgres()).await
                }
            )*
        }
    };
}

mod replicas;
mod store;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keepalive_kit::ports;
use keepalive_kit::postgres::Cluster;
use keepalive_kit::program::{clear_settings, Program};
use keepalive_kit::servers::{origin_config, start_origin as start_server, Running};
use keepalive_server::jobs::{Backend, Storage};
use keepalive_server::{serve, ServerConfig};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::{sleep, timeout, timeout_at, Instant};

/// Longest wait for one answer or one body: far above what a loaded CI machine needs.
const PATIENCE: Duration = Duration::from_secs(10);
const SSE: (&str, &str) = ("accept", "text/event-stream");

/// Where the origin under test keeps its jobs.
enum Db {
    /// In memory.
    Sqlite,
    /// A database of its own, in the PostgreSQL server the tests of this process share.
    Postgres {
        url: String,
        /// Kept running while the test holds it.
        _cluster: Arc<Cluster>,
    },
}

impl Db {
    fn postgres() -> Self {
        let cluster = Cluster::shared()
            .unwrap_or_else(|err| panic!("a PostgreSQL server for the test: {err}"));
        let url = cluster
            .database()
            .unwrap_or_else(|err| panic!("a database for the test: {err}"));
        Self::Postgres {
            url,
            _cluster: cluster,
        }
    }

    fn backend(&self) -> Backend {
        match self {
            Self::Sqlite => Backend::Sqlite(Storage::Memory),
            Self::Postgres { url, .. } => Backend::Postgres(url.parse().expect("a database URL")),
        }
    }

    /// The tests' origin configuration, with its jobs here.
    fn config(&self) -> ServerConfig {
        let mut config = origin_config();
        if let Self::Postgres { url, .. } = self {
            config.database_url = Some(url.parse().expect("a database URL"));
        }
        config
    }
}

/// A plain HTTP/1.1 client for one origin; a response dropped mid-body closes its connection,
/// which is the cut these tests make.
#[derive(Clone)]
struct Http {
    addr: SocketAddr,
    client: Client<HttpConnector, Empty<Bytes>>,
    /// The in-process origin it talks to, if it started one: running while any clone lives.
    _origin: Option<Arc<Running>>,
}

/// A response read to its end.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("{} answer without {name}", self.status))
            .to_str()
            .expect("ascii header")
    }

    fn json(&self) -> Value {
        assert_eq!(self.header("content-type"), "application/json");
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

impl Http {
    fn new(addr: SocketAddr) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            addr,
            client,
            _origin: None,
        }
    }

    /// A client whose connections come from `source` (any 127.0.0.0/8 address is loopback on
    /// Linux): another peer address, as the origin sees it.
    fn from_source(addr: SocketAddr, source: IpAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(source));
        Self {
            addr,
            client: Client::builder(TokioExecutor::new()).build(connector),
            _origin: None,
        }
    }

    async fn try_send(
        &self,
        method: &Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response<Incoming>, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Empty::new()).expect("a well-formed request");
        match timeout(PATIENCE, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => Err(format!("{method} {path}: {err}")),
            Err(_) => Err(format!("{method} {path}: no answer within {PATIENCE:?}")),
        }
    }

    /// Sends a request; every answer under `/jobs`, errors included, must name the store's epoch.
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response<Incoming> {
        let response = self
            .try_send(&method, path, headers)
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        if path.starts_with("/jobs") {
            assert!(
                response.headers().contains_key("keepalive-epoch"),
                "{method} {path} answered {} without keepalive-epoch",
                response.status()
            );
        }
        response
    }

    async fn fetch(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        let response = self.send(method, path, headers).await;
        let status = response.status();
        let headers = response.headers().clone();
        let body = timeout(PATIENCE, response.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("{path}: body not over within {PATIENCE:?}"))
            .expect("a body without transport errors")
            .to_bytes()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.fetch(Method::GET, path, headers).await
    }

    async fn start_job(&self, query: &str) -> Value {
        let reply = self
            .fetch(Method::POST, &format!("/jobs?{query}"), &[])
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json());
        let job = reply.json();
        assert_eq!(
            reply.header("location"),
            format!("/jobs/{}", job["id"].as_str().expect("id"))
        );
        assert_eq!(reply.header("keepalive-epoch"), job["epoch"]);
        job
    }

    /// The text of a job that has finished (a live read ends only when the job does).
    async fn finished_text(&self, id: &str) -> Vec<u8> {
        let reply = self
            .get(&format!("/jobs/{id}/stream?format=text"), &[])
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        let job = self.get(&format!("/jobs/{id}"), &[]).await.json();
        assert_ne!(
            job["state"], "running",
            "the text ended before the job: {job}"
        );
        reply.body
    }
}

/// The origin in-process on port 0 with jobs in `db`, and a client for it; it runs as long as the
/// client does.
async fn start_origin(db: &Db) -> Http {
    let origin = start_server(db.config()).await;
    let client = Http::new(origin.addr);
    Http {
        _origin: Some(Arc::new(origin)),
        ..client
    }
}

async fn next_chunk(body: &mut Incoming) -> Option<Bytes> {
    loop {
        let frame = timeout(PATIENCE, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no body frame within {PATIENCE:?}"))?
            .expect("a body without transport errors");
        if let Ok(data) = frame.into_data() {
            return Some(data);
        }
    }
}

/// The first `limit` bytes of the body, then the connection is dropped: a cut at that byte.
/// Returns them and whether the body ended first (nothing was cut).
async fn read_then_cut(response: Response<Incoming>, limit: usize) -> (Vec<u8>, bool) {
    let mut body = response.into_body();
    let mut got = Vec::new();
    while got.len() < limit {
        match next_chunk(&mut body).await {
            Some(chunk) => got.extend_from_slice(&chunk),
            None => return (got, true),
        }
    }
    // Whatever arrived past the cut never reached this client.
    got.truncate(limit);
    (got, false)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    id: Option<u64>,
    name: Option<String>,
    data: String,
}

/// The events an EventSource dispatches from a (possibly cut) body: complete ones only, without
/// comments (heartbeats) or `retry`.
fn parse_events(body: &[u8]) -> Vec<Event> {
    let text = std::str::from_utf8(body).expect("SSE is UTF-8");
    let mut blocks: Vec<&str> = text.split("\n\n").collect();
    blocks.pop(); // What follows the last blank line is an event still incomplete.
    blocks
        .into_iter()
        .filter_map(|block| {
            let mut event = Event {
                id: None,
                name: None,
                data: String::new(),
            };
            let mut has_data = false;
            for line in block.lines() {
                if let Some(id) = line.strip_prefix("id: ") {
                    event.id = Some(id.parse().expect("numeric event ids"));
                } else if let Some(name) = line.strip_prefix("event: ") {
                    event.name = Some(name.to_owned());
                } else if let Some(data) = line.strip_prefix("data: ") {
                    if has_data {
                        event.data.push('\n');
                    }
                    event.data.push_str(data);
                    has_data = true;
                }
            }
            has_data.then_some(event)
        })
        .collect()
}

/// Waits for the job to finish; returns its state when this was called.
async fn wait_finished(origin: &Http, id: &str) -> Value {
    let state = || async { origin.get(&format!("/jobs/{id}"), &[]).await.json()["state"].clone() };
    let (before, deadline) = (state().await, Instant::now() + PATIENCE);
    while state().await == "running" {
        assert!(
            Instant::now() < deadline,
            "job {id} still running after {PATIENCE:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
    before
}

fn ids(events: &[Event]) -> Vec<u64> {
    events.iter().filter_map(|event| event.id).collect()
}

fn is_end(event: &Event) -> bool {
    event.name.as_deref() == Some("end")
}

async fn sse_client_cut_at_100_random_points_assembles_the_uninterrupted_output(db: Db) {
    let origin = start_origin(&db).await;
    let job = origin.start_job("lines=60&sleep=10ms").await;
    let id = job["id"].as_str().expect("id");
    let epoch = job["epoch"].as_str().expect("epoch");
    let stream = format!("/jobs/{id}/stream");
    let mut rng = fastrand::Rng::with_seed(0x6b65_6570);

    // Like an EventSource: every complete event counts, and the position is the last id seen.
    let (mut events, mut last_id, mut cuts, mut connections) = (Vec::<Event>::new(), None, 0, 0);
    let mut state_at_half = Value::Null;
    // Half the cuts on the live stream, half on the replay of the finished job.
    while cuts < 100 && !events.last().is_some_and(is_end) {
        let last = last_id.map(|id: u64| id.to_string()).unwrap_or_default();
        let headers = [SSE, ("last-event-id", &last), ("keepalive-epoch", epoch)];
        let response = origin.send(Method::GET, &stream, &headers).await;
        connections += 1;
        assert_eq!(response.status(), StatusCode::OK, "after id {last:?}");
        // The byte stream does not depend on timing, so with this seed the 100 cuts always come
        // before the end (checked below).
        let (body, ended) = read_then_cut(response, rng.usize(0..=150)).await;
        let got = parse_events(&body);
        last_id = got
            .iter()
            .filter_map(|event| event.id)
            .next_back()
            .or(last_id);
        events.extend(got);
        cuts += usize::from(!ended);
        if cuts == 50 && !ended {
            state_at_half = wait_finished(&origin, id).await;
        }
    }
    let last = last_id.map(|id| id.to_string()).unwrap_or_default();
    let rest = origin.get(&stream, &[SSE, ("last-event-id", &last)]).await;
    assert_eq!(
        rest.status,
        StatusCode::OK,
        "the cuts let the client finish early"
    );
    let rest = parse_events(&rest.body);
    connections += 1;
    println!(
        "SSE: {cuts} cuts, {} reconnects; the job was {state_at_half} at the 50th cut; {} of 60 \
         lines came after the last",
        connections - 1,
        ids(&rest).len(),
    );
    events.extend(rest);
    assert_eq!(cuts, 100);

    // Having seen every line, an EventSource that reconnects is told to stop.
    let after_all = origin.get(&stream, &[SSE, ("last-event-id", "60")]).await;
    assert_eq!(after_all.status, StatusCode::NO_CONTENT);

    let whole = origin.get(&format!("{stream}?format=sse"), &[]).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.header("content-type"), "text/event-stream");
    assert!(whole.body.starts_with(b"retry: 1000\n\n"));
    let uninterrupted = parse_events(&whole.body);
    assert_eq!(ids(&events), (1..=60).collect::<Vec<_>>());
    let data = |events: &[Event]| {
        events
            .iter()
            .map(|event| event.data.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(data(&events), data(&uninterrupted));
    assert_eq!(events, uninterrupted);
    let end = events.last().expect("events");
    assert!(is_end(end), "{end:?}");
    assert_eq!(end.data, r#"{"state":"completed","lines":60}"#);
}

/// Wherever the connection drops, an EventSource that resumes from the last id it dispatched shows
/// every event of the stream once: the banner travels inside its line's event, never alone.
async fn sse_cut_at_every_byte_never_shows_an_event_twice(db: Db) {
    let origin = start_origin(&db).await;
    let job = origin.start_job("lines=4&sleep=0").await;
    let id = job["id"].as_str().expect("id");
    origin.finished_text(id).await;
    let stream = format!("/jobs/{id}/stream?format=sse");
    let tail = origin.get(&stream, &[("last-event-id", "2")]).await;
    let uninterrupted = parse_events(&tail.body);
    let lines = |events: &[Event]| {
        events
            .iter()
            .filter(|event| !is_end(event))
            .cloned()
            .collect::<Vec<_>>()
    };
    for cut in 0..tail.body.len() {
        let mut dispatched = parse_events(&tail.body[..cut]);
        let last = ids(&dispatched).last().map_or(2, |id| *id).to_string();
        let resumed = origin.get(&stream, &[("last-event-id", &last)]).await;
        let over = match resumed.status {
            // Cut between the last line and the end event: the resume says there is nothing left.
            StatusCode::NO_CONTENT => true,
            status => {
                assert_eq!(status, StatusCode::OK, "cut after {cut} bytes");
                dispatched.extend(parse_events(&resumed.body));
                dispatched.last().is_some_and(is_end)
            }
        };
        assert!(
            over,
            "cut after {cut} bytes: the client never learnt the job was over"
        );
        assert_eq!(
            lines(&dispatched),
            lines(&uninterrupted),
            "cut after {cut} bytes"
        );
    }
}

async fn text_client_cut_at_100_random_points_assembles_the_full_text(db: Db) {
    let origin = start_origin(&db).await;
    // A longer text than the SSE test's: at the live edge an answer holds only the bytes written
    // so far and often ends before its cut, so 100 cuts need room.
    let job = origin.start_job("lines=200&sleep=3ms").await;
    let id = job["id"].as_str().expect("id");
    let stream = format!("/jobs/{id}/stream?format=text");
    let mut rng = fastrand::Rng::with_seed(0x7465_7874);

    let (mut text, mut cuts, mut requests) = (Vec::<u8>::new(), 0, 0);
    let mut state_at_half = Value::Null;
    // Half the cuts on the live text, half on the text of the finished job.
    let total = loop {
        let range = format!("bytes={}-", text.len());
        let response = origin
            .send(Method::GET, &stream, &[("range", &range)])
            .await;
        requests += 1;
        let content_range = response
            .headers()
            .get("content-range")
            .map(|value| value.to_str().expect("ascii").to_owned())
            .expect("a content-range");
        if response.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            // Only a finished job answers 416 to a range starting at its end.
            break content_range;
        }
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        let start = format!("bytes {}-", text.len());
        assert!(
            content_range.starts_with(&start),
            "{content_range} for {range}"
        );
        // After 100 cuts, read every answer to its end.
        let limit = if cuts < 100 {
            rng.usize(0..=40)
        } else {
            usize::MAX
        };
        let (body, ended) = read_then_cut(response, limit).await;
        text.extend(body);
        cuts += usize::from(!ended);
        if cuts == 50 && !ended {
            state_at_half = wait_finished(&origin, id).await;
        }
    };
    println!(
        "text: {cuts} cuts, {} reconnects; the job was {state_at_half} at the 50th cut",
        requests - 1
    );
    assert_eq!(cuts, 100, "the cut sizes let the client finish early");
    let full = origin.finished_text(id).await;
    assert_eq!(total, format!("bytes */{}", full.len()));
    assert_eq!(
        String::from_utf8_lossy(&text),
        String::from_utf8_lossy(&full)
    );
    assert_eq!(text, full);
}

async fn ranges_of_a_finished_job_follow_rfc_9110(db: Db) {
    let origin = start_origin(&db).await;
    let job = origin.start_job("lines=12&sleep=0").await;
    let id = job["id"].as_str().expect("id");
    let full = origin.finished_text(id).await;
    let len = full.len();
    let stream = format!("/jobs/{id}/stream?format=text");
    let get_range = |range: String, if_range: Option<String>| {
        let (origin, stream) = (origin.clone(), stream.clone());
        async move {
            let mut headers = vec![("range", range.as_str())];
            headers.extend(if_range.as_deref().map(|tag| ("if-range", tag)));
            origin.get(&stream, &headers).await
        }
    };

    let whole = origin.get(&stream, &[]).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.body, full);
    assert_eq!(whole.header("accept-ranges"), "bytes");
    let etag = whole.header("etag").to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "a strong ETag: {etag}"
    );

    let partial = [
        ("bytes=10-", 10, len - 1),
        ("bytes=-20", len - 20, len - 1),
        ("bytes=5-9", 5, 9),
        ("bytes=0-", 0, len - 1),
    ];
    for (range, first, last) in partial {
        let reply = get_range(range.to_owned(), None).await;
        assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            reply.header("content-range"),
            format!("bytes {first}-{last}/{len}"),
            "{range}"
        );
        assert_eq!(reply.body, &full[first..=last], "{range}");
        assert_eq!(reply.header("etag"), etag, "{range}");
    }

    let past_the_end = get_range(format!("bytes={len}-"), None).await;
    assert_eq!(past_the_end.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        past_the_end.header("content-range"),
        format!("bytes */{len}")
    );

    // Several ranges, or a validator that is not this text's: the whole text, as the RFC allows.
    let whole_answers = [
        ("bytes=0-1,5-6".to_owned(), None),
        ("bytes=10-".to_owned(), Some("\"another\"".to_owned())),
        ("bytes=10-".to_owned(), Some(format!("W/{etag}"))),
    ];
    for (range, if_range) in whole_answers {
        let reply = get_range(range.clone(), if_range.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{range} if-range {if_range:?}"
        );
        assert_eq!(reply.body, full, "{range} if-range {if_range:?}");
    }
    let matching = get_range("bytes=10-".to_owned(), Some(etag.clone())).await;
    assert_eq!(matching.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(matching.body, &full[10..]);
}

async fn a_range_of_a_running_job_has_no_total_yet(db: Db) {
    let origin = start_origin(&db).await;
    let job = origin.start_job("lines=100&sleep=1s").await;
    let id = job["id"].as_str().expect("id");
    let reply = origin
        .get(
            &format!("/jobs/{id}/stream?format=text"),
            &[("range", "bytes=0-")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
    assert!(!reply.body.is_empty());
    let content_range = format!("bytes 0-{}/*", reply.body.len() - 1);
    assert_eq!(reply.header("content-range"), content_range);
    origin
        .fetch(Method::DELETE, &format!("/jobs/{id}"), &[])
        .await;
}

async fn bad_and_unknown_ids_get_404_and_bad_parameters_400(db: Db) {
    let origin = start_origin(&db).await;
    let unknown = "0123456789abcdef";
    let not_found = [
        (Method::GET, "/jobs/x".to_owned()),
        (Method::GET, "/jobs/0123456789ABCDEF".to_owned()),
        (Method::GET, format!("/jobs/{unknown}")),
        (Method::GET, "/jobs/x/stream".to_owned()),
        (Method::GET, format!("/jobs/{unknown}/stream")),
        (Method::GET, format!("/jobs/{unknown}/stream?format=sse")),
        (Method::DELETE, "/jobs/x".to_owned()),
        (Method::DELETE, format!("/jobs/{unknown}")),
    ];
    for (method, path) in not_found {
        let reply = origin.fetch(method.clone(), &path, &[]).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}");
        let body = reply.json();
        assert_eq!(body["status"], 404, "{method} {path}: {body}");
        assert_eq!(body["error"], "job not found", "{method} {path}: {body}");
    }

    for (query, parameter) in [
        ("lines=0", "lines"),
        ("sleep=abc", "sleep"),
        ("lines=100001", "lines"),
    ] {
        let reply = origin
            .fetch(Method::POST, &format!("/jobs?{query}"), &[])
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
        let body = reply.json();
        assert_eq!(body["status"], 400, "{query}: {body}");
        assert_eq!(body["error"], "invalid parameter", "{query}: {body}");
        assert_eq!(body["parameter"], parameter, "{query}: {body}");
    }
}

/// One client could fill `SERVER_JOB_MAX` and lock everybody out: each peer address now runs at most
/// `SERVER_JOBS_PER_CLIENT` jobs, the next `POST /jobs` gets a 429 that says why, another address
/// still starts jobs, and a job that ends gives its slot back.
async fn a_client_running_its_quota_of_jobs_gets_429_while_others_still_start(db: Db) {
    let origin = start_server(ServerConfig {
        jobs_per_client: 2,
        ..db.config()
    })
    .await;
    let client = Http::new(origin.addr);
    let neighbour = Http::from_source(origin.addr, IpAddr::from([127, 0, 0, 2]));
    let long = "lines=100&sleep=1s";
    let first = client.start_job(long).await;
    client.start_job(long).await;

    let refused = client
        .fetch(Method::POST, &format!("/jobs?{long}"), &[])
        .await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let body = refused.json();
    assert_eq!(body["status"], 429, "{body}");
    assert_eq!(body["error"], "too many jobs", "{body}");
    let detail = body["detail"].as_str().expect("detail");
    for says in ["127.0.0.1", "2 jobs", "SERVER_JOBS_PER_CLIENT"] {
        assert!(detail.contains(says), "{detail:?} lacks {says:?}");
    }

    neighbour.start_job(long).await;

    let id = first["id"].as_str().expect("id");
    let cancelled = client
        .fetch(Method::DELETE, &format!("/jobs/{id}"), &[])
        .await;
    assert_eq!(cancelled.json()["state"], "cancelled");
    client.start_job(long).await;
}

async fn sse_positions_outside_the_jobs_history_are_refused(db: Db) {
    let origin = start_origin(&db).await;
    let job = origin.start_job("lines=5&sleep=0").await;
    let id = job["id"].as_str().expect("id");
    let epoch = job["epoch"].as_str().expect("epoch");
    origin.finished_text(id).await;
    let stream = format!("/jobs/{id}/stream");

    let done = [
        origin.get(&stream, &[SSE, ("last-event-id", "5")]).await,
        origin
            .get(&format!("{stream}?format=sse&lastEventID=5"), &[])
            .await,
    ];
    for reply in done {
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        assert!(reply.body.is_empty());
        assert_eq!(reply.header("keepalive-epoch"), epoch);
    }
    let nearly = origin.get(&stream, &[SSE, ("last-event-id", "4")]).await;
    assert_eq!(nearly.status, StatusCode::OK);
    assert_eq!(ids(&parse_events(&nearly.body)), [5]);

    let refused = [
        origin.get(&stream, &[SSE, ("last-event-id", "6")]).await,
        origin
            .get(&format!("{stream}?format=sse&lastEventID=6"), &[])
            .await,
        origin
            .get(&format!("{stream}?format=sse&epoch=other"), &[])
            .await,
        origin
            .get(&stream, &[SSE, ("keepalive-epoch", "other")])
            .await,
        origin
            .get(&format!("{stream}?format=text&epoch=other"), &[])
            .await,
    ];
    for reply in refused {
        assert_eq!(reply.status, StatusCode::CONFLICT);
        assert_eq!(reply.json()["error"], "history lost");
        assert_eq!(reply.header("keepalive-epoch"), epoch);
    }
    let same_epoch = origin
        .get(
            &format!("{stream}?format=sse&epoch={epoch}&lastEventID=5"),
            &[],
        )
        .await;
    assert_eq!(same_epoch.status, StatusCode::NO_CONTENT);

    let shown = origin.get(&format!("/jobs/{id}"), &[]).await;
    assert_eq!(shown.header("keepalive-epoch"), epoch);
    assert_eq!(shown.json()["epoch"], epoch);
}

async fn deleting_a_running_job_cancels_it_and_ends_its_streams(db: Db) {
    let origin = start_origin(&db).await;
    let job = origin.start_job("lines=100&sleep=1s").await;
    let id = job["id"].as_str().expect("id");
    let response = origin
        .send(Method::GET, &format!("/jobs/{id}/stream"), &[SSE])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut seen = Vec::new();
    while ids(&parse_events(&seen)).is_empty() {
        seen.extend(
            next_chunk(&mut body)
                .await
                .expect("the first line, at once"),
        );
    }

    let cancelled = origin
        .fetch(Method::DELETE, &format!("/jobs/{id}"), &[])
        .await;
    assert_eq!(cancelled.status, StatusCode::OK);
    let cancelled = cancelled.json();
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let written = cancelled["lines_written"].as_u64().expect("lines_written");
    assert!((1..100).contains(&written), "{cancelled}");

    while let Some(chunk) = next_chunk(&mut body).await {
        seen.extend(chunk);
    }
    let events = parse_events(&seen);
    let end = events.last().expect("events");
    assert!(
        is_end(end),
        "the stream ends with its end event: {events:?}"
    );
    assert_eq!(
        end.data,
        format!(r#"{{"state":"cancelled","lines":{written}}}"#)
    );
    assert_eq!(ids(&events), (1..=written).collect::<Vec<_>>());

    let shown = origin.get(&format!("/jobs/{id}"), &[]).await.json();
    assert_eq!(shown["state"], "cancelled", "{shown}");
    assert_eq!(shown["lines_written"], written, "{shown}");
    let again = origin
        .fetch(Method::DELETE, &format!("/jobs/{id}"), &[])
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["state"], "cancelled");
}

/// The real binary, stopped gracefully when dropped (with its log shown if the test failed).
struct Origin {
    program: Program,
    log: PathBuf,
}

impl Origin {
    fn spawn(addr: SocketAddr, data_dir: &Path, log: PathBuf) -> Self {
        Self::spawn_with(
            addr,
            &[("SERVER_DATA_DIR", &data_dir.to_string_lossy())],
            log,
        )
    }

    /// The binary on `addr` with `settings` (env vars) besides the defaults.
    fn spawn_with(addr: SocketAddr, settings: &[(&str, &str)], log: PathBuf) -> Self {
        let stderr = std::fs::File::create(&log).expect("create the server log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_keepalive-server"));
        clear_settings(&mut command);
        command.envs(settings.iter().copied());
        command
            .env("SERVER_ADDR", addr.to_string())
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(stderr);
        let program =
            Program::start("keepalive-server", command).unwrap_or_else(|err| panic!("{err}"));
        Self { program, log }
    }

    /// Waits until `/healthz` answers, failing early if the process died.
    async fn wait_healthy(&mut self, http: &Http) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.program.exited().expect("child status") {
                panic!("keepalive-server exited with {status} before answering");
            }
            if let Ok(response) = http.try_send(&Method::GET, "/healthz", &[]).await {
                if response.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "no /healthz within {PATIENCE:?}");
            sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill_9(&mut self) {
        let status = self.program.kill().expect("SIGKILL");
        assert!(!status.success(), "{status}");
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- {} ---\n{log}", self.log.display());
        }
    }
}

/// A fresh directory under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let name = format!(
            "keepalive-jobs-test-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).expect("create a temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn kill_9_mid_job_keeps_every_line_already_served() {
    let temp = TempDir::new();
    let data_dir = temp.0.join("data");
    let addr = ports::free().expect("a free port");
    let mut first = Origin::spawn(addr, &data_dir, temp.0.join("first.log"));
    let http = Http::new(addr);
    first.wait_healthy(&http).await;

    let job = http.start_job("lines=200&sleep=50ms").await;
    let id = job["id"].as_str().expect("id").to_owned();
    let response = http
        .send(Method::GET, &format!("/jobs/{id}/stream?format=text"), &[])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut served = Vec::new();
    let until = Instant::now() + Duration::from_millis(500);
    while let Ok(Some(chunk)) = timeout_at(until, next_chunk(&mut body)).await {
        served.extend(chunk);
    }
    first.kill_9();
    drop(body);
    let served_lines = served.iter().filter(|&&byte| byte == b'\n').count();
    assert!(served_lines > 0, "nothing served in 0.5 s");

    // A new client: the old one's pooled connections died with the process.
    let http = Http::new(addr);
    let mut second = Origin::spawn(addr, &data_dir, temp.0.join("second.log"));
    second.wait_healthy(&http).await;
    let resumed = http.get(&format!("/jobs/{id}"), &[]).await.json();
    assert_eq!(resumed["runs"], 2, "{resumed}");
    assert_eq!(
        resumed["epoch"], job["epoch"],
        "same data dir, same history: {resumed}"
    );
    let so_far = http
        .get(
            &format!("/jobs/{id}/stream?format=text"),
            &[("range", "bytes=0-")],
        )
        .await;
    assert!(
        so_far.body.starts_with(&served),
        "a served line was lost or changed"
    );

    // Following the job to its end: ids contiguous across the restart, nothing repeated.
    let events = timeout(
        Duration::from_secs(30),
        http.send(Method::GET, &format!("/jobs/{id}/stream"), &[SSE]),
    )
    .await
    .expect("an answer");
    let events = timeout(Duration::from_secs(30), events.into_body().collect())
        .await
        .expect("the job ends within 30 s")
        .expect("a whole body")
        .to_bytes();
    let events = parse_events(&events);
    assert_eq!(ids(&events), (1..=200).collect::<Vec<_>>());
    let end = events.last().expect("events");
    assert_eq!(end.data, r#"{"state":"completed","lines":200}"#);

    let text = http.finished_text(&id).await;
    assert!(
        text.starts_with(&served),
        "a served line was lost or changed"
    );
    let finished = http.get(&format!("/jobs/{id}"), &[]).await.json();
    assert_eq!(finished["state"], "completed", "{finished}");
    assert_eq!(finished["runs"], 2, "{finished}");
    assert_eq!(finished["bytes_written"], text.len(), "{finished}");
    println!("kill -9 after {served_lines} lines served; the job resumed and wrote all 200");
    drop(second);
}

/// The origin in-process on port 0 with jobs under `dir`, and a client for it.
async fn start_origin_on(dir: &Path) -> (Http, Running) {
    let origin = start_server(ServerConfig {
        data_dir: Storage::Dir(dir.to_owned()),
        ..origin_config()
    })
    .await;
    (Http::new(origin.addr), origin)
}

#[tokio::test]
async fn a_stopped_origin_suspends_its_jobs_and_the_next_one_resumes_them() {
    let dir = TempDir::new();
    let (origin, server) = start_origin_on(dir.0.as_path()).await;
    let job = origin.start_job("lines=30&sleep=30ms").await;
    let id = job["id"].as_str().expect("id").to_owned();
    sleep(Duration::from_millis(200)).await;

    // While it runs, nobody else may run its jobs: the data directory is locked.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let second = ServerConfig {
        data_dir: Storage::Dir(dir.0.as_path().to_owned()),
        ..ServerConfig::default()
    };
    let refused = serve(listener, second, std::future::pending())
        .await
        .expect_err("a second origin on a data directory in use");
    assert!(refused.to_string().contains("locked"), "{refused}");

    timeout(PATIENCE, server.stopped())
        .await
        .expect("serve returns once its jobs are suspended")
        .expect("served");

    let (origin, _server) = start_origin_on(dir.0.as_path()).await;
    let suspended = origin.get(&format!("/jobs/{id}"), &[]).await.json();
    assert_eq!(suspended["runs"], 2, "{suspended}");
    assert!(
        suspended["lines_written"].as_u64().expect("lines_written") < 30,
        "the job was not suspended mid-way: {suspended}"
    );
    wait_finished(&origin, &id).await;
    let events = parse_events(
        &origin
            .get(&format!("/jobs/{id}/stream?format=sse"), &[])
            .await
            .body,
    );
    assert_eq!(ids(&events), (1..=30).collect::<Vec<_>>());
    let done = origin.get(&format!("/jobs/{id}"), &[]).await.json();
    assert_eq!(done["state"], "completed", "{done}");
}

on_both_stores!(
    sse_client_cut_at_100_random_points_assembles_the_uninterrupted_output,
    sse_cut_at_every_byte_never_shows_an_event_twice,
    text_client_cut_at_100_random_points_assembles_the_full_text,
    ranges_of_a_finished_job_follow_rfc_9110,
    a_range_of_a_running_job_has_no_total_yet,
    bad_and_unknown_ids_get_404_and_bad_parameters_400,
    a_client_running_its_quota_of_jobs_gets_429_while_others_still_start,
    sse_positions_outside_the_jobs_history_are_refused,
    deleting_a_running_job_cancels_it_and_ends_its_streams,
);
