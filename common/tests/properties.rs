//! Properties of the parsers every setting and query parameter goes through, over arbitrary input:
//! none panics, each either reads the value or refuses it with a message that quotes it, and what
//! the programs print (a duration in the narration, an address in a log) reads back as itself.

use std::net::SocketAddr;
use std::time::Duration;

use keepalive_common::address::parse_address;
use keepalive_common::duration::{display, parse_duration, parse_timer, LONGEST};
use keepalive_common::switch::parse_switch;
use proptest::prelude::*;

/// Text shaped like the values people type, and anything at all.
fn values() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9 .:a-zµ\\[\\]-]{0,24}",
        "[0-9]{1,30}(\\.[0-9]{0,12})?(ns|us|µs|ms|s|m|h|d|y|)",
        "(localhost|\\[::1\\]|127\\.0\\.0\\.1|)?:[0-9-]{0,7}",
    ]
}

/// Whether `message` quotes `value` the way the parsers do (`{value:?}`).
fn quotes(message: &str, value: &str) -> bool {
    message.contains(&format!("{value:?}"))
}

proptest! {
    #[test]
    fn durations_are_read_or_refused_naming_the_value(value in values()) {
        match parse_duration(&value) {
            Ok(duration) => prop_assert!(duration <= LONGEST),
            Err(err) => prop_assert!(quotes(&err.to_string(), &value), "{}", err),
        }
        match parse_timer(&value) {
            Ok(timer) => prop_assert!(timer.is_none_or(|timer| timer <= LONGEST)),
            Err(err) => prop_assert!(quotes(&err.to_string(), &value), "{}", err),
        }
    }

    #[test]
    fn a_displayed_duration_reads_back_as_itself(millis in 1..=LONGEST.as_millis() as u64) {
        let duration = Duration::from_millis(millis);
        prop_assert_eq!(parse_duration(&display(duration)), Ok(duration));
    }

    #[test]
    fn addresses_are_read_or_refused_naming_the_value(value in values()) {
        if let Err(err) = parse_address(&value) {
            prop_assert!(quotes(&err.to_string(), &value), "{}", err);
        }
    }

    #[test]
    fn every_socket_address_reads_back_as_itself(addr in any::<SocketAddr>()) {
        // Scope ids and flow info are not part of the textual form.
        let addr = match addr {
            SocketAddr::V6(v6) => SocketAddr::from((*v6.ip(), v6.port())),
            v4 => v4,
        };
        prop_assert_eq!(parse_address(&addr.to_string()).ok(), Some(addr));
    }

    #[test]
    fn a_bare_port_is_every_interface(port in any::<u16>()) {
        prop_assert_eq!(
            parse_address(&format!(":{port}")).ok(),
            Some(SocketAddr::from(([0, 0, 0, 0], port)))
        );
    }

    #[test]
    fn switches_are_read_or_refused_naming_the_value(value in values()) {
        if let Err(err) = parse_switch(&value) {
            prop_assert!(quotes(&err.to_string(), &value), "{}", err);
        }
    }

    #[test]
    fn switch_words_are_read_in_any_case(
        word in "(1|0|true|false|yes|no|on|off)",
        upper in any::<bool>(),
    ) {
        let typed = if upper { word.to_uppercase() } else { word.clone() };
        let on = matches!(word.as_str(), "1" | "true" | "yes" | "on");
        prop_assert_eq!(parse_switch(&typed), Ok(on));
    }
}
