//! What the origin, the proxy and the lab CLI share: one vocabulary for durations, addresses and switches, one way to report a
//! bad setting, one logging set-up, one shutdown signal, one accept loop, one health probe and one way to read TLS files and roots. Kept tiny on purpose: everything here is
//! used by at least two of the three programs.

pub mod accept;
pub mod address;
pub mod config;
pub mod duration;
pub mod exposition;
pub mod health;
pub mod logging;
pub mod shutdown;
pub mod switch;
pub mod tls;
