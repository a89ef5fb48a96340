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
        let query: Vec<(String, String)> =
            form_urlencoded::parse(url.query().unwrap_or_default().as_bytes())
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect();
        let param = |name: &str| {
            query
                .iter()
                .rev()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let path = url.path();
        if path.ends_with("/polls/streamed") {
            let sse = param("format") == Some("sse");
            let Some(lines) = param("lines").and_then(|lines| lines.parse().ok()) else {
                return Some(Self::Endless);
            };
            let marker = match param("end") {
                Some("marker") => true,
                Some(_) => false,
                None => sse,
            };
            return Some(Self::Lines { lines, marker, sse });
        }
        let is_job_stream = path.starts_with("/jobs/") && path.ends_with("/stream");
        let asks_sse = param("format") == Some("sse")
            || (param("format").is_none()
                && headers.iter().any(|(name, value)| {
                    name == http::header::ACCEPT
                        && value
                            .to_str()
                            .is_ok_and(|v| v.contains("text/event-stream"))
                }));
        (is_job_stream && asks_sse).then_some(Self::JobEnd)
    }

    /// Checks a body that ended cleanly against what was owed.
    pub fn shortfall(self, body: &[u8]) -> Option<Shortfall> {
        let text = String::from_utf8_lossy(body);
        match self {
            Self::Endless => Some(Shortfall {
                expected: "a stream that never ends (no lines=N)".to_owned(),
                received: format!("a clean end after {} bytes", body.len()),
            }),
            Self::Lines { lines, marker, sse } => {
                let received = if sse {
                    text.lines().filter(|line| line.starts_with("id:")).count()
                } else {
                    text.lines().filter(|line| is_poem_line(line)).count()
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
            Self::JobEnd => (!text.contains("event: end\n")).then(|| Shortfall {
                expected: "the job's end event".to_owned(),
                received: format!(
                    "{} events, no end event",
                    text.lines().filter(|line| line.starts_with("id:")).count()
                ),
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
        text.contains("event: end\n")
    } else {
        text.ends_with(&keepalive_server::end_marker_line(lines))
    }
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
        assert!(Expectation::JobEnd
            .shortfall(b"id: 1\ndata: x\n\n")
            .is_some());
        assert_eq!(
            Expectation::JobEnd.shortfall(b"id: 1\ndata: x\n\nevent: end\ndata: {}\n\n"),
            None
        );
    }
}
