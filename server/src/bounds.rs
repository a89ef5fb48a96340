//! The origin's floors and ceilings, in one place because the same bound is met twice: by a setting
//! at start (exit 2, one line naming the variable) and by a query parameter on each request (a 400
//! naming the parameter). A bound that differed between the two would let an operator configure what
//! no client may ask for, or the other way round, as `SERVER_HEARTBEAT=1ns` once could.

use std::time::Duration;

use keepalive_common::duration::{display, parse_duration, parse_timer, DURATION_FORM, TIMER_FORM};

/// The shortest heartbeat: `1ns` turns one stream into a flood of spaces (3 MB in 3 s, a core busy),
/// and no balancer's idle timer needs more than a few heartbeats a second to stay awake.
pub const SHORTEST_HEARTBEAT: Duration = Duration::from_millis(10);

/// The shortest job lease: renewed a few times a lease, a shorter one would be lost to a database
/// that pauses for a moment, and a job would change hands for nothing.
pub const SHORTEST_JOB_LEASE: Duration = Duration::from_secs(1);

/// Below this pause a stream is sent as fast as the client reads, so it must say when it ends
/// (`lines`): four endless `sleep=0` streams cut the origin's other answers tenfold.
pub const SHORTEST_ENDLESS_SLEEP: Duration = Duration::from_millis(10);

/// The most lines a stream faster than [`SHORTEST_ENDLESS_SLEEP`] may ask for: about 330 MB of text,
/// a few seconds of one core; enough to fill every socket buffer between the origin and a client
/// that stopped reading (2,000,000 lines are 66 MB).
pub const MOST_FAST_LINES: u64 = 10_000_000;

/// The shortest header timer: a request head crossing a real network takes round trips, and a
/// shorter timer would cut ordinary clients rather than slow ones.
pub const SHORTEST_HEADER_TIMEOUT: Duration = Duration::from_millis(100);

/// The shortest TCP_USER_TIMEOUT: Linux counts it in whole milliseconds (less would quietly mean
/// the kernel's default), and below the retransmission timeout's 200 ms floor one lost segment on a
/// healthy network would drop the client.
pub const SHORTEST_TCP_USER_TIMEOUT: Duration = Duration::from_secs(1);

/// A setting refused at start; its `Display` names the value and the accepted form, bound included.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not {form}")]
pub struct SettingError {
    value: String,
    form: String,
}

/// Parses a duration setting of at least `floor`.
pub fn duration_at_least(value: &str, floor: Duration) -> Result<Duration, SettingError> {
    let form = || format!("{DURATION_FORM}, at least {}", display(floor));
    let refuse = || SettingError {
        value: value.to_owned(),
        form: form(),
    };
    let duration = parse_duration(value).map_err(|_| refuse())?;
    if duration < floor {
        return Err(refuse());
    }
    Ok(duration)
}

/// Parses a timer setting that is off (`0`, `off`) or at least `floor`.
pub fn timer_at_least(value: &str, floor: Duration) -> Result<Option<Duration>, SettingError> {
    let refuse = || SettingError {
        value: value.to_owned(),
        form: format!("{TIMER_FORM}; when on, at least {}", display(floor)),
    };
    match parse_timer(value).map_err(|_| refuse())? {
        Some(period) if period < floor => Err(refuse()),
        timer => Ok(timer),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn settings_below_their_floor_are_refused_naming_value_and_floor() {
        let err = timer_at_least("1ns", SHORTEST_HEARTBEAT).expect_err("1ns is below 10ms");
        assert_eq!(
            err.to_string(),
            format!("\"1ns\" is not {TIMER_FORM}; when on, at least 10ms")
        );
        let err = duration_at_least("0", SHORTEST_ENDLESS_SLEEP).expect_err("0 is below 10ms");
        assert_eq!(
            err.to_string(),
            format!("\"0\" is not {DURATION_FORM}, at least 10ms")
        );
        let err = duration_at_least("soon", SHORTEST_ENDLESS_SLEEP).expect_err("not a duration");
        assert!(err.to_string().contains("at least 10ms"), "{err}");
    }

    #[test]
    fn settings_at_their_floor_or_off_are_accepted() {
        assert_eq!(
            timer_at_least("10ms", SHORTEST_HEARTBEAT),
            Ok(Some(SHORTEST_HEARTBEAT))
        );
        assert_eq!(timer_at_least("off", SHORTEST_HEARTBEAT), Ok(None));
        assert_eq!(timer_at_least("0", SHORTEST_HEARTBEAT), Ok(None));
        assert_eq!(
            duration_at_least("0.01", SHORTEST_ENDLESS_SLEEP),
            Ok(SHORTEST_ENDLESS_SLEEP)
        );
    }

    /// Durations as users type them, near misses, and anything at all.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ +-]?[0-9]{0,22}(\\.[0-9]{0,12})?(e[0-9])? ?(ns|us|µs|ms|s|sec|m|min|h|d|w|M|y|off|OFF|none)?",
            "([0-9]{1,3}(ns|ms|s|m|h|d) ?){1,4}",
            "\\PC{0,30}",
            any::<String>(),
        ]
    }

    proptest! {
        /// Common's parsers, which every duration the origin reads goes through: no panic, and a
        /// refusal that quotes the value.
        #[test]
        fn any_text_is_a_duration_or_an_error_quoting_it(value in text()) {
            let quoted = format!("{value:?}");
            match parse_duration(&value) {
                Ok(duration) => prop_assert!(duration <= keepalive_common::duration::LONGEST),
                Err(err) => prop_assert!(err.to_string().contains(&quoted), "{err}"),
            }
            if let Err(err) = parse_timer(&value) {
                prop_assert!(err.to_string().contains(&quoted), "{err}");
            }
        }

        #[test]
        fn a_setting_is_at_its_floor_or_refused_quoting_value_and_floor(
            value in text(),
            floor in prop::sample::select(vec![
                SHORTEST_HEARTBEAT,
                SHORTEST_HEADER_TIMEOUT,
                SHORTEST_TCP_USER_TIMEOUT,
            ]),
        ) {
            let quoted = format!("{value:?}");
            let floor_text = format!("at least {}", display(floor));
            match duration_at_least(&value, floor) {
                Ok(duration) => prop_assert!(duration >= floor),
                Err(err) => {
                    let line = err.to_string();
                    prop_assert!(line.contains(&quoted) && line.contains(&floor_text), "{line}");
                }
            }
            match timer_at_least(&value, floor) {
                Ok(timer) => prop_assert!(timer.is_none_or(|period| period >= floor)),
                Err(err) => {
                    let line = err.to_string();
                    prop_assert!(line.contains(&quoted) && line.contains(&floor_text), "{line}");
                }
            }
        }
    }
}
