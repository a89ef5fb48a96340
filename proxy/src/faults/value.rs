//! Reading fault values the way users type them, in env vars and in headers alike: sizes (`70`,
//! `64KiB`), shares of requests (`0.5`), switches (`1`, `off`), durations (`250ms`). Each refusal is a
//! [`FaultValueError`] that names the value and the accepted form or limit, so that a 400 or a start-up
//! error is enough to fix the value without the docs.

use std::time::Duration;

use keepalive_common::duration::{display, parse_timer, DurationError};
use keepalive_common::switch::{self, SwitchError};

use super::policy::MAX_BUFFERING;

/// Why a fault value was refused; the message names the value and what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultValueError {
    #[error("{value:?} is not a size like 70, 1KiB or 64KiB; 0 or off disables")]
    Size { value: String },
    #[error("{value:?} is not a probability from 0 to 1, like 0.5")]
    Probability { value: String },
    #[error(transparent)]
    Switch(#[from] SwitchError),
    #[error("{value:?} is not {form}")]
    Choice { value: String, form: &'static str },
    #[error(transparent)]
    Duration(#[from] DurationError),
    #[error("{value:?} is more than {limit}, the {which}")]
    AboveLimit {
        value: String,
        limit: String,
        /// What the limit is, e.g. "most a request may ask for".
        which: &'static str,
    },
    #[error("{value:?} is less than {limit}, the least a request may ask for")]
    BelowLimit { value: String, limit: String },
    #[error("{value:?}: this header is honoured only with PROXY_FAULT_HEADERS=all (now demo)")]
    NotAllowed { value: String },
}

/// A byte size (`70`, `1KiB`, `64KiB`, `1MB`), `None` for `0`/`off`; for env vars and headers.
pub fn parse_size(value: &str) -> Result<Option<u64>, FaultValueError> {
    let trimmed = value.trim();
    if trimmed.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let size: bytesize::ByteSize = trimmed.parse().map_err(|_| FaultValueError::Size {
        value: value.to_owned(),
    })?;
    Ok((size.as_u64() > 0).then_some(size.as_u64()))
}

/// The buffering hop's size: a size no larger than [`MAX_BUFFERING`], from env or header alike. The
/// buffer is held in memory per response, so its size is what one response can make the proxy hold.
pub fn parse_buffering(value: &str) -> Result<Option<u64>, FaultValueError> {
    let size = parse_size(value)?;
    match size {
        Some(bytes) if bytes > MAX_BUFFERING => Err(FaultValueError::AboveLimit {
            value: value.to_owned(),
            limit: bytesize::ByteSize(MAX_BUFFERING).to_string(),
            which: "largest buffer the hop may hold",
        }),
        _ => Ok(size),
    }
}

/// A share of requests, from 0 to 1.
pub fn parse_probability(value: &str) -> Result<f64, FaultValueError> {
    match value.trim().parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(FaultValueError::Probability {
            value: value.to_owned(),
        }),
    }
}

/// `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off`.
pub fn parse_switch(value: &str) -> Result<bool, FaultValueError> {
    Ok(switch::parse_switch(value)?)
}

/// A timer (`250ms`, `0`/`off` disables) no longer than `limit`, for a request.
pub fn parse_timer_within(
    value: &str,
    limit: Duration,
) -> Result<Option<Duration>, FaultValueError> {
    let timer = parse_timer(value)?;
    match timer {
        Some(timer) if timer > limit => Err(FaultValueError::AboveLimit {
            value: value.to_owned(),
            limit: display(limit),
            which: "most a request may ask for",
        }),
        _ => Ok(timer),
    }
}

/// A rate in bytes a second (`0`/`off` disables) no lower than `floor`, for a request.
pub fn parse_rate_from(value: &str, floor: u64) -> Result<Option<u64>, FaultValueError> {
    let rate = parse_size(value)?;
    match rate {
        Some(rate) if rate < floor => Err(FaultValueError::BelowLimit {
            value: value.to_owned(),
            limit: format!("{floor} bytes a second"),
        }),
        _ => Ok(rate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_nginx_configs() {
        assert_eq!(parse_size("70"), Ok(Some(70)));
        assert_eq!(parse_size("1KiB"), Ok(Some(1024)));
        assert_eq!(parse_size("64KiB"), Ok(Some(65536)));
        assert_eq!(parse_size("1KB"), Ok(Some(1000)));
        assert_eq!(parse_size("0"), Ok(None));
        assert_eq!(parse_size("off"), Ok(None));
        for bad in ["lots", "-1", "1 parsec", ""] {
            let err = parse_size(bad).expect_err(bad);
            assert!(err.to_string().contains("64KiB"), "{err}");
        }
    }

    #[test]
    fn probabilities_are_shares_from_0_to_1() {
        assert_eq!(parse_probability("0.25"), Ok(0.25));
        assert_eq!(parse_probability("1"), Ok(1.0));
        for bad in ["1.5", "-0.1", "NaN", "half"] {
            assert!(parse_probability(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_buffering_hop_holds_at_most_its_limit_from_env_or_header() {
        assert_eq!(parse_buffering("1MiB"), Ok(Some(MAX_BUFFERING)));
        assert_eq!(parse_buffering("off"), Ok(None));
        let err = parse_buffering("100GB").expect_err("100 GB");
        assert!(err.to_string().contains("1.0 MiB"), "{err}");
    }
}
