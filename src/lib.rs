//! keepalive-lab: the lab around the origin and the proxy. The binary's subcommands live here so
//! that the tests run them in-process: `demo`, `watch`, `probe`, `experiment`, `bench`.

pub mod bench;
pub mod demo;
pub mod expect;
pub mod experiment;
pub mod probe;
pub mod resume;
pub mod stdout;
pub mod watch;
