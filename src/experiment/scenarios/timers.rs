//! The proxy's timers: the idle timer cuts a silent stream (in each of the three ways a cut can look),
//! heartbeats keep it open, the total timer ends it anyway, and a late response head gets a 504. All
//! pure data: a stream through the proxy, judged on how and when the client's stream ended.

use http::StatusCode;
use keepalive_proxy::cut_style::CutStyle;

use super::{
    Ending, Expect, Family, Header, Millis, Scenario, Setup, Step, Stream, Target, Timers, When,
};

const IDLE: Millis = Millis(500);

/// A line every 2 s through an idle limit of 500 ms.
const SILENT: Setup = Setup {
    hop: None,
    proxy: Some(Timers {
        idle: Some(IDLE),
        ..Timers::NONE
    }),
    target: Target::Stream(Stream {
        sleep: Some(Millis(2000)),
        ..Stream::DEFAULT
    }),
    headers: &[],
    step: Step::Watch { max: Millis(4000) },
};

/// [`SILENT`], owing three lines: a clean end after one is a cut, whatever it looks like.
const OWING: Setup = Setup {
    target: Target::Stream(Stream {
        sleep: Some(Millis(2000)),
        lines: Some(3),
        ..Stream::DEFAULT
    }),
    ..SILENT
};

pub const IDLE_CUT: Scenario = Scenario {
    name: "idle-cut",
    family: Family::Timers,
    expectation: "truncated at the idle limit; the origin sees the client go",
    setup: SILENT,
    expect: &[
        Expect::Ends {
            ending: Ending::Truncated,
            at: When::Around(IDLE),
        },
        Expect::OriginFollows,
    ],
};

pub const CLEAN_CUT: Scenario = Scenario {
    name: "clean-cut",
    family: Family::Timers,
    expectation: "the idle cut ends the body like a normal end (curl exits 0); the client still tells it was cut",
    setup: Setup {
        headers: &[Header::CutStyle(CutStyle::Clean)],
        ..OWING
    },
    expect: &[
        Expect::Ends {
            ending: Ending::SilentlyTruncated,
            at: When::Around(IDLE),
        },
        Expect::OriginFollows,
    ],
};

pub const RESET_CUT: Scenario = Scenario {
    name: "reset-cut",
    family: Family::Timers,
    expectation: "the idle cut resets the connection (curl exits 56)",
    setup: Setup {
        headers: &[Header::CutStyle(CutStyle::Reset)],
        ..OWING
    },
    expect: &[
        Expect::Ends {
            ending: Ending::Reset,
            at: When::Around(IDLE),
        },
        Expect::OriginFollows,
    ],
};

pub const HEARTBEAT_SAVES: Scenario = Scenario {
    name: "heartbeat-saves",
    family: Family::Timers,
    expectation: "heartbeats keep it open past 4x the idle limit",
    setup: Setup {
        target: Target::Stream(Stream {
            sleep: Some(Millis(1000)),
            heartbeat: Some(Millis(200)),
            ..Stream::DEFAULT
        }),
        step: Step::Watch { max: Millis(2000) },
        ..SILENT
    },
    expect: &[
        Expect::StillOpen { min_heartbeats: 5 },
        Expect::OriginFollows,
    ],
};

const TOTAL: Millis = Millis(1500);

pub const TOTAL_TIMER: Scenario = Scenario {
    name: "total-timer",
    family: Family::Timers,
    expectation: "truncated at the total limit despite heartbeats",
    setup: Setup {
        proxy: Some(Timers {
            idle: Some(IDLE),
            total: Some(TOTAL),
            ..Timers::NONE
        }),
        target: Target::Stream(Stream {
            sleep: Some(Millis(400)),
            heartbeat: Some(Millis(200)),
            ..Stream::DEFAULT
        }),
        ..SILENT
    },
    expect: &[
        Expect::Ends {
            ending: Ending::Truncated,
            at: When::Around(TOTAL),
        },
        Expect::OriginFollows,
    ],
};

const FIRST_BYTE: Millis = Millis(500);

pub const FIRST_BYTE_504: Scenario = Scenario {
    name: "first-byte-504",
    family: Family::Timers,
    expectation: "504 at the first-byte limit",
    setup: Setup {
        proxy: Some(Timers {
            first_byte: Some(FIRST_BYTE),
            ..Timers::NONE
        }),
        target: Target::Stream(Stream {
            delay: Some(Millis(2000)),
            ..Stream::DEFAULT
        }),
        ..SILENT
    },
    expect: &[Expect::Ends {
        ending: Ending::Http(StatusCode::GATEWAY_TIMEOUT),
        at: When::Around(FIRST_BYTE),
    }],
};
