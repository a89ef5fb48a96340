//! `--connect-to` and `--resolve`, as curl spells them: reach a balancer by address while the URL,
//! the TLS server name, the certificate check and `Host` keep its public name. Probing one replica
//! of a balancer, or a balancer before its DNS record exists, needs exactly this.
//!
//! curl applies `--connect-to` first and then `--resolve` to where it points; so does [`Routes`].

use std::net::{IpAddr, SocketAddr};

/// Why a `--connect-to` or `--resolve` argument was refused; each quotes the argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{0:?} is not HOST:PORT:ADDR:PORT (e.g. lb.example:443:10.0.0.5:8443; an empty HOST or PORT matches any)")]
    ConnectTo(String),
    #[error(
        "{0:?} is not HOST:PORT:ADDR[,ADDR...] with IP addresses (e.g. lb.example:443:127.0.0.1)"
    )]
    Resolve(String),
}

/// `--connect-to HOST:PORT:ADDR:PORT`: requests for HOST:PORT connect to ADDR:PORT instead. An
/// empty HOST or PORT on the left matches any; an empty one on the right keeps the request's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTo {
    host: Option<String>,
    port: Option<u16>,
    to_host: Option<String>,
    to_port: Option<u16>,
}

impl ConnectTo {
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let bad = || RouteError::ConnectTo(text.to_owned());
        let fields = split_fields(text).ok_or_else(bad)?;
        let [host, port, to_host, to_port] = fields.as_slice() else {
            return Err(bad());
        };
        let port_of = |field: &str| match field {
            "" => Ok(None),
            digits => digits.parse().map(Some).map_err(|_| bad()),
        };
        let host_of = |field: &str| (!field.is_empty()).then(|| field.to_ascii_lowercase());
        Ok(Self {
            host: host_of(host),
            port: port_of(port)?,
            to_host: host_of(to_host),
            to_port: port_of(to_port)?,
        })
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        self.host
            .as_deref()
            .is_none_or(|want| want.eq_ignore_ascii_case(host))
            && self.port.is_none_or(|want| want == port)
    }
}

/// `--resolve HOST:PORT:ADDR[,ADDR...]`: HOST:PORT resolves to these addresses, tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolve {
    host: String,
    port: u16,
    addrs: Vec<IpAddr>,
}

impl Resolve {
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let bad = || RouteError::Resolve(text.to_owned());
        let (host_port, addrs) = match text.splitn(3, ':').collect::<Vec<_>>().as_slice() {
            [host, port, addrs] if !host.is_empty() => ((*host, *port), *addrs),
            _ => return Err(bad()),
        };
        let addrs = addrs
            .split(',')
            .map(|addr| addr.trim_start_matches('[').trim_end_matches(']').parse())
            .collect::<Result<Vec<IpAddr>, _>>()
            .map_err(|_| bad())?;
        Ok(Self {
            host: host_port.0.to_ascii_lowercase(),
            port: host_port.1.parse().map_err(|_| bad())?,
            addrs,
        })
    }
}

/// Where a connection for a URL's host and port really goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Resolve this name (or parse this address) as usual.
    Name(String, u16),
    /// These addresses, from `--resolve`.
    Addrs(Vec<SocketAddr>),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(host, port) if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Name(host, port) => write!(f, "{host}:{port}"),
            Self::Addrs(addrs) => {
                let addrs: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
                f.write_str(&addrs.join(", "))
            }
        }
    }
}

/// Every `--connect-to` and `--resolve` given, in order: the first that matches wins.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    pub connect_to: Vec<ConnectTo>,
    pub resolve: Vec<Resolve>,
}

impl Routes {
    /// Where a request for `host:port` connects.
    pub fn destination(&self, host: &str, port: u16) -> Destination {
        let (host, port) = match self.connect_to.iter().find(|rule| rule.matches(host, port)) {
            Some(rule) => (
                rule.to_host.clone().unwrap_or_else(|| host.to_owned()),
                rule.to_port.unwrap_or(port),
            ),
            None => (host.to_owned(), port),
        };
        match self
            .resolve
            .iter()
            .find(|rule| rule.host.eq_ignore_ascii_case(&host) && rule.port == port)
        {
            Some(rule) => Destination::Addrs(
                rule.addrs
                    .iter()
                    .map(|addr| SocketAddr::new(*addr, port))
                    .collect(),
            ),
            None => Destination::Name(host, port),
        }
    }
}

/// Splits on `:` outside brackets, so that `[::1]` is one field (without its brackets).
fn split_fields(text: &str) -> Option<Vec<String>> {
    let mut fields = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '[' => {
                let inner: String = chars.by_ref().take_while(|&c| c != ']').collect();
                fields.last_mut()?.push_str(&inner);
            }
            ':' => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(connect_to: &[&str], resolve: &[&str]) -> Routes {
        Routes {
            connect_to: connect_to
                .iter()
                .map(|text| ConnectTo::parse(text).expect(text))
                .collect(),
            resolve: resolve
                .iter()
                .map(|text| Resolve::parse(text).expect(text))
                .collect(),
        }
    }

    #[test]
    fn connect_to_sends_one_host_and_port_elsewhere() {
        let routes = routes(&["lb.example:443:127.0.0.1:8443"], &[]);
        assert_eq!(
            routes.destination("lb.example", 443),
            Destination::Name("127.0.0.1".into(), 8443)
        );
        assert_eq!(
            routes.destination("LB.example", 443),
            Destination::Name("127.0.0.1".into(), 8443)
        );
        assert_eq!(
            routes.destination("lb.example", 80),
            Destination::Name("lb.example".into(), 80)
        );
        assert_eq!(
            routes.destination("other", 443),
            Destination::Name("other".into(), 443)
        );
    }

    #[test]
    fn empty_fields_match_any_or_keep_the_request_s_own() {
        let routes = routes(&["::10.0.0.5:"], &[]);
        assert_eq!(
            routes.destination("anything", 8443),
            Destination::Name("10.0.0.5".into(), 8443)
        );
        let ipv6 = routes_for("lb.example:443:[::1]:9443");
        assert_eq!(
            ipv6.destination("lb.example", 443),
            Destination::Name("::1".into(), 9443)
        );
        assert_eq!(
            ipv6.destination("lb.example", 443).to_string(),
            "[::1]:9443"
        );
    }

    fn routes_for(connect_to: &str) -> Routes {
        routes(&[connect_to], &[])
    }

    #[test]
    fn resolve_applies_after_connect_to() {
        let routes = routes(
            &["lb.example:443:backend.internal:8443"],
            &["backend.internal:8443:127.0.0.2,127.0.0.3"],
        );
        assert_eq!(
            routes.destination("lb.example", 443),
            Destination::Addrs(vec![
                "127.0.0.2:8443".parse().expect("addr"),
                "127.0.0.3:8443".parse().expect("addr")
            ])
        );
    }

    #[test]
    fn malformed_rules_are_refused_quoting_them() {
        for bad in [
            "lb.example:443:127.0.0.1",
            "lb.example:https:127.0.0.1:443",
            "a:1:b:2:c",
        ] {
            let err = ConnectTo::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        for bad in [
            "lb.example:443",
            "lb.example:443:not-an-ip",
            ":443:127.0.0.1",
        ] {
            let err = Resolve::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
