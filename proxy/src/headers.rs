//! What a proxy must do to headers on the way through (RFC 9110): drop hop-by-hop fields, including
//! those the sender named in `Connection` (7.6.1), add itself to `Via` (7.6.3), settle the one `Host`
//! the upstream gets (RFC 9112 3.2), and tell the upstream who really asked (`X-Forwarded-For`/
//! `-Proto`/`-Host`, the de-facto fields every balancer sets).

use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA,
};
use http::uri::Authority;
use http::Version;

/// Fields that describe one connection, never the message: RFC 9110 7.6.1, plus `Proxy-Connection`,
/// which old clients still send, and the proxy credentials and challenges, which belong to the proxy
/// that asked for them (RFC 9110 11.7.1, 11.7.2): forwarded, they would hand a client's proxy
/// password to the upstream.
/// Names, not strings: removing by a string parses and hashes it again on every request.
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Why a request names no host, or more than one: RFC 9112 3.2 has a server answer 400 rather than
/// guess, since the upstream and anything that logs or routes on `Host` could each guess differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("more than one Host header field")]
    Duplicate,
    #[error("an HTTP/1.1 request without a Host header field")]
    Missing,
    #[error("a Host header field that is not a host[:port]")]
    Invalid,
    #[error("a request target with user information in its authority")]
    UserInfo,
}

/// Leaves exactly the `Host` the upstream must see, or none, for a request whose target had
/// `authority` (absolute-form in HTTP/1.1, `:authority` in HTTP/2). RFC 9112 3.2: one `Host`, and a
/// valid one, or 400; HTTP/1.1 must send it; the target's authority wins over it and replaces it
/// (3.2.2), so the upstream never sees a `Host` that names another site than the target did.
/// HTTP/1.0 and HTTP/2 may go without (HTTP/2 has `:authority`; RFC 9113 8.3.1).
pub fn settle_host(
    headers: &mut HeaderMap,
    authority: Option<&Authority>,
    version: Version,
) -> Result<(), HostError> {
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Duplicate);
    }
    match host {
        // An empty Host is valid: the grammar's reg-name may be empty (RFC 9112 3.2).
        Some(host) if !host.is_empty() && !host.to_str().is_ok_and(is_host) => {
            return Err(HostError::Invalid)
        }
        None if version == Version::HTTP_11 => return Err(HostError::Missing),
        _ => {}
    }
    if let Some(authority) = authority {
        // RFC 9110 4.2.4: userinfo in an http URI is to be treated as an error, never passed on.
        if authority.as_str().contains('@') {
            return Err(HostError::UserInfo);
        }
        if !is_host(authority.as_str()) {
            return Err(HostError::Invalid);
        }
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| HostError::Invalid)?;
        headers.insert(HOST, host);
    }
    Ok(())
}

/// `uri-host [":" port]` (RFC 9112 3.2): an authority without userinfo, its port digits only
/// (`Authority` itself takes any port text).
fn is_host(text: &str) -> bool {
    if text.contains('@') {
        return false;
    }
    let Ok(authority) = text.parse::<Authority>() else {
        return false;
    };
    match text[authority.host().len()..].strip_prefix(':') {
        Some(port) => port.bytes().all(|byte| byte.is_ascii_digit()),
        None => text.len() == authority.host().len(),
    }
}

/// Removes hop-by-hop fields, first those listed in `Connection`, then the fixed set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over their few names costs less than nine removals.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A client's address as `X-Forwarded-For` writes it.
pub fn client_value(client: IpAddr) -> HeaderValue {
    // An address's text is always a valid field value.
    HeaderValue::from_str(&client.to_string()).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Appends this proxy to `Via`, with the protocol version the message arrived in.
pub fn append_via(headers: &mut HeaderMap, version: Version) {
    let hop = match version {
        Version::HTTP_2 => "2 keepalive-proxy",
        Version::HTTP_10 => "1.0 keepalive-proxy",
        _ => "1.1 keepalive-proxy",
    };
    headers.append(VIA, HeaderValue::from_static(hop));
}

/// Sets the forwarding fields for a request that `client` sent, over TLS the proxy terminated when
/// `over_tls`, once its `Host` is settled. `X-Forwarded-For` keeps the chain a previous proxy
/// started; `-Proto` and `-Host` describe this hop's client side, which this proxy knows first-hand;
/// `-Host` is always the `Host` forwarded.
/// `client` is the client's address as a field value, made once per connection ([`client_value`]).
pub fn set_forwarded(headers: &mut HeaderMap, client: &HeaderValue, over_tls: bool) {
    if headers.contains_key(&X_FORWARDED_FOR) {
        let chain = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .filter(|value| !value.is_empty())
            .chain(client.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        if let Ok(value) = HeaderValue::from_str(&chain) {
            headers.insert(&X_FORWARDED_FOR, value);
        }
    } else {
        headers.insert(&X_FORWARDED_FOR, client.clone());
    }
    let proto = if over_tls { "https" } else { "http" };
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match headers.get(HOST).cloned() {
        Some(host) => {
            headers.insert(&X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn strips_fixed_hop_by_hop_fields_and_those_named_in_connection() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "x-other-hop"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic cHJveHk6c2VjcmV0"),
            ("proxy-authenticate", "Basic realm=\"edge\""),
            ("trailer", "x-checksum"),
            ("x-secret-hop", "1"),
            ("x-other-hop", "2"),
            ("accept", "text/plain"),
        ]);
        strip_hop_by_hop(&mut map);
        assert_eq!(map.len(), 1, "{map:?}");
        assert_eq!(map["accept"], "text/plain");
    }

    #[test]
    fn one_valid_host_is_kept() {
        for host in [
            "a.test",
            "a.test:8080",
            "a.test:",
            "[::1]:80",
            "[::1]",
            "127.0.0.1",
            "",
        ] {
            let mut map = headers(&[("host", host)]);
            assert_eq!(
                settle_host(&mut map, None, Version::HTTP_11),
                Ok(()),
                "{host:?}"
            );
            assert_eq!(map[HOST], host);
        }
    }

    #[test]
    fn two_hosts_are_refused_even_when_the_target_names_one() {
        let target: Authority = "a.test".parse().expect("authority");
        for authority in [None, Some(&target)] {
            for version in [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2] {
                let mut map = headers(&[("host", "a.test"), ("host", "b.test")]);
                assert_eq!(
                    settle_host(&mut map, authority, version),
                    Err(HostError::Duplicate),
                    "{version:?} {authority:?}"
                );
            }
        }
    }

    #[test]
    fn only_http_1_1_must_send_a_host() {
        let mut map = HeaderMap::new();
        assert_eq!(
            settle_host(&mut map, None, Version::HTTP_11),
            Err(HostError::Missing)
        );
        for version in [Version::HTTP_10, Version::HTTP_2] {
            let mut map = HeaderMap::new();
            assert_eq!(settle_host(&mut map, None, version), Ok(()), "{version:?}");
            assert!(map.get(HOST).is_none());
        }
    }

    #[test]
    fn a_host_that_is_not_an_authority_is_refused() {
        for host in [
            "a b",
            "user@a.test",
            "a.test/path",
            "a.test:port",
            "a.test:80:80",
            "http://a.test",
            "[::1",
        ] {
            let mut map = headers(&[("host", host)]);
            assert_eq!(
                settle_host(&mut map, None, Version::HTTP_11),
                Err(HostError::Invalid),
                "{host:?}"
            );
        }
    }

    #[test]
    fn the_targets_authority_replaces_host() {
        let target: Authority = "b.test:8080".parse().expect("authority");
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let mut map = headers(&[("host", "a.test")]);
            assert_eq!(settle_host(&mut map, Some(&target), version), Ok(()));
            assert_eq!(map[HOST], "b.test:8080", "{version:?}");
        }
        let mut map = HeaderMap::new();
        assert_eq!(
            settle_host(&mut map, Some(&target), Version::HTTP_2),
            Ok(())
        );
        assert_eq!(
            map[HOST], "b.test:8080",
            "HTTP/2 without Host gets :authority"
        );
    }

    #[test]
    fn a_target_with_user_information_is_refused() {
        let target: Authority = "user:pw@b.test".parse().expect("authority");
        let mut map = headers(&[("host", "b.test")]);
        assert_eq!(
            settle_host(&mut map, Some(&target), Version::HTTP_11),
            Err(HostError::UserInfo)
        );
    }

    #[test]
    fn forwarded_host_is_the_host_forwarded() {
        let mut map = headers(&[("x-forwarded-host", "spoofed.test"), ("host", "a.test")]);
        set_forwarded(
            &mut map,
            &client_value("127.0.0.1".parse().expect("ip")),
            false,
        );
        assert_eq!(map["x-forwarded-host"], "a.test");
        let mut map = headers(&[("x-forwarded-host", "spoofed.test")]);
        set_forwarded(
            &mut map,
            &client_value("127.0.0.1".parse().expect("ip")),
            false,
        );
        assert!(map.get("x-forwarded-host").is_none(), "{map:?}");
    }

    #[test]
    fn extends_an_existing_forwarded_for_chain() {
        let mut map = headers(&[("x-forwarded-for", "203.0.113.7"), ("host", "example.test")]);
        set_forwarded(
            &mut map,
            &client_value("127.0.0.1".parse().expect("ip")),
            false,
        );
        assert_eq!(map["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(map["x-forwarded-proto"], "http");
        assert_eq!(map["x-forwarded-host"], "example.test");
    }

    #[test]
    fn via_names_the_protocol_version() {
        let mut map = headers(&[("via", "1.1 edge")]);
        append_via(&mut map, Version::HTTP_2);
        let via: Vec<_> = map.get_all(VIA).iter().collect();
        assert_eq!(via, ["1.1 edge", "2 keepalive-proxy"]);
    }
}
