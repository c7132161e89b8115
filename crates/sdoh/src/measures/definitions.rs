//! Equity measure definitions as data (`profiles/measures/*.json`): who is counted, in the denominator and the
//! numerator, as criteria that [`super::evaluate`] applies to each patient's [`super::PatientFacts`].

use std::collections::HashSet;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

/// Built-in measures. Adding a measure file = adding a data file and one line here.
const BUILTIN_MEASURES: &[(&str, &str)] = &[
    ("hrsn-screening.json", include_str!("../../../../profiles/measures/hrsn-screening.json")),
    ("hrsn-screen-positive.json", include_str!("../../../../profiles/measures/hrsn-screen-positive.json")),
    ("hrsn-referral.json", include_str!("../../../../profiles/measures/hrsn-referral.json")),
];

static BUILTIN: LazyLock<MeasureSet> = LazyLock::new(|| {
    let mut set = MeasureSet::default();
    for (name, text) in BUILTIN_MEASURES {
        set.add_json_str(text).unwrap_or_else(|e| panic!("built-in measure file {name} is invalid: {e}"));
    }
    set
});

/// The five health-related social needs (HRSN) domains of CMS SDOH-1/SDOH-2 and the AHC HRSN screening tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HrsnDomain {
    Food,
    Housing,
    Transportation,
    Utilities,
    InterpersonalSafety,
}

impl HrsnDomain {
    pub const ALL: [HrsnDomain; 5] = [
        HrsnDomain::Food,
        HrsnDomain::Housing,
        HrsnDomain::Transportation,
        HrsnDomain::Utilities,
        HrsnDomain::InterpersonalSafety,
    ];

    /// The code used in definition files: `food`, `housing`, `transportation`, `utilities`,
    /// `interpersonal-safety`.
    pub fn code(self) -> &'static str {
        match self {
            HrsnDomain::Food => "food",
            HrsnDomain::Housing => "housing",
            HrsnDomain::Transportation => "transportation",
            HrsnDomain::Utilities => "utilities",
            HrsnDomain::InterpersonalSafety => "interpersonal-safety",
        }
    }

    /// The HRSN domain of an SDOHCC category code (SDOH Clinical Care IG `SDOHCC-CodeSystemTemporaryCodes`), if it
    /// is one of the five. Housing covers housing instability, homelessness and inadequate housing (CMS SDOH-2
    /// "housing instability" and the AHC living-situation and housing-quality questions). The AHC safety (HITS)
    /// questions carry `sdoh-category-unspecified`, so callers recognise them by their LOINC codes
    /// (95618-5, 95617-7, 95616-9, 95615-1, total 95614-4) rather than by category.
    pub fn from_sdohcc_category(code: &str) -> Option<HrsnDomain> {
        Some(match code {
            "food-insecurity" => HrsnDomain::Food,
            "housing-instability" | "homelessness" | "inadequate-housing" => HrsnDomain::Housing,
            "transportation-insecurity" => HrsnDomain::Transportation,
            "utility-insecurity" => HrsnDomain::Utilities,
            "intimate-partner-violence" | "elder-abuse" => HrsnDomain::InterpersonalSafety,
            _ => return None,
        })
    }
}

/// What one counted unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subject {
    /// Each patient counts once per period.
    Patient,
    /// Each referral counts once, in the period it was created; its patient gives the strata.
    Referral,
}

/// What the figure of a cell is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scoring {
    /// numerator / denominator with a Wilson interval and rate ratios.
    Proportion,
    /// The median number of days from a referral's creation to its completion, over the numerator's referrals.
    MedianDaysToCompletion,
}

/// Whether every listed domain or any one of them must be met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Require {
    All,
    Any,
}

/// One condition of a population. A population is the conjunction of its criteria; the numerator is always taken
/// within the denominator. Dates compare whole days; "in period" means on a day of the evaluated period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Criterion {
    /// The patient's age at the start of the period is at least `years` (CMS SDOH-1: "18 years and older at the
    /// start of the measurement period"). A patient without a birth date does not meet it.
    AgeAtLeast { years: u32 },
    /// The patient had an encounter in the period.
    EncounterInPeriod,
    /// The patient was screened in the period for all (or any) of the domains.
    ScreenedInPeriod { domains: Vec<HrsnDomain>, require: Require },
    /// The patient screened positive in the period in at least one of the domains.
    ScreenedPositiveInPeriod { domains: Vec<HrsnDomain> },
    /// After a positive screening in the period in one of the domains, the patient was referred for that same
    /// domain on the day of the screening or within `within_days` days after it (the referral may fall after the
    /// period's end).
    ReferredAfterPositive { domains: Vec<HrsnDomain>, within_days: u32 },
    /// The referral was created in the period, for one of the domains (any domain when absent).
    ReferralCreatedInPeriod {
        #[serde(default)]
        domains: Option<Vec<HrsnDomain>>,
    },
    /// The referral's Task was completed, within `within_days` days of the referral's creation when given. A
    /// completion dated before the creation (clocks of different systems) counts as 0 days.
    ReferralCompleted {
        #[serde(default)]
        within_days: Option<u32>,
    },
}

impl Criterion {
    /// Applies to a referral (rather than to the patient).
    pub fn is_about_a_referral(&self) -> bool {
        matches!(self, Criterion::ReferralCreatedInPeriod { .. } | Criterion::ReferralCompleted { .. })
    }

    /// Ties membership to the evaluated period.
    fn is_bound_to_the_period(&self) -> bool {
        matches!(
            self,
            Criterion::EncounterInPeriod
                | Criterion::ScreenedInPeriod { .. }
                | Criterion::ScreenedPositiveInPeriod { .. }
                | Criterion::ReferredAfterPositive { .. }
                | Criterion::ReferralCreatedInPeriod { .. }
        )
    }

    fn domains(&self) -> Option<&[HrsnDomain]> {
        match self {
            Criterion::ScreenedInPeriod { domains, .. }
            | Criterion::ScreenedPositiveInPeriod { domains }
            | Criterion::ReferredAfterPositive { domains, .. }
            | Criterion::ReferralCreatedInPeriod { domains: Some(domains) } => Some(domains),
            _ => None,
        }
    }
}

/// One measure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureDefinition {
    /// Lower-case letters, digits and `-`; unique in a set (it names the FHIR Measure and the CSV column).
    pub id: String,
    pub title: String,
    pub description: String,
    /// The published measure this one follows, if any.
    #[serde(default)]
    pub basis: Option<String>,
    pub subject: Subject,
    pub scoring: Scoring,
    pub denominator: Vec<Criterion>,
    pub numerator: Vec<Criterion>,
}

/// Why a measure definition was rejected.
#[derive(Debug, thiserror::Error)]
pub enum MeasureDefinitionError {
    #[error("measure definitions are not valid JSON for their schema: {0}")]
    Json(#[from] serde_json::Error),
    #[error("measure {measure}: {reason}")]
    Invalid { measure: String, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MeasuresFile {
    #[serde(rename = "_note", default)]
    _note: Option<String>,
    measures: Vec<MeasureDefinition>,
}

impl MeasureDefinition {
    /// Checks what the schema cannot: ids, non-empty populations, criteria that fit the subject and scoring.
    pub fn validate(&self) -> Result<(), MeasureDefinitionError> {
        let invalid =
            |reason: &str| MeasureDefinitionError::Invalid { measure: self.id.clone(), reason: reason.into() };
        if self.id.is_empty() || !self.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(invalid("id must be lower-case letters, digits and '-'"));
        }
        if self.denominator.is_empty() || self.numerator.is_empty() {
            return Err(invalid("denominator and numerator each need at least one criterion"));
        }
        if !self.denominator.iter().any(Criterion::is_bound_to_the_period) {
            return Err(invalid(
                "the denominator needs a criterion tied to the period (encounter, screening or referral in period)",
            ));
        }
        for criterion in self.denominator.iter().chain(&self.numerator) {
            if let Some(domains) = criterion.domains() {
                let distinct: HashSet<_> = domains.iter().collect();
                if domains.is_empty() || distinct.len() != domains.len() {
                    return Err(invalid("a domain list must be non-empty and without repeats"));
                }
            }
        }
        match self.subject {
            Subject::Patient => {
                if self.denominator.iter().chain(&self.numerator).any(Criterion::is_about_a_referral) {
                    return Err(invalid("a patient measure cannot use referral criteria (use subject \"referral\")"));
                }
            }
            Subject::Referral => {
                if !self.denominator.iter().any(|c| matches!(c, Criterion::ReferralCreatedInPeriod { .. })) {
                    return Err(invalid("a referral measure's denominator needs referral-created-in-period"));
                }
                if !self.numerator.iter().all(Criterion::is_about_a_referral) {
                    return Err(invalid("a referral measure's numerator may only use referral criteria"));
                }
            }
        }
        if self.scoring == Scoring::MedianDaysToCompletion
            && (self.subject != Subject::Referral
                || !self.numerator.iter().any(|c| matches!(c, Criterion::ReferralCompleted { .. })))
        {
            return Err(invalid(
                "median-days-to-completion needs subject \"referral\" and referral-completed in the numerator",
            ));
        }
        Ok(())
    }
}

/// A validated set of measures with unique ids, in file order.
#[derive(Debug, Clone, Default)]
pub struct MeasureSet {
    measures: Vec<MeasureDefinition>,
}

impl MeasureSet {
    /// The built-in measures of `profiles/measures/`.
    pub fn builtin() -> &'static MeasureSet {
        &BUILTIN
    }

    /// A set from one definitions file (`{"measures": [...]}`).
    pub fn from_json_str(text: &str) -> Result<MeasureSet, MeasureDefinitionError> {
        let mut set = MeasureSet::default();
        set.add_json_str(text)?;
        Ok(set)
    }

    /// Adds the measures of one definitions file; on error the set is unchanged.
    pub fn add_json_str(&mut self, text: &str) -> Result<(), MeasureDefinitionError> {
        let file: MeasuresFile = serde_json::from_str(text)?;
        let mut ids: HashSet<String> = self.measures.iter().map(|m| m.id.clone()).collect();
        for measure in &file.measures {
            measure.validate()?;
            if !ids.insert(measure.id.clone()) {
                return Err(MeasureDefinitionError::Invalid {
                    measure: measure.id.clone(),
                    reason: "id is defined twice".into(),
                });
            }
        }
        self.measures.extend(file.measures);
        Ok(())
    }

    pub fn definitions(&self) -> &[MeasureDefinition] {
        &self.measures
    }

    pub fn get(&self, id: &str) -> Option<&MeasureDefinition> {
        self.measures.iter().find(|m| m.id == id)
    }

    /// Sets the closed-loop window: every `referral-completed` criterion that has a window gets `days` (the
    /// configured "completed within N days"). Criteria without a window (median time to closure) keep none.
    pub fn set_completion_window(&mut self, days: u32) {
        for measure in &mut self.measures {
            for criterion in measure.numerator.iter_mut().chain(measure.denominator.iter_mut()) {
                if let Criterion::ReferralCompleted { within_days: Some(window) } = criterion {
                    *window = days;
                }
            }
        }
    }
}
