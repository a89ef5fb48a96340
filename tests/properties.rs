//! Properties of the size and share parsers the proxy's settings and fault headers go through (the
//! lab's demo reads the same settings), over arbitrary input: none panics, and each either reads
//! the value or refuses it with a message that quotes it.

use keepalive_proxy::faults::{parse_probability, parse_size};
use proptest::prelude::*;

/// Text shaped like sizes and shares people type, and anything at all.
fn values() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{0,25}(\\.[0-9]{0,8})?[eE]?[0-9]{0,3} ?([kKmMgGtTpPeE]i?[bB]?|[bB]|off|OFF)?",
        "[0-9 .,eE+-]{0,16}",
    ]
}

proptest! {
    #[test]
    fn sizes_are_read_or_refused_naming_the_value(value in values()) {
        if let Err(err) = parse_size(&value) {
            prop_assert!(err.contains(&format!("{value:?}")), "{}", err);
        }
    }

    #[test]
    fn a_whole_number_of_bytes_is_that_many(bytes in 1..u64::MAX / 2) {
        prop_assert_eq!(parse_size(&bytes.to_string()), Ok(Some(bytes)));
    }

    #[test]
    fn shares_are_read_from_0_to_1_or_refused_naming_the_value(value in values()) {
        match parse_probability(&value) {
            Ok(share) => prop_assert!((0.0..=1.0).contains(&share), "{share}"),
            Err(err) => prop_assert!(err.contains(&format!("{value:?}")), "{}", err),
        }
    }
}
