//! keepalive-lab: the lab around the origin and the proxy. The binary's subcommands live here so
//! that the tests run them in-process: `demo`, `watch`, `probe`, `experiment`, `bench`, and the HTTP client they share.

pub mod bench;
pub mod client;
pub mod ctl;
pub mod demo;
pub mod expect;
pub mod experiment;
pub mod probe;
pub mod resume;
pub mod stdout;
pub mod watch;
