//! Validation of names that become file names (consumer names now; job and
//! table names later), so that no name can reach outside the log directory.

use crate::error::{Error, Result};

/// The longest name accepted, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 128;

/// Accepts 1 to 128 ASCII letters, digits, `_`, `-` and `.`, not starting
/// with `.`. An allow-list rather than a deny-list: path separators, `..`,
/// NUL, control characters, spaces and anything a filesystem might
/// normalize are all refused.
pub(crate) fn validate(name: &str) -> Result<()> {
    let refuse = |reason| {
        Err(Error::InvalidName {
            name: name.chars().take(MAX_NAME_LEN + 8).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return refuse("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return refuse("it is longer than 128 bytes");
    }
    if name.starts_with('.') {
        return refuse("it starts with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return refuse("only ASCII letters, digits, '_', '-' and '.' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_service_names() {
        for name in [
            "inventory",
            "shipping-v2",
            "data_lake.sink",
            "A",
            &"x".repeat(128),
        ] {
            validate(name).unwrap();
        }
    }

    #[test]
    fn refuses_anything_that_could_escape_or_confuse() {
        for name in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "a\\b",
            "nul\0byte",
            "tab\there",
            "new\nline",
            "space here",
            ".hidden",
            "é",
            &"x".repeat(129),
        ] {
            assert!(
                matches!(validate(name), Err(Error::InvalidName { .. })),
                "{name:?} was accepted"
            );
        }
    }
}
