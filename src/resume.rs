//! `keepalive-lab watch --resume URL`: follows a durable job's SSE stream across every cut, resuming
//! with `Last-Event-ID` the way EventSource does, and checks at the end that the lines assembled are
//! exactly the job's: each line number once, none missing, as many as the job wrote.
//!
//! [`follow_job`] is the client, also used by the experiments; [`run`] prints what it does.

use std::collections::BTreeSet;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, Uri};
use serde::Serialize;
use tokio::time::Instant;

use crate::client::{Client, FetchError};
use crate::stdout::outln;
use crate::watch::{observe, Event, Verdict};

/// Connections in a row that may end without a new line (a balancer answering 502 while the origin
/// restarts) before following stops.
const MAX_ATTEMPTS_WITHOUT_PROGRESS: u32 = 20;
/// The longest pause between two attempts, whatever `retry:` the origin asks for.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// One SSE event with an id: a line of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLine {
    pub id: u64,
    pub data: String,
    /// Since the first request.
    pub at: Duration,
}

/// What following a job came to.
#[derive(Debug, Default)]
pub struct Resumed {
    /// Line ids in the order they arrived (a repeat shows up twice).
    pub lines: Vec<JobLine>,
    /// Connections that ended before the job's end: each was resumed.
    pub cuts: usize,
    /// How each cut looked (`truncated`, `reset`, `http 504`…), in order.
    pub cut_kinds: Vec<String>,
    /// The job as it stood once its stream was over, from `GET /jobs/{id}`: its state, the lines
    /// it wrote, and the lines it was asked for.
    pub job_state: Option<String>,
    pub job_lines: Option<u64>,
    pub lines_asked: Option<u64>,
    /// Why following stopped before the end, if it did.
    pub gave_up: Option<GaveUp>,
}

/// Why following a job stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum GaveUp {
    #[error("--max-time passed before the job's end")]
    MaxTime,
    #[error(
        "409: the origin no longer has this job's history (another epoch, or lines it never wrote)"
    )]
    HistoryLost,
    /// A client error, which asking again will not mend.
    #[error("the origin answered {0}")]
    Refused(StatusCode),
    #[error("{MAX_ATTEMPTS_WITHOUT_PROGRESS} attempts in a row brought no line (last: {last})")]
    NoProgress { last: String },
    /// The stream was over, but the job's own account of it could not be had.
    #[error(transparent)]
    Job(#[from] ResumeError),
}

/// A job's URL or its account (`GET /jobs/{id}`) that the resuming client cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("{url}: {source}")]
    Url { url: String, source: http::Error },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("GET {path}: {status}")]
    Status { path: String, status: StatusCode },
    #[error("GET {path}: not JSON: {source}")]
    NotJson {
        path: String,
        source: serde_json::Error,
    },
    #[error("GET {path}: no {field}")]
    Missing { path: String, field: &'static str },
}

impl Resumed {
    /// Line ids seen more than once.
    pub fn repeated(&self) -> Vec<u64> {
        let mut seen = BTreeSet::new();
        let mut repeated = BTreeSet::new();
        for line in &self.lines {
            if !seen.insert(line.id) {
                repeated.insert(line.id);
            }
        }
        repeated.into_iter().collect()
    }

    /// Line ids of the job (1 ..= its line count) that never arrived.
    pub fn missing(&self) -> Vec<u64> {
        let seen: BTreeSet<u64> = self.lines.iter().map(|line| line.id).collect();
        let expected = self.job_lines.unwrap_or(0);
        (1..=expected).filter(|id| !seen.contains(id)).collect()
    }

    /// The job completed every line it was asked for, and each arrived once, in order. A job
    /// cancelled or failed part-way is not verified, however well its lines arrived.
    pub fn verified(&self) -> bool {
        let in_order = self
            .lines
            .iter()
            .enumerate()
            .all(|(index, line)| line.id == index as u64 + 1);
        self.gave_up.is_none()
            && self.job_state.as_deref() == Some("completed")
            && self.lines_asked.is_some()
            && self.job_lines == self.lines_asked
            && self.job_lines == Some(self.lines.len() as u64)
            && in_order
            && self.repeated().is_empty()
    }
}

/// Reads SSE from a byte stream cut anywhere: only complete events count, as EventSource does.
#[derive(Default)]
struct SseParser {
    /// Bytes, not text: a chunk may end inside a multi-byte character.
    buffer: Vec<u8>,
    id: Option<u64>,
    event: Option<String>,
    data: Vec<String>,
    retry: Option<Duration>,
}

enum SseEvent {
    Line { id: u64, data: String },
    End,
    Other,
}

impl SseParser {
    fn push(&mut self, bytes: &[u8], mut on_event: impl FnMut(SseEvent)) {
        self.buffer.extend_from_slice(bytes);
        while let Some(newline) = self.buffer.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=newline).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                on_event(self.dispatch());
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.id = value.trim().parse().ok(),
                "event" => self.event = Some(value.to_owned()),
                "data" => self.data.push(value.to_owned()),
                "retry" => {
                    self.retry = value.trim().parse().ok().map(Duration::from_millis);
                }
                _ => {}
            }
        }
    }

    fn dispatch(&mut self) -> SseEvent {
        let data = std::mem::take(&mut self.data).join("\n");
        let event = self.event.take();
        let id = self.id.take();
        match (event.as_deref(), id) {
            (Some("end"), _) => SseEvent::End,
            (None, Some(id)) if !data.is_empty() => SseEvent::Line { id, data },
            _ => SseEvent::Other,
        }
    }

    /// A new connection starts with a clean buffer; `retry` stays.
    fn reset(&mut self) {
        self.buffer.clear();
        self.id = None;
        self.event = None;
        self.data.clear();
    }
}

/// Follows the job whose stream is `url` until it is over (its `end` event, or `204`), resuming after
/// every cut; gives up at `max_time` or on `409 history lost`. `reconnect` overrides the origin's
/// `retry:` (the experiments use a short one); `on_progress` sees each line and each cut.
pub async fn follow_job(
    client: &Client,
    url: &Uri,
    headers: &[(HeaderName, HeaderValue)],
    max_time: Option<Duration>,
    reconnect: Option<Duration>,
    mut on_progress: impl FnMut(Progress<'_>),
) -> Resumed {
    let started = Instant::now();
    let deadline = max_time.map(|max_time| started + max_time);
    let mut resumed = Resumed::default();
    let mut parser = SseParser::default();
    let mut epoch: Option<HeaderValue> = None;
    let mut attempts_without_progress = 0;
    loop {
        let mut request_headers = headers.to_vec();
        request_headers.push((
            http::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        ));
        if let Some(last) = resumed.lines.last() {
            request_headers.push((HeaderName::from_static("last-event-id"), last.id.into()));
        }
        if let Some(epoch) = &epoch {
            request_headers.push((HeaderName::from_static("keepalive-epoch"), epoch.clone()));
        }
        let left = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            resumed.gave_up = Some(GaveUp::MaxTime);
            return resumed;
        }
        parser.reset();
        let mut ended = false;
        let lines_before = resumed.lines.len();
        let seen = observe(client, url, &request_headers, left, |event| {
            let Event::Chunk(chunk) = event else {
                return;
            };
            parser.push(&chunk.data, |event| match event {
                SseEvent::Line { id, data } => {
                    let line = JobLine {
                        id,
                        data,
                        at: started.elapsed(),
                    };
                    on_progress(Progress::Line(&line));
                    resumed.lines.push(line);
                }
                SseEvent::End => ended = true,
                SseEvent::Other => {}
            });
        })
        .await;
        if epoch.is_none() {
            epoch = seen.headers.get("keepalive-epoch").cloned();
        }
        // Over, and this client had it all (the end event, or 204 on a reconnect): what the job
        // wrote and was asked for comes from the job itself.
        if ended || seen.status == Some(StatusCode::NO_CONTENT) {
            match job_info(client, url, headers).await {
                Ok(job) => {
                    resumed.job_state = Some(job.state);
                    resumed.job_lines = Some(job.lines_written);
                    resumed.lines_asked = Some(job.lines);
                }
                Err(err) => resumed.gave_up = Some(err.into()),
            }
            return resumed;
        }
        let progressed = resumed.lines.len() > lines_before;
        attempts_without_progress = if progressed {
            0
        } else {
            attempts_without_progress + 1
        };
        match seen.verdict {
            Verdict::Http(StatusCode::CONFLICT) => {
                resumed.gave_up = Some(GaveUp::HistoryLost);
                return resumed;
            }
            Verdict::Timeout => {
                resumed.gave_up = Some(GaveUp::MaxTime);
                return resumed;
            }
            // As EventSource does: a client error will not go away by asking again (but for a
            // timeout or a rate limit, which are a balancer's to give).
            Verdict::Http(status)
                if status.is_client_error()
                    && status != StatusCode::REQUEST_TIMEOUT
                    && status != StatusCode::TOO_MANY_REQUESTS =>
            {
                resumed.gave_up = Some(GaveUp::Refused(status));
                return resumed;
            }
            _ if attempts_without_progress >= MAX_ATTEMPTS_WITHOUT_PROGRESS => {
                resumed.gave_up = Some(GaveUp::NoProgress {
                    last: seen.verdict.name(),
                });
                return resumed;
            }
            verdict => {
                resumed.cuts += 1;
                resumed.cut_kinds.push(verdict.name());
                let after = resumed.lines.last().map_or(0, |line| line.id);
                on_progress(Progress::Cut {
                    at: started.elapsed(),
                    how: &verdict,
                    after,
                });
                let pause = reconnect
                    .or(parser.retry)
                    .unwrap_or(Duration::from_secs(1))
                    .min(MAX_RECONNECT_DELAY);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// What [`follow_job`] reports as it goes.
pub enum Progress<'a> {
    Line(&'a JobLine),
    Cut {
        at: Duration,
        how: &'a Verdict,
        after: u64,
    },
}

/// A job as `GET /jobs/{id}` describes it.
struct JobStanding {
    state: String,
    lines_written: u64,
    lines: u64,
}

/// The job whose stream is `stream_url`, from its JSON.
async fn job_info(
    client: &Client,
    stream_url: &Uri,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<JobStanding, ResumeError> {
    let path = stream_url.path().trim_end_matches("/stream");
    let job_url = with_path(stream_url, path)?;
    // The job's own standing, asked of the same host: only `Host` goes along, never the faults
    // (`x-keepalive-*`) meant for the stream, which would cut or delay this answer too.
    let host: Vec<_> = headers
        .iter()
        .filter(|(name, _)| name == http::header::HOST)
        .cloned()
        .collect();
    let (status, body) = client.fetch(http::Method::GET, &job_url, &host).await?;
    if !status.is_success() {
        return Err(ResumeError::Status {
            path: path.to_owned(),
            status,
        });
    }
    let job: serde_json::Value =
        serde_json::from_slice(&body).map_err(|source| ResumeError::NotJson {
            path: path.to_owned(),
            source,
        })?;
    let count = |field: &'static str| {
        job[field].as_u64().ok_or_else(|| ResumeError::Missing {
            path: path.to_owned(),
            field,
        })
    };
    Ok(JobStanding {
        state: job["state"].as_str().unwrap_or("unknown").to_owned(),
        lines_written: count("lines_written")?,
        lines: count("lines")?,
    })
}

/// A job's URL as given (`/jobs/{id}` or `/jobs/{id}/stream`), as its stream's.
pub fn stream_url(url: &Uri) -> Result<Uri, ResumeError> {
    let path = url.path().trim_end_matches('/');
    if path.ends_with("/stream") {
        return Ok(url.clone());
    }
    let query = url
        .query()
        .map_or_else(String::new, |query| format!("?{query}"));
    with_path(url, &format!("{path}/stream{query}"))
}

/// `url` with another path (and query).
fn with_path(url: &Uri, path_and_query: &str) -> Result<Uri, ResumeError> {
    let bad = |source: http::Error| ResumeError::Url {
        url: format!("{url} as {path_and_query}"),
        source,
    };
    let mut parts = url.clone().into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|err: http::uri::InvalidUri| bad(err.into()))?,
    );
    Uri::from_parts(parts).map_err(|err| bad(err.into()))
}

#[derive(Serialize)]
struct Summary<'a> {
    verified: bool,
    lines: usize,
    job_lines: Option<u64>,
    lines_asked: Option<u64>,
    job_state: Option<&'a str>,
    cuts: usize,
    cut_kinds: &'a [String],
    missing: Vec<u64>,
    repeated: Vec<u64>,
    gave_up: Option<String>,
}

/// Runs `watch --resume`: exit 0 when the job was assembled exactly, 1 otherwise.
pub async fn run(
    client: &Client,
    url: &Uri,
    headers: &[(HeaderName, HeaderValue)],
    max_time: Option<Duration>,
    json: bool,
) -> u8 {
    let url = match stream_url(url) {
        Ok(url) => url,
        Err(err) => {
            eprintln!("keepalive-lab watch: {err}");
            return 2;
        }
    };
    if !json {
        outln!("following the job at {url}, resuming after every cut");
    }
    let resumed = follow_job(client, &url, headers, max_time, None, |progress| {
        if json {
            return;
        }
        match progress {
            Progress::Line(line) => {
                // The banner rides in the data of the line after it: one printed line each.
                let data = line.data.replace('\n', "\n                         ");
                outln!("{:>9.3}s  id {:>5}  {data}", line.at.as_secs_f64(), line.id);
            }
            Progress::Cut { at, how, after } => outln!(
                "{:>9.3}s  cut: {} — resuming after id {after}",
                at.as_secs_f64(),
                how.name()
            ),
        }
    })
    .await;
    let summary = Summary {
        verified: resumed.verified(),
        lines: resumed.lines.len(),
        job_lines: resumed.job_lines,
        lines_asked: resumed.lines_asked,
        job_state: resumed.job_state.as_deref(),
        cuts: resumed.cuts,
        cut_kinds: &resumed.cut_kinds,
        missing: resumed.missing(),
        repeated: resumed.repeated(),
        gave_up: resumed.gave_up.as_ref().map(ToString::to_string),
    };
    if json {
        outln!("{}", serde_json::to_string(&summary).unwrap_or_default());
    } else if summary.verified {
        outln!(
            "verified: lines 1..{} each exactly once, in order, through {} cuts; job {}",
            summary.lines,
            summary.cuts,
            summary.job_state.unwrap_or("over")
        );
    } else {
        outln!(
            "NOT verified: {} lines received; the job {} with {} of {} lines; missing {:?}, repeated {:?}{}",
            summary.lines,
            summary.job_state.unwrap_or("(state unknown)"),
            count(summary.job_lines),
            count(summary.lines_asked),
            summary.missing,
            summary.repeated,
            summary
                .gave_up
                .as_ref()
                .map_or_else(String::new, |reason| format!("; stopped: {reason}"))
        );
    }
    u8::from(!summary.verified)
}

fn count(lines: Option<u64>) -> String {
    lines.map_or_else(|| "?".to_owned(), |lines| lines.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&str]) -> Vec<(u64, String)> {
        let mut parser = SseParser::default();
        let mut lines = Vec::new();
        for chunk in chunks {
            parser.push(chunk.as_bytes(), |event| {
                if let SseEvent::Line { id, data } = event {
                    lines.push((id, data));
                }
            });
        }
        lines
    }

    #[test]
    fn events_count_only_when_complete_whatever_the_chunking() {
        let stream = "retry: 1000\n\nid: 1\ndata: a\n\n:\n\ndata: banner\n\nid: 2\ndata: b\n\nid: 3\ndata: c";
        let whole = parse(&[stream]);
        assert_eq!(whole, vec![(1, "a".to_owned()), (2, "b".to_owned())]);
        for split in 0..stream.len() {
            assert_eq!(
                parse(&[&stream[..split], &stream[split..]]),
                whole,
                "{split}"
            );
        }
    }

    #[test]
    fn verification_wants_every_line_once_in_order() {
        let line = |id| JobLine {
            id,
            data: String::new(),
            at: Duration::ZERO,
        };
        let mut resumed = Resumed {
            lines: vec![line(1), line(2), line(3)],
            job_state: Some("completed".to_owned()),
            job_lines: Some(3),
            lines_asked: Some(3),
            ..Resumed::default()
        };
        assert!(resumed.verified());
        let cancelled = Resumed {
            lines: vec![line(1), line(2), line(3)],
            job_state: Some("cancelled".to_owned()),
            job_lines: Some(3),
            lines_asked: Some(10),
            ..Resumed::default()
        };
        assert!(!cancelled.verified(), "a job cut short is not the job");
        resumed.lines.push(line(3));
        assert!(!resumed.verified());
        assert_eq!(resumed.repeated(), vec![3]);
        resumed.lines = vec![line(1), line(3)];
        assert_eq!(resumed.missing(), vec![2]);
        assert!(!resumed.verified());
    }

    #[test]
    fn a_job_url_becomes_its_stream_url() {
        let url: Uri = "http://127.0.0.1:8080/jobs/0123456789abcdef"
            .parse()
            .expect("url");
        assert_eq!(
            stream_url(&url).expect("stream").to_string(),
            "http://127.0.0.1:8080/jobs/0123456789abcdef/stream"
        );
        let url: Uri = "http://h:1/jobs/0123456789abcdef/stream?heartbeat=1s"
            .parse()
            .expect("url");
        assert_eq!(stream_url(&url).expect("stream"), url);
    }
}
