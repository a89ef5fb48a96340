//! What a proxy must do to headers on the way through (RFC 9110): drop hop-by-hop fields, including
//! those the sender named in `Connection` (7.6.1), add itself to `Via` (7.6.3), and tell the upstream
//! who really asked (`X-Forwarded-For`/`-Proto`/`-Host`, the de-facto fields every balancer sets).

use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA,
};
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

/// Removes hop-by-hop fields, first those listed in `Connection`, then the fixed set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// Appends this proxy to `Via`, with the protocol version the message arrived in.
pub fn append_via(headers: &mut HeaderMap, version: Version) {
    let hop = match version {
        Version::HTTP_2 => "2 keepalive-proxy",
        Version::HTTP_10 => "1.0 keepalive-proxy",
        _ => "1.1 keepalive-proxy",
    };
    headers.append(VIA, HeaderValue::from_static(hop));
}

/// Sets the forwarding fields for a request that `client` sent to `host` over plain HTTP.
/// `X-Forwarded-For` keeps the chain a previous proxy started; `-Proto` and `-Host` describe this hop's
/// client side, which this proxy knows first-hand.
pub fn set_forwarded(headers: &mut HeaderMap, client: IpAddr, host: Option<HeaderValue>) {
    let chain = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    let forwarded_for = if chain.is_empty() {
        client.to_string()
    } else {
        format!("{chain}, {client}")
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(&X_FORWARDED_FOR, value);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match host.or_else(|| headers.get(HOST).cloned()) {
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
    fn extends_an_existing_forwarded_for_chain() {
        let mut map = headers(&[("x-forwarded-for", "203.0.113.7"), ("host", "example.test")]);
        set_forwarded(&mut map, "127.0.0.1".parse().expect("ip"), None);
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
