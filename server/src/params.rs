//! The query parameters of `/polls/streamed`, read by hand rather than through serde.
//!
//! A derived `Deserialize` would refuse `sleep=abc` with a message about serde, not about `sleep`;
//! reading the pairs ourselves lets every refusal name the parameter, the value sent and the accepted
//! form, which is what a user behind a load balancer needs to fix the URL. Unknown parameters are
//! ignored, as Django's `request.GET.get` does, and a repeated one keeps its last value, as
//! `QueryDict.get` does.
//!
//! The Django tutorial's stream never ends; at `sleep=0` that is a core and a socket busy for ever
//! (four such streams cut the origin's other answers tenfold), so a stream faster than
//! [`SHORTEST_ENDLESS_SLEEP`] must say when it ends (`lines`, at most [`MOST_FAST_LINES`]).

use std::time::Duration;

use keepalive_common::duration::{display, parse_duration, parse_timer, DURATION_FORM, TIMER_FORM};

use crate::bounds::{MOST_FAST_LINES, SHORTEST_ENDLESS_SLEEP, SHORTEST_HEARTBEAT};
use crate::config::ServerConfig;
use crate::error::InvalidParameter;

const FORMAT_FORM: &str = "text or sse";
const LINES_FORM: &str = "a whole number of lines, 1 or more";

/// How the poem is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Django tutorial's exact bytes; heartbeats are single spaces.
    Text,
    /// Server-sent events: an `id:` per line so that a client can resume, comments as heartbeats.
    Sse,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Sse => "sse",
        }
    }
}

/// What one request to `/polls/streamed` asked for, with the origin's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamParams {
    /// Pause between two poem lines; zero sends as fast as the client reads.
    pub sleep: Duration,
    /// Heartbeat period while waiting for a line; `None` sends none.
    pub heartbeat: Option<Duration>,
    /// Wait before the response headers, to exercise first-byte timers.
    pub delay: Duration,
    pub format: Format,
    /// Poem lines after which the stream ends cleanly; `None` streams forever, as the Django tutorial does.
    pub lines: Option<u64>,
    /// Whether a finite stream says it is over in its last bytes, so that a client can tell its
    /// end from a cut that was made to look like one.
    pub end_marker: bool,
}

impl StreamParams {
    /// Reads a raw (still percent-encoded) query string against the origin's defaults and bounds.
    pub fn from_query(query: &str, config: &ServerConfig) -> Result<Self, InvalidParameter> {
        let mut params = Self {
            sleep: config.sleep,
            heartbeat: config.heartbeat,
            delay: Duration::ZERO,
            format: Format::Text,
            lines: None,
            end_marker: false,
        };
        let max = config.max_sleep;
        let mut end_marker = None;
        // As sent, to name them if together they ask for too fast a stream.
        let mut sleep_sent = None;
        let mut lines_sent = None;
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "sleep" => {
                    params.sleep = duration("sleep", &value, max)?;
                    sleep_sent = Some(value);
                }
                "delay" => params.delay = duration("delay", &value, max)?,
                "heartbeat" => params.heartbeat = heartbeat(&value, max)?,
                "format" => params.format = format(&value)?,
                "lines" => {
                    params.lines = Some(lines(&value)?);
                    lines_sent = Some(value);
                }
                "end" => end_marker = Some(end(&value)?),
                _ => {}
            }
        }
        if params.sleep < SHORTEST_ENDLESS_SLEEP {
            let sleep = sleep_sent.map_or_else(|| display(params.sleep), |sent| sent.into_owned());
            params.check_fast(&sleep, lines_sent.as_deref())?;
        }
        // SSE clients ignore events they do not listen for, so SSE says it by default; the text
        // stays the Django tutorial's bytes unless asked.
        params.end_marker = end_marker.unwrap_or(params.format == Format::Sse);
        Ok(params)
    }

    /// A stream faster than [`SHORTEST_ENDLESS_SLEEP`] goes at full speed: it needs `lines`, and
    /// not too many. `sleep` and `lines` are the values as sent.
    fn check_fast(&self, sleep: &str, lines: Option<&str>) -> Result<(), InvalidParameter> {
        match lines {
            Some(_) if self.lines.is_some_and(|count| count <= MOST_FAST_LINES) => Ok(()),
            Some(lines) => Err(invalid(
                "lines",
                lines,
                format!(
                    "{LINES_FORM}, at most {MOST_FAST_LINES} when sleep is below {}",
                    display(SHORTEST_ENDLESS_SLEEP)
                ),
            )),
            None => Err(invalid(
                "sleep",
                sleep,
                format!(
                    "at least {floor} without lines: below {floor} a stream is sent at full speed, so \
                     it needs lines=N (1 to {MOST_FAST_LINES}) to end",
                    floor = display(SHORTEST_ENDLESS_SLEEP)
                ),
            )),
        }
    }
}

/// A job's length when `POST /jobs` does not say: ten verses.
pub const DEFAULT_JOB_LINES: u64 = 30;
/// The longest job one request may start: its whole log stays on disk until retention removes it.
pub const MAX_JOB_LINES: u64 = 100_000;

/// What `POST /jobs` asked for. Unlike a stream, a job always ends: it is stored line by line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobParams {
    pub sleep: Duration,
    pub heartbeat: Option<Duration>,
    pub lines: u64,
}

impl JobParams {
    pub fn from_query(query: &str, config: &ServerConfig) -> Result<Self, InvalidParameter> {
        let mut params = Self {
            sleep: config.sleep,
            heartbeat: config.heartbeat,
            lines: DEFAULT_JOB_LINES,
        };
        let max = config.max_sleep;
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "sleep" => params.sleep = duration("sleep", &value, max)?,
                "heartbeat" => params.heartbeat = heartbeat(&value, max)?,
                "lines" => params.lines = job_lines(&value)?,
                _ => {}
            }
        }
        Ok(params)
    }
}

fn job_lines(value: &str) -> Result<u64, InvalidParameter> {
    let count = lines(value)?;
    if count > MAX_JOB_LINES {
        return Err(invalid(
            "lines",
            value,
            format!("{LINES_FORM}, at most {MAX_JOB_LINES} for a job"),
        ));
    }
    Ok(count)
}

fn invalid(parameter: &'static str, value: &str, expected: impl Into<String>) -> InvalidParameter {
    InvalidParameter {
        parameter,
        value: value.to_owned(),
        expected: expected.into(),
    }
}

fn duration(
    parameter: &'static str,
    value: &str,
    max: Duration,
) -> Result<Duration, InvalidParameter> {
    let duration = parse_duration(value).map_err(|_| invalid(parameter, value, DURATION_FORM))?;
    at_most(parameter, value, duration, max, DURATION_FORM)
}

fn timer(
    parameter: &'static str,
    value: &str,
    max: Duration,
) -> Result<Option<Duration>, InvalidParameter> {
    match parse_timer(value).map_err(|_| invalid(parameter, value, TIMER_FORM))? {
        Some(period) => at_most(parameter, value, period, max, TIMER_FORM).map(Some),
        None => Ok(None),
    }
}

/// A heartbeat period, refused below [`SHORTEST_HEARTBEAT`]: `heartbeat=1ns` would turn one request
/// into a flood of spaces, which no load balancer needs to stay awake.
pub(crate) fn heartbeat(value: &str, max: Duration) -> Result<Option<Duration>, InvalidParameter> {
    let period = timer("heartbeat", value, max)?;
    if period.is_some_and(|period| period < SHORTEST_HEARTBEAT) {
        return Err(invalid(
            "heartbeat",
            value,
            format!("{TIMER_FORM}, at least {}", display(SHORTEST_HEARTBEAT)),
        ));
    }
    Ok(period)
}

/// Refuses durations above `SERVER_MAX_SLEEP`: one request must not be able to park a stream (and a
/// connection slot) for as long as it likes.
fn at_most(
    parameter: &'static str,
    value: &str,
    duration: Duration,
    max: Duration,
    form: &str,
) -> Result<Duration, InvalidParameter> {
    if duration <= max {
        return Ok(duration);
    }
    Err(invalid(
        parameter,
        value,
        format!("{form}, at most {} (SERVER_MAX_SLEEP)", display(max)),
    ))
}

fn format(value: &str) -> Result<Format, InvalidParameter> {
    match value {
        "text" => Ok(Format::Text),
        "sse" => Ok(Format::Sse),
        _ => Err(invalid("format", value, FORMAT_FORM)),
    }
}

fn end(value: &str) -> Result<bool, InvalidParameter> {
    match value {
        "marker" => Ok(true),
        "none" => Ok(false),
        _ => Err(invalid("end", value, "marker or none")),
    }
}

fn lines(value: &str) -> Result<u64, InvalidParameter> {
    match value.trim().parse::<u64>() {
        Ok(count) if count >= 1 => Ok(count),
        _ => Err(invalid("lines", value, LINES_FORM)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServerConfig {
        ServerConfig {
            sleep: Duration::from_secs(7),
            heartbeat: Some(Duration::from_secs(2)),
            max_sleep: Duration::from_secs(60),
            ..ServerConfig::default()
        }
    }

    fn parse(query: &str) -> Result<StreamParams, InvalidParameter> {
        StreamParams::from_query(query, &config())
    }

    #[test]
    fn absent_parameters_take_the_configured_defaults() {
        assert_eq!(
            parse(""),
            Ok(StreamParams {
                sleep: Duration::from_secs(7),
                heartbeat: Some(Duration::from_secs(2)),
                delay: Duration::ZERO,
                format: Format::Text,
                lines: None,
                end_marker: false,
            })
        );
    }

    #[test]
    fn every_parameter_is_read() {
        let params = parse("sleep=0.25&heartbeat=off&delay=1m&format=sse&lines=12&utm_source=x")
            .expect("valid query");
        assert_eq!(
            params,
            StreamParams {
                sleep: Duration::from_millis(250),
                heartbeat: None,
                delay: Duration::from_secs(60),
                format: Format::Sse,
                lines: Some(12),
                end_marker: true,
            }
        );
        assert!(parse("format=sse&end=none").is_ok_and(|p| !p.end_marker));
        assert!(parse("end=marker").is_ok_and(|p| p.end_marker));
    }

    #[test]
    fn seconds_units_zero_and_percent_encoding_are_accepted() {
        assert_eq!(
            parse("sleep=10").map(|p| p.sleep),
            Ok(Duration::from_secs(10))
        );
        assert_eq!(
            parse("sleep=250ms").map(|p| p.sleep),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(
            parse("sleep=1m").map(|p| p.sleep),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            parse("sleep=0&lines=1").map(|p| p.sleep),
            Ok(Duration::ZERO)
        );
        assert_eq!(
            parse("sleep=1%6D").map(|p| p.sleep),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(parse("heartbeat=0").map(|p| p.heartbeat), Ok(None));
    }

    #[test]
    fn the_last_of_repeated_parameters_wins() {
        assert_eq!(
            parse("sleep=1&sleep=2").map(|p| p.sleep),
            Ok(Duration::from_secs(2))
        );
    }

    #[test]
    fn bad_values_name_parameter_value_and_form() {
        let cases = [
            ("sleep=abc", "sleep", "abc", DURATION_FORM),
            ("sleep=-1", "sleep", "-1", DURATION_FORM),
            ("sleep=NaN", "sleep", "NaN", DURATION_FORM),
            ("sleep=", "sleep", "", DURATION_FORM),
            ("heartbeat=xyz", "heartbeat", "xyz", TIMER_FORM),
            ("delay=-3", "delay", "-3", DURATION_FORM),
            ("format=xml", "format", "xml", FORMAT_FORM),
            ("lines=0", "lines", "0", LINES_FORM),
            ("lines=x", "lines", "x", LINES_FORM),
            ("lines=-2", "lines", "-2", LINES_FORM),
            ("end=yes", "end", "yes", "marker or none"),
        ];
        for (query, parameter, value, form) in cases {
            let err = parse(query).expect_err(query);
            assert_eq!(err.parameter, parameter, "{query}");
            assert_eq!(err.value, value, "{query}");
            assert_eq!(err.expected, form, "{query}");
        }
    }

    /// `sleep=0` without `lines` was an endless stream at full speed.
    #[test]
    fn streams_faster_than_the_floor_need_lines_naming_both() {
        for (query, value) in [("sleep=0", "0"), ("sleep=9ms&heartbeat=off", "9ms")] {
            let err = parse(query).expect_err(query);
            assert_eq!((err.parameter, err.value.as_str()), ("sleep", value));
            assert!(
                err.expected.starts_with("at least 10ms without lines")
                    && err.expected.contains("lines=N (1 to 10000000)"),
                "{err:?}"
            );
        }
        let err = parse("sleep=0&lines=10000001").expect_err("too many lines at full speed");
        assert_eq!((err.parameter, err.value.as_str()), ("lines", "10000001"));
        assert!(
            err.expected
                .ends_with("at most 10000000 when sleep is below 10ms"),
            "{err:?}"
        );
        assert_eq!(
            parse("sleep=0&lines=2000000").map(|p| p.lines),
            Ok(Some(2_000_000))
        );
        assert_eq!(
            parse("lines=2&sleep=0").map(|p| p.sleep),
            Ok(Duration::ZERO),
            "lines may come before sleep"
        );
        assert_eq!(
            parse("sleep=10ms").map(|p| (p.sleep, p.lines)),
            Ok((Duration::from_millis(10), None))
        );
        assert_eq!(
            parse("sleep=1s&lines=99999999999").map(|p| p.lines),
            Ok(Some(99_999_999_999)),
            "a paced stream may be as long as it likes"
        );
    }

    #[test]
    fn a_default_sleep_below_the_floor_is_named_as_configured() {
        let config = ServerConfig {
            sleep: Duration::ZERO,
            ..config()
        };
        let err = StreamParams::from_query("", &config).expect_err("an endless full-speed default");
        assert_eq!((err.parameter, err.value.as_str()), ("sleep", "0µs"));
        assert!(StreamParams::from_query("lines=3", &config).is_ok());
    }

    #[test]
    fn durations_above_max_sleep_are_refused_with_the_bound() {
        for query in ["sleep=61", "delay=2m", "heartbeat=1h"] {
            let err = parse(query).expect_err(query);
            assert!(
                err.expected.ends_with("at most 1m (SERVER_MAX_SLEEP)"),
                "{err:?}"
            );
        }
        assert_eq!(
            parse("sleep=60").map(|p| p.sleep),
            Ok(Duration::from_secs(60))
        );
    }
}

/// Property tests: whatever a client puts in a query, the origin reads it within its bounds or
/// refuses it naming a parameter and a value the client sent; it never panics.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    const NAMES: [&str; 7] = [
        "sleep",
        "delay",
        "heartbeat",
        "format",
        "lines",
        "end",
        "utm_source",
    ];

    fn config() -> ServerConfig {
        ServerConfig {
            max_sleep: Duration::from_secs(60),
            heartbeat: Some(Duration::from_secs(2)),
            ..ServerConfig::default()
        }
    }

    /// Mostly what the parameter accepts (so that the parameters meet each other, as `sleep=0`
    /// meets `lines`), then near misses of every accepted form, and anything at all.
    fn value(name: &'static str) -> BoxedStrategy<String> {
        let plausible = match name {
            "sleep" | "delay" => "0|[0-9]{1,2}(ns|us|ms|s)?|0\\.0[0-9]{1,3}",
            "heartbeat" => "off|0|[0-9]{1,3}(ns|ms|s)",
            "format" => "text|sse",
            "lines" => "[1-9][0-9]{0,8}",
            "end" => "marker|none",
            _ => "[a-z]{0,8}",
        };
        prop_oneof![
            6 => plausible,
            1 => "[0-9]{0,22}(\\.[0-9]{0,12})?(ns|us|µs|ms|s|m|h|d|w|y|years| parsecs)?",
            1 => "[-+ ]?[0-9]{1,4}(e[0-9]{1,3})?",
            1 => prop::sample::select(vec![
                "", " 3 ", "NaN", "inf", "365d", "366d", "2000000", "10000001",
                "18446744073709551616",
            ])
            .prop_map(str::to_owned),
            1 => any::<String>(),
        ]
        .boxed()
    }

    /// Name-value pairs and the query that carries them, percent-encoded as a browser would.
    fn query() -> impl Strategy<Value = (Vec<(String, String)>, String)> {
        let pair = prop::sample::select(NAMES.to_vec())
            .prop_flat_map(|name| (Just(name.to_owned()), value(name)));
        prop::collection::vec(pair, 0..5).prop_map(|pairs| {
            let query = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&pairs)
                .finish();
            (pairs, query)
        })
    }

    /// The refusal names a parameter with a value the client sent, and what would be accepted.
    fn names_what_was_sent(
        err: &InvalidParameter,
        pairs: &[(String, String)],
    ) -> Result<(), TestCaseError> {
        prop_assert!(
            pairs
                .iter()
                .any(|(name, value)| name == err.parameter && *value == err.value),
            "{err:?} names nothing of {pairs:?}"
        );
        prop_assert!(!err.expected.is_empty(), "{err:?}");
        Ok(())
    }

    proptest! {
        #[test]
        fn a_stream_query_is_read_within_bounds_or_refused_naming_what_was_sent(
            (pairs, query) in query()
        ) {
            let config = config();
            match StreamParams::from_query(&query, &config) {
                Ok(params) => {
                    prop_assert!(params.sleep <= config.max_sleep, "{params:?}");
                    prop_assert!(params.delay <= config.max_sleep, "{params:?}");
                    prop_assert!(
                        params.heartbeat.is_none_or(|period| {
                            (SHORTEST_HEARTBEAT..=config.max_sleep).contains(&period)
                        }),
                        "{params:?}"
                    );
                    prop_assert!(params.lines.is_none_or(|lines| lines >= 1), "{params:?}");
                    if params.sleep < SHORTEST_ENDLESS_SLEEP {
                        prop_assert!(
                            params.lines.is_some_and(|lines| lines <= MOST_FAST_LINES),
                            "an endless or overlong full-speed stream: {params:?} from {query:?}"
                        );
                    }
                }
                Err(err) => names_what_was_sent(&err, &pairs)?,
            }
        }

        #[test]
        fn a_job_query_is_read_within_bounds_or_refused_naming_what_was_sent(
            (pairs, query) in query()
        ) {
            let config = config();
            match JobParams::from_query(&query, &config) {
                Ok(params) => {
                    prop_assert!(params.sleep <= config.max_sleep, "{params:?}");
                    prop_assert!((1..=MAX_JOB_LINES).contains(&params.lines), "{params:?}");
                    prop_assert!(
                        params.heartbeat.is_none_or(|period| period >= SHORTEST_HEARTBEAT),
                        "{params:?}"
                    );
                }
                Err(err) => names_what_was_sent(&err, &pairs)?,
            }
        }

        #[test]
        fn any_raw_query_is_read_or_refused_without_a_panic(
            query in prop_oneof!["\\PC*", "[&=%+;0-9a-fA-Fsleplindraty.]*"]
        ) {
            let config = config();
            let _ = StreamParams::from_query(&query, &config);
            let _ = JobParams::from_query(&query, &config);
        }
    }
}
