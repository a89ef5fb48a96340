//! The proxy's injected faults, asked for per request by header: a reset at a set time, and a byte
//! limit. Pure data: a stream through the proxy, judged on how the client's stream ended.

use super::{
    Ending, Expect, Family, Header, Millis, Scenario, Setup, Step, Stream, Target, Timers, When,
};

/// A proxy whose idle timer stays out of the faults' way.
const PATIENT: Timers = Timers {
    idle: Some(Millis(5000)),
    ..Timers::NONE
};

const RESET_AFTER: Millis = Millis(600);

pub const INJECTED_RST: Scenario = Scenario {
    name: "injected-rst",
    family: Family::Faults,
    expectation: "reset at the fault's time; the origin sees the client go",
    setup: Setup {
        hop: None,
        proxy: Some(PATIENT),
        target: Target::Stream(Stream {
            sleep: Some(Millis(200)),
            ..Stream::DEFAULT
        }),
        headers: &[Header::ResetAfter(RESET_AFTER)],
        step: Step::Watch { max: Millis(4000) },
    },
    expect: &[
        Expect::Ends {
            ending: Ending::Reset,
            at: When::Around(RESET_AFTER),
        },
        Expect::OriginFollows,
    ],
};

pub const BYTE_LIMIT: Scenario = Scenario {
    name: "byte-limit",
    family: Family::Faults,
    expectation: "exactly 70 bytes, then truncated",
    setup: Setup {
        hop: None,
        proxy: Some(PATIENT),
        target: Target::Stream(Stream {
            sleep: Some(Millis(100)),
            ..Stream::DEFAULT
        }),
        headers: &[Header::LimitBytes(70)],
        step: Step::Watch { max: Millis(4000) },
    },
    expect: &[
        Expect::Ends {
            ending: Ending::Truncated,
            at: When::Any,
        },
        Expect::BodyBytes(70..=70),
        Expect::OriginFollows,
    ],
};
