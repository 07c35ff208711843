//! Human durations as users write them in the config: `500ms`, `10s`, `5m`, `1h`, `1d`,
//! and sums such as `1h30m`. Parsing lives here so TOML, INI and environment overrides
//! all accept exactly the same spelling.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A positive duration read from the config; `Display` writes it back in the same
/// spelling so `ferry config show` output can be pasted into a config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> Self {
        HumanDuration(Duration::from_secs(secs))
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

const UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses `500ms`, `10s`, `5m`, `1h`, `2d` or a sum like `1h30m`. Zero is refused:
/// every duration ferry reads is a timeout or an interval, and zero would mean a busy loop.
pub fn parse(text: &str) -> Result<HumanDuration, String> {
    let expected = "expected a duration such as \"500ms\", \"10s\", \"5m\" or \"1h\"";
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{expected} (got an empty string)"));
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("{expected} (got {text:?})"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{expected} (got {text:?}: number too large)"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        let Some(&(_, factor)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(if unit.is_empty() {
                format!("{expected} (got {text:?}: the unit is missing)")
            } else {
                format!("{expected} (got {text:?}: unknown unit {unit:?})")
            });
        };
        rest = &rest[unit_len..];
        total = number
            .checked_mul(factor)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("{expected} (got {text:?}: too long)"))?;
    }
    if total == 0 {
        return Err(format!("must be greater than zero (got {text:?})"));
    }
    Ok(HumanDuration(Duration::from_millis(total)))
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for &(name, factor) in UNITS.iter().rev() {
            let factor = u128::from(factor);
            if ms >= factor {
                write!(f, "{}{name}", ms / factor)?;
                ms %= factor;
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit_and_sums() {
        assert_eq!(parse("500ms").unwrap().get(), Duration::from_millis(500));
        assert_eq!(parse("10s").unwrap().get(), Duration::from_secs(10));
        assert_eq!(parse("5m").unwrap().get(), Duration::from_secs(300));
        assert_eq!(parse("1h").unwrap().get(), Duration::from_secs(3600));
        assert_eq!(parse("1h30m").unwrap().get(), Duration::from_secs(5400));
        assert_eq!(parse(" 2d ").unwrap().get(), Duration::from_secs(172_800));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in [
            "",
            "10",
            "s",
            "10x",
            "-5s",
            "1.5s",
            "0s",
            "99999999999999999999s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse("10").unwrap_err().contains("unit is missing"));
    }

    #[test]
    fn display_round_trips() {
        for text in ["500ms", "10s", "5m", "1h", "1h30m", "1d1h1m1s1ms"] {
            assert_eq!(parse(text).unwrap().to_string(), text);
        }
    }
}
