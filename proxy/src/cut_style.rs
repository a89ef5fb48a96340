//! How a cut the proxy makes mid-stream (a timer, a byte-limit fault) looks to the client. Real
//! proxies differ, and the difference decides whether a client can notice at all:
//!
//! - `truncate` (nginx, Apache): the connection closes without the chunked body's last chunk; curl
//!   exits 18, any HTTP client can tell the body is incomplete. HTTP/2: RST_STREAM.
//! - `clean`: the terminating chunk is sent, as some proxies do after "aborting with incomplete
//!   response": the cut looks exactly like a normal end (curl exits 0). HTTP/2: END_STREAM.
//! - `reset`: the connection is reset (TCP RST; curl exits 56). HTTP/2: RST_STREAM, the
//!   connection's other streams untouched.
//!
//! A cut the upstream makes (it broke off) is passed on as a truncation whatever the style: the style
//! is about what this proxy does, not a way to hide an upstream's failure.

use http::{HeaderMap, HeaderName};

use crate::faults::value::FaultValueError;
use crate::faults::BadFaultHeader;

/// Per request, `x-keepalive-cut-style: clean` overrides `PROXY_CUT_STYLE` (unless `PROXY_FAULT_HEADERS=off`).
pub const CUT_STYLE_HEADER: HeaderName = HeaderName::from_static("x-keepalive-cut-style");

const FORM: &str = "truncate, clean or reset";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CutStyle {
    #[default]
    Truncate,
    Clean,
    Reset,
}

impl CutStyle {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncate => "truncate",
            Self::Clean => "clean",
            Self::Reset => "reset",
        }
    }

    /// What the log says the client got.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Truncate => "cutting the client off without the last chunk",
            Self::Clean => "ending the body as if complete: the client cannot tell it was cut",
            Self::Reset => "resetting the client (TCP RST; RST_STREAM over HTTP/2)",
        }
    }

    /// The style a request asked for by header, or `default`; `Err` names a bad value.
    pub fn requested(headers: &HeaderMap, default: Self) -> Result<Self, BadFaultHeader> {
        let Some(value) = headers.get(&CUT_STYLE_HEADER) else {
            return Ok(default);
        };
        let text = String::from_utf8_lossy(value.as_bytes());
        let bad = || BadFaultHeader {
            header: "x-keepalive-cut-style",
            reason: FaultValueError::Choice {
                value: text.clone().into_owned(),
                form: FORM,
            },
        };
        match text.trim().to_ascii_lowercase().as_str() {
            "truncate" => Ok(Self::Truncate),
            "clean" => Ok(Self::Clean),
            "reset" => Ok(Self::Reset),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_may_choose_its_cut_style() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            CutStyle::requested(&headers, CutStyle::Reset),
            Ok(CutStyle::Reset)
        );
        headers.insert(CUT_STYLE_HEADER, "clean".parse().expect("value"));
        assert_eq!(
            CutStyle::requested(&headers, CutStyle::Truncate),
            Ok(CutStyle::Clean)
        );
        headers.insert(CUT_STYLE_HEADER, "polite".parse().expect("value"));
        let bad = CutStyle::requested(&headers, CutStyle::Truncate).expect_err("polite");
        assert!(
            bad.to_string().contains("truncate, clean or reset"),
            "{bad}"
        );
    }
}
