//! Timestamps as stored (microseconds since the Unix epoch) and as FHIR shows them (instants).

use chrono::{DateTime, SecondsFormat, Utc};

/// Microseconds since 1970-01-01T00:00:00Z; one integer type both backends store and compare identically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(Utc::now().timestamp_micros())
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.0).unwrap_or_default()
    }

    pub fn from_datetime(dt: DateTime<Utc>) -> Timestamp {
        Timestamp(dt.timestamp_micros())
    }
}

/// FHIR `instant` text, e.g. `2026-11-23T10:00:00.123456Z`.
pub fn format_instant(ts: Timestamp) -> String {
    ts.to_datetime().to_rfc3339_opts(SecondsFormat::Micros, true)
}
