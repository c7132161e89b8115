//! Measurement periods: calendar months and quarters, labelled `2026-03` and `2026-Q1`, and the ISO dates that fall
//! in them.

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How long a measurement period is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeriodKind {
    Month,
    Quarter,
}

/// One calendar month or quarter. Ordered by time (a month sorts before a quarter starting on the same day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Period {
    start: NaiveDate,
    kind: PeriodKind,
}

/// A date or period label that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error("not an ISO date (YYYY-MM-DD, optionally followed by a time)")]
    NotADate,
    #[error("a date without a day (YYYY or YYYY-MM) does not fall in one period")]
    PartialDate,
    #[error("not a period label (YYYY-MM or YYYY-Qn)")]
    NotAPeriod,
}

impl Period {
    /// The period of `kind` that contains `date`.
    pub fn containing(kind: PeriodKind, date: NaiveDate) -> Period {
        let first_month = match kind {
            PeriodKind::Month => date.month(),
            PeriodKind::Quarter => (date.month0() / 3) * 3 + 1,
        };
        let start = NaiveDate::from_ymd_opt(date.year(), first_month, 1).expect("the first of a month exists");
        Period { start, kind }
    }

    /// Every period of `kind` from the one containing `first` to the one containing `last`, in order (empty when
    /// `last` is before `first`).
    pub fn covering(kind: PeriodKind, first: NaiveDate, last: NaiveDate) -> Vec<Period> {
        let mut periods = Vec::new();
        if last < first {
            return periods;
        }
        let mut period = Period::containing(kind, first);
        while period.start <= last {
            periods.push(period);
            period = period.next();
        }
        periods
    }

    /// Reads a label: `2026-03` is a month, `2026-Q1` a quarter.
    pub fn parse(label: &str) -> Result<Period, PeriodError> {
        let (year, rest) = label.split_once('-').ok_or(PeriodError::NotAPeriod)?;
        if year.len() != 4 || !year.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PeriodError::NotAPeriod);
        }
        let year: i32 = year.parse().map_err(|_| PeriodError::NotAPeriod)?;
        let (kind, first_month) = match rest.as_bytes() {
            [b'Q', q @ b'1'..=b'4'] => (PeriodKind::Quarter, u32::from(q - b'1') * 3 + 1),
            [m1 @ b'0'..=b'1', m2 @ b'0'..=b'9'] => {
                let month = u32::from(m1 - b'0') * 10 + u32::from(m2 - b'0');
                if !(1..=12).contains(&month) {
                    return Err(PeriodError::NotAPeriod);
                }
                (PeriodKind::Month, month)
            }
            _ => return Err(PeriodError::NotAPeriod),
        };
        let start = NaiveDate::from_ymd_opt(year, first_month, 1).ok_or(PeriodError::NotAPeriod)?;
        Ok(Period { start, kind })
    }

    pub fn kind(&self) -> PeriodKind {
        self.kind
    }

    /// The first day of the period.
    pub fn start(&self) -> NaiveDate {
        self.start
    }

    /// The last day of the period (inclusive).
    pub fn end(&self) -> NaiveDate {
        self.next().start.pred_opt().expect("a period has a last day")
    }

    /// The date falls in the period (both ends inclusive).
    pub fn contains(&self, date: NaiveDate) -> bool {
        self.start <= date && date <= self.end()
    }

    /// The period that follows.
    pub fn next(&self) -> Period {
        let months = match self.kind {
            PeriodKind::Month => 1,
            PeriodKind::Quarter => 3,
        };
        let start = self.start.checked_add_months(chrono::Months::new(months)).expect("dates within chrono's range");
        Period { start, kind: self.kind }
    }

    /// `2026-03` or `2026-Q1`.
    pub fn label(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PeriodKind::Month => write!(f, "{:04}-{:02}", self.start.year(), self.start.month()),
            PeriodKind::Quarter => write!(f, "{:04}-Q{}", self.start.year(), self.start.month0() / 3 + 1),
        }
    }
}

impl FromStr for Period {
    type Err = PeriodError;

    fn from_str(label: &str) -> Result<Period, PeriodError> {
        Period::parse(label)
    }
}

/// A period is written as its label, in JSON, TOML and query strings alike.
impl Serialize for Period {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Period, D::Error> {
        let label = String::deserialize(deserializer)?;
        Period::parse(&label).map_err(serde::de::Error::custom)
    }
}

/// The calendar date of an ISO/FHIR `date` or `dateTime`: `2026-03-14` or `2026-03-14T09:30:00-05:00` (the date as
/// written, in the recording system's local time, which is the day the event happened for that site). Dates
/// without a day are refused: they do not fall in a single month.
pub fn parse_iso_date(text: &str) -> Result<NaiveDate, PeriodError> {
    let date_part = text.split_once('T').map_or(text, |(date, _)| date);
    let bytes = date_part.as_bytes();
    let digits = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
    match bytes.len() {
        4 if digits(0..4) => return Err(PeriodError::PartialDate),
        7 if digits(0..4) && bytes[4] == b'-' && digits(5..7) => return Err(PeriodError::PartialDate),
        10 if digits(0..4) && bytes[4] == b'-' && digits(5..7) && bytes[7] == b'-' && digits(8..10) => {}
        _ => return Err(PeriodError::NotADate),
    }
    NaiveDate::parse_from_str(date_part, "%Y-%m-%d").map_err(|_| PeriodError::NotADate)
}
