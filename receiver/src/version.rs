//! What the Idempotency-Key tells (PROTOCOL.md §1) and how versions are ordered (§4).
//!
//! ferry's key is `<device_id>:<collection>:<key>[:<version>]`, each part
//! percent-encoded. A key of another shape is kept as an opaque string: its request
//! is still answered per the IETF draft, it just names no record.
//!
//! Versions are stored with an *order key*, a text whose byte order is the order of
//! the versions, so both databases compare them in SQL or in Rust alike:
//! `1<22 digits>` for a version whose `updated_at` part reads as a time (nanoseconds
//! since 1970, shifted to be positive), `2<text>` for one that does not, and the empty
//! text for a version with no order (ferry's `fp-…` fingerprints of records without
//! `updated_at`): such a version is never "older", the last one to arrive is kept.

/// The parts of ferry's Idempotency-Key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyParts {
    pub device: String,
    pub collection: String,
    pub key: String,
    pub version: Option<String>,
}

/// `None` when the key is not ferry's shape (3 or 4 percent-encoded parts).
pub fn parse_idempotency_key(text: &str) -> Option<KeyParts> {
    let parts: Vec<&str> = text.split(':').collect();
    if !(3..=4).contains(&parts.len()) {
        return None;
    }
    let decoded: Option<Vec<String>> = parts.iter().map(|p| percent_decode(p)).collect();
    let mut decoded = decoded?.into_iter();
    let device = decoded.next()?;
    let collection = decoded.next()?;
    let key = decoded.next()?;
    let version = decoded.next();
    if device.is_empty() || key.is_empty() {
        return None;
    }
    Some(KeyParts {
        device,
        collection,
        key,
        version: version.filter(|v| !v.is_empty()),
    })
}

/// `%XX` → byte; `None` on a malformed escape or text that is not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// 10^21 ns: more than the nanoseconds between 1970 and jiff's earliest time, so a
/// shifted time is positive and fits 22 digits.
const SHIFT: i128 = 1_000_000_000_000_000_000_000;

/// The order key of a version (see the module doc).
pub fn order_key(version: Option<&str>) -> String {
    let Some(version) = version else {
        return String::new();
    };
    if version.starts_with("fp-") {
        return String::new();
    }
    // `<updated_at>~<fingerprint>`: the time decides; two states within one tick of
    // updated_at are not ordered by their fingerprints (the later arrival wins).
    let updated = match version.rsplit_once('~') {
        Some((time, fp)) if fp.len() == 8 && fp.bytes().all(|b| b.is_ascii_hexdigit()) => time,
        _ => version,
    };
    match parse_time_ns(updated) {
        Some(ns) => format!("1{:022}", ns + SHIFT),
        None => format!("2{updated}"),
    }
}

/// Is a version with order key `new` at least as new as the stored `old`?
pub fn not_older(new: &str, old: &str) -> bool {
    new.is_empty() || old.is_empty() || new >= old
}

/// Nanoseconds since 1970 of an `updated_at` text: RFC 3339 / ISO 8601 with or without
/// a zone (a time without one is read as UTC: the receiver cannot know the box's zone,
/// and reading all of one record's versions alike keeps their order), a date, or Unix
/// seconds or milliseconds (told apart by size, as ferry does).
pub fn parse_time_ns(text: &str) -> Option<i128> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if text
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'-' || b == b'.')
        && text.get(4..5).is_none_or(|c| c != "-")
    {
        if let Ok(n) = text.parse::<i64>() {
            let ms = if n.abs() >= 100_000_000_000 {
                i128::from(n)
            } else {
                i128::from(n) * 1000
            };
            return Some(ms * 1_000_000);
        }
        if let Ok(secs) = text.parse::<f64>() {
            if secs.is_finite() && secs.abs() < 1e11 {
                return Some((secs * 1e9) as i128);
            }
        }
        return None;
    }
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Some(ts.as_nanosecond());
    }
    let normalized = text.replacen(' ', "T", 1);
    if let Ok(ts) = normalized.parse::<jiff::Timestamp>() {
        return Some(ts.as_nanosecond());
    }
    if let Ok(dt) = normalized.parse::<jiff::civil::DateTime>() {
        return jiff::tz::TimeZone::UTC
            .to_timestamp(dt)
            .ok()
            .map(|ts| ts.as_nanosecond());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ferrys_key_is_split_and_decoded() {
        let parts = parse_idempotency_key(
            "raspberry-salon:downloads:dl%3A3:2026-11-22T10%3A00%3A00Z~3fa9c1d2",
        )
        .expect("ferry's shape");
        assert_eq!(parts.device, "raspberry-salon");
        assert_eq!(parts.collection, "downloads");
        assert_eq!(parts.key, "dl:3");
        assert_eq!(
            parts.version.as_deref(),
            Some("2026-11-22T10:00:00Z~3fa9c1d2")
        );
        let no_version = parse_idempotency_key("box:evenement:42").expect("3 parts");
        assert_eq!(no_version.version, None);
        assert_eq!(parse_idempotency_key("6f1c7a4e-uuid"), None);
        assert_eq!(parse_idempotency_key("a:b:%ZZ:v"), None);
    }

    #[test]
    fn times_order_by_instant_whatever_their_spelling() {
        let a = order_key(Some("2026-11-22T10:00:00Z~00000001"));
        let b = order_key(Some("2026-11-22 10:00:00~00000002"));
        let c = order_key(Some("2026-11-22T11:00:00+01:00~00000003"));
        assert_eq!(a, b);
        assert_eq!(a, c);
        let later = order_key(Some("2026-11-22T10:00:00.5Z~0000000a"));
        assert!(later > a);
        let secs = order_key(Some("1700000000"));
        let ms = order_key(Some("1700000000000"));
        assert_eq!(secs, ms);
        let before = order_key(Some("1969-12-31T23:59:59Z"));
        assert!(before < secs);
        assert!(before.starts_with('1'));
    }

    #[test]
    fn text_versions_order_as_text_and_fingerprints_not_at_all() {
        assert!(order_key(Some("v10")) > order_key(Some("v09")));
        assert_eq!(order_key(Some("fp-0123456789abcdef")), "");
        assert_eq!(order_key(None), "");
        assert!(not_older("", "1000"));
        assert!(not_older("1000", ""));
        assert!(!not_older("1000", "1001"));
        assert!(not_older("1001", "1001"));
    }
}
