//! The descriptor budget behind `PROXY_MAX_CONNECTIONS=auto`. Over HTTP/1.1 towards the upstream
//! each proxied stream holds two descriptors, the client's socket and its upstream connection, so a
//! proxy that accepts until `accept` fails with EMFILE has none left to reach the upstream: silent
//! sockets hold every descriptor and real requests time out. The cap keeps headroom instead: half
//! of what the limit leaves after a reserve for everything that is not a client. Over HTTP/2 the
//! streams share a few upstream connections, and a client costs one descriptor.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors kept out of the budget: both listeners, the runtime's epoll and eventfds, stdio,
/// admin scrapes, and upstream connections idle in the pool.
pub const RESERVED: u64 = 64;

use crate::config::UpstreamProtocol;

/// Descriptors a client connection costs: its own, and over HTTP/1.1 the upstream connection of the
/// stream it carries.
pub fn per_connection(protocol: UpstreamProtocol) -> u64 {
    match protocol {
        UpstreamProtocol::Http1 => 2,
        UpstreamProtocol::H2 => 1,
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as Go's runtime does at start: the soft default
/// (1024 on most distributions) is there for programs that use select(2), and an epoll server has no
/// reason to keep it. Returns the soft limit in force afterwards.
pub fn raise_soft_limit() -> Result<u64, nix::Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// The soft `RLIMIT_NOFILE` in force.
pub fn soft_limit() -> Result<u64, nix::Error> {
    getrlimit(Resource::RLIMIT_NOFILE).map(|(soft, _)| soft)
}

/// Descriptors kept out of the budget for each worker thread: its runtime's epoll and eventfd, and
/// its own upstream connections idle in its pool (or, over HTTP/2, its connection to each replica).
pub const PER_WORKER: u64 = 8;

/// How many client connections fit in `limit` descriptors with `workers` worker threads:
/// [`per_connection`] each after [`RESERVED`] and [`PER_WORKER`] for each worker, and at least one.
pub fn connections_within(limit: u64, protocol: UpstreamProtocol, workers: usize) -> usize {
    let reserve = RESERVED + PER_WORKER * u64::try_from(workers).unwrap_or(u64::MAX / PER_WORKER);
    let fit = limit.saturating_sub(reserve) / per_connection(protocol);
    usize::try_from(fit).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_connection_gets_two_descriptors_after_the_reserve() {
        assert_eq!(connections_within(1024, UpstreamProtocol::Http1, 0), 480);
        assert_eq!(
            connections_within(20_000, UpstreamProtocol::Http1, 0),
            9_968
        );
    }

    #[test]
    fn over_http2_each_connection_gets_one_descriptor() {
        assert_eq!(connections_within(20_000, UpstreamProtocol::H2, 0), 19_936);
    }

    #[test]
    fn each_worker_keeps_its_own_reserve() {
        assert_eq!(connections_within(20_000, UpstreamProtocol::H2, 2), 19_920);
        assert_eq!(
            connections_within(20_000, UpstreamProtocol::Http1, 2),
            9_960
        );
    }

    #[test]
    fn a_tiny_limit_still_serves_one_connection() {
        assert_eq!(connections_within(0, UpstreamProtocol::Http1, 1), 1);
        assert_eq!(
            connections_within(RESERVED + 1, UpstreamProtocol::H2, 1024),
            1
        );
    }

    #[test]
    fn raising_never_lowers_the_soft_limit() {
        let before = soft_limit().expect("getrlimit");
        let after = raise_soft_limit().expect("setrlimit up to the hard limit is allowed");
        assert!(after >= before, "{before} -> {after}");
        assert_eq!(soft_limit().expect("getrlimit"), after);
    }
}
