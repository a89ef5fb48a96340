//! The paths the proxy answers 404 for itself instead of forwarding (`PROXY_DENY_PATHS`, `/metrics` by
//! default): an upstream's operator routes are for whoever runs it, read on the upstream's own address,
//! not for every client of the balancer, as nginx's `location = /metrics { return 404; }` keeps them.
//!
//! A path is compared the way an upstream might read it, like nginx matches its locations: percent-
//! escapes decoded, empty and `.` segments dropped, `..` applied, `;parameters` ignored. So `//metrics`,
//! `/%6detrics` or `/polls/../metrics` cannot slip past to an upstream that normalises them. A denied
//! path denies everything under it (`/metrics` also `/metrics/x`); letters are compared as they are.

use std::fmt;
use std::str::FromStr;

/// The denied paths, each as its segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyPaths(Vec<Vec<Vec<u8>>>);

impl DenyPaths {
    /// Whether a request for `path` must be answered 404 rather than forwarded.
    pub fn denies(&self, path: &str) -> bool {
        if self.0.is_empty() {
            return false;
        }
        // Most paths need no decoding and no dot segments: compared as they are, without allocating.
        if !path.bytes().any(|byte| matches!(byte, b'%' | b';' | b'.')) {
            return self.0.iter().any(|denied| {
                let mut plain = path.split('/').filter(|segment| !segment.is_empty());
                denied
                    .iter()
                    .all(|segment| plain.next().map(str::as_bytes) == Some(segment.as_slice()))
            });
        }
        let segments = segments(path);
        self.0.iter().any(|denied| segments.starts_with(denied))
    }
}

const FORM: &str =
    "expected paths starting with /, separated by commas (like /metrics,/admin), or off";

impl FromStr for DenyPaths {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value.is_empty() || value.eq_ignore_ascii_case("off") {
            return Ok(Self(Vec::new()));
        }
        value
            .split(',')
            .map(str::trim)
            .map(|path| {
                if path.starts_with('/') {
                    Ok(segments(path))
                } else {
                    Err(format!("{path:?} is not a path; {FORM}"))
                }
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl fmt::Display for DenyPaths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("off");
        }
        let paths: Vec<String> = self
            .0
            .iter()
            .map(|path| {
                path.iter()
                    .map(|segment| format!("/{}", String::from_utf8_lossy(segment)))
                    .collect()
            })
            .collect();
        f.write_str(&paths.join(","))
    }
}

/// The segments of `path` as an upstream may resolve it (see the module comment).
fn segments(path: &str) -> Vec<Vec<u8>> {
    let decoded = percent_decoded(path.as_bytes());
    let mut segments: Vec<Vec<u8>> = Vec::new();
    for segment in decoded.split(|&byte| byte == b'/') {
        let segment = match segment.iter().position(|&byte| byte == b';') {
            Some(end) => &segment[..end],
            None => segment,
        };
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            segment => segments.push(segment.to_vec()),
        }
    }
    segments
}

/// `bytes` with each `%XX` decoded; a `%` not followed by two hex digits stays as it is.
fn percent_decoded(bytes: &[u8]) -> Vec<u8> {
    let hex = |byte: u8| char::from(byte).to_digit(16);
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some((&byte, tail)) = rest.split_first() {
        if let (b'%', [high, low, after @ ..]) = (byte, tail) {
            if let (Some(high), Some(low)) = (hex(*high), hex(*low)) {
                // Two hex digits make at most 255.
                decoded.push((high * 16 + low) as u8);
                rest = after;
                continue;
            }
        }
        decoded.push(byte);
        rest = tail;
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deny(value: &str) -> DenyPaths {
        value.parse().expect("a valid list")
    }

    #[test]
    fn metrics_is_denied_however_it_is_spelled() {
        let paths = deny("/metrics");
        for path in [
            "/metrics",
            "/metrics/",
            "//metrics",
            "/./metrics",
            "/polls/../metrics",
            "/%6detrics",
            "/%6Detrics",
            "/metrics;x=1",
            "/metrics/anything",
            "/metrics%2Fx",
        ] {
            assert!(paths.denies(path), "{path} forwarded");
        }
    }

    #[test]
    fn other_paths_are_forwarded() {
        let paths = deny("/metrics,/admin");
        for path in [
            "/",
            "/polls/",
            "/polls/streamed",
            "/metricsx",
            "/x/metrics",
            "/METRICS",
            "/%zzmetrics",
            "*",
        ] {
            assert!(!paths.denies(path), "{path} denied");
        }
        assert!(paths.denies("/admin/x"));
    }

    #[test]
    fn off_denies_nothing() {
        for value in ["off", "", "  ", "OFF"] {
            let paths = deny(value);
            assert!(!paths.denies("/metrics"), "{value:?}");
            assert_eq!(paths.to_string(), "off");
        }
    }

    #[test]
    fn a_list_reads_back_as_written() {
        assert_eq!(deny(" /metrics , /admin/ ").to_string(), "/metrics,/admin");
    }

    #[test]
    fn an_entry_that_is_not_a_path_is_refused_by_name() {
        let err = "/metrics,metrics"
            .parse::<DenyPaths>()
            .expect_err("refused");
        assert!(
            err.contains("\"metrics\"") && err.contains("/metrics,/admin"),
            "{err}"
        );
    }
}
