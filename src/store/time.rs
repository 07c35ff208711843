//! Wall-clock time as ferry stores it: Unix milliseconds, and RFC 3339 text in UTC.

use std::time::{SystemTime, UNIX_EPOCH};

pub type Millis = i64;

pub fn now_ms() -> Millis {
    system_time_ms(SystemTime::now())
}

pub fn system_time_ms(time: SystemTime) -> Millis {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// `2026-11-22T20:15:03.123Z`.
pub fn rfc3339(ms: Millis) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Unix ms of a timestamp as programs write them in `updated_at`: RFC 3339 / ISO 8601
/// (`2026-02-10T12:00:00Z`, `2026-02-10 12:00:00.123456`, no zone read as UTC), or
/// an integer of seconds or milliseconds since 1970.
pub fn parse_timestamp(text: &str) -> Option<Millis> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i64>() {
        // Before 2001-09-09 in ms is after 33658 in s: tell them apart by size.
        return Some(if n.abs() >= 100_000_000_000 {
            n
        } else {
            n * 1000
        });
    }
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> { text.get(range)?.parse().ok() };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (mut h, mut mi, mut s, mut ms, mut offset) = (0, 0, 0, 0, 0);
    if b.len() > 10 {
        if !(b[10] == b'T' || b[10] == b' ') || b.len() < 19 {
            return None;
        }
        h = num(11..13)?;
        mi = num(14..16)?;
        s = num(17..19)?;
        let mut rest = &text[19..];
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            let padded = format!("{:0<3}", &frac[..digits.min(3)]);
            ms = padded.parse().ok()?;
            rest = &frac[digits..];
        }
        match rest {
            "" | "Z" | "z" => {}
            zone => {
                let sign = match zone.as_bytes().first()? {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return None,
                };
                let zone = zone[1..].replace(':', "");
                let hh: i64 = zone.get(0..2)?.parse().ok()?;
                let mm: i64 = zone.get(2..4).unwrap_or("00").parse().ok()?;
                offset = sign * (hh * 3600 + mm * 60);
            }
        }
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some((days * 86_400 + h * 3600 + mi * 60 + s - offset) * 1000 + ms)
}

// Howard Hinnant's civil calendar algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_back() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_763_842_503_123), "2025-11-22T20:15:03.123Z");
        for ms in [0, 951_782_400_000, 1_763_842_503_123, 4_102_444_800_000] {
            assert_eq!(parse_timestamp(&rfc3339(ms)), Some(ms));
        }
    }

    #[test]
    fn parses_what_programs_write() {
        let base = parse_timestamp("2026-02-10T12:00:00Z").unwrap();
        assert_eq!(parse_timestamp("2026-02-10 12:00:00"), Some(base));
        assert_eq!(
            parse_timestamp("2026-02-10 12:00:00.123456"),
            Some(base + 123)
        );
        assert_eq!(parse_timestamp("2026-02-10T13:00:00+01:00"), Some(base));
        assert_eq!(parse_timestamp("2026-02-10"), Some(base - 12 * 3_600_000));
        assert_eq!(parse_timestamp(&(base / 1000).to_string()), Some(base));
        assert_eq!(parse_timestamp(&base.to_string()), Some(base));
        for bad in ["", "yesterday", "2026-13-01", "2026-02-10X12:00:00"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }
}
