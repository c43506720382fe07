//! Time helpers on the ingest hot path: RFC 3339 parsing, epoch values of unknown unit, and the UTC
//! calendar arithmetic that names day partitions. Hand-written because they run once per log line and a
//! general date library costs several times more here.

use std::time::{SystemTime, UNIX_EPOCH};

pub const NANOS_PER_SEC: i64 = 1_000_000_000;
pub const NANOS_PER_DAY: i64 = 86_400 * NANOS_PER_SEC;

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian), after Howard Hinnant's algorithm.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number; the inverse of [`days_from_civil`].
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The UTC day number of a nanosecond timestamp.
pub fn day_of_ns(ns: i64) -> i64 {
    ns.div_euclid(NANOS_PER_DAY)
}

/// `YYYY-MM-DD` of a day number, the name of a day partition.
pub fn format_day(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Parses `YYYY-MM-DD` back into a day number.
pub fn parse_day(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y = digits(&b[0..4])? as i64;
    let m = digits(&b[5..7])?;
    let d = digits(&b[8..10])?;
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then(|| days_from_civil(y, m, d))
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut n = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(c - b'0');
    }
    Some(n)
}

/// Parses an RFC 3339 / ISO 8601 timestamp such as `2024-05-01T10:00:00.123456789Z` or
/// `2024-05-01 10:00:00+02:00` into nanoseconds since the epoch. A missing zone means UTC.
pub fn parse_rfc3339_ns(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = digits(&b[0..4])? as i64;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])? as i64;
    let min = digits(&b[14..16])? as i64;
    let sec = digits(&b[17..19])? as i64;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ns = 0i64;
    if i < b.len() && (b[i] == b'.' || b[i] == b',') {
        i += 1;
        let start = i;
        let mut scale = 100_000_000i64;
        while i < b.len() && b[i].is_ascii_digit() {
            frac_ns += i64::from(b[i] - b'0') * scale;
            scale /= 10;
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset_secs = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let rest = &b[i + 1..];
            let (h, m) = match rest.len() {
                5 if rest[2] == b':' => (digits(&rest[0..2])?, digits(&rest[3..5])?),
                4 => (digits(&rest[0..2])?, digits(&rest[2..4])?),
                2 => (digits(rest)?, 0),
                _ => return None,
            };
            let secs = i64::from(h) * 3600 + i64::from(m) * 60;
            if sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    secs.checked_mul(NANOS_PER_SEC)?.checked_add(frac_ns)
}

/// Interprets an epoch number whose unit is unknown by its magnitude, as VictoriaLogs does: seconds below
/// 1e11 (until year 5138), milliseconds below 1e14, microseconds below 1e17, nanoseconds above.
pub fn epoch_auto_ns(v: f64) -> Option<i64> {
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    let ns = if v < 1e11 {
        v * 1e9
    } else if v < 1e14 {
        v * 1e6
    } else if v < 1e17 {
        v * 1e3
    } else {
        v
    };
    (ns < 9.2e18).then_some(ns as i64)
}

/// Same as [`epoch_auto_ns`] for integers, exact for nanoseconds.
pub fn epoch_auto_ns_int(v: i64) -> Option<i64> {
    match v {
        ..0 => None,
        0..100_000_000_000 => Some(v * NANOS_PER_SEC),
        100_000_000_000..100_000_000_000_000 => Some(v * 1_000_000),
        100_000_000_000_000..100_000_000_000_000_000 => Some(v * 1_000),
        _ => Some(v),
    }
}

/// Formats nanoseconds as RFC 3339 with nanosecond precision, UTC.
pub fn format_rfc3339_ns(ns: i64) -> String {
    let secs = ns.div_euclid(NANOS_PER_SEC);
    let frac = ns.rem_euclid(NANOS_PER_SEC);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z", sod / 3600, sod / 60 % 60, sod % 60)
}

/// Formats nanoseconds as a compact UTC time for file names: `20261206T052000Z`.
pub fn format_rfc3339_compact(ns: i64) -> String {
    let secs = ns.div_euclid(NANOS_PER_SEC);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!("{y:04}{mo:02}{d:02}T{:02}{:02}{:02}Z", sod / 3600, sod / 60 % 60, sod % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for day in [-800_000, -1, 0, 1, 19_000, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
        assert_eq!(format_day(0), "1970-01-01");
        assert_eq!(format_day(19_723), "2024-01-01");
        assert_eq!(parse_day("2024-01-01"), Some(19_723));
        assert_eq!(parse_day("2024-13-01"), None);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(parse_rfc3339_ns("2024-01-01T00:00:00.123456789Z"), Some(19_723 * NANOS_PER_DAY + 123_456_789));
        assert_eq!(parse_rfc3339_ns("1970-01-01T02:00:00+02:00"), Some(0));
        assert_eq!(parse_rfc3339_ns("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:00Zjunk"), None);
        assert_eq!(parse_rfc3339_ns("yesterday"), None);
        let ns = 1_700_000_000_123_456_789;
        assert_eq!(parse_rfc3339_ns(&format_rfc3339_ns(ns)), Some(ns));
    }

    #[test]
    fn epoch_units_by_magnitude() {
        assert_eq!(epoch_auto_ns_int(1_700_000_000), Some(1_700_000_000 * NANOS_PER_SEC));
        assert_eq!(epoch_auto_ns_int(1_700_000_000_000), Some(1_700_000_000_000_000_000));
        assert_eq!(epoch_auto_ns_int(1_700_000_000_000_000), Some(1_700_000_000_000_000_000));
        assert_eq!(epoch_auto_ns_int(1_700_000_000_000_000_000), Some(1_700_000_000_000_000_000));
        assert_eq!(epoch_auto_ns(1_700_000_000.5), Some(1_700_000_000_500_000_000));
        assert_eq!(epoch_auto_ns(-1.0), None);
    }
}
