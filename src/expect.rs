//! What a stream owes its client, so that a cut made to look like a normal end can be told from one.
//!
//! A clean end of body (the chunked terminator, END_STREAM) only says that every hop agreed to stop,
//! not that the origin finished: a proxy may send the terminator after "aborting with incomplete
//! response". What the origin meant to send is knowable from the request for the streams this lab
//! serves: keepalive-server's `/polls/streamed` never ends unless `lines=N` asked for N lines (and
//! then, with an end marker, says so in its last bytes), and a durable job's SSE stream ends with its
//! `end` event. The same rule is the recommendation for real services: a consumer should treat a
//! stream without its end marker as cut.

use http::{HeaderName, HeaderValue, Uri};

/// What the origin will have sent by the time its stream ends properly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expectation {
    /// `/polls/streamed` without `lines`: it never ends, so any end is a cut.
    Endless,
    /// `/polls/streamed?lines=N`: N poem lines, then the end marker when one was asked for.
    Lines { lines: u64, marker: bool, sse: bool },
    /// A durable job's SSE stream: its `end` event last.
    JobEnd,
}

/// A clean end that was not the origin's: what was owed and what came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub expected: String,
    pub received: String,
}

impl Expectation {
    /// What the stream at `url`, asked for with `headers`, owes; `None` when that cannot be known.
    pub fn of(url: &Uri, headers: &[(HeaderName, HeaderValue)]) -> Option<Self> {
        let path = url.path();
        if path.ends_with("/polls/streamed") {
            return Some(Self::of_poem(url));
        }
        let param = |name: &str| last_param(url, name);
        let is_job_stream = path.starts_with("/jobs/") && path.ends_with("/stream");
        let asks_sse = param("format").as_deref() == Some("sse")
            || (param("format").is_none()
                && headers.iter().any(|(name, value)| {
                    name == http::header::ACCEPT
                        && value
                            .to_str()
                            .is_ok_and(|v| v.contains("text/event-stream"))
                }));
        (is_job_stream && asks_sse).then_some(Self::JobEnd)
    }

    /// What keepalive-server's `/polls/streamed` owes for the query of `url`, whatever its path (a
    /// balancer may expose the origin under another one; the probe knows what it asked for).
    pub fn of_poem(url: &Uri) -> Self {
        let param = |name: &str| last_param(url, name);
        let sse = param("format").as_deref() == Some("sse");
        let Some(lines) = param("lines").and_then(|lines| lines.trim().parse().ok()) else {
            return Self::Endless;
        };
        let marker = match param("end").as_deref() {
            Some("marker") => true,
            Some(_) => false,
            None => sse,
        };
        Self::Lines { lines, marker, sse }
    }

    /// Checks a body that ended cleanly against what was owed. Only what arrived whole counts: a
    /// line without its newline, an event without its blank line, was cut.
    pub fn shortfall(self, body: &[u8]) -> Option<Shortfall> {
        let text = String::from_utf8_lossy(body);
        match self {
            Self::Endless => Some(Shortfall {
                expected: "a stream that never ends (no lines=N)".to_owned(),
                received: format!("a clean end after {} bytes", body.len()),
            }),
            Self::Lines { lines, marker, sse } => {
                let received = if sse {
                    sse_ids(&text)
                } else {
                    complete_lines(&text)
                        .lines()
                        .filter(|line| is_poem_line(line))
                        .count()
                } as u64;
                let marked = !marker || has_end_marker(&text, sse, lines);
                (received < lines || !marked).then(|| Shortfall {
                    expected: format!(
                        "{lines} lines{}",
                        if marker { " and the end marker" } else { "" }
                    ),
                    received: format!(
                        "{received} lines{}",
                        if marker && !marked {
                            ", no end marker"
                        } else {
                            ""
                        }
                    ),
                })
            }
            Self::JobEnd => (!ends_with_end_event(&text)).then(|| Shortfall {
                expected: "the job's end event last".to_owned(),
                received: format!("{} whole events, no end event", sse_ids(&text)),
            }),
        }
    }
}

/// `[        12 s] Little brown lady`: a line of the poem, not a banner or a heartbeat.
fn is_poem_line(line: &str) -> bool {
    let line = line.trim_start();
    line.starts_with('[') && line.contains(" s] ")
}

fn has_end_marker(text: &str, sse: bool, lines: u64) -> bool {
    if sse {
        text.ends_with(&format!("event: end\ndata: {{\"lines\":{lines}}}\n\n"))
    } else {
        text.ends_with(&keepalive_server::end_marker_line(lines))
    }
}

/// The text up to its last newline: a line after it never finished.
fn complete_lines(text: &str) -> &str {
    &text[..text.rfind('\n').map_or(0, |end| end + 1)]
}

/// Events with an id that arrived whole (up to a blank line).
fn sse_ids(text: &str) -> usize {
    let whole = &text[..text.rfind("\n\n").map_or(0, |end| end + 2)];
    whole.lines().filter(|line| line.starts_with("id:")).count()
}

/// The last event is a whole `end` event.
fn ends_with_end_event(text: &str) -> bool {
    let Some(body) = text.strip_suffix("\n\n") else {
        return false;
    };
    let last = body.rfind("\n\n").map_or(body, |start| &body[start + 2..]);
    last.starts_with("event: end\n")
}

fn last_param(url: &Uri, name: &str) -> Option<String> {
    form_urlencoded::parse(url.query().unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(url: &str) -> Option<Expectation> {
        Expectation::of(&url.parse().expect("url"), &[])
    }

    #[test]
    fn the_url_says_what_the_origin_owes() {
        assert_eq!(
            of("http://h/polls/streamed?sleep=3"),
            Some(Expectation::Endless)
        );
        assert_eq!(
            of("http://h/polls/streamed?lines=2&format=sse"),
            Some(Expectation::Lines {
                lines: 2,
                marker: true,
                sse: true
            })
        );
        assert_eq!(
            of("http://h/polls/streamed?lines=2"),
            Some(Expectation::Lines {
                lines: 2,
                marker: false,
                sse: false
            })
        );
        assert_eq!(
            of("http://h/jobs/0123456789abcdef/stream?format=sse"),
            Some(Expectation::JobEnd)
        );
        assert_eq!(of("http://h/jobs/0123456789abcdef/stream"), None);
        assert_eq!(of("http://h/other"), None);
        assert_eq!(
            Expectation::of_poem(&"http://lb/rewritten?lines=%202".parse().expect("url")),
            Expectation::Lines {
                lines: 2,
                marker: false,
                sse: false
            }
        );
    }

    #[test]
    fn a_clean_end_short_of_what_was_owed_is_a_shortfall() {
        let one_line = b"[         0 s] Little brown lady\n";
        assert!(Expectation::Endless.shortfall(one_line).is_some());
        let two = Expectation::Lines {
            lines: 2,
            marker: false,
            sse: false,
        };
        let short = two.shortfall(one_line).expect("one of two lines");
        assert_eq!(short.expected, "2 lines");
        assert_eq!(short.received, "1 lines");
        let both = b"[         0 s] Little brown lady\n[         0 s] Jumped into the blue water\n";
        assert_eq!(two.shortfall(both), None);
        let marked = Expectation::Lines {
            lines: 2,
            marker: true,
            sse: false,
        };
        assert!(marked.shortfall(both).is_some(), "no marker");
        let with_marker = [&both[..], keepalive_server::end_marker_line(2).as_bytes()].concat();
        assert_eq!(marked.shortfall(&with_marker), None);
        let cut_mid_line =
            b"[         0 s] Little brown lady\n[         0 s] Jumped into the blue w";
        assert!(
            two.shortfall(cut_mid_line).is_some(),
            "half a line is not a line"
        );
        let sse = Expectation::Lines {
            lines: 1,
            marker: true,
            sse: true,
        };
        let whole = b"id: 1\ndata: x\n\nevent: end\ndata: {\"lines\":1}\n\n";
        assert_eq!(sse.shortfall(whole), None);
        assert!(
            sse.shortfall(&whole[..whole.len() - 4]).is_some(),
            "a cut end event"
        );
        let no_marker = Expectation::Lines {
            lines: 2,
            marker: false,
            sse: true,
        };
        assert!(
            no_marker.shortfall(b"id: 1\ndata: x\n\nid: 2\n").is_some(),
            "an id without its event"
        );
        assert!(Expectation::JobEnd
            .shortfall(b"id: 1\ndata: x\n\n")
            .is_some());
        assert!(Expectation::JobEnd
            .shortfall(b"id: 1\ndata: x\n\nevent: end\ndata: {\"")
            .is_some());
        assert_eq!(
            Expectation::JobEnd.shortfall(b"id: 1\ndata: x\n\nevent: end\ndata: {}\n\n"),
            None
        );
    }
}
