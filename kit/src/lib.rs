//! keepalive-kit: the one test kit of the workspace. Every package's tests, and the lab's
//! `experiment` command, run the real origin, the real proxy and real balancers with it, and read
//! what the wire carried and what the servers counted.
//!
//! Two kinds of functions live here. What the lab runs inside a product binary (starting and stopping
//! servers and programs, reserving ports, reading a metric) returns `io::Result` or a typed error.
//! Shorthands only tests use panic with a message saying what failed, which is a test's way to fail.

pub mod admin;
pub mod client;
pub mod echo;
pub mod h2c;
pub mod metrics;
pub mod ports;
pub mod postgres;
pub mod program;
pub mod response;
pub mod servers;
pub mod timing;
pub mod tls;
