//! VOD ids (`docs/vod.md`, "Ids"): a recording by its catalog id, or a file of the
//! origins' media library by name. Parsed once, before any I/O, by origins and edges
//! alike: nothing a client sends can name a path outside the library.

use std::fmt;

/// Longest media-library name.
pub const MAX_LIBRARY_NAME: usize = 128;

/// One VOD file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VodId {
    /// A recording, by its catalog id.
    Recording(u64),
    /// `{name}.flv` in an origin's `--media-dir`.
    Library(String),
}

/// Why a text is not a VOD id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VodIdError {
    #[error("a VOD id is a recording id (digits) or lib-NAME")]
    Shape,
    #[error("a library name is 1 to {MAX_LIBRARY_NAME} of A-Z a-z 0-9 _ -")]
    LibraryName,
}

impl VodId {
    /// `42` (a recording) or `lib-{name}`.
    pub fn parse(text: &str) -> Result<VodId, VodIdError> {
        if let Some(name) = text.strip_prefix("lib-") {
            let valid = !name.is_empty()
                && name.len() <= MAX_LIBRARY_NAME
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            return if valid { Ok(VodId::Library(name.to_owned())) } else { Err(VodIdError::LibraryName) };
        }
        // Digits only (no sign, no spaces), and no leading zero, so one id has one
        // spelling (and one cache file).
        let digits = !text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit());
        if !digits || (text.len() > 1 && text.starts_with('0')) {
            return Err(VodIdError::Shape);
        }
        text.parse().map(VodId::Recording).map_err(|_| VodIdError::Shape)
    }
}

/// The id as it is spelled in URLs and cache file names: what [`VodId::parse`] reads.
impl fmt::Display for VodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VodId::Recording(id) => write!(f, "{id}"),
            VodId::Library(name) => write!(f, "lib-{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_print_back() {
        for text in ["0", "42", "18446744073709551615", "lib-a", "lib-Big_Buck-1"] {
            assert_eq!(VodId::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(VodId::parse("42"), Ok(VodId::Recording(42)));
        assert_eq!(VodId::parse("lib-x"), Ok(VodId::Library("x".into())));
    }

    #[test]
    fn anything_else_is_refused_before_it_names_a_path() {
        for text in ["", "-1", "+1", "042", " 1", "1.flv", "18446744073709551616", "x", "lib", "lib-"] {
            assert!(VodId::parse(text).is_err(), "{text:?}");
        }
        for text in ["lib-../etc/passwd", "lib-a/b", "lib-a.flv", "lib-%2e%2e", "lib-a b", "lib-é"] {
            assert_eq!(VodId::parse(text), Err(VodIdError::LibraryName), "{text:?}");
        }
        assert!(VodId::parse(&format!("lib-{}", "a".repeat(MAX_LIBRARY_NAME))).is_ok());
        assert!(VodId::parse(&format!("lib-{}", "a".repeat(MAX_LIBRARY_NAME + 1))).is_err());
    }
}
