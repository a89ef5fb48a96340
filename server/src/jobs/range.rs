//! The one form of `Range` a job's text answers: a single byte range (RFC 9110 14.1.2). A request
//! for several ranges gets the whole text with 200, as the RFC allows; a header that does not parse
//! is ignored, as the RFC requires.

/// A single byte range as asked, before it meets the text's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=N-` or `bytes=N-M`.
    From { first: u64, last: Option<u64> },
    /// `bytes=-N`: the last N bytes.
    Suffix(u64),
}

/// Reads a `Range` header; `None` when it is absent from consideration (several ranges, another
/// unit, malformed).
pub fn parse(header: &str) -> Option<ByteRange> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let number = |text: &str| text.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // `-0` selects nothing (RFC 9110 14.1.2); ignored rather than answered 416, which would need
        // the final length of a job that may still be running.
        (true, false) => {
            Some(ByteRange::Suffix(number(last)?)).filter(|suffix| *suffix != ByteRange::Suffix(0))
        }
        (false, true) => Some(ByteRange::From {
            first: number(first)?,
            last: None,
        }),
        (false, false) => {
            let (first, last) = (number(first)?, number(last)?);
            (first <= last).then_some(ByteRange::From {
                first,
                last: Some(last),
            })
        }
        (true, true) => None,
    }
}

impl ByteRange {
    /// The inclusive byte span this range selects from `available` bytes, or `None` when it
    /// selects nothing (416).
    pub fn span(self, available: u64) -> Option<(u64, u64)> {
        match self {
            Self::From { first, last } => (first < available).then(|| {
                (
                    first,
                    last.map_or(available - 1, |last| last.min(available - 1)),
                )
            }),
            Self::Suffix(0) => None,
            Self::Suffix(length) => {
                (available > 0).then(|| (available.saturating_sub(length), available - 1))
            }
        }
    }

    /// Where the range starts, if that does not depend on the length.
    pub fn first(self) -> Option<u64> {
        match self {
            Self::From { first, .. } => Some(first),
            Self::Suffix(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges_parse_and_others_are_ignored() {
        assert_eq!(
            parse("bytes=10-"),
            Some(ByteRange::From {
                first: 10,
                last: None
            })
        );
        assert_eq!(
            parse("bytes=3-9"),
            Some(ByteRange::From {
                first: 3,
                last: Some(9)
            })
        );
        assert_eq!(parse("bytes=-5"), Some(ByteRange::Suffix(5)));
        for ignored in [
            "bytes=1-2,5-6",
            "items=1-",
            "bytes=9-3",
            "bytes=-",
            "bytes=-0",
            "bytes=a-",
            "",
        ] {
            assert_eq!(parse(ignored), None, "{ignored}");
        }
    }

    #[test]
    fn spans_meet_the_length() {
        let from = |first, last| ByteRange::From { first, last };
        assert_eq!(from(10, None).span(100), Some((10, 99)));
        assert_eq!(from(10, Some(500)).span(100), Some((10, 99)));
        assert_eq!(from(100, None).span(100), None);
        assert_eq!(ByteRange::Suffix(30).span(100), Some((70, 99)));
        assert_eq!(ByteRange::Suffix(300).span(100), Some((0, 99)));
        assert_eq!(ByteRange::Suffix(0).span(100), None);
        assert_eq!(ByteRange::Suffix(5).span(0), None);
    }
}

/// Property tests: any `Range` header is read or ignored without a panic, a range read always meets
/// a length inside it, and every well-formed single range reads as sent.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn header() -> impl Strategy<Value = String> {
        prop_oneof![
            " ?(bytes|items|BYTES)? ?=? ?[0-9]{0,22} ?-? ?[0-9]{0,22}(,[0-9]{0,3}-[0-9]{0,3})?",
            "\\PC*",
        ]
    }

    proptest! {
        #[test]
        fn any_header_is_read_or_ignored_and_a_range_read_stays_inside_the_text(
            header in header(),
            available in prop_oneof![0..300u64, any::<u64>()],
        ) {
            if let Some(range) = parse(&header) {
                if let Some((first, last)) = range.span(available) {
                    prop_assert!(first <= last && last < available, "{range:?} in {available}: {first}-{last}");
                }
                if let Some(first) = range.first() {
                    prop_assert!(range.span(available).is_none_or(|(start, _)| start == first));
                }
            }
        }

        #[test]
        fn well_formed_single_ranges_read_as_sent(first in any::<u64>(), length in any::<u64>(), suffix in 1..=u64::MAX) {
            let last = first.saturating_add(length);
            prop_assert_eq!(
                parse(&format!("bytes={first}-{last}")),
                Some(ByteRange::From { first, last: Some(last) })
            );
            prop_assert_eq!(
                parse(&format!("bytes={first}-")),
                Some(ByteRange::From { first, last: None })
            );
            prop_assert_eq!(parse(&format!("bytes=-{suffix}")), Some(ByteRange::Suffix(suffix)));
        }
    }
}
