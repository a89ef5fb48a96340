//! keepalive-lab: the lab around the origin and the proxy. The binary's subcommands live here so
//! that the tests run them in-process: `demo`, `watch`.

pub mod demo;
pub mod watch;
