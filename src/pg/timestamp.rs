//! The replication protocol's clock: microseconds since 2000-01-01 UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_SECS: i64 = 946_684_800;

/// Now, in microseconds since 2000-01-01.
pub fn now_micros() -> i64 {
    let since_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    since_unix.as_micros() as i64 - PG_EPOCH_OFFSET_SECS * 1_000_000
}

/// Formats a protocol timestamp as RFC 3339 in UTC with microseconds,
/// e.g. `2026-11-27T12:13:58.123456Z`.
pub fn to_rfc3339(micros: i64) -> String {
    // Saturating: the value comes from the server, which may send anything.
    let unix_micros = micros.saturating_add(PG_EPOCH_OFFSET_SECS * 1_000_000);
    let secs = unix_micros.div_euclid(1_000_000);
    let frac = unix_micros.rem_euclid(1_000_000);
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm), to avoid a date crate for one conversion.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(to_rfc3339(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(to_rfc3339(-1), "1999-12-31T23:59:59.999999Z");
        // 2024-02-29T12:34:56.5Z, a leap day.
        let micros = (1_709_210_096 - PG_EPOCH_OFFSET_SECS) * 1_000_000 + 500_000;
        assert_eq!(to_rfc3339(micros), "2024-02-29T12:34:56.500000Z");
        // PostgreSQL's 'infinity' and '-infinity': formatted, no overflow.
        assert!(to_rfc3339(i64::MAX).ends_with("Z"));
        assert!(to_rfc3339(i64::MIN).ends_with("Z"));
    }

    #[test]
    fn now_is_after_2026() {
        assert!(to_rfc3339(now_micros()).as_str() > "2026-01-01");
    }
}
