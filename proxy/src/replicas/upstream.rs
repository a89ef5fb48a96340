//! `PROXY_UPSTREAM`: the replicas' addresses as the operator writes them, one URL or several
//! separated by commas (`http://10.0.0.1:8000,http://10.0.0.2:8000`). A host that is a name stands
//! for every address it resolves to, resolved again while the proxy runs (`refresh`), so that
//! `docker compose up --scale server=3` behind one service name is three replicas.

use std::net::{IpAddr, SocketAddr};

use http::uri::{Authority, Scheme};
use http::Uri;

/// The upstream replicas: one scheme for all, and the authorities the operator wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    scheme: Scheme,
    targets: Vec<Authority>,
}

/// One written authority: an address, or a name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

impl Upstream {
    /// Whether the proxy speaks TLS to the upstream.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// Each written host, as the URL spells it (an IPv6 address in brackets).
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.targets.iter().map(Authority::host)
    }

    pub fn targets(&self) -> Vec<Target> {
        let default_port = if self.is_https() { 443 } else { 80 };
        self.targets
            .iter()
            .map(|authority| {
                let port = authority.port_u16().unwrap_or(default_port);
                let host = authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                match host.parse::<IpAddr>() {
                    Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
                    Err(_) => Target::Name {
                        host: host.to_owned(),
                        port,
                    },
                }
            })
            .collect()
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, authority) in self.targets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}://{authority}", self.scheme)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Upstream {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        const FORM: &str = "expected http:// or https:// URLs with a host and port, separated by commas, like http://127.0.0.1:8000 or http://10.0.0.1:8000,http://10.0.0.2:8000";
        let mut scheme: Option<Scheme> = None;
        let mut targets = Vec::new();
        for one in value
            .split(',')
            .map(str::trim)
            .filter(|one| !one.is_empty())
        {
            let uri: Uri = one.parse().map_err(|_| format!("{one:?}: {FORM}"))?;
            let this = match uri.scheme() {
                Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => s.clone(),
                _ => {
                    return Err(format!(
                        "{one:?}: only http:// and https:// upstreams are supported; {FORM}"
                    ))
                }
            };
            if scheme.as_ref().is_some_and(|first| *first != this) {
                return Err(format!(
                    "{one:?}: every replica is spoken to alike, all http:// or all https://"
                ));
            }
            let path_is_root = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
            match uri.authority() {
                Some(authority) if path_is_root => targets.push(authority.clone()),
                _ => return Err(format!("{one:?}: {FORM}")),
            }
            scheme = Some(this);
        }
        match scheme {
            Some(scheme) => Ok(Self { scheme, targets }),
            None => Err(FORM.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_or_several_urls_of_one_scheme() {
        let one: Upstream = "http://127.0.0.1:8000".parse().expect("valid");
        assert_eq!(one.to_string(), "http://127.0.0.1:8000");
        assert_eq!(
            one.targets(),
            [Target::Addr("127.0.0.1:8000".parse().expect("addr"))]
        );
        let many: Upstream = "http://10.0.0.1:8000, http://server:8000/,http://[::1]:9000"
            .parse()
            .expect("valid");
        assert_eq!(
            many.to_string(),
            "http://10.0.0.1:8000,http://server:8000,http://[::1]:9000"
        );
        assert_eq!(
            many.targets()[1],
            Target::Name {
                host: "server".to_owned(),
                port: 8000
            }
        );
        assert_eq!(
            many.targets()[2],
            Target::Addr("[::1]:9000".parse().expect("addr"))
        );
        let https: Upstream = "https://origin.example:8443".parse().expect("valid");
        assert!(https.is_https());
        for bad in [
            "ftp://a:1",
            "127.0.0.1:8000",
            "http://a:1/prefix",
            "https://a:1/prefix",
            "http://a:1,https://b:2",
            "not a url",
            "",
            ",",
        ] {
            assert!(bad.parse::<Upstream>().is_err(), "{bad:?} accepted");
        }
    }
}
