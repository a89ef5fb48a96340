//! Addresses to listen on or connect to, as people type them: `127.0.0.1:8080`, `[::1]:8080`,
//! `localhost:8080` and `:8080`.
//!
//! `localhost` is resolved once, at start, by the system resolver (`/etc/hosts`), its IPv4 address
//! first: a listener on `localhost:8080` should answer `curl http://127.0.0.1:8080` too. `:8080`
//! means every IPv4 interface (`0.0.0.0:8080`), as a listener on `:8080` does for Go's `net.Listen`
//! and Docker's `-p`. Other host names are refused: where a program listens should not depend on
//! DNS answering at start, and an IP address says exactly which interface.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};

/// The accepted form, quoted in every error so that a user can fix the value without docs.
pub const ADDRESS_FORM: &str =
    "an address like 127.0.0.1:8080, [::1]:8080, localhost:8080 or :8080 (every interface)";

/// Why an address could not be read; its `Display` names the value and the accepted form.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("{value:?} is not {ADDRESS_FORM}")]
    Form { value: String },
    #[error("{value:?} has no port from 0 to 65535; expected {ADDRESS_FORM}")]
    Port { value: String },
    #[error("{value:?}: localhost does not resolve here ({source}); use 127.0.0.1 or [::1]")]
    Resolve {
        value: String,
        source: std::io::Error,
    },
}

/// Parses an address in any of the forms above.
pub fn parse_address(value: &str) -> Result<SocketAddr, AddressError> {
    let trimmed = value.trim();
    if let Ok(addr) = trimmed.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let form = || AddressError::Form {
        value: value.to_owned(),
    };
    let (host, port) = trimmed.rsplit_once(':').ok_or_else(form)?;
    let port: u16 = port.parse().map_err(|_| AddressError::Port {
        value: value.to_owned(),
    })?;
    if host.is_empty() {
        return Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));
    }
    if !host.eq_ignore_ascii_case("localhost") {
        return Err(form());
    }
    let resolve = |source| AddressError::Resolve {
        value: value.to_owned(),
        source,
    };
    let resolved: Vec<SocketAddr> = ("localhost", port)
        .to_socket_addrs()
        .map_err(resolve)?
        .collect();
    resolved
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| resolved.first())
        .copied()
        .ok_or_else(|| resolve(std::io::Error::other("no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addresses_are_taken_as_they_are() {
        assert_eq!(
            parse_address("127.0.0.1:8080").expect("valid"),
            SocketAddr::from(([127, 0, 0, 1], 8080))
        );
        assert_eq!(
            parse_address("[::1]:0").expect("valid"),
            "[::1]:0".parse::<SocketAddr>().expect("valid")
        );
        assert_eq!(
            parse_address(" 0.0.0.0:9090 ").expect("valid"),
            SocketAddr::from(([0, 0, 0, 0], 9090))
        );
    }

    #[test]
    fn a_bare_port_is_every_interface() {
        assert_eq!(
            parse_address(":8080").expect("valid"),
            SocketAddr::from(([0, 0, 0, 0], 8080))
        );
    }

    #[test]
    fn localhost_is_a_loopback_address_ipv4_first() {
        let addr = parse_address("localhost:8080").expect("valid");
        assert!(addr.ip().is_loopback(), "{addr}");
        assert_eq!(addr.port(), 8080);
        assert_eq!(
            parse_address("LOCALHOST:1").expect("valid").port(),
            1,
            "names are case-insensitive"
        );
        if ("localhost", 1)
            .to_socket_addrs()
            .expect("resolves")
            .any(|addr| addr.is_ipv4())
        {
            assert!(addr.is_ipv4(), "{addr}");
        }
    }

    #[test]
    fn what_is_refused_is_named_with_the_accepted_form() {
        for bad in [
            "",
            "8080",
            "localhost",
            "example.com:80",
            "127.0.0.1:",
            "127.0.0.1:65536",
            ":-1",
            "1.2.3.4:http",
        ] {
            let err = parse_address(bad).expect_err(bad).to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains("localhost:8080"), "{err}");
        }
    }
}
