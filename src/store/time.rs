//! Wall-clock time as ferry stores it: Unix milliseconds, and RFC 3339 text in UTC.
//!
//! Times ferry writes carry their zone (`Z`). Times other programs write often do not:
//! the seed services wrote the board's local time (`2025-12-18 17:30:00.000000`), so a
//! time without a zone is read in the machine's time zone (`TZ`, else `/etc/localtime`).

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::tz::TimeZone;

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
/// (`2026-02-10T12:00:00Z`, `2026-02-10T13:00:00+01:00`; without a zone, as in
/// `2026-02-10 12:00:00.123456`, the machine's local time), or an integer of seconds
/// or milliseconds since 1970.
pub fn parse_timestamp(text: &str) -> Option<Millis> {
    // jiff caches the system zone (and looks again every few minutes), so a changed
    // /etc/localtime is picked up without a restart.
    parse_timestamp_in(text, &TimeZone::system())
}

/// [`parse_timestamp`], with a time without a zone read in `local`.
pub fn parse_timestamp_in(text: &str, local: &TimeZone) -> Option<Millis> {
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
    let (mut h, mut mi, mut s, mut ms) = (0, 0, 0, 0);
    // The zone's offset in seconds; `None`: no zone written, local time.
    let mut offset: Option<i64> = None;
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
            "" => {}
            "Z" | "z" => offset = Some(0),
            zone => {
                let sign = match zone.as_bytes().first()? {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return None,
                };
                let zone = zone[1..].replace(':', "");
                let hh: i64 = zone.get(0..2)?.parse().ok()?;
                let mm: i64 = zone.get(2..4).unwrap_or("00").parse().ok()?;
                offset = Some(sign * (hh * 3600 + mm * 60));
            }
        }
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let offset = match offset {
        Some(offset) => offset,
        None => local_offset(local, y, mo, d, h, mi, s)?,
    };
    let days = days_from_civil(y, mo, d);
    Some((days * 86_400 + h * 3600 + mi * 60 + s - offset) * 1000 + ms)
}

/// The offset from UTC (seconds) of a local date and time in `zone`. A time that
/// falls in a daylight-saving gap or fold is read as the clocks showed it first
/// (jiff's "compatible" rule, as `mktime` and most programs do).
fn local_offset(zone: &TimeZone, y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    let small = |n: i64| i8::try_from(n).ok();
    // A leap second (:60) is read as :59 for the offset; the offset is the same.
    let civil = jiff::civil::DateTime::new(
        i16::try_from(y).ok()?,
        small(mo)?,
        small(d)?,
        small(h)?,
        small(mi)?,
        small(s.min(59))?,
        0,
    )
    .ok()?;
    let instant = zone.to_timestamp(civil).ok()?;
    let as_utc = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s.min(59);
    Some(as_utc - instant.as_second())
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
        let utc = TimeZone::UTC;
        let parse = |text: &str| parse_timestamp_in(text, &utc);
        let base = parse("2026-02-10T12:00:00Z").unwrap();
        assert_eq!(parse("2026-02-10 12:00:00"), Some(base));
        assert_eq!(parse("2026-02-10 12:00:00.123456"), Some(base + 123));
        assert_eq!(parse("2026-02-10T13:00:00+01:00"), Some(base));
        assert_eq!(parse("2026-02-10"), Some(base - 12 * 3_600_000));
        assert_eq!(parse(&(base / 1000).to_string()), Some(base));
        assert_eq!(parse(&base.to_string()), Some(base));
        for bad in ["", "yesterday", "2026-13-01", "2026-02-10X12:00:00"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    /// The seeds wrote local time without a zone: in Paris, `17:30` in December is
    /// 16:30 UTC, in July 15:30 UTC. Times with a zone, and numbers, do not move.
    #[test]
    fn a_time_without_a_zone_is_local_time() {
        let paris = TimeZone::get("Europe/Paris").expect("the tz database has Europe/Paris");
        let parse = |text: &str| parse_timestamp_in(text, &paris);
        let utc = |text: &str| parse_timestamp_in(text, &TimeZone::UTC).unwrap();
        assert_eq!(
            parse("2025-12-18 17:30:00.000000"),
            Some(utc("2025-12-18T16:30:00Z"))
        );
        assert_eq!(
            parse("2026-07-01T17:30:00"),
            Some(utc("2026-07-01T15:30:00Z"))
        );
        assert_eq!(parse("2026-02-10"), Some(utc("2026-02-09T23:00:00Z")));
        assert_eq!(
            parse("2026-07-01T17:30:00.250"),
            Some(utc("2026-07-01T15:30:00.250Z"))
        );
        for zoned in [
            "2026-07-01T17:30:00Z",
            "2026-07-01T17:30:00+02:00",
            "1767225600",
            "1767225600000",
        ] {
            assert_eq!(parse(zoned), Some(utc(zoned)), "{zoned}");
        }
        // 02:30 on the last Sunday of March does not exist in Paris: read as 03:30
        // summer time, as the clocks showed it.
        assert_eq!(
            parse("2026-03-29 02:30:00"),
            Some(utc("2026-03-29T01:30:00Z"))
        );
        // ferry's own sync dates still read back exactly.
        assert_eq!(parse(&rfc3339(1_763_842_503_123)), Some(1_763_842_503_123));
    }
}
