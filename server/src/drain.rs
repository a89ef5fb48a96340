//! Where the origin's drain stands, for the handlers: `/healthz` answers 503 from the moment shutdown
//! begins, and each stream that ends during the drain is tallied as finished by itself or cut at the
//! drain limit, so that the origin can say which, once it is over.
//!
//! The phase is the accept loop's own ([`keepalive_common::accept::Phase`]), read through a watch
//! receiver: the loop moves it forward, nothing here can get out of step with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keepalive_common::accept::Phase;
use tokio::sync::watch;

/// The drain as the handlers see it; clones share the same tally.
#[derive(Debug, Clone)]
pub struct DrainState {
    phase: watch::Receiver<Phase>,
    tally: Arc<Tally>,
}

#[derive(Debug, Default)]
struct Tally {
    finished: AtomicU64,
    cut: AtomicU64,
}

/// How the streams open during a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamsDrained {
    /// Ended by themselves (completed, or their client left) before the drain limit.
    pub finished: u64,
    /// Still streaming at the drain limit, and cut.
    pub cut: u64,
}

impl DrainState {
    /// Follows the accept loop that publishes on `phase`.
    pub fn following(phase: watch::Receiver<Phase>) -> Self {
        Self {
            phase,
            tally: Arc::default(),
        }
    }

    /// An origin that is never drained: one served through `oneshot`, without an accept loop.
    pub fn never() -> Self {
        // A receiver whose sender is gone keeps the last value: `Serving`, for good.
        Self::following(watch::channel(Phase::Serving).1)
    }

    /// From the start of the shutdown until the process exits.
    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() != Phase::Serving
    }

    /// Accounts for a stream that just ended (`completed`: it sent its last line); true when the
    /// drain limit cut it.
    pub(crate) fn stream_ended(&self, completed: bool) -> bool {
        match *self.phase.borrow() {
            Phase::Serving => false,
            Phase::Draining => {
                self.tally.finished.fetch_add(1, Ordering::Relaxed);
                false
            }
            // A stream that completed as the limit struck was not cut.
            Phase::Cutting if completed => {
                self.tally.finished.fetch_add(1, Ordering::Relaxed);
                false
            }
            Phase::Cutting => {
                self.tally.cut.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }

    /// The streams that ended since the drain began.
    pub fn streams(&self) -> StreamsDrained {
        StreamsDrained {
            finished: self.tally.finished.load(Ordering::Relaxed),
            cut: self.tally.cut.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_tallied_by_the_phase_they_end_in() {
        let (phase, receiver) = watch::channel(Phase::Serving);
        let drain = DrainState::following(receiver);
        assert!(!drain.is_draining());
        assert!(!drain.stream_ended(true));
        assert!(!drain.stream_ended(false));
        assert_eq!(
            drain.streams(),
            StreamsDrained {
                finished: 0,
                cut: 0
            }
        );

        phase.send_replace(Phase::Draining);
        assert!(drain.is_draining());
        assert!(!drain.stream_ended(true));
        assert!(!drain.stream_ended(false));

        phase.send_replace(Phase::Cutting);
        assert!(drain.is_draining());
        assert!(drain.stream_ended(false));
        assert!(!drain.stream_ended(true));
        assert_eq!(
            drain.streams(),
            StreamsDrained {
                finished: 3,
                cut: 1
            }
        );
    }

    #[test]
    fn an_origin_without_an_accept_loop_never_drains() {
        let drain = DrainState::never();
        assert!(!drain.is_draining());
        assert!(!drain.stream_ended(false));
    }
}
