//! The per-patient facts equity measures are computed from, extracted by the caller from the stored resources.

use chrono::{Datelike, NaiveDate};

use super::definitions::HrsnDomain;

/// What the measures need to know about one patient. Demographic values are the labels the strata will carry
/// (e.g. OMB race category displays, a payer type, a county name); `None` or an empty string is the `unknown`
/// stratum. A patient with several races is given one value by the caller (e.g. "Multiple races").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PatientFacts {
    pub birth_date: Option<NaiveDate>,
    pub sex: Option<String>,
    pub race: Option<String>,
    pub ethnicity: Option<String>,
    pub language: Option<String>,
    pub payer: Option<String>,
    pub county: Option<String>,
    /// Days with an encounter (Encounter.period.start).
    pub encounters: Vec<NaiveDate>,
    /// One entry per domain assessed by a screening; an instrument covering four domains gives four entries.
    pub screenings: Vec<Screening>,
    /// Referrals (ServiceRequest + its Task) for an HRSN domain, excluding ones entered in error.
    pub referrals: Vec<Referral>,
}

/// A domain screened on a day, and whether the screening found a need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Screening {
    pub domain: HrsnDomain,
    pub date: NaiveDate,
    pub positive: bool,
}

/// A referral for a domain: when it was made (ServiceRequest.authoredOn or Task.authoredOn) and when its Task
/// reached `completed`, if it did. Cancelled, rejected and failed referrals have no completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Referral {
    pub domain: HrsnDomain,
    pub created: NaiveDate,
    pub completed: Option<NaiveDate>,
}

impl Referral {
    /// Whole days from creation to completion, 0 when the completion is dated earlier.
    pub fn days_to_completion(&self) -> Option<i64> {
        self.completed.map(|completed| (completed - self.created).num_days().max(0))
    }
}

/// Age in completed years on `date`; `None` when `date` is before the birth date.
pub fn age_on(birth_date: NaiveDate, date: NaiveDate) -> Option<u32> {
    if date < birth_date {
        return None;
    }
    let mut years = date.year() - birth_date.year();
    if (date.month(), date.day()) < (birth_date.month(), birth_date.day()) {
        years -= 1;
    }
    u32::try_from(years).ok()
}
