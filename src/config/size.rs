//! Sizes as users write them in the config: `512KiB`, `1MiB`, `500MiB`, `2GiB` (powers of
//! 1024), `1MB` (powers of 1000), or a number of bytes. `Display` writes a size back in
//! a spelling the parser reads.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes, read from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
];

impl ByteSize {
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n << 10)
    }

    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n << 20)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

/// Parses `512KiB`, `1 MiB`, `1MB`, `4096` (bytes).
pub fn parse(text: &str) -> Result<ByteSize, String> {
    let expected = "expected a size such as \"512KiB\", \"1MiB\" or \"500MiB\"";
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!("{expected} (got {text:?})"));
    }
    let number: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("{expected} (got {text:?}: number too large)"))?;
    let unit = text[digits..].trim();
    let factor = if unit.is_empty() {
        1
    } else {
        UNITS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(unit))
            .map(|(_, factor)| *factor)
            .ok_or_else(|| format!("{expected} (got {text:?}: unknown unit {unit:?})"))?
    };
    number
        .checked_mul(factor)
        .map(ByteSize)
        .ok_or_else(|| format!("{expected} (got {text:?}: too large)"))
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, factor) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= factor && self.0.is_multiple_of(factor) {
                return write!(f, "{}{name}", self.0 / factor);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"512KiB\", \"1MiB\" or a number of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ByteSize, E> {
                parse(text).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("expected a size, not {n}")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_users_write_them_and_print_back() {
        assert_eq!(parse("512KiB"), Ok(ByteSize(512 * 1024)));
        assert_eq!(parse("1 MiB"), Ok(ByteSize(1 << 20)));
        assert_eq!(parse("1mb"), Ok(ByteSize(1_000_000)));
        assert_eq!(parse("4096"), Ok(ByteSize(4096)));
        assert!(parse("1 TiB").is_err());
        assert!(parse("MiB").is_err());
        for size in ["512KiB", "1MiB", "3GiB", "1000B"] {
            assert_eq!(parse(size).unwrap().to_string(), size);
        }
    }
}
