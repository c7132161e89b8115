//! HL7 v2 DT/TS/DTM values to FHIR `date`, `dateTime` and `instant`, keeping the sender's precision.

use crate::error::ConversionError;

/// A validated v2 timestamp, each part present only to the precision the sender gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dtm {
    year: u16,
    month: Option<u8>,
    day: Option<u8>,
    hour: Option<u8>,
    minute: Option<u8>,
    second: Option<u8>,
    fraction: Option<String>,
    /// Offset in `+hh:mm` form.
    offset: Option<String>,
}

fn num(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl Dtm {
    /// Parses `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`; `location` names the field for errors.
    pub fn parse(text: &str, location: &str) -> Result<Dtm, ConversionError> {
        let bad = |reason: &str| ConversionError::invalid(location, reason);
        let text = text.trim();
        let (body, offset) = match text.find(['+', '-']) {
            Some(i) => {
                let (b, o) = text.split_at(i);
                let digits = &o[1..];
                let (hh, mm) = match (digits.len(), num(digits)) {
                    (4, Some(_)) => (num(&digits[..2]).unwrap_or(99), num(&digits[2..]).unwrap_or(99)),
                    _ => return Err(bad("time zone offset is not +/-HHMM")),
                };
                if hh > 14 || mm > 59 {
                    return Err(bad("time zone offset out of range"));
                }
                (b, Some(format!("{}{:02}:{:02}", &o[..1], hh, mm)))
            }
            None => (text, None),
        };
        let (main, fraction) = match body.split_once('.') {
            Some((m, f)) => {
                if f.is_empty() || f.len() > 4 || num(f).is_none() || m.len() != 14 {
                    return Err(bad("fractional seconds are malformed"));
                }
                (m, Some(f.to_owned()))
            }
            None => (body, None),
        };
        if !matches!(main.len(), 4 | 6 | 8 | 10 | 12 | 14) || !main.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("not a v2 date/time (YYYY[MM[DD[HH[MM[SS]]]]])"));
        }
        let part =
            |from: usize| -> Option<u8> { main.get(from..from + 2).and_then(num).and_then(|n| u8::try_from(n).ok()) };
        let year = num(&main[..4]).and_then(|y| u16::try_from(y).ok()).ok_or_else(|| bad("year is malformed"))?;
        let dtm = Dtm {
            year,
            month: part(4),
            day: part(6),
            hour: part(8),
            minute: part(10),
            second: part(12),
            fraction,
            offset,
        };
        if year == 0 {
            return Err(bad("year is out of range"));
        }
        if dtm.month.is_some_and(|m| !(1..=12).contains(&m)) {
            return Err(bad("month is out of range"));
        }
        if let (Some(m), Some(d)) = (dtm.month, dtm.day)
            && (d == 0 || d > days_in_month(year, m))
        {
            return Err(bad("day is out of range"));
        }
        if dtm.hour.is_some_and(|h| h > 23) || dtm.minute.is_some_and(|m| m > 59) || dtm.second.is_some_and(|s| s > 59)
        {
            return Err(bad("time of day is out of range"));
        }
        Ok(dtm)
    }

    /// FHIR `date` (drops any time of day).
    pub fn date(&self) -> String {
        let mut s = format!("{:04}", self.year);
        if let Some(m) = self.month {
            s.push_str(&format!("-{m:02}"));
            if let Some(d) = self.day {
                s.push_str(&format!("-{d:02}"));
            }
        }
        s
    }

    /// FHIR `dateTime`. FHIR requires seconds and an offset once a time is given: missing minutes/seconds are
    /// zero-filled (the same instant at coarser precision); without an offset the time cannot be placed, so only
    /// the date is kept and `false` is returned for the caller to warn.
    pub fn date_time(&self) -> (String, bool) {
        match (self.hour, &self.offset) {
            (None, _) => (self.date(), true),
            (Some(_), None) => (self.date(), false),
            (Some(h), Some(off)) => {
                let mut s =
                    format!("{}T{:02}:{:02}:{:02}", self.date(), h, self.minute.unwrap_or(0), self.second.unwrap_or(0));
                if let Some(f) = &self.fraction {
                    s.push('.');
                    s.push_str(f);
                }
                s.push_str(if off == "+00:00" || off == "-00:00" { "Z" } else { off });
                (s, true)
            }
        }
    }

    /// FHIR `instant`: only when the sender gave seconds and an offset.
    pub fn instant(&self) -> Option<String> {
        (self.second.is_some() && self.offset.is_some()).then(|| self.date_time().0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(s: &str) -> (String, bool) {
        Dtm::parse(s, "X-1").expect(s).date_time()
    }

    #[test]
    fn precisions_and_offsets() {
        assert_eq!(dt("2024"), ("2024".into(), true));
        assert_eq!(dt("202402"), ("2024-02".into(), true));
        assert_eq!(dt("20240229"), ("2024-02-29".into(), true));
        assert_eq!(dt("202402291230-0500"), ("2024-02-29T12:30:00-05:00".into(), true));
        assert_eq!(dt("20240229123045.12+0000"), ("2024-02-29T12:30:45.12Z".into(), true));
        assert_eq!(dt("2024022912+0130"), ("2024-02-29T12:00:00+01:30".into(), true));
        assert_eq!(dt("20240229123045"), ("2024-02-29".into(), false));
        assert_eq!(
            Dtm::parse("20240229123045-0500", "X").unwrap().instant().as_deref(),
            Some("2024-02-29T12:30:45-05:00")
        );
        assert_eq!(Dtm::parse("202402291230-0500", "X").unwrap().instant(), None);
    }

    #[test]
    fn malformed_values_name_the_location() {
        for bad in ["", "20", "20230229", "20241301", "20240101246000", "2024x", "20240101+05", "20240101.5", "0000"] {
            let e = Dtm::parse(bad, "PID-7");
            assert!(
                matches!(&e, Err(ConversionError::InvalidValue { location, .. }) if location == "PID-7"),
                "{bad}: {e:?}"
            );
        }
        assert!(Dtm::parse("2024022912", "X").is_ok());
    }
}
