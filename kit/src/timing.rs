//! Time in tests over real sockets: timers scaled down to hundreds of milliseconds, the tolerance a
//! firing is judged with, and polling for a condition. The tolerance is wide on the late side on
//! purpose: a loaded 2-core machine runs a timer late, never early, and a test must not fail on luck.

use std::future::Future;
use std::time::Duration;

use keepalive_proxy::TimerSet;
use tokio::time::Instant;

/// How much earlier than its limit a timer may be seen to fire (clock granularity).
pub const EARLY: Duration = Duration::from_millis(50);
/// How much later than its limit a timer may be seen to fire on a loaded 2-core machine.
pub const LATE: Duration = Duration::from_millis(700);

/// A timer of `millis` milliseconds.
pub const fn ms(millis: u64) -> Option<Duration> {
    Some(Duration::from_millis(millis))
}

/// A timer switched off.
pub const OFF: Option<Duration> = None;

/// Generous limits for the timers a test does not exercise: none of them fires in a test's seconds,
/// and none is off, so a test that forgets one still sees it bounded.
pub fn quiet_timers() -> TimerSet {
    TimerSet {
        connect: ms(2_000),
        first_byte: ms(5_000),
        idle: ms(5_000),
        max_duration: OFF,
        header: ms(5_000),
        keepalive: ms(5_000),
        send: ms(5_000),
    }
}

/// [`quiet_timers`] but for `idle` and `max_duration`, the timers that cut a stream mid-body.
pub fn cutting_timers(idle: Option<Duration>, max_duration: Option<Duration>) -> TimerSet {
    TimerSet {
        idle,
        max_duration,
        ..quiet_timers()
    }
}

/// Asserts that `observed` is within [`expected` - EARLY, `expected` + LATE].
#[track_caller]
pub fn assert_around(observed: Duration, expected: Duration, what: &str) {
    let low = expected.saturating_sub(EARLY);
    let high = expected + LATE;
    assert!(
        observed >= low && observed <= high,
        "{what}: observed at {observed:?}, expected at {expected:?} (allowed {low:?}..={high:?})"
    );
}

/// Polls `condition` every 20 ms until it holds (returns how long that took) or `within` passes.
pub async fn wait_until<F, Fut>(within: Duration, mut condition: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return Some(start.elapsed());
        }
        if start.elapsed() >= within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
