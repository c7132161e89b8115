//! The evaluator: measure definitions applied to patient facts, per period, overall and per stratum, with rates,
//! intervals, rate ratios and suppression.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::definitions::{Criterion, MeasureDefinition, Require, Scoring, Subject};
use super::facts::{PatientFacts, Referral, age_on};
use super::periods::Period;
use super::stats::{self, Proportion, RateRatio, RatioUndefined};
use super::suppression::{self, Counts, Suppression};

/// The stratum of patients without a value for the stratifier. Never chosen as the default reference group.
pub const UNKNOWN_STRATUM: &str = "unknown";

/// A patient attribute the results are broken down by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stratifier {
    Race,
    Ethnicity,
    /// Preferred language.
    Language,
    /// Payer type.
    Payer,
    County,
    /// Age at the start of the period: `0-17`, `18-44`, `45-64`, `65+`.
    AgeBand,
    Sex,
}

impl Stratifier {
    pub const ALL: [Stratifier; 7] = [
        Stratifier::Race,
        Stratifier::Ethnicity,
        Stratifier::Language,
        Stratifier::Payer,
        Stratifier::County,
        Stratifier::AgeBand,
        Stratifier::Sex,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Stratifier::Race => "race",
            Stratifier::Ethnicity => "ethnicity",
            Stratifier::Language => "language",
            Stratifier::Payer => "payer",
            Stratifier::County => "county",
            Stratifier::AgeBand => "age-band",
            Stratifier::Sex => "sex",
        }
    }

    /// The patient's stratum in the period.
    pub fn stratum(self, patient: &PatientFacts, period: Period) -> String {
        let label = |value: &Option<String>| match value.as_deref().map(str::trim) {
            Some(v) if !v.is_empty() => v.to_owned(),
            _ => UNKNOWN_STRATUM.to_owned(),
        };
        match self {
            Stratifier::Race => label(&patient.race),
            Stratifier::Ethnicity => label(&patient.ethnicity),
            Stratifier::Language => label(&patient.language),
            Stratifier::Payer => label(&patient.payer),
            Stratifier::County => label(&patient.county),
            Stratifier::Sex => label(&patient.sex),
            Stratifier::AgeBand => match patient.birth_date.and_then(|birth| age_on(birth, period.start())) {
                None => UNKNOWN_STRATUM,
                Some(0..=17) => "0-17",
                Some(18..=44) => "18-44",
                Some(45..=64) => "45-64",
                Some(_) => "65+",
            }
            .to_owned(),
        }
    }
}

/// A stratifier to evaluate and the group its rate ratios compare against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StratifierSpec {
    pub stratifier: Stratifier,
    /// The reference stratum; by default the stratum with the largest denominator over all evaluated periods of
    /// the measure (ties: the first label), `unknown` excluded, so the reference stays the same along a run
    /// chart.
    #[serde(default)]
    pub reference: Option<String>,
}

impl StratifierSpec {
    /// The stratifier with the default reference group.
    pub fn new(stratifier: Stratifier) -> StratifierSpec {
        StratifierSpec { stratifier, reference: None }
    }
}

/// Which patients a cell is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Overall,
    Stratum { stratifier: Stratifier, value: String },
}

/// One measure, one period, one group.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub measure: String,
    pub period: Period,
    pub group: Group,
    pub value: CellValue,
}

/// What a cell may show. A suppressed cell carries no counts at all, so no output can leak them.
#[derive(Debug, Clone, PartialEq)]
pub enum CellValue {
    Shown(Figures),
    Suppressed(Suppression),
}

/// The figures of a cell that may be shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Patients (or referrals) meeting the numerator; for a median measure, the completed referrals.
    pub numerator: u64,
    /// Patients (or referrals) meeting the denominator.
    pub denominator: u64,
    /// Proportion measures with a non-zero denominator: the rate and its 95% Wilson interval.
    pub proportion: Option<Proportion>,
    /// Median measures with at least one completed referral: the median days to completion.
    pub median_days: Option<f64>,
    pub comparison: Comparison,
}

/// How a stratum compares with its stratifier's reference group.
#[derive(Debug, Clone, PartialEq)]
pub enum Comparison {
    /// Overall cells and median measures.
    NotApplicable,
    /// This stratum is the reference group.
    Reference,
    /// The rate ratio against the reference group (or why it does not exist).
    Ratio { reference: String, ratio: Result<RateRatio, RatioUndefined> },
    /// The reference group's cell is suppressed: a ratio would reveal its rate.
    ReferenceSuppressed { reference: String },
    /// Every stratum is `unknown`: there is no group to compare with.
    NoReference,
}

#[derive(Debug, Clone, Default)]
struct Tally {
    numerator: u64,
    denominator: u64,
    days_to_completion: Vec<f64>,
}

impl Tally {
    fn counts(&self) -> Counts {
        Counts { numerator: self.numerator, denominator: self.denominator }
    }
}

/// Evaluates each measure for each period, overall and for each stratum of each stratifier, and applies
/// suppression. Cells come out by measure, then period, then overall followed by each stratifier's strata in
/// label order (`unknown` last). The strata of a stratifier are the values the patients have in any evaluated
/// period; strata with nobody in a cell are shown as zeros.
///
/// Periods still open, or closed fewer days ago than a measure's window (referral within N days of a positive
/// screening, completion within N days), are provisional: what happens later can still move their figures.
pub fn evaluate(
    measures: &[MeasureDefinition],
    patients: &[PatientFacts],
    periods: &[Period],
    stratifiers: &[StratifierSpec],
) -> Vec<Cell> {
    let strata: Vec<Vec<String>> =
        stratifiers.iter().map(|spec| strata_of(spec.stratifier, patients, periods)).collect();
    let stratum_index: Vec<HashMap<&str, usize>> =
        strata.iter().map(|values| values.iter().enumerate().map(|(i, v)| (v.as_str(), i)).collect()).collect();
    // tallies[measure][period] = (overall, rows[stratifier][stratum index])
    let mut tallies: Vec<Vec<(Tally, Vec<Vec<Tally>>)>> = Vec::with_capacity(measures.len());
    tallies.resize_with(measures.len(), Vec::new);
    for &period in periods {
        // Each patient's stratum in each stratifier, worked out once per period for all measures.
        let patient_strata: Vec<Vec<usize>> = patients
            .iter()
            .map(|patient| {
                stratifiers
                    .iter()
                    .zip(&stratum_index)
                    .map(|(spec, index)| index[spec.stratifier.stratum(patient, period).as_str()])
                    .collect()
            })
            .collect();
        for (m, measure) in measures.iter().enumerate() {
            let mut overall = Tally::default();
            let mut rows: Vec<Vec<Tally>> = strata.iter().map(|values| vec![Tally::default(); values.len()]).collect();
            for (patient, indexes) in patients.iter().zip(&patient_strata) {
                let mut counted = Tally::default();
                count_patient(measure, patient, period, &mut counted);
                if counted.denominator == 0 {
                    continue;
                }
                add(&mut overall, &counted);
                for (row, &index) in rows.iter_mut().zip(indexes) {
                    add(&mut row[index], &counted);
                }
            }
            tallies[m].push((overall, rows));
        }
    }

    let mut cells = Vec::new();
    for (measure, per_period) in measures.iter().zip(&tallies) {
        let references: Vec<Option<&str>> = stratifiers
            .iter()
            .enumerate()
            .map(|(s, spec)| {
                spec.reference
                    .as_deref()
                    .or_else(|| largest_stratum(&strata[s], per_period.iter().map(|(_, rows)| &rows[s])))
            })
            .collect();
        for (&period, (overall, rows)) in periods.iter().zip(per_period) {
            let overall_value = match suppression::primary(overall.counts()) {
                Some(reason) => CellValue::Suppressed(reason),
                None => CellValue::Shown(figures(measure, overall, Comparison::NotApplicable)),
            };
            cells.push(Cell { measure: measure.id.clone(), period, group: Group::Overall, value: overall_value });

            for (s, spec) in stratifiers.iter().enumerate() {
                let row = &rows[s];
                let decisions = suppression::suppress_strata(&row.iter().map(Tally::counts).collect::<Vec<_>>());
                let reference = references[s].map(|label| {
                    let index = strata[s].iter().position(|v| v == label);
                    Reference {
                        label,
                        tally: index.map(|i| &row[i]),
                        suppressed: index.is_some_and(|i| decisions[i].is_some()),
                    }
                });
                for ((value, tally), decision) in strata[s].iter().zip(row).zip(&decisions) {
                    let group = Group::Stratum { stratifier: spec.stratifier, value: value.clone() };
                    let value = match decision {
                        Some(reason) => CellValue::Suppressed(*reason),
                        None => {
                            let comparison = compare(measure, value, tally, reference.as_ref());
                            CellValue::Shown(figures(measure, tally, comparison))
                        }
                    };
                    cells.push(Cell { measure: measure.id.clone(), period, group, value });
                }
            }
        }
    }
    cells
}

/// The reference group of one row.
struct Reference<'a> {
    label: &'a str,
    /// `None` when no patient has the configured reference value.
    tally: Option<&'a Tally>,
    suppressed: bool,
}

fn add(into: &mut Tally, from: &Tally) {
    into.numerator += from.numerator;
    into.denominator += from.denominator;
    into.days_to_completion.extend_from_slice(&from.days_to_completion);
}

fn figures(measure: &MeasureDefinition, tally: &Tally, comparison: Comparison) -> Figures {
    let (proportion, median_days) = match measure.scoring {
        Scoring::Proportion => (stats::proportion(tally.numerator, tally.denominator), None),
        Scoring::MedianDaysToCompletion => (None, stats::median(&tally.days_to_completion)),
    };
    Figures { numerator: tally.numerator, denominator: tally.denominator, proportion, median_days, comparison }
}

fn compare(measure: &MeasureDefinition, value: &str, tally: &Tally, reference: Option<&Reference<'_>>) -> Comparison {
    if measure.scoring != Scoring::Proportion {
        return Comparison::NotApplicable;
    }
    let Some(reference) = reference else {
        return Comparison::NoReference;
    };
    if value == reference.label {
        Comparison::Reference
    } else if reference.suppressed {
        Comparison::ReferenceSuppressed { reference: reference.label.to_owned() }
    } else {
        let (numerator, denominator) = reference.tally.map_or((0, 0), |t| (t.numerator, t.denominator));
        Comparison::Ratio {
            reference: reference.label.to_owned(),
            ratio: stats::rate_ratio(tally.numerator, tally.denominator, numerator, denominator),
        }
    }
}

/// Every value the stratifier takes among the patients in the periods, in label order with `unknown` last.
fn strata_of(stratifier: Stratifier, patients: &[PatientFacts], periods: &[Period]) -> Vec<String> {
    let mut values = BTreeSet::new();
    for patient in patients {
        if stratifier == Stratifier::AgeBand {
            values.extend(periods.iter().map(|&period| stratifier.stratum(patient, period)));
        } else if let Some(&period) = periods.first() {
            values.insert(stratifier.stratum(patient, period));
        }
    }
    let unknown = values.remove(UNKNOWN_STRATUM);
    let mut ordered: Vec<String> = values.into_iter().collect();
    if unknown {
        ordered.push(UNKNOWN_STRATUM.to_owned());
    }
    ordered
}

/// The stratum with the largest denominator over all periods, `unknown` excluded; ties go to the first label.
fn largest_stratum<'a>(strata: &'a [String], rows: impl Iterator<Item = &'a Vec<Tally>>) -> Option<&'a str> {
    let mut totals = vec![0u64; strata.len()];
    for row in rows {
        for (total, tally) in totals.iter_mut().zip(row) {
            *total += tally.denominator;
        }
    }
    let mut best: Option<(usize, u64)> = None;
    for (i, (value, &total)) in strata.iter().zip(&totals).enumerate() {
        if value != UNKNOWN_STRATUM && best.is_none_or(|(_, largest)| total > largest) {
            best = Some((i, total));
        }
    }
    best.map(|(i, _)| strata[i].as_str())
}

/// Adds what one patient contributes to the measure in the period.
fn count_patient(measure: &MeasureDefinition, patient: &PatientFacts, period: Period, tally: &mut Tally) {
    match measure.subject {
        Subject::Patient => {
            let meets = |criteria: &[Criterion]| criteria.iter().all(|c| patient_meets(c, patient, period));
            if meets(&measure.denominator) {
                tally.denominator += 1;
                if meets(&measure.numerator) {
                    tally.numerator += 1;
                }
            }
        }
        Subject::Referral => {
            let patient_criteria_met = measure
                .denominator
                .iter()
                .filter(|c| !c.is_about_a_referral())
                .all(|c| patient_meets(c, patient, period));
            if !patient_criteria_met {
                return;
            }
            for referral in &patient.referrals {
                let meets = |criteria: &[Criterion]| {
                    criteria.iter().filter(|c| c.is_about_a_referral()).all(|c| referral_meets(c, referral, period))
                };
                if meets(&measure.denominator) {
                    tally.denominator += 1;
                    if meets(&measure.numerator) {
                        tally.numerator += 1;
                        if let Some(days) = referral.days_to_completion() {
                            tally.days_to_completion.push(days as f64);
                        }
                    }
                }
            }
        }
    }
}

fn patient_meets(criterion: &Criterion, patient: &PatientFacts, period: Period) -> bool {
    match criterion {
        Criterion::AgeAtLeast { years } => {
            patient.birth_date.and_then(|birth| age_on(birth, period.start())).is_some_and(|age| age >= *years)
        }
        Criterion::EncounterInPeriod => patient.encounters.iter().any(|&day| period.contains(day)),
        Criterion::ScreenedInPeriod { domains, require } => {
            let screened = |domain| patient.screenings.iter().any(|s| s.domain == domain && period.contains(s.date));
            match require {
                Require::All => domains.iter().all(|&d| screened(d)),
                Require::Any => domains.iter().any(|&d| screened(d)),
            }
        }
        Criterion::ScreenedPositiveInPeriod { domains } => {
            patient.screenings.iter().any(|s| s.positive && domains.contains(&s.domain) && period.contains(s.date))
        }
        Criterion::ReferredAfterPositive { domains, within_days } => patient
            .screenings
            .iter()
            .filter(|s| s.positive && domains.contains(&s.domain) && period.contains(s.date))
            .any(|screening| {
                patient.referrals.iter().any(|referral| {
                    let days_after = (referral.created - screening.date).num_days();
                    referral.domain == screening.domain && (0..=i64::from(*within_days)).contains(&days_after)
                })
            }),
        // Referral criteria never reach here: definitions keep them out of patient populations.
        Criterion::ReferralCreatedInPeriod { .. } | Criterion::ReferralCompleted { .. } => false,
    }
}

fn referral_meets(criterion: &Criterion, referral: &Referral, period: Period) -> bool {
    match criterion {
        Criterion::ReferralCreatedInPeriod { domains } => {
            period.contains(referral.created) && domains.as_ref().is_none_or(|d| d.contains(&referral.domain))
        }
        Criterion::ReferralCompleted { within_days } => match referral.days_to_completion() {
            None => false,
            Some(days) => within_days.is_none_or(|window| days <= i64::from(window)),
        },
        _ => false,
    }
}
