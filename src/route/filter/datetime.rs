//! Dates and times in PostgreSQL's ISO text form (`DateStyle = ISO`, the
//! default), parsed into numbers that order like the values: days for a
//! date, microseconds for a time, microseconds in UTC for a timestamp, all
//! counted from PostgreSQL's epoch 2000-01-01 so the whole range the server
//! allows fits an `i64`. `-infinity` and `infinity` are `i64::MIN` and
//! `i64::MAX`, as in the server. The calendar is the proleptic Gregorian one
//! the server uses, BC years included (`0044-03-15 BC`).
//!
//! The same parser reads filter literals, which may also say `T` instead of
//! a space, `Z` for UTC, and leave out seconds. Words the server would take
//! (`today`, `epoch`, time zone names) are refused: a filter must mean the
//! same thing on every row.

pub(super) const NEG_INFINITY: i64 = i64::MIN;
pub(super) const POS_INFINITY: i64 = i64::MAX;

const USECS_PER_SEC: i64 = 1_000_000;
const USECS_PER_DAY: i64 = 86_400 * USECS_PER_SEC;
/// Days from 1970-01-01 (the civil algorithms' zero) to 2000-01-01.
const EPOCH_SHIFT: i64 = 10_957;

/// The server's limits: dates from 4714-11-24 BC to 5874897-12-31,
/// timestamps up to 294276-12-31 23:59:59.999999.
fn min_day() -> i64 {
    days_from_civil(-4713, 11, 24) - EPOCH_SHIFT
}
fn max_date_day() -> i64 {
    days_from_civil(5_874_897, 12, 31) - EPOCH_SHIFT
}
fn max_timestamp() -> i64 {
    (days_from_civil(294_277, 1, 1) - EPOCH_SHIFT) * USECS_PER_DAY - 1
}

/// A date as days since 2000-01-01.
pub(super) fn parse_date(text: &[u8]) -> Result<i64, &'static str> {
    if let Some(infinite) = infinity(text) {
        return Ok(infinite);
    }
    let (text, bc) = strip_bc(text);
    let mut cursor = Cursor { text, at: 0 };
    let day = cursor.date(bc)?;
    if !cursor.done() {
        return Err("expected a date as YYYY-MM-DD");
    }
    if !(min_day()..=max_date_day()).contains(&day) {
        return Err("date out of range");
    }
    Ok(day)
}

/// A timestamp as microseconds since 2000-01-01 00:00 UTC. With `zone`, an
/// offset (`+05:30`, `-08`, `Z`) is allowed and a value without one is
/// UTC; without `zone` an offset is an error, since PostgreSQL would
/// silently ignore it.
pub(super) fn parse_timestamp(text: &[u8], zone: bool) -> Result<i64, &'static str> {
    if let Some(infinite) = infinity(text) {
        return Ok(infinite);
    }
    let (text, bc) = strip_bc(text);
    let mut cursor = Cursor { text, at: 0 };
    let day = cursor.date(bc)?;
    let time = if cursor.eat(b' ') || cursor.eat(b'T') || cursor.eat(b't') { cursor.time()? } else { 0 };
    let offset = cursor.offset()?;
    if !cursor.done() {
        return Err("expected a timestamp as YYYY-MM-DD HH:MM:SS");
    }
    if offset.is_some() && !zone {
        return Err("a timestamp without time zone takes no offset");
    }
    let local = day.checked_mul(USECS_PER_DAY).and_then(|d| d.checked_add(time));
    let utc = local.and_then(|l| l.checked_sub(offset.unwrap_or(0) * USECS_PER_SEC));
    match utc {
        Some(utc) if (min_day() * USECS_PER_DAY..=max_timestamp()).contains(&utc) => Ok(utc),
        _ => Err("timestamp out of range"),
    }
}

/// A time of day as microseconds since midnight (`24:00:00` allowed).
pub(super) fn parse_time(text: &[u8]) -> Result<i64, &'static str> {
    let mut cursor = Cursor { text, at: 0 };
    let time = cursor.time()?;
    if !cursor.done() {
        return Err("expected a time as HH:MM:SS");
    }
    Ok(time)
}

/// A date read as the timestamp of its midnight, as PostgreSQL compares
/// `date` with `timestamp`; `None` past the timestamp range.
pub(super) fn date_to_timestamp(day: i64) -> Option<i64> {
    match day {
        NEG_INFINITY | POS_INFINITY => Some(day),
        _ => day.checked_mul(USECS_PER_DAY).filter(|&t| t <= max_timestamp()),
    }
}

fn infinity(text: &[u8]) -> Option<i64> {
    let text = text.trim_ascii();
    if text.eq_ignore_ascii_case(b"infinity") || text.eq_ignore_ascii_case(b"+infinity") {
        Some(POS_INFINITY)
    } else if text.eq_ignore_ascii_case(b"-infinity") {
        Some(NEG_INFINITY)
    } else {
        None
    }
}

fn strip_bc(text: &[u8]) -> (&[u8], bool) {
    let text = text.trim_ascii();
    match text.len().checked_sub(3) {
        Some(cut) if text[cut..].eq_ignore_ascii_case(b" bc") => (&text[..cut], true),
        _ => (text, false),
    }
}

struct Cursor<'a> {
    text: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.at == self.text.len()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let hit = self.text.get(self.at) == Some(&byte);
        self.at += usize::from(hit);
        hit
    }

    /// Between `min` and `max` digits as a number.
    fn number(&mut self, min: usize, max: usize) -> Option<i64> {
        let digits = self.text[self.at..].iter().take(max).take_while(|b| b.is_ascii_digit()).count();
        if digits < min {
            return None;
        }
        let value =
            self.text[self.at..self.at + digits].iter().fold(0i64, |n, b| n * 10 + i64::from(b - b'0'));
        self.at += digits;
        Some(value)
    }

    /// `YYYY-MM-DD` as days since 2000-01-01; `bc` counts the year back
    /// from 1 BC (astronomical year 0).
    fn date(&mut self, bc: bool) -> Result<i64, &'static str> {
        const SHAPE: &str = "expected a date as YYYY-MM-DD";
        // PostgreSQL reads a year of one or two digits as a month or a
        // day (`'1-2-3'` is 2003-01-02), or refuses it; it writes four.
        let year = self.number(4, 7).ok_or(SHAPE)?;
        let month = self.eat(b'-').then(|| self.number(1, 2)).flatten().ok_or(SHAPE)?;
        let day = self.eat(b'-').then(|| self.number(1, 2)).flatten().ok_or(SHAPE)?;
        if year == 0 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month, bc) {
            return Err("date field out of range");
        }
        let year = if bc { 1 - year } else { year };
        Ok(days_from_civil(year, month, day) - EPOCH_SHIFT)
    }

    /// `HH:MM[:SS[.ffffff]]` as microseconds since midnight.
    fn time(&mut self) -> Result<i64, &'static str> {
        const SHAPE: &str = "expected a time as HH:MM:SS";
        let hour = self.number(1, 2).ok_or(SHAPE)?;
        let minute = self.eat(b':').then(|| self.number(2, 2)).flatten().ok_or(SHAPE)?;
        let second = if self.eat(b':') { self.number(2, 2).ok_or(SHAPE)? } else { 0 };
        let micros = if self.eat(b'.') { self.fraction()? } else { 0 };
        let total = ((hour * 60 + minute) * 60 + second) * USECS_PER_SEC + micros;
        if hour > 24 || minute > 59 || second > 59 || total > USECS_PER_DAY {
            return Err("time field out of range");
        }
        Ok(total)
    }

    /// Up to six fractional digits of a second, as microseconds; more would
    /// be rounded by the server, so a literal may not have them.
    fn fraction(&mut self) -> Result<i64, &'static str> {
        let start = self.at;
        let value = self.number(1, 6).ok_or("expected digits after the decimal point")?;
        if self.text.get(self.at).is_some_and(u8::is_ascii_digit) {
            return Err("more than 6 fractional digits of a second");
        }
        Ok(value * 10i64.pow(6 - (self.at - start) as u32))
    }

    /// `Z`, or `+HH[:MM[:SS]]` / `-HHMM` east of UTC, in seconds.
    fn offset(&mut self) -> Result<Option<i64>, &'static str> {
        let before = self.at;
        self.eat(b' ');
        if self.eat(b'Z') || self.eat(b'z') {
            return Ok(Some(0));
        }
        let sign = if self.eat(b'+') {
            1
        } else if self.eat(b'-') {
            -1
        } else {
            self.at = before;
            return Ok(None);
        };
        const SHAPE: &str = "expected a UTC offset as +HH:MM";
        let hours = self.number(2, 2).ok_or(SHAPE)?;
        let mut seconds = hours * 3600;
        for unit in [60, 1] {
            let colon = self.eat(b':');
            match self.number(2, 2) {
                Some(n) if n < 60 => seconds += n * unit,
                None if !colon => break,
                _ => return Err(SHAPE),
            }
        }
        if hours > 15 {
            return Err("UTC offset out of range");
        }
        Ok(Some(sign * seconds))
    }
}

fn days_in_month(year: i64, month: i64, bc: bool) -> i64 {
    let year = if bc { 1 - year } else { year };
    let leap = year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year
/// numbering), after Howard Hinnant's `days_from_civil`.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

/// `YYYY-MM-DD` and whether it is BC, which the caller appends last.
fn format_day(day: i64) -> (String, bool) {
    let (year, month, day) = civil_from_days(day + EPOCH_SHIFT);
    let bc = year <= 0;
    let year = if bc { 1 - year } else { year };
    (format!("{year:04}-{month:02}-{day:02}"), bc)
}

fn format_clock(micros: i64) -> String {
    let (seconds, fraction) = (micros / USECS_PER_SEC, micros % USECS_PER_SEC);
    let clock = format!("{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60);
    if fraction == 0 { clock } else { format!("{clock}.{}", format!("{fraction:06}").trim_end_matches('0')) }
}

fn bc_suffix(bc: bool) -> &'static str {
    if bc { " BC" } else { "" }
}

/// The ISO text PostgreSQL reads back as the same date.
pub(super) fn format_date(day: i64) -> String {
    match day {
        NEG_INFINITY => "-infinity".into(),
        POS_INFINITY => "infinity".into(),
        _ => {
            let (date, bc) = format_day(day);
            format!("{date}{}", bc_suffix(bc))
        }
    }
}

/// The ISO text of a timestamp; with `zone` it is marked as UTC so the
/// server's `TimeZone` setting cannot change its meaning.
pub(super) fn format_timestamp(micros: i64, zone: bool) -> String {
    match micros {
        NEG_INFINITY => "-infinity".into(),
        POS_INFINITY => "infinity".into(),
        _ => {
            let (date, bc) = format_day(micros.div_euclid(USECS_PER_DAY));
            let clock = format_clock(micros.rem_euclid(USECS_PER_DAY));
            format!("{date} {clock}{}{}", if zone { "+00" } else { "" }, bc_suffix(bc))
        }
    }
}

pub(super) fn format_time(micros: i64) -> String {
    format_clock(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> i64 {
        parse_timestamp(text.as_bytes(), true).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn dates_count_days_from_2000() {
        assert_eq!(parse_date(b"2000-01-01"), Ok(0));
        assert_eq!(parse_date(b"2000-03-01"), Ok(60), "2000 is a leap year");
        assert_eq!(parse_date(b"1999-12-31"), Ok(-1));
        assert_eq!(parse_date(b"infinity"), Ok(POS_INFINITY));
        assert_eq!(parse_date(b"-infinity"), Ok(NEG_INFINITY));
        assert!(parse_date(b"10000-01-01").unwrap() > parse_date(b"9999-12-31").unwrap());
        assert!(parse_date(b"0001-12-31 BC").unwrap() < parse_date(b"0001-01-01").unwrap());
        assert_eq!(parse_date(b"0001-01-01").unwrap() - parse_date(b"0001-12-31 BC").unwrap(), 1);
    }

    #[test]
    fn impossible_or_relative_dates_are_refused() {
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "0000-01-01",
            "yesterday",
            "today",
            "2024-01-02 03:00",
            "01/02/2024",
            "4714-11-23 BC",
            "24-06-01",
            "1-2-3",
            "124-06-01",
        ] {
            assert!(parse_date(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(parse_date(b"2024-02-29").is_ok());
        assert!(parse_date(b"4714-11-24 BC").is_ok());
    }

    #[test]
    fn timestamps_with_offsets_are_instants() {
        assert_eq!(ts("2024-01-02 03:04:05+05:30"), ts("2024-01-01 21:34:05+00"));
        assert_eq!(ts("2024-01-02T03:04:05Z"), ts("2024-01-02 03:04:05"));
        assert_eq!(ts("2024-01-02 03:04:05-08"), ts("2024-01-02 11:04:05Z"));
        assert_eq!(ts("1800-01-01 00:19:32+00:19:32"), ts("1800-01-01 00:00:00+00"));
        assert_eq!(ts("2024-01-02 03:04:05 +0530"), ts("2024-01-02 03:04:05+05:30"));
        assert_eq!(ts("2024-01-02 03:04:05.678") - ts("2024-01-02 03:04:05"), 678_000);
        assert_eq!(ts("2024-01-02"), ts("2024-01-02 00:00"));
        assert_eq!(ts("2024-01-01 24:00:00"), ts("2024-01-02 00:00:00"));
        assert_eq!(ts("0044-03-15 12:00:00+00 BC") + 1, ts("0044-03-15 12:00:00.000001+00 BC"));
    }

    #[test]
    fn timestamps_without_zone_refuse_offsets_and_junk() {
        assert!(parse_timestamp(b"2024-01-02 03:04:05+02", false).is_err());
        assert!(parse_timestamp(b"2024-01-02 03:04:05", false).is_ok());
        for bad in [
            "2024-01-02 03:04:05.1234567",
            "2024-01-02 25:00",
            "2024-01-02 03:60",
            "2024-01-02 03:04:05 CET",
            "now",
            "2024-01-02 03:04:05+16",
        ] {
            assert!(parse_timestamp(bad.as_bytes(), true).is_err(), "{bad}");
        }
        assert!(parse_timestamp(b"294277-01-01 00:00:00", false).is_err());
    }

    #[test]
    fn times_count_microseconds_since_midnight() {
        assert_eq!(parse_time(b"00:00:00"), Ok(0));
        assert_eq!(parse_time(b"13:14:15.123456"), Ok(47_655_123_456));
        assert_eq!(parse_time(b"24:00:00"), Ok(USECS_PER_DAY));
        assert!(parse_time(b"24:00:01").is_err());
        assert_eq!(parse_time(b"08:30"), parse_time(b"08:30:00.000"));
    }

    #[test]
    fn formatting_reads_back_as_the_same_value() {
        for text in [
            "2024-01-02 03:04:05.678+00",
            "0044-03-15 12:00:00+00 BC",
            "infinity",
            "-infinity",
            "294276-12-31 23:59:59.999999+00",
        ] {
            assert_eq!(format_timestamp(ts(text), true), text);
        }
        for text in ["2024-02-29", "0001-01-01 BC", "5874897-12-31", "-infinity"] {
            assert_eq!(format_date(parse_date(text.as_bytes()).unwrap()), text);
        }
        assert_eq!(format_time(parse_time(b"13:14:15.1").unwrap()), "13:14:15.1");
        assert_eq!(date_to_timestamp(parse_date(b"2000-01-02").unwrap()), Some(USECS_PER_DAY));
        assert_eq!(date_to_timestamp(POS_INFINITY), Some(POS_INFINITY));
        assert_eq!(date_to_timestamp(parse_date(b"300000-01-01").unwrap()), None);
    }
}
