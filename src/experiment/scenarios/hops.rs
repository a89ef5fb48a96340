//! Hops that swallow heartbeats: a buffering or a compressing proxy in front of the origin holds
//! them back, so the balancer's idle timer behind it fires as if the origin were silent, unless the
//! hop honours the origin's `X-Accel-Buffering: no` or `Cache-Control: no-transform`. Pure data: a
//! heartbeated stream through the hop and the balancer, judged on what reached the client.

use super::{
    Ending, Expect, Family, Header, Hop, Millis, Scenario, Setup, Step, Stream, Target, Timers,
    When,
};

const IDLE: Millis = Millis(800);
const BUFFER: u64 = 64 * 1024;

/// A heartbeat every 200 ms, well inside the balancer's idle limit, through `hop`.
const fn behind(hop: Hop, headers: &'static [Header]) -> Setup {
    Setup {
        hop: Some(hop),
        proxy: Some(Timers {
            idle: Some(IDLE),
            ..Timers::NONE
        }),
        target: Target::Stream(Stream {
            sleep: Some(Millis(5000)),
            heartbeat: Some(Millis(200)),
            ..Stream::DEFAULT
        }),
        headers,
        step: Step::Watch { max: Millis(3000) },
    }
}

/// The hop held everything back: the balancer's idle timer cut the stream with (almost) nothing
/// delivered.
const fn swallowed(allowed: usize) -> [Expect; 3] {
    [
        Expect::Ends {
            ending: Ending::Truncated,
            at: When::Around(IDLE),
        },
        Expect::BodyBytes(0..=allowed),
        Expect::OriginFollows,
    ]
}

/// The heartbeats got through: the stream outlived the idle limit and was still open when the
/// client stopped watching.
const PASSED: [Expect; 2] = [
    Expect::StillOpen { min_heartbeats: 5 },
    Expect::OriginFollows,
];

pub const BUFFERING_HOP: Scenario = Scenario {
    name: "buffering-hop",
    family: Family::Hops,
    expectation: "a buffering hop holds the heartbeats; the idle timer behind it cuts",
    setup: behind(
        Hop::Buffering {
            bytes: BUFFER,
            ignores_accel: true,
        },
        &[],
    ),
    expect: &swallowed(0),
};

pub const ACCEL_BUFFERING_NO: Scenario = Scenario {
    name: "accel-buffering-no",
    family: Family::Hops,
    expectation: "X-Accel-Buffering: no lets the heartbeats through that hop",
    setup: behind(
        Hop::Buffering {
            bytes: BUFFER,
            ignores_accel: false,
        },
        &[],
    ),
    expect: &PASSED,
};

pub const COMPRESSION_HOP: Scenario = Scenario {
    name: "compression-hop",
    family: Family::Hops,
    expectation: "a gzip hop holds the heartbeats; the idle timer behind it cuts",
    setup: behind(
        Hop::Gzip {
            ignores_no_transform: true,
        },
        &[Header::AcceptGzip],
    ),
    // The 10-byte gzip header leaves the encoder at once; nothing of the stream follows it.
    expect: &swallowed(10),
};

pub const NO_TRANSFORM: Scenario = Scenario {
    name: "no-transform",
    family: Family::Hops,
    expectation: "Cache-Control: no-transform lets the heartbeats through that hop",
    setup: behind(
        Hop::Gzip {
            ignores_no_transform: false,
        },
        &[Header::AcceptGzip],
    ),
    expect: &PASSED,
};
