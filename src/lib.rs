//! keepalive-lab: the lab around the origin and the proxy. The binary's subcommands live here so
//! that the tests run them in-process: `demo`, `watch`, `experiment`.

pub mod demo;
pub mod experiment;
pub mod watch;
