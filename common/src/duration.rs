//! Humane durations, the same everywhere: in env vars, flags and query parameters.
//!
//! `250ms`, `5s`, `1m`, `1h30m` (humantime's syntax) or bare seconds (`5`, `0.25`), because the
//! tutorial's `?sleep=10` is in seconds and users type timers the way nginx and HAProxy configs do.
//! Timers additionally accept `0`/`off` to mean "disabled".

use std::time::Duration;

/// The accepted form, quoted in every error message so that a user can fix the value without docs.
pub const DURATION_FORM: &str = "a duration like 250ms, 5s, 1m, or bare seconds like 5 or 0.25";
/// The accepted form of a timer: a duration, or `0`/`off` to disable it.
pub const TIMER_FORM: &str =
    "a duration like 250ms, 5s, 1m, or bare seconds like 5 or 0.25; 0 or off disables";

/// The longest duration accepted anywhere. Deadlines are `Instant::now() + duration`, which panics on
/// overflow, and no balancer timer or poem pause is meaningfully longer than this.
pub const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);
const LONGEST_FORM: &str = "a duration of at most 365 days";

/// Why a duration could not be read; its `Display` names the value and the accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not {form}")]
pub struct DurationError {
    value: String,
    form: &'static str,
}

/// Parses a duration; `0` is a valid zero duration, `off` is not.
pub fn parse_duration(value: &str) -> Result<Duration, DurationError> {
    parse(value, DURATION_FORM)
}

/// Parses a timer setting: `None` when disabled by `0`, `off`, `none` or `disabled`.
pub fn parse_timer(value: &str) -> Result<Option<Duration>, DurationError> {
    let trimmed = value.trim();
    if ["off", "none", "disabled"]
        .iter()
        .any(|word| trimmed.eq_ignore_ascii_case(word))
    {
        return Ok(None);
    }
    let duration = parse(value, TIMER_FORM)?;
    Ok((!duration.is_zero()).then_some(duration))
}

fn parse(value: &str, form: &'static str) -> Result<Duration, DurationError> {
    let error = || DurationError {
        value: value.to_owned(),
        form,
    };
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(error());
    }
    let duration = if trimmed.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let seconds: f64 = trimmed.parse().map_err(|_| error())?;
        Duration::try_from_secs_f64(seconds).map_err(|_| error())?
    } else {
        humantime::parse_duration(trimmed).map_err(|_| error())?
    };
    if duration > LONGEST {
        return Err(DurationError {
            value: value.to_owned(),
            form: LONGEST_FORM,
        });
    }
    Ok(duration)
}

/// Formats a duration the way users type it (`1.5s`, `250ms`, `1m`), for logs and the demo's narration.
pub fn display(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        format!("{}µs", duration.as_micros())
    } else if millis < 1000 {
        format!("{millis}ms")
    } else if millis.is_multiple_of(3_600_000) {
        format!("{}h", millis / 3_600_000)
    } else if millis.is_multiple_of(60_000) {
        format!("{}m", millis / 60_000)
    } else if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        // Whole milliseconds, never rounded up: 3999.6 ms must not read "4.s".
        let fraction = format!("{:03}", millis % 1000);
        format!("{}.{}s", millis / 1000, fraction.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_units_and_bare_seconds() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 3 "), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in [
            "",
            "abc",
            "-1",
            "NaN",
            "inf",
            "1..2",
            "5 parsecs",
            "off",
            "-3s",
            "1e3",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.to_string().contains(DURATION_FORM), "{err}");
        }
    }

    #[test]
    fn refuses_durations_no_deadline_can_hold() {
        assert_eq!(parse_duration("365d"), Ok(LONGEST));
        for huge in ["366d", "9300000000000000000", "1000years"] {
            let err = parse_timer(huge).expect_err(huge);
            assert!(err.to_string().contains("at most 365 days"), "{err}");
        }
    }

    #[test]
    fn timers_can_be_disabled() {
        assert_eq!(parse_timer("0"), Ok(None));
        assert_eq!(parse_timer("off"), Ok(None));
        assert_eq!(parse_timer("OFF"), Ok(None));
        assert_eq!(parse_timer("0ms"), Ok(None));
        assert_eq!(parse_timer("1500ms"), Ok(Some(Duration::from_millis(1500))));
        let err = parse_timer("soon").expect_err("soon");
        assert_eq!(err.to_string(), format!("\"soon\" is not {TIMER_FORM}"));
    }

    #[test]
    fn displays_like_users_type() {
        assert_eq!(display(Duration::from_millis(250)), "250ms");
        assert_eq!(display(Duration::from_millis(1500)), "1.5s");
        assert_eq!(display(Duration::from_secs(5)), "5s");
        assert_eq!(display(Duration::from_secs(120)), "2m");
        assert_eq!(display(Duration::from_secs(3600)), "1h");
        assert_eq!(display(Duration::from_micros(3_999_600)), "3.999s");
        assert_eq!(display(Duration::from_millis(1050)), "1.05s");
    }
}
