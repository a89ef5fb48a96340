//! Fault injection: toxiproxy's toxics brought to L7, and a buffering hop like nginx's
//! `proxy_buffering`, so that every way a long stream dies can be reproduced on purpose.
//!
//! Faults are set per proxy by env (`PROXY_FAULT_*`, `PROXY_BUFFERING*`) and, as far as
//! `PROXY_FAULT_HEADERS` allows ([`policy`]), per request by `x-keepalive-fault-*` headers (which win,
//! and never reach the upstream), so that one proxy serves many experiments. `PROXY_FAULT_PROBABILITY`
//! picks the share of requests the toxics apply to; buffering is the hop's nature and applies to every
//! response.
//!
//! The layer sits between the edge and the timers: the timers measure the upstream, the faults act on
//! what the client receives. A fault that ends a stream fails the body with a [`FaultCut`], which the
//! edge turns into the same truncation as a timer's cut; every fault is logged and counted once, when it
//! first acts, by [`body::FaultBody`].

pub mod body;
pub mod compression;
pub mod policy;
pub mod reset;
pub mod value;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::control::settings::{Live, Settings};
use crate::metrics::Metrics;
use crate::BoxError;
use body::{FaultBody, SilenceTimers};
use compression::{CompressionHop, GzipBody};
use policy::{FaultHeaders, MAX_AFTER, MAX_LATENCY, MIN_BANDWIDTH};
use reset::ResetSwitch;
use value::{
    parse_buffering, parse_probability, parse_rate_from, parse_size, parse_switch,
    parse_timer_within, FaultValueError,
};

/// Every fault, by the name used in env vars, headers, logs and `proxy_faults_injected_total{fault}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    Latency,
    Bandwidth,
    LimitBytes,
    ResetAfter,
    BlackholeAfter,
    Buffering,
    Compression,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::Latency,
        Fault::Bandwidth,
        Fault::LimitBytes,
        Fault::ResetAfter,
        Fault::BlackholeAfter,
        Fault::Buffering,
        Fault::Compression,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Latency => "latency",
            Fault::Bandwidth => "bandwidth",
            Fault::LimitBytes => "limit_bytes",
            Fault::ResetAfter => "reset_after",
            Fault::BlackholeAfter => "blackhole_after",
            Fault::Buffering => "buffering",
            Fault::Compression => "compression",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fault ended the stream; the edge cuts the client off as it does for a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{fault} fault cut the stream")]
pub struct FaultCut {
    pub fault: Fault,
}

/// A per-request fault header the proxy cannot use; answered 400 at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{header}: {reason}")]
pub struct BadFaultHeader {
    pub header: &'static str,
    /// Names the value and the accepted form or limit.
    pub reason: FaultValueError,
}

/// The toxics and the buffering hop; `None` is off.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultSettings {
    /// Hold every body chunk this long before forwarding it.
    pub latency: Option<Duration>,
    /// Forward at most this many body bytes a second.
    pub bandwidth: Option<u64>,
    /// Forward this many body bytes, then cut the stream.
    pub limit_bytes: Option<u64>,
    /// This long after the response began, reset the client's connection (TCP RST).
    pub reset_after: Option<Duration>,
    /// This long after the response began, stop forwarding, and keep both connections open.
    pub blackhole_after: Option<Duration>,
    /// Share of requests, 0..=1, the toxics above apply to.
    pub probability: f64,
    /// Hold body bytes until this many are buffered (or the body ends), like `proxy_buffering`.
    pub buffering: Option<u64>,
    /// Buffer even responses that say `X-Accel-Buffering: no`.
    pub buffering_ignore_header: bool,
    /// A gzip hop that does not flush.
    pub compression: CompressionHop,
}

impl FaultSettings {
    /// Nothing to do for any request: the layer passes bodies through untouched.
    fn is_inert(&self) -> bool {
        self.buffering.is_none()
            && !self.compression.enabled
            && (self.probability <= 0.0 || !self.has_toxics())
    }

    fn has_toxics(&self) -> bool {
        self.latency.is_some()
            || self.bandwidth.is_some()
            || self.limit_bytes.is_some()
            || self.reset_after.is_some()
            || self.blackhole_after.is_some()
    }

    /// These settings with a request's `x-keepalive-fault-*` headers applied as `policy` allows, and
    /// whether the request asked for a toxic without naming a probability: an experiment that asks
    /// for a fault wants to see it, whatever share of requests the proxy's own settings give faults to.
    pub fn with_headers(
        mut self,
        headers: &HeaderMap,
        policy: FaultHeaders,
    ) -> Result<(Self, bool), BadFaultHeader> {
        if !policy.any() {
            return Ok((self, false));
        }
        let (mut toxic_on, mut probability_named) = (false, false);
        for (name, value) in headers {
            let Some(header) = FAULT_HEADERS.iter().find(|header| *name == header.name) else {
                continue;
            };
            let text = String::from_utf8_lossy(value.as_bytes());
            let bad = |reason| BadFaultHeader {
                header: header.name.as_str(),
                reason,
            };
            if !policy.honours(header.for_demo) {
                return Err(bad(FaultValueError::NotAllowed {
                    value: text.into_owned(),
                }));
            }
            let applied = (header.apply)(&mut self, &text).map_err(bad)?;
            toxic_on |= applied == Applied::ToxicOn;
            probability_named |= applied == Applied::Probability;
        }
        Ok((self, toxic_on && !probability_named))
    }
}

/// The per-request fault headers (honoured as `PROXY_FAULT_HEADERS` allows), one per setting.
pub const LATENCY_HEADER: HeaderName = HeaderName::from_static("x-keepalive-fault-latency");
pub const BANDWIDTH_HEADER: HeaderName = HeaderName::from_static("x-keepalive-fault-bandwidth");
pub const LIMIT_BYTES_HEADER: HeaderName = HeaderName::from_static("x-keepalive-fault-limit-bytes");
pub const RESET_AFTER_HEADER: HeaderName = HeaderName::from_static("x-keepalive-fault-reset-after");
pub const BLACKHOLE_AFTER_HEADER: HeaderName =
    HeaderName::from_static("x-keepalive-fault-blackhole-after");
pub const PROBABILITY_HEADER: HeaderName = HeaderName::from_static("x-keepalive-fault-probability");
pub const BUFFERING_HEADER: HeaderName = HeaderName::from_static("x-keepalive-buffering");
pub const IGNORE_ACCEL_BUFFERING_HEADER: HeaderName =
    HeaderName::from_static("x-keepalive-buffering-ignore-header");

/// A per-request override: its header, whether `PROXY_FAULT_HEADERS=demo` honours it, and how it
/// changes the settings (or why its value is refused: each parser holds the header's limit).
struct FaultHeader {
    name: HeaderName,
    for_demo: bool,
    apply: fn(&mut FaultSettings, &str) -> Result<Applied, FaultValueError>,
}

/// What a fault header did to the settings.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    ToxicOn,
    Probability,
    Other,
}

fn toxic<T>(value: Option<T>) -> Applied {
    if value.is_some() {
        Applied::ToxicOn
    } else {
        Applied::Other
    }
}

static FAULT_HEADERS: [FaultHeader; 8] = [
    FaultHeader {
        name: LATENCY_HEADER,
        for_demo: true,
        apply: |settings, value| {
            settings.latency = parse_timer_within(value, MAX_LATENCY)?;
            Ok(toxic(settings.latency))
        },
    },
    FaultHeader {
        name: BANDWIDTH_HEADER,
        for_demo: true,
        apply: |settings, value| {
            settings.bandwidth = parse_rate_from(value, MIN_BANDWIDTH)?;
            Ok(toxic(settings.bandwidth))
        },
    },
    FaultHeader {
        name: LIMIT_BYTES_HEADER,
        for_demo: true,
        apply: |settings, value| {
            settings.limit_bytes = parse_size(value)?;
            Ok(toxic(settings.limit_bytes))
        },
    },
    FaultHeader {
        name: RESET_AFTER_HEADER,
        for_demo: true,
        apply: |settings, value| {
            settings.reset_after = parse_timer_within(value, MAX_AFTER)?;
            Ok(toxic(settings.reset_after))
        },
    },
    FaultHeader {
        name: BLACKHOLE_AFTER_HEADER,
        // It holds the stream and both connections past the client's interest: the operator's call.
        for_demo: false,
        apply: |settings, value| {
            settings.blackhole_after = parse_timer_within(value, MAX_AFTER)?;
            Ok(toxic(settings.blackhole_after))
        },
    },
    FaultHeader {
        name: PROBABILITY_HEADER,
        for_demo: true,
        apply: |settings, value| {
            settings.probability = parse_probability(value)?;
            Ok(Applied::Probability)
        },
    },
    FaultHeader {
        name: BUFFERING_HEADER,
        for_demo: true,
        apply: |settings, value| {
            settings.buffering = parse_buffering(value)?;
            Ok(Applied::Other)
        },
    },
    FaultHeader {
        name: IGNORE_ACCEL_BUFFERING_HEADER,
        for_demo: true,
        apply: |settings, value| {
            settings.buffering_ignore_header = parse_switch(value)?;
            Ok(Applied::Other)
        },
    },
];

/// Each request gets the faults in force when it arrives, and keeps them to its end.
#[derive(Clone)]
pub struct FaultLayer {
    /// The faults, and the idle and total timers below this layer, which a blackhole keeps from
    /// seeing its silence.
    live: Live,
    policy: FaultHeaders,
    metrics: Metrics,
}

impl FaultLayer {
    /// `policy`: which `x-keepalive-*` headers requests may set their own faults with.
    pub fn new(live: Live, policy: FaultHeaders, metrics: Metrics) -> Self {
        Self {
            live,
            policy,
            metrics,
        }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Faults<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Faults {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Faults<S> {
    inner: S,
    layer: FaultLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Faults<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = BoxError>,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes, Error = BoxError> + Send + 'static,
{
    type Response = Response<FaultBody<GzipBody<ResBody>>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        // The edge read the settings for this exchange; a layer tested alone reads them itself.
        let now = request
            .extensions()
            .get::<Settings>()
            .copied()
            .unwrap_or_else(|| layer.live.now());
        let settings = match now.faults.with_headers(request.headers(), layer.policy) {
            Ok((requested, true)) => FaultSettings {
                probability: 1.0,
                ..requested
            },
            Ok((requested, false)) => requested,
            Err(bad) => return Box::pin(std::future::ready(Err(bad.into()))),
        };
        // The upstream is not part of the experiment's plumbing. Most requests carry no such header:
        // one look at the names spares them eight removals.
        let carries_fault_headers = request
            .headers()
            .keys()
            .any(|name| name.as_str().starts_with("x-keepalive-"));
        if carries_fault_headers {
            for header in &FAULT_HEADERS {
                request.headers_mut().remove(&header.name);
            }
        }
        if settings.is_inert() {
            let response = self.inner.call(request);
            return Box::pin(async move {
                Ok(compression::identity(response.await?).map(FaultBody::passthrough))
            });
        }
        let accepts_gzip = compression::accepts_gzip(request.headers());
        let toxic = settings.probability >= 1.0 || fastrand::f64() < settings.probability;
        let context = body::FaultContext {
            metrics: layer.metrics.clone(),
            request_id: request
                .headers()
                .get("x-request-id")
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("-")),
            // HTTP/1 only: an HTTP/2 connection carries other streams, which a RST would take along.
            reset: request
                .extensions()
                .get::<ResetSwitch>()
                .filter(|_| request.version() < http::Version::HTTP_2)
                .cloned(),
            // The timers below fix their total deadline at this same call.
            silence: SilenceTimers {
                idle: now.timers.idle,
                deadline: now
                    .timers
                    .max_duration
                    .map(|limit| (Instant::now() + limit, limit)),
            },
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let buffering = settings.buffering.filter(|_| {
                settings.buffering_ignore_header
                    || response
                        .headers()
                        .get("x-accel-buffering")
                        .is_none_or(|value| !value.as_bytes().eq_ignore_ascii_case(b"no"))
            });
            let plan = body::FaultPlan {
                latency: settings.latency.filter(|_| toxic),
                bandwidth: settings.bandwidth.filter(|_| toxic),
                limit_bytes: settings.limit_bytes.filter(|_| toxic),
                reset_after: settings.reset_after.filter(|_| toxic),
                blackhole_after: settings.blackhole_after.filter(|_| toxic),
                buffering,
            };
            let response = if settings
                .compression
                .applies(accepts_gzip, response.headers())
            {
                context.metrics.fault_injected(Fault::Compression);
                tracing::warn!(
                    fault = %Fault::Compression,
                    request_id = context.request_id.to_str().unwrap_or("-"),
                    "compression fault: gzipping without flushing; small chunks wait in the encoder",
                );
                compression::compress(response)
            } else {
                compression::identity(response)
            };
            Ok(response.map(|inner| FaultBody::new(inner, plan, context)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn headers_override_the_configured_faults() {
        let configured = FaultSettings {
            latency: Some(Duration::from_secs(1)),
            limit_bytes: Some(100),
            probability: 0.5,
            ..FaultSettings::default()
        };
        let headers = headers(&[
            ("x-keepalive-fault-latency", "off"),
            ("x-keepalive-fault-reset-after", "1200ms"),
            ("x-keepalive-buffering", "64KiB"),
        ]);
        let (settings, forced) = configured
            .with_headers(&headers, FaultHeaders::Demo)
            .expect("valid headers");
        assert_eq!(settings.latency, None);
        assert_eq!(settings.limit_bytes, Some(100));
        assert_eq!(settings.reset_after, Some(Duration::from_millis(1200)));
        assert_eq!(settings.buffering, Some(65536));
        assert!(forced, "asking for a reset forces the draw");
    }

    #[test]
    fn turning_a_fault_off_does_not_force_the_others() {
        let configured = FaultSettings {
            limit_bytes: Some(100),
            probability: 0.1,
            ..FaultSettings::default()
        };
        let headers = headers(&[("x-keepalive-fault-latency", "off")]);
        let (settings, forced) = configured
            .with_headers(&headers, FaultHeaders::Demo)
            .expect("valid headers");
        assert!(!forced);
        assert_eq!(settings.probability, 0.1);
    }

    #[test]
    fn a_bad_header_names_itself_its_value_and_the_form() {
        let bad = FaultSettings::default()
            .with_headers(
                &headers(&[("x-keepalive-fault-limit-bytes", "many")]),
                FaultHeaders::All,
            )
            .expect_err("many is not a size");
        let message = bad.to_string();
        assert!(
            message.starts_with("x-keepalive-fault-limit-bytes: \"many\""),
            "{message}"
        );
        assert!(message.contains("64KiB"), "{message}");
        let too_long = FaultSettings::default()
            .with_headers(
                &headers(&[("x-keepalive-fault-reset-after", "400d")]),
                FaultHeaders::All,
            )
            .expect_err("400 days is too long");
        assert!(
            too_long.to_string().contains("at most 365 days"),
            "{too_long}"
        );
    }

    #[test]
    fn a_header_beyond_its_limit_is_refused_naming_the_value_and_the_limit() {
        for (header, value, limit) in [
            ("x-keepalive-fault-latency", "365d", "1m"),
            ("x-keepalive-fault-latency", "61s", "1m"),
            ("x-keepalive-fault-reset-after", "2h", "1h"),
            ("x-keepalive-fault-blackhole-after", "90m", "1h"),
            ("x-keepalive-fault-bandwidth", "1", "100 bytes a second"),
            ("x-keepalive-fault-bandwidth", "99", "100 bytes a second"),
            ("x-keepalive-buffering", "100GB", "1.0 MiB"),
            ("x-keepalive-buffering", "1025KiB", "1.0 MiB"),
        ] {
            let bad = FaultSettings::default()
                .with_headers(&headers(&[(header, value)]), FaultHeaders::All)
                .expect_err(value);
            let message = bad.to_string();
            assert!(
                message.starts_with(&format!("{header}: {value:?}")) && message.contains(limit),
                "{message}"
            );
        }
        let at_the_limits = headers(&[
            ("x-keepalive-fault-latency", "1m"),
            ("x-keepalive-fault-reset-after", "1h"),
            ("x-keepalive-fault-blackhole-after", "1h"),
            ("x-keepalive-fault-bandwidth", "100"),
            ("x-keepalive-buffering", "1MiB"),
        ]);
        let (settings, _) = FaultSettings::default()
            .with_headers(&at_the_limits, FaultHeaders::All)
            .expect("every limit itself is allowed");
        assert_eq!(settings.latency, Some(policy::MAX_LATENCY));
        assert_eq!(settings.bandwidth, Some(policy::MIN_BANDWIDTH));
        assert_eq!(settings.buffering, Some(policy::MAX_BUFFERING));
    }

    #[test]
    fn the_demo_policy_refuses_the_blackhole_and_says_how_to_allow_it() {
        let blackhole = headers(&[("x-keepalive-fault-blackhole-after", "1s")]);
        let bad = FaultSettings::default()
            .with_headers(&blackhole, FaultHeaders::Demo)
            .expect_err("the blackhole is not for the demo");
        let message = bad.to_string();
        assert!(
            message.contains("x-keepalive-fault-blackhole-after")
                && message.contains("PROXY_FAULT_HEADERS=all"),
            "{message}"
        );
        let (settings, _) = FaultSettings::default()
            .with_headers(&blackhole, FaultHeaders::All)
            .expect("all honours the blackhole");
        assert_eq!(settings.blackhole_after, Some(Duration::from_secs(1)));
    }

    #[test]
    fn the_off_policy_ignores_every_header_even_a_bad_one() {
        let requested = headers(&[
            ("x-keepalive-fault-limit-bytes", "70"),
            ("x-keepalive-fault-latency", "365d"),
        ]);
        let (settings, forced) = FaultSettings::default()
            .with_headers(&requested, FaultHeaders::Off)
            .expect("nothing is read");
        assert_eq!(settings, FaultSettings::default());
        assert!(!forced);
    }

    #[test]
    fn naming_the_probability_keeps_the_draw() {
        let requested = headers(&[
            ("x-keepalive-fault-latency", "1s"),
            ("x-keepalive-fault-probability", "0.1"),
        ]);
        let (_, forced) = FaultSettings::default()
            .with_headers(&requested, FaultHeaders::Demo)
            .expect("valid headers");
        assert!(!forced);
    }
}
