//! The `Range` header of a VOD request (RFC 9110 §14), sans-IO: what part of a file
//! of `len` bytes to send. One range is answered with it (206); several are answered
//! with the whole file (200, which RFC 9110 allows); a header that cannot be read is
//! ignored (200), as the RFC asks.

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ranged {
    /// The whole file, 200.
    Whole,
    /// Bytes `start..=end` (inclusive, within the file), 206.
    Part { start: u64, end: u64 },
    /// No byte of the range is in the file: 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Reads `header` (the `Range` value, if any) for a file of `len` bytes.
pub(crate) fn parse(header: Option<&str>, len: u64) -> Ranged {
    let Some(header) = header else { return Ranged::Whole };
    let Some((unit, spec)) = header.trim().split_once('=') else { return Ranged::Whole };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return Ranged::Whole };
    let (first, last) = (first.trim(), last.trim());
    match (number(first), number(last)) {
        // bytes=-n: the last n bytes.
        (None, Some(n)) if first.is_empty() => {
            if n == 0 || len == 0 {
                Ranged::Unsatisfiable
            } else {
                Ranged::Part { start: len.saturating_sub(n), end: len - 1 }
            }
        }
        // bytes=a- : from a to the end.
        (Some(start), None) if last.is_empty() => {
            if start >= len {
                Ranged::Unsatisfiable
            } else {
                Ranged::Part { start, end: len - 1 }
            }
        }
        // bytes=a-b
        (Some(start), Some(end)) if start <= end => {
            if start >= len {
                Ranged::Unsatisfiable
            } else {
                Ranged::Part { start, end: end.min(len - 1) }
            }
        }
        _ => Ranged::Whole,
    }
}

/// Decimal digits only (no sign, no space); a number too large for `u64` is
/// `u64::MAX`, which lies past the end of any file.
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_range_of_each_form() {
        let part = |start, end| Ranged::Part { start, end };
        assert_eq!(parse(Some("bytes=0-0"), 100), part(0, 0));
        assert_eq!(parse(Some("bytes=10-19"), 100), part(10, 19));
        assert_eq!(parse(Some("bytes=90-1000"), 100), part(90, 99), "the end is clamped");
        assert_eq!(parse(Some("bytes=90-"), 100), part(90, 99));
        assert_eq!(parse(Some("bytes=-10"), 100), part(90, 99));
        assert_eq!(parse(Some("bytes=-1000"), 100), part(0, 99), "a suffix longer than the file is all of it");
        assert_eq!(parse(Some(" Bytes = 5 - 6 "), 100), part(5, 6));
        assert_eq!(parse(Some("bytes=99-99999999999999999999999"), 100), part(99, 99));
    }

    #[test]
    fn a_range_past_the_end_is_unsatisfiable() {
        for header in ["bytes=100-", "bytes=100-200", "bytes=-0", "bytes=99999999999999999999999-"] {
            assert_eq!(parse(Some(header), 100), Ranged::Unsatisfiable, "{header}");
        }
        assert_eq!(parse(Some("bytes=0-"), 0), Ranged::Unsatisfiable, "an empty file has no byte to give");
        assert_eq!(parse(Some("bytes=-5"), 0), Ranged::Unsatisfiable);
    }

    #[test]
    fn several_ranges_or_unreadable_ones_get_the_whole_file() {
        for header in [
            "bytes=0-1,5-6",
            "bytes=0-1, -5",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=--1",
            "bytes=+1-2",
            "bytes 0-1",
            "items=0-1",
            "bytes=0x10-",
            "",
        ] {
            assert_eq!(parse(Some(header), 100), Ranged::Whole, "{header:?}");
        }
        assert_eq!(parse(None, 100), Ranged::Whole);
    }
}
