//! Property tests of every parser that reads outside input into the proxy: the `x-keepalive-*`
//! headers any client may send (each fault header under each policy, the cut style), and each
//! setting's value as an operator types it (durations, sizes, shares, switches, choices, addresses).
//! Whatever the input: no panic, and a refusal is a message that quotes the input, so that whoever
//! sent it can tell which value was wrong. Inputs lean towards what parsers get wrong: numbers too
//! large for any integer or duration, signs, exponents, units, and bytes that are not UTF-8.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use keepalive_common::config::{try_parse_from, ConfigError};
use keepalive_proxy::config::TimerSetting;
use keepalive_proxy::cut_style::{CutStyle, CUT_STYLE_HEADER};
use keepalive_proxy::faults::policy::FaultHeaders;
use keepalive_proxy::faults::value::{
    parse_buffering, parse_probability, parse_rate_from, parse_size, parse_switch,
    parse_timer_within,
};
use keepalive_proxy::faults::{
    FaultSettings, BANDWIDTH_HEADER, BLACKHOLE_AFTER_HEADER, BUFFERING_HEADER,
    IGNORE_ACCEL_BUFFERING_HEADER, LATENCY_HEADER, LIMIT_BYTES_HEADER, PROBABILITY_HEADER,
    RESET_AFTER_HEADER,
};
use keepalive_proxy::ProxyConfig;
use proptest::prelude::*;

const FAULT_HEADERS: [HeaderName; 8] = [
    LATENCY_HEADER,
    BANDWIDTH_HEADER,
    LIMIT_BYTES_HEADER,
    RESET_AFTER_HEADER,
    BLACKHOLE_AFTER_HEADER,
    PROBABILITY_HEADER,
    BUFFERING_HEADER,
    IGNORE_ACCEL_BUFFERING_HEADER,
];

/// Text shaped like a value: a number (small, or of any size, sign, fraction or exponent) with or
/// without a unit, a word, or anything printable.
fn value_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,3}(\\.[0-9])? ?(ms|s|m|h|d|B|KiB|MB)?",
        "[-+]?[0-9]{0,30}(\\.[0-9]{0,12})?([eE][-+]?[0-9]{1,4})?",
        "[-+ ]?[0-9]{1,25}(\\.[0-9]{1,6})? ?(ns|us|µs|ms|s|m|h|d|w|y|B|KB|KiB|MB|MiB|GB|GiB|TB|EiB|ZB)?",
        "(off|on|none|preset|demo|all|true|false|yes|no|inf|NaN|-inf|truncate|clean|reset|nginx|heroku)",
        "[0-9]{1,20}h[0-9]{1,20}m[0-9]{1,20}s",
        "\\PC{0,40}",
        any::<String>(),
    ]
}

/// A header value as a client may send it: value-shaped text, or any bytes a header may carry
/// (not UTF-8 included).
fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        value_text().prop_filter_map("not a header value", |text| HeaderValue::from_str(&text)
            .ok()),
        prop::collection::vec(any::<u8>(), 0..40).prop_filter_map("not a header value", |bytes| {
            HeaderValue::from_bytes(&bytes).ok()
        }),
    ]
}

fn policy() -> impl Strategy<Value = FaultHeaders> {
    prop_oneof![
        Just(FaultHeaders::Off),
        Just(FaultHeaders::Demo),
        Just(FaultHeaders::All)
    ]
}

/// How a refusal quotes a header's value: lossily decoded, then Debug-quoted.
fn quoted(value: &HeaderValue) -> String {
    format!("{:?}", String::from_utf8_lossy(value.as_bytes()))
}

/// Every setting of the proxy that takes a value, by flag and env var.
const SETTINGS: [(&str, &str); 26] = [
    ("--addr", "PROXY_ADDR"),
    ("--upstream", "PROXY_UPSTREAM"),
    ("--admin-addr", "PROXY_ADMIN_ADDR"),
    ("--preset", "PROXY_PRESET"),
    ("--connect-timeout", "PROXY_CONNECT_TIMEOUT"),
    ("--first-byte-timeout", "PROXY_FIRST_BYTE_TIMEOUT"),
    ("--idle-timeout", "PROXY_IDLE_TIMEOUT"),
    ("--max-duration", "PROXY_MAX_DURATION"),
    ("--header-timeout", "PROXY_HEADER_TIMEOUT"),
    ("--keepalive-timeout", "PROXY_KEEPALIVE_TIMEOUT"),
    ("--cut-style", "PROXY_CUT_STYLE"),
    ("--fault-latency", "PROXY_FAULT_LATENCY"),
    ("--fault-bandwidth", "PROXY_FAULT_BANDWIDTH"),
    ("--fault-limit-bytes", "PROXY_FAULT_LIMIT_BYTES"),
    ("--fault-reset-after", "PROXY_FAULT_RESET_AFTER"),
    ("--fault-blackhole-after", "PROXY_FAULT_BLACKHOLE_AFTER"),
    ("--fault-probability", "PROXY_FAULT_PROBABILITY"),
    ("--buffering", "PROXY_BUFFERING"),
    ("--buffering-ignore-header", "PROXY_BUFFERING_IGNORE_HEADER"),
    ("--compression", "PROXY_COMPRESSION"),
    (
        "--compression-ignore-no-transform",
        "PROXY_COMPRESSION_IGNORE_NO_TRANSFORM",
    ),
    ("--fault-headers", "PROXY_FAULT_HEADERS"),
    ("--drain-timeout", "PROXY_DRAIN_TIMEOUT"),
    ("--send-timeout", "PROXY_SEND_TIMEOUT"),
    ("--max-connections", "PROXY_MAX_CONNECTIONS"),
    ("--deny-paths", "PROXY_DENY_PATHS"),
];

/// Each value parser on its own, its refusal as text.
type Parser = fn(&str) -> Result<(), String>;

const PARSERS: [(&str, Parser); 9] = [
    ("size", |value| {
        parse_size(value).map(drop).map_err(|err| err.to_string())
    }),
    ("buffering", |value| {
        parse_buffering(value)
            .map(drop)
            .map_err(|err| err.to_string())
    }),
    ("probability", |value| {
        parse_probability(value)
            .map(drop)
            .map_err(|err| err.to_string())
    }),
    ("switch", |value| {
        parse_switch(value).map(drop).map_err(|err| err.to_string())
    }),
    ("capped timer", |value| {
        parse_timer_within(value, std::time::Duration::from_secs(60))
            .map(drop)
            .map_err(|err| err.to_string())
    }),
    ("rate with a floor", |value| {
        parse_rate_from(value, 100)
            .map(drop)
            .map_err(|err| err.to_string())
    }),
    ("fault headers policy", |value| {
        FaultHeaders::parse(value)
            .map(drop)
            .map_err(|err| err.to_string())
    }),
    ("timer setting", |value| {
        TimerSetting::parse(value)
            .map(drop)
            .map_err(|err| err.to_string())
    }),
    ("duration", |value| {
        keepalive_common::duration::parse_duration(value)
            .map(drop)
            .map_err(|err| err.to_string())
    }),
];

proptest! {
    // Each case costs microseconds: many cases reach the narrow ranges (a rate just under its floor).
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn a_fault_header_of_any_value_is_read_or_refused_quoting_itself(
        index in 0..FAULT_HEADERS.len(),
        value in header_value(),
        policy in policy(),
    ) {
        let name = &FAULT_HEADERS[index];
        let mut headers = HeaderMap::new();
        headers.insert(name.clone(), value.clone());
        if let Err(bad) = FaultSettings::default().with_headers(&headers, policy) {
            let message = bad.to_string();
            prop_assert!(message.starts_with(&format!("{name}: ")), "{message}");
            prop_assert!(message.contains(&quoted(&value)), "{message}");
        }
    }

    #[test]
    fn every_fault_header_at_once_is_read_or_refused_naming_one_of_them(
        values in prop::collection::vec(header_value(), FAULT_HEADERS.len()),
        policy in policy(),
    ) {
        let mut headers = HeaderMap::new();
        for (name, value) in FAULT_HEADERS.iter().zip(&values) {
            headers.insert(name.clone(), value.clone());
        }
        if let Err(bad) = FaultSettings::default().with_headers(&headers, policy) {
            let message = bad.to_string();
            let named = FAULT_HEADERS
                .iter()
                .zip(&values)
                .any(|(name, value)| message.starts_with(&format!("{name}: {}", quoted(value))));
            prop_assert!(named, "{message}");
        }
    }

    #[test]
    fn a_cut_style_header_of_any_value_is_read_or_refused_quoting_itself(value in header_value()) {
        let mut headers = HeaderMap::new();
        headers.insert(CUT_STYLE_HEADER, value.clone());
        if let Err(bad) = CutStyle::requested(&headers, CutStyle::Truncate) {
            let message = bad.to_string();
            prop_assert!(message.starts_with("x-keepalive-cut-style: "), "{message}");
            prop_assert!(message.contains(&quoted(&value)), "{message}");
        }
    }

    #[test]
    fn each_value_parser_reads_any_text_or_refuses_quoting_it(
        index in 0..PARSERS.len(),
        value in value_text(),
    ) {
        let (parser, parse) = PARSERS[index];
        if let Err(message) = parse(&value) {
            prop_assert!(message.contains(&format!("{value:?}")), "{parser}: {message}");
        }
    }

    #[test]
    fn any_setting_of_any_value_starts_or_is_refused_naming_the_variable_and_the_value(
        index in 0..SETTINGS.len(),
        value in value_text(),
    ) {
        let (flag, env) = SETTINGS[index];
        let args = ["keepalive-proxy".to_owned(), format!("{flag}={value}")];
        match try_parse_from::<ProxyConfig, _, _>(args) {
            Ok(_) => {}
            Err(ConfigError::Invalid(line)) => {
                prop_assert!(line.contains(env), "{line}");
                prop_assert!(line.contains(&format!("{value:?}")), "{line}");
                prop_assert!(!line.contains('\n'), "{line}");
            }
            // clap's own refusals (an empty value where one is required): they name the flag.
            Err(ConfigError::Clap(err)) => {
                let text = err.to_string();
                prop_assert!(text.contains(flag), "{text}");
            }
        }
    }
}
