//! The job routes: start, look at, follow (SSE or text, resumable) and cancel a job.
//!
//! Every answer carries `Keepalive-Epoch` ([`add_epoch`]), the store's history id: a client that resumes with the
//! epoch it saw (header or `?epoch=`) and finds another one, or that claims lines the store never
//! had, gets `409 history lost` instead of a quietly different stream.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use futures_util::stream;
use keepalive_common::duration::display;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::feed::POLL;
use super::{range, render, Client, JobId, JobInfo, JobSpec, Jobs, StartError, StoreError};
use crate::error::ApiError;
use crate::params::{self, JobParams};
use crate::state::AppState;

pub const EPOCH_HEADER: HeaderName = HeaderName::from_static("keepalive-epoch");
/// How long an EventSource waits before reconnecting after a cut.
const SSE_RETRY_MS: u64 = 1000;
/// A job's stream grows under one ETag (the text is append-only, which is what `If-Range` needs),
/// so no cache may keep a copy; and no hop may transform it, or heartbeats and offsets would suffer.
const NO_STORE: &str = "no-store, no-transform";
/// Lines read from the store at a time while streaming.
const BATCH: u64 = 256;

/// `POST /jobs`: 201, `Location`, and the job as JSON; 429 when this client runs as many jobs as it
/// may. The peer comes from [`crate::serve`]'s connection; absent under `oneshot`.
pub async fn start(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Result<Response, ApiError> {
    let params = JobParams::from_query(query.as_deref().unwrap_or_default(), state.config())?;
    let jobs = state.jobs();
    let spec = JobSpec {
        sleep: params.sleep,
        heartbeat: params.heartbeat,
        lines: params.lines,
    };
    let client = Client::of(peer.map(|Extension(ConnectInfo(addr))| addr));
    let job = jobs.start(spec, client).await.map_err(|err| match err {
        StartError::TooMany(_) => ApiError::Unavailable {
            detail: format!("{err}; try again when one has finished"),
        },
        StartError::TooManyForClient { .. } => ApiError::TooManyJobs {
            detail: format!(
                "{err}; try again when one has finished, or cancel one (DELETE /jobs/{{id}})"
            ),
        },
        StartError::Store(err) => unavailable(err),
    })?;
    let location = format!("/jobs/{}", job.id);
    let mut response = (StatusCode::CREATED, Json(JobView::new(&job, jobs))).into_response();
    insert(&mut response, header::LOCATION, &location);
    Ok(response)
}

/// `GET /jobs/{id}`: the job as JSON.
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let jobs = state.jobs();
    let job = find(jobs, &id).await?;
    Ok(Json(JobView::new(&job, jobs)).into_response())
}

/// `DELETE /jobs/{id}`: cancels a running job (its log so far is kept); a finished job is left as it
/// is. Answers with the job as it stands afterwards.
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let jobs = state.jobs();
    let job = find(jobs, &id).await?;
    if jobs.cancel(&job.id).await.map_err(unavailable)? {
        tracing::info!(job = %job.id, "job cancelled by request");
    }
    let job = find(jobs, &id).await?;
    Ok(Json(JobView::new(&job, jobs)).into_response())
}

/// `GET /jobs/{id}/stream`: SSE when asked (`Accept: text/event-stream` or `?format=sse`), text
/// otherwise.
pub async fn follow(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let jobs = state.jobs();
    let query = StreamQuery::read(
        query.as_deref().unwrap_or_default(),
        &headers,
        state.config().max_sleep,
    )?;
    if let Some(theirs) = query
        .epoch
        .as_deref()
        .filter(|theirs| *theirs != jobs.epoch())
    {
        return Err(ApiError::HistoryLost {
            detail: format!(
                "the position was taken in epoch {theirs}; this job store is epoch {}, its \
                 history is another one: start again from the beginning",
                jobs.epoch()
            ),
        });
    }
    let job = find(jobs, &id).await?;
    let response = if query.sse {
        sse(jobs, job, &query)?
    } else {
        text(jobs, job, &headers).await?
    };
    Ok(response)
}

/// What a stream request asked for, from its query and headers.
struct StreamQuery {
    sse: bool,
    last_event_id: Option<u64>,
    epoch: Option<String>,
    heartbeat: Option<Option<Duration>>,
}

impl StreamQuery {
    fn read(query: &str, headers: &HeaderMap, max_sleep: Duration) -> Result<Self, ApiError> {
        let accepts_sse = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| value.contains("text/event-stream"));
        let mut read = Self {
            sse: accepts_sse,
            last_event_id: None,
            epoch: header_text(headers, &EPOCH_HEADER),
            heartbeat: None,
        };
        // Named as the client sent it, header or query parameter, when it is refused.
        let mut last_event_id = header_text(headers, &HeaderName::from_static("last-event-id"))
            .map(|value| ("Last-Event-ID", value));
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "format" => match value.as_ref() {
                    "sse" => read.sse = true,
                    "text" => read.sse = false,
                    _ => return Err(invalid("format", &value, "text or sse")),
                },
                "lastEventID" => last_event_id = Some(("lastEventID", value.into_owned())),
                "epoch" => read.epoch = Some(value.into_owned()),
                "heartbeat" => read.heartbeat = Some(params::heartbeat(&value, max_sleep)?),
                _ => {}
            }
        }
        // An empty Last-Event-ID is what EventSource sends before it has seen any id.
        read.last_event_id = match last_event_id {
            Some((name, id)) if !id.trim().is_empty() => {
                let id = id.trim();
                let expected = "the number of a line the stream sent";
                Some(id.parse().map_err(|_| invalid(name, id, expected))?)
            }
            _ => None,
        };
        Ok(read)
    }
}

fn invalid(parameter: &'static str, value: &str, expected: &str) -> ApiError {
    ApiError::InvalidParameter(crate::error::InvalidParameter {
        parameter,
        value: value.to_owned(),
        expected: expected.to_owned(),
    })
}

/// A header's value; bytes that are not text are replaced rather than the header ignored, so that a
/// garbled `Last-Event-ID` is refused instead of quietly read as "from the start".
fn header_text(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// The SSE answer: `204` when a finished job has nothing left for this client, else the lines after
/// its `Last-Event-ID`, live, with heartbeat comments while waiting and an `end` event last.
fn sse(jobs: &Jobs, job: JobInfo, query: &StreamQuery) -> Result<Response, ApiError> {
    let after = query.last_event_id.unwrap_or(0);
    if after > job.lines_written {
        return Err(ApiError::HistoryLost {
            detail: format!(
                "Last-Event-ID {after}: job {} has only {} lines; the client's position is not in \
                 this store's history",
                job.id, job.lines_written
            ),
        });
    }
    if job.state.is_finished() && after == job.lines_written {
        // EventSource stops reconnecting on 204.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let heartbeat = query.heartbeat.unwrap_or(job.spec.heartbeat);
    let reader = Reader::new(
        jobs.clone(),
        job.id.clone(),
        after,
        Rendering::Sse,
        heartbeat,
    );
    let mut response = streaming(reader).into_response();
    insert(&mut response, header::CONTENT_TYPE, "text/event-stream");
    Ok(response)
}

/// The text answer: the whole text, live, with 200; or one byte range of what is written so far
/// with 206 (waiting for the first byte of it while the job runs), 416 past the end of a finished
/// job. `If-Range` with another ETag, several ranges or a malformed `Range` get the 200.
async fn text(jobs: &Jobs, job: JobInfo, headers: &HeaderMap) -> Result<Response, ApiError> {
    let etag = format!("\"{}.{}\"", job.id, jobs.epoch());
    let if_range_matches = headers
        .get(header::IF_RANGE)
        .is_none_or(|value| value.as_bytes() == etag.as_bytes());
    let asked = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
        .filter(|_| if_range_matches)
        .and_then(range::parse);
    let mut response = match asked {
        None => {
            let reader = Reader::new(jobs.clone(), job.id.clone(), 0, Rendering::Text, None);
            streaming(reader).into_response()
        }
        Some(asked) => ranged(jobs, job, asked).await?,
    };
    insert(
        &mut response,
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8",
    );
    insert(&mut response, header::CACHE_CONTROL, NO_STORE);
    insert(&mut response, header::ETAG, &etag);
    insert(&mut response, header::ACCEPT_RANGES, "bytes");
    Ok(response)
}

async fn ranged(jobs: &Jobs, job: JobInfo, asked: range::ByteRange) -> Result<Response, ApiError> {
    let wanted = asked.first().unwrap_or(0);
    let job = wait_for_bytes(jobs, job, wanted).await?;
    let total = job.state.is_finished().then_some(job.bytes_written);
    let complete = total.map_or_else(|| "*".to_owned(), |total| total.to_string());
    let Some((first, last)) = asked.span(job.bytes_written) else {
        let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
        insert(
            &mut response,
            header::CONTENT_RANGE,
            &format!("bytes */{complete}"),
        );
        return Ok(response);
    };
    let bytes = text_window(jobs, &job.id, first, last + 1)
        .await
        .map_err(unavailable)?;
    let mut response = (StatusCode::PARTIAL_CONTENT, bytes).into_response();
    insert(
        &mut response,
        header::CONTENT_RANGE,
        &format!("bytes {first}-{last}/{complete}"),
    );
    Ok(response)
}

/// Waits until the job's text is longer than `offset` or the job is over, and returns it then.
async fn wait_for_bytes(jobs: &Jobs, job: JobInfo, offset: u64) -> Result<JobInfo, ApiError> {
    let mut changes = jobs.subscribe(&job.id);
    // Read again now that a change cannot be missed.
    let mut job = find(jobs, job.id.as_str()).await?;
    while !job.state.is_finished() && job.bytes_written <= offset {
        // Woken by the feed, or reading again after a while in case a wake-up was lost.
        let _ = tokio::time::timeout(POLL, changes.changed()).await;
        job = find(jobs, job.id.as_str()).await?;
    }
    Ok(job)
}

/// Bytes `from..to` of the job's text.
async fn text_window(jobs: &Jobs, id: &JobId, from: u64, to: u64) -> Result<Bytes, StoreError> {
    let store = jobs.store();
    let mut out = Vec::with_capacity(usize::try_from(to - from).unwrap_or(0));
    let mut after = store
        .line_at_offset(id, from)
        .await?
        .map_or(0, |number| number - 1);
    while (out.len() as u64) < to - from {
        let lines = store.lines_after(id, after, BATCH).await?;
        let Some(last) = lines.last() else { break };
        after = last.number;
        for line in &lines {
            out.extend_from_slice(&slice_text(line, from, to));
        }
    }
    Ok(Bytes::from(out))
}

/// The part of `line`'s text rendering that falls in bytes `from..to` of the whole text.
fn slice_text(line: &super::Line, from: u64, to: u64) -> Vec<u8> {
    let text = render::text(line);
    let start = line.end_offset - text.len() as u64;
    let lo = from.clamp(start, line.end_offset) - start;
    let hi = to.clamp(start, line.end_offset) - start;
    text.as_bytes()[lo as usize..hi as usize].to_vec()
}

fn streaming(reader: Reader) -> impl IntoResponse {
    let chunks = stream::unfold(reader, |mut reader| async move {
        let chunk = reader.next_chunk().await?;
        Some((chunk, reader))
    });
    (
        [
            (header::CACHE_CONTROL, NO_STORE),
            (HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(chunks),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rendering {
    Text,
    Sse,
}

/// Follows one job's log from a line on: what is committed, then what gets committed, until the
/// job is over and everything was sent.
struct Reader {
    jobs: Jobs,
    id: JobId,
    /// The last line sent.
    sent: u64,
    rendering: Rendering,
    heartbeat: Option<Duration>,
    pending: VecDeque<Bytes>,
    done: bool,
    /// Made before the first read, so that no line committed after a read goes unnoticed.
    changes: watch::Receiver<()>,
    /// When the next heartbeat is due, counted from the last chunk sent.
    heartbeat_at: Option<Instant>,
    /// The log is to be read again: the job changed, or [`POLL`] passed since the last read.
    read_due: bool,
    poll_at: Instant,
}

impl Reader {
    fn new(
        jobs: Jobs,
        id: JobId,
        after: u64,
        rendering: Rendering,
        heartbeat: Option<Duration>,
    ) -> Self {
        let mut pending = VecDeque::new();
        if rendering == Rendering::Sse {
            pending.push_back(render::sse_retry(SSE_RETRY_MS));
        }
        let changes = jobs.subscribe(&id);
        Self {
            jobs,
            id,
            sent: after,
            rendering,
            heartbeat,
            pending,
            done: false,
            changes,
            heartbeat_at: None,
            read_due: true,
            poll_at: Instant::now(),
        }
    }

    /// The next chunk of the body; an error when the log cannot be read, which ends the body
    /// without its last chunk, so that the client sees a cut (and resumes) rather than an end.
    async fn next_chunk(&mut self) -> Option<std::io::Result<Bytes>> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                self.heartbeat_at = None;
                return Some(Ok(chunk));
            }
            if self.done {
                return None;
            }
            if self.read_due {
                self.read_due = false;
                self.poll_at = Instant::now() + POLL;
                if let Err(err) = self.refill().await {
                    tracing::warn!(job = %self.id, %err, "cannot read the job's log: stream cut, for the client to resume");
                    self.done = true;
                    return Some(Err(std::io::Error::other(err)));
                }
                continue;
            }
            if self.wait().await {
                return Some(Ok(Bytes::from_static(render::SSE_HEARTBEAT)));
            }
        }
    }

    /// Queues the lines committed since the last one sent, or the end when there are none and the
    /// job is over.
    async fn refill(&mut self) -> Result<(), StoreError> {
        let store = self.jobs.store();
        let lines = store.lines_after(&self.id, self.sent, BATCH).await?;
        if let Some(last) = lines.last() {
            self.sent = last.number;
            let rendering = self.rendering;
            self.pending
                .extend(lines.iter().map(|line| match rendering {
                    Rendering::Text => Bytes::from(render::text(line)),
                    Rendering::Sse => Bytes::from(render::sse(line)),
                }));
            return Ok(());
        }
        let Some(job) = store.info(&self.id).await? else {
            // Deleted (retention) while being read.
            self.done = true;
            return Ok(());
        };
        if job.state.is_finished() && job.lines_written <= self.sent {
            if self.rendering == Rendering::Sse {
                self.pending
                    .push_back(render::sse_end(job.state.as_str(), job.lines_written));
            }
            self.done = true;
        }
        Ok(())
    }

    /// Waits until the job changes or [`POLL`] after the last read (a lost wake-up costs a read,
    /// never a line), and marks a read due; `true` when a heartbeat is due first, which needs no
    /// read of its own.
    async fn wait(&mut self) -> bool {
        let now = Instant::now();
        let heartbeat = self
            .heartbeat
            .filter(|_| self.rendering == Rendering::Sse)
            .map(|period| *self.heartbeat_at.get_or_insert(now + period));
        let until = heartbeat.map_or(self.poll_at, |beat| beat.min(self.poll_at));
        match tokio::time::timeout_at(until, self.changes.changed()).await {
            Ok(Ok(())) => {
                self.read_due = true;
                false
            }
            // The feed keeps a job's sender while it has readers; were it gone, read at the poll.
            Ok(Err(_)) => {
                tokio::time::sleep_until(until).await;
                self.read_due = true;
                false
            }
            Err(_) => {
                let now = Instant::now();
                self.read_due = self.poll_at <= now;
                let due = heartbeat.is_some_and(|beat| beat <= now);
                if due {
                    self.heartbeat_at = None;
                }
                due
            }
        }
    }
}

/// A job as JSON.
#[derive(Serialize)]
struct JobView {
    id: String,
    state: &'static str,
    lines: u64,
    lines_written: u64,
    bytes_written: u64,
    sleep: String,
    heartbeat: String,
    started_at: String,
    finished_at: Option<String>,
    /// 1, plus one for each restart of the origin that resumed the job.
    runs: u64,
    epoch: String,
    stream: String,
}

impl JobView {
    fn new(job: &JobInfo, jobs: &Jobs) -> Self {
        Self {
            id: job.id.to_string(),
            state: job.state.as_str(),
            lines: job.spec.lines,
            lines_written: job.lines_written,
            bytes_written: job.bytes_written,
            sleep: display(job.spec.sleep),
            heartbeat: job.spec.heartbeat.map_or_else(|| "off".to_owned(), display),
            started_at: humantime::format_rfc3339_millis(job.started_at).to_string(),
            finished_at: job
                .finished_at
                .map(|at| humantime::format_rfc3339_millis(at).to_string()),
            runs: job.runs,
            epoch: jobs.epoch().to_owned(),
            stream: format!("/jobs/{}/stream", job.id),
        }
    }
}

async fn find(jobs: &Jobs, id: &str) -> Result<JobInfo, ApiError> {
    let not_found = || ApiError::JobNotFound { id: id.to_owned() };
    let id: JobId = id.parse().map_err(|()| not_found())?;
    jobs.store()
        .info(&id)
        .await
        .map_err(unavailable)?
        .ok_or_else(not_found)
}

fn unavailable(err: StoreError) -> ApiError {
    tracing::error!(%err, "job store failed");
    ApiError::Unavailable {
        detail: format!("the job store failed: {err}"),
    }
}

/// Every answer under `/jobs`, errors included, names the store's epoch.
pub async fn add_epoch(State(state): State<AppState>, mut response: Response) -> Response {
    insert(&mut response, EPOCH_HEADER, state.jobs().epoch());
    response
}

fn insert(response: &mut Response, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::jobs::{Backend, Line, Retention, Storage};

    #[test]
    fn a_window_slices_lines_at_any_byte() {
        let line = Line {
            number: 4,
            end_offset: 200,
            text: render::line_text(4, 0),
        };
        let whole = render::text(&line);
        let start = 200 - whole.len() as u64;
        assert_eq!(slice_text(&line, 0, 1000), whole.as_bytes());
        assert_eq!(slice_text(&line, start + 3, 1000), &whole.as_bytes()[3..]);
        assert_eq!(slice_text(&line, 0, start + 5), &whole.as_bytes()[..5]);
        assert!(slice_text(&line, 200, 1000).is_empty());
    }

    const MAX_SLEEP: Duration = Duration::from_secs(60);

    /// What a client may put in a `Last-Event-ID` header or in `?lastEventID=`.
    fn event_id() -> impl Strategy<Value = String> {
        prop_oneof![
            " ?[0-9]{0,25} ?",
            "[-+]?[0-9]{1,5}(\\.[0-9])?",
            "[ -~]{0,24}",
        ]
    }

    proptest! {
        #[test]
        fn a_last_event_id_header_is_read_or_refused_naming_it(
            bytes in prop_oneof![
                event_id().prop_map(String::into_bytes),
                prop::collection::vec((0x20u8..=0xff).prop_filter("DEL", |byte| *byte != 0x7f), 0..24),
            ]
        ) {
            let mut headers = HeaderMap::new();
            let header = HeaderValue::from_bytes(&bytes).expect("a header value's bytes");
            headers.insert("last-event-id", header);
            let id = String::from_utf8_lossy(&bytes);
            let id = id.trim();
            match (StreamQuery::read("", &headers, MAX_SLEEP), id.parse::<u64>()) {
                (Ok(read), Ok(number)) => prop_assert_eq!(read.last_event_id, Some(number)),
                // Empty is what EventSource sends before its first event; nothing else is ignored.
                (Ok(read), Err(_)) => prop_assert!(id.is_empty() && read.last_event_id.is_none(), "{id:?} ignored"),
                (Err(ApiError::InvalidParameter(invalid)), Err(_)) => {
                    prop_assert_eq!(invalid.parameter, "Last-Event-ID");
                    prop_assert_eq!(invalid.value, id);
                }
                (other, _) => prop_assert!(false, "{id:?}: {other:?}", other = other.err()),
            }
        }

        #[test]
        fn a_stream_query_is_read_or_refused_naming_the_parameter_sent(
            name in prop::sample::select(vec!["lastEventID", "format", "heartbeat", "epoch", "other"]),
            value in prop_oneof![event_id(), "\\PC*"],
        ) {
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair(name, &value)
                .finish();
            match StreamQuery::read(&query, &HeaderMap::new(), MAX_SLEEP) {
                Ok(_) => {}
                Err(ApiError::InvalidParameter(invalid)) => {
                    prop_assert_eq!(invalid.parameter, name);
                    prop_assert!(
                        invalid.value == value || invalid.value == value.trim(),
                        "{:?} for {:?}", invalid.value, value
                    );
                }
                Err(err) => prop_assert!(false, "{query:?}: {err:?}"),
            }
        }
    }

    /// A job id is the last segment of a URL: whatever it is, the answer is a 404 naming it.
    #[test]
    fn any_unknown_job_id_is_not_found_naming_it() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let retention = Retention {
            max_age: Duration::from_secs(60),
            max_jobs: 10,
        };
        let jobs = runtime
            .block_on(Jobs::open(
                &Backend::Sqlite(Storage::Memory),
                Duration::from_secs(5),
                retention,
                10,
                crate::metrics::JobMetrics::default(),
            ))
            .expect("an in-memory store");
        proptest!(|(id in prop_oneof!["[0-9a-f]{16}", "\\PC{0,40}"])| {
            match runtime.block_on(find(&jobs, &id)) {
                Err(ApiError::JobNotFound { id: named }) => prop_assert_eq!(named, id),
                other => prop_assert!(false, "{id:?}: {other:?}"),
            }
        });
    }
}
