//! Running jobs per client, so that one client cannot fill `SERVER_JOB_MAX` and lock everybody out.
//!
//! A client is the connection's peer address, the only thing about it the origin can check: an
//! IPv4 address, or an IPv6 client's /64 (one host commonly holds a whole /64, as rate limiters
//! assume). `X-Forwarded-For` is never believed, as any client can write one; behind a proxy every
//! client is therefore the proxy, and `SERVER_JOBS_PER_CLIENT` should be raised there. A slot is a
//! [`Claim`], held by the job's runner and given back when it is dropped, whichever way the job ends.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

/// Who runs a job, as far as the quota is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// An IPv4 address, or the /64 of an IPv6 one.
    Peer(IpAddr),
    /// No peer address (the router driven in-process, without a connection): all such requests
    /// share one quota rather than escape it.
    Unknown,
}

impl Client {
    pub fn of(peer: Option<SocketAddr>) -> Self {
        match peer.map(|peer| peer.ip().to_canonical()) {
            Some(IpAddr::V6(ip)) => {
                let prefix = u128::from(ip) & !(u128::MAX >> 64);
                Self::Peer(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            Some(ip) => Self::Peer(ip),
            None => Self::Unknown,
        }
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Peer(IpAddr::V6(prefix)) => write!(f, "{prefix}/64"),
            Self::Peer(ip) => write!(f, "{ip}"),
            Self::Unknown => f.write_str("a client without a peer address"),
        }
    }
}

/// The running jobs of each client, against one limit.
#[derive(Debug, Clone)]
pub struct Quota {
    limit: u64,
    running: Arc<Mutex<HashMap<Client, u64>>>,
}

/// One running job's slot in its client's quota, given back on drop.
#[derive(Debug)]
pub struct Claim {
    client: Client,
    running: Arc<Mutex<HashMap<Client, u64>>>,
}

impl Quota {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            running: Arc::default(),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// A slot for one more job of `client`, or `None` when it already runs `limit` of them.
    pub fn claim(&self, client: Client) -> Option<Claim> {
        let mut running = self.running.lock().unwrap_or_else(|err| err.into_inner());
        let count = running.entry(client).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Claim {
            client,
            running: Arc::clone(&self.running),
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(|err| err.into_inner());
        if let Some(count) = running.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                // A map of every address ever seen would itself grow without bound.
                running.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(text: &str) -> Client {
        Client::of(Some(text.parse().expect("a socket address")))
    }

    #[test]
    fn a_client_gets_its_limit_and_a_slot_back_when_a_job_ends() {
        let quota = Quota::new(2);
        let first = quota.claim(peer("192.0.2.1:1000")).expect("first");
        let _second = quota.claim(peer("192.0.2.1:1001")).expect("second");
        assert!(
            quota.claim(peer("192.0.2.1:1002")).is_none(),
            "the port does not make another client"
        );
        assert!(
            quota.claim(peer("192.0.2.2:1000")).is_some(),
            "another address is another client"
        );
        drop(first);
        assert!(quota.claim(peer("192.0.2.1:1003")).is_some());
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_its_address() {
        assert_eq!(
            peer("[2001:db8:1:2:aaaa::1]:80"),
            peer("[2001:db8:1:2:bbbb::9]:80")
        );
        assert_ne!(peer("[2001:db8:1:2::1]:80"), peer("[2001:db8:1:3::1]:80"));
        assert_eq!(peer("[::ffff:192.0.2.7]:80"), peer("192.0.2.7:80"));
        assert_eq!(
            peer("[2001:db8:1:2:aaaa::1]:80").to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(Client::of(None), Client::Unknown);
    }

    #[test]
    fn a_client_with_no_jobs_left_is_forgotten() {
        let quota = Quota::new(1);
        drop(quota.claim(peer("192.0.2.1:1")).expect("a slot"));
        assert!(quota.running.lock().expect("not poisoned").is_empty());
    }
}
