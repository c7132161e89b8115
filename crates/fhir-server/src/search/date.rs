//! FHIR date, dateTime and instant values as ranges of epoch microseconds, honouring their precision.
//!
//! `2026` covers the whole year, `2026-11` the month, `2026-11-23` the day, `2026-11-23T10:15` the minute,
//! `...:30` that second and `...:30.25` that hundredth of a second. Bounds are inclusive, so a range is
//! `[first microsecond, last microsecond]`; open Period ends use `i64::MIN` / `i64::MAX`, which still sort.
//!
//! Time zones: a value with a time and an offset (`Z`, `+02:00`) is converted to UTC. A value with a time but no
//! offset (invalid in resources, common in queries) is read as UTC. Dates without a time (`2026-11-23`) are also
//! taken as UTC days: FHIR leaves their zone to the server, and UTC keeps indexing independent of where the
//! gateway runs.

use chrono::{Datelike, Months, NaiveDate, NaiveDateTime, NaiveTime};
use serde::{Deserialize, Serialize};

/// An inclusive range of epoch microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DateRange {
    pub low: i64,
    pub high: i64,
}

impl DateRange {
    pub const UNBOUNDED: DateRange = DateRange { low: i64::MIN, high: i64::MAX };

    pub fn overlaps(&self, other: &DateRange) -> bool {
        self.low <= other.high && other.low <= self.high
    }

    /// The smallest range covering both.
    pub fn union(&self, other: &DateRange) -> DateRange {
        DateRange { low: self.low.min(other.low), high: self.high.max(other.high) }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[error("not a FHIR date/dateTime/instant: {0:?}")]
pub struct DateError(pub String);

/// Parses `YYYY`, `YYYY-MM`, `YYYY-MM-DD` or `YYYY-MM-DDThh:mm[:ss[.fff]][Z|(+|-)hh:mm]` into the range it denotes.
pub fn parse_date_range(input: &str) -> Result<DateRange, DateError> {
    let err = || DateError(input.to_owned());
    let s = input.trim();
    let (date_part, time_part) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut fields = date_part.split('-');
    let year = fixed_digits(fields.next().ok_or_else(err)?, 4).ok_or_else(err)?;
    let month = fields.next().map(|m| fixed_digits(m, 2).ok_or_else(err)).transpose()?;
    let day = fields.next().map(|d| fixed_digits(d, 2).ok_or_else(err)).transpose()?;
    if fields.next().is_some() {
        return Err(err());
    }
    let year = i32::try_from(year).map_err(|_| err())?;

    let Some(time_part) = time_part else {
        let start = NaiveDate::from_ymd_opt(year, month.unwrap_or(1), day.unwrap_or(1)).ok_or_else(err)?;
        let next = match (month, day) {
            (None, _) => start.with_year(year + 1),
            (Some(_), None) => start.checked_add_months(Months::new(1)),
            (Some(_), Some(_)) => start.succ_opt(),
        }
        .ok_or_else(err)?;
        return range(midnight(start), midnight(next)).ok_or_else(err);
    };
    let (Some(month), Some(day)) = (month, day) else { return Err(err()) };
    let date = NaiveDate::from_ymd_opt(year, month, day).ok_or_else(err)?;

    // Split the offset off the clock time. A space stands for '+' because URL decoding turns '+' into ' '.
    let (clock, offset_secs) = if let Some(clock) = time_part.strip_suffix('Z') {
        (clock, 0)
    } else if let Some(pos) = time_part.rfind(['+', '-', ' ']) {
        let (clock, off) = time_part.split_at(pos);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (h, m) = off[1..].split_once(':').ok_or_else(err)?;
        let (h, m) = (fixed_digits(h, 2).ok_or_else(err)?, fixed_digits(m, 2).ok_or_else(err)?);
        if h > 14 || m > 59 {
            return Err(err());
        }
        (clock, sign * i64::from(h * 3600 + m * 60))
    } else {
        (time_part, 0)
    };

    let mut parts = clock.split(':');
    let hour = fixed_digits(parts.next().ok_or_else(err)?, 2).ok_or_else(err)?;
    let minute = fixed_digits(parts.next().ok_or_else(err)?, 2).ok_or_else(err)?;
    let seconds = parts.next();
    if parts.next().is_some() {
        return Err(err());
    }
    let (second, micros, width) = match seconds {
        None => (0, 0, 60_000_000),
        Some(sec) => {
            let (whole, frac) = match sec.split_once('.') {
                Some((w, f)) => (w, Some(f)),
                None => (sec, None),
            };
            let second = fixed_digits(whole, 2).ok_or_else(err)?;
            match frac {
                None => (second, 0, 1_000_000),
                Some(f) if !f.is_empty() && f.chars().all(|c| c.is_ascii_digit()) => {
                    // Digits beyond microseconds add no precision we can store.
                    let used = &f[..f.len().min(6)];
                    let value: i64 = used.parse().map_err(|_| err())?;
                    let scale = 10_i64.pow(6 - used.len() as u32);
                    (second, value * scale, scale)
                }
                Some(_) => return Err(err()),
            }
        }
    };
    // A leap second (:60) is folded into :59 rather than rejected.
    let time = NaiveTime::from_hms_opt(hour, minute, second.min(59)).ok_or_else(err)?;
    let local = NaiveDateTime::new(date, time);
    let start = local.and_utc().timestamp_micros().checked_add(micros).ok_or_else(err)?;
    let start = start.checked_sub(offset_secs * 1_000_000).ok_or_else(err)?;
    let high = start.checked_add(width - 1).ok_or_else(err)?;
    Ok(DateRange { low: start, high })
}

fn midnight(d: NaiveDate) -> NaiveDateTime {
    d.and_time(NaiveTime::MIN)
}

fn range(start: NaiveDateTime, next: NaiveDateTime) -> Option<DateRange> {
    let low = start.and_utc().timestamp_micros();
    let high = next.and_utc().timestamp_micros().checked_sub(1)?;
    Some(DateRange { low, high })
}

fn fixed_digits(s: &str, width: usize) -> Option<u32> {
    if s.len() == width && s.bytes().all(|b| b.is_ascii_digit()) { s.parse().ok() } else { None }
}

/// Epoch microseconds of a UTC instant, for tests and for callers that pass "now" explicitly.
pub fn micros(s: &str) -> Option<i64> {
    parse_date_range(s).ok().map(|r| r.low)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> DateRange {
        parse_date_range(s).unwrap()
    }

    #[test]
    fn precision_sets_the_width() {
        let year = r("1970");
        assert_eq!(year.low, 0);
        assert_eq!(year.high, 365 * 86_400_000_000 - 1);
        let month = r("2024-02");
        assert_eq!(month.high - month.low + 1, 29 * 86_400_000_000);
        let day = r("1970-01-02");
        assert_eq!((day.low, day.high), (86_400_000_000, 2 * 86_400_000_000 - 1));
        let minute = r("1970-01-01T00:01Z");
        assert_eq!((minute.low, minute.high), (60_000_000, 120_000_000 - 1));
        let second = r("1970-01-01T00:00:01Z");
        assert_eq!((second.low, second.high), (1_000_000, 2_000_000 - 1));
        let centi = r("1970-01-01T00:00:01.25Z");
        assert_eq!((centi.low, centi.high), (1_250_000, 1_260_000 - 1));
        assert_eq!(r("2025-12").high + 1, r("2026").low);
    }

    #[test]
    fn offsets_convert_to_utc_and_missing_offset_is_utc() {
        assert_eq!(r("1970-01-01T02:00:00+02:00").low, 0);
        assert_eq!(r("1970-01-01T00:00:00-05:30").low, 5 * 3_600_000_000 + 30 * 60_000_000);
        assert_eq!(r("1970-01-01T00:00:00").low, 0);
        assert_eq!(r("1970-01-01T02:00:00 02:00").low, 0);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "19",
            "1970-1",
            "1970-13",
            "1970-02-30",
            "1970-01-01T",
            "1970-01-01T25:00",
            "1970-01-01T10:00+99:00",
            "1970-01-01T10:00:00.",
            "1970-01-01T10:00:00.x",
            "abcd",
            "1970-01-01-01",
            "1970-01-01T10:00+0200",
            "1970T10:00",
            "９９９９",
        ] {
            assert!(parse_date_range(bad).is_err(), "{bad:?}");
        }
        assert!(parse_date_range("9999").is_ok());
        assert!(parse_date_range("0000").is_ok());
    }
}
