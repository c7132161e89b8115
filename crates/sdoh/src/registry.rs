//! Clinical quality-improvement registries as data (`profiles/registries/*.toml`): who is a member (condition codes,
//! age, source organizations), what each record carries, and the registry-specific pseudonyms records go out under.
//!
//! Membership is decided from the patient's Conditions alone, so it can be recomputed whenever one of them changes:
//! a Condition counts when one of its codings matches an inclusion rule and its verification status is neither
//! `entered-in-error` nor `refuted`. Clinical status does not remove anyone: a registry follows its patients through
//! remission (the member is then `inactive`, as FHIR `Group.member.inactive`).
//!
//! Pseudonyms are HMAC-SHA-256(key, registry id ‖ 0x00 ‖ patient id), the first 128 bits in lower-case hex: stable
//! for a patient within a registry, unlinkable across registries and without the key. A definition names its key
//! (`pseudonym_key`); the key itself comes from the gateway's configuration or environment, never from the file.

use std::collections::HashSet;
use std::fmt;
use std::sync::LazyLock;

use chrono::NaiveDate;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::measures::age_on;

/// `http://hl7.org/fhir/sid/icd-10-cm`
pub const ICD_10_CM: &str = "http://hl7.org/fhir/sid/icd-10-cm";
/// `http://snomed.info/sct`
pub const SNOMED_CT: &str = "http://snomed.info/sct";

/// Built-in registries. Adding a registry = adding a data file and one line here.
const BUILTIN_REGISTRIES: &[(&str, &str)] = &[
    ("copd-asthma.toml", include_str!("../../../profiles/registries/copd-asthma.toml")),
    ("diabetes.toml", include_str!("../../../profiles/registries/diabetes.toml")),
    ("ckd.toml", include_str!("../../../profiles/registries/ckd.toml")),
];

static BUILTIN: LazyLock<Registries> = LazyLock::new(|| {
    let mut set = Registries::default();
    for (name, text) in BUILTIN_REGISTRIES {
        set.add_toml_str(name, text).unwrap_or_else(|e| panic!("built-in registry {name} is invalid: {e}"));
    }
    set
});

/// Why a registry definition was rejected. Names the file (or registry) and the reason; TOML errors carry line and
/// column.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{file}: {error}")]
    Toml { file: String, error: toml::de::Error },
    #[error("{file}: registry {registry}: {reason}")]
    Invalid { file: String, registry: String, reason: String },
}

/// What a registry record carries besides the pseudonymized Patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Content {
    /// The Conditions that made the patient a member.
    Conditions,
    /// SDOH screening-response Observations.
    SdohScreenings,
    /// SDOH health-concern Conditions.
    HealthConcerns,
    /// Referrals: ServiceRequest and Task status.
    Referrals,
    Encounters,
}

/// A code, or every code starting with a prefix, of one code system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeRule {
    /// [`ICD_10_CM`] or [`SNOMED_CT`].
    pub system: String,
    /// Exactly this code.
    #[serde(default)]
    pub code: Option<String>,
    /// Any code beginning with this (ICD-10-CM only: a SNOMED CT id's digits carry no hierarchy).
    #[serde(default)]
    pub prefix: Option<String>,
    pub display: String,
}

impl CodeRule {
    fn matches(&self, coding: &Code) -> bool {
        if coding.system != self.system {
            return false;
        }
        let candidate = normalize_code(&self.system, &coding.code);
        match (&self.code, &self.prefix) {
            (Some(code), _) => candidate == normalize_code(&self.system, code),
            (None, Some(prefix)) => candidate.starts_with(&normalize_code(&self.system, prefix)),
            (None, None) => false,
        }
    }
}

/// ICD-10-CM is written with or without its dot (`E11.9`, `E119`) and in either case; SNOMED CT ids are digits.
fn normalize_code(system: &str, code: &str) -> String {
    if system == ICD_10_CM {
        code.trim().chars().filter(|&c| c != '.').map(|c| c.to_ascii_uppercase()).collect()
    } else {
        code.trim().to_owned()
    }
}

/// One registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryDefinition {
    /// Lower-case letters, digits and `-` (it names the FHIR Group and enters every pseudonym).
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Minimum age in years on the day membership is evaluated; a patient without a birth date is then not a
    /// member.
    #[serde(default)]
    pub minimum_age: Option<u32>,
    /// When non-empty, only Conditions from these organizations (ids or identifiers, as the caller resolves a
    /// Condition's source) count.
    #[serde(default)]
    pub source_organizations: Vec<String>,
    /// What each record carries.
    pub content: Vec<Content>,
    /// The NAME of the pseudonymization key (letters, digits, `_`, `-`); the key is configured elsewhere.
    pub pseudonym_key: String,
    /// A Condition with a coding matching any rule makes its patient a member.
    pub inclusion: Vec<CodeRule>,
}

impl RegistryDefinition {
    /// Parses and validates one TOML definition; `file` names it in errors.
    pub fn from_toml_str(file: &str, text: &str) -> Result<RegistryDefinition, RegistryError> {
        let definition: RegistryDefinition =
            toml::from_str(text).map_err(|error| RegistryError::Toml { file: file.to_owned(), error })?;
        definition.validate().map_err(|reason| RegistryError::Invalid {
            file: file.to_owned(),
            registry: definition.id.clone(),
            reason,
        })?;
        Ok(definition)
    }

    fn validate(&self) -> Result<(), String> {
        if self.id.is_empty() || !self.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err("id must be lower-case letters, digits and '-'".into());
        }
        if self.title.trim().is_empty() {
            return Err("title is empty".into());
        }
        if self.pseudonym_key.is_empty()
            || self.pseudonym_key.len() > 64
            || !self.pseudonym_key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(
                "pseudonym_key must be a key name of 1-64 letters, digits, '_' or '-' (never the key itself)".into()
            );
        }
        let distinct: HashSet<_> = self.content.iter().collect();
        if self.content.is_empty() || distinct.len() != self.content.len() {
            return Err("content must list at least one kind, each once".into());
        }
        if self.source_organizations.iter().any(|o| o.trim().is_empty()) {
            return Err("source_organizations has an empty entry".into());
        }
        if self.inclusion.is_empty() {
            return Err("inclusion needs at least one code rule".into());
        }
        for (i, rule) in self.inclusion.iter().enumerate() {
            let at = format!("inclusion[{i}]");
            let value = match (&rule.code, &rule.prefix) {
                (Some(code), None) => code,
                (None, Some(prefix)) => prefix,
                _ => return Err(format!("{at}: give exactly one of code and prefix")),
            };
            match rule.system.as_str() {
                ICD_10_CM => {
                    let normalized = normalize_code(ICD_10_CM, value);
                    let mut chars = normalized.chars();
                    let well_formed = chars.next().is_some_and(|c| c.is_ascii_uppercase())
                        && normalized.len() >= 2
                        && normalized.len() <= 7
                        && chars.all(|c| c.is_ascii_alphanumeric());
                    if !well_formed {
                        return Err(format!("{at}: {value:?} is not an ICD-10-CM code or prefix"));
                    }
                }
                SNOMED_CT => {
                    if rule.prefix.is_some() {
                        return Err(format!(
                            "{at}: SNOMED CT has no prefix matching (its ids carry no hierarchy); list the codes"
                        ));
                    }
                    let digits = value.trim();
                    if !(6..=18).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(format!("{at}: {value:?} is not a SNOMED CT id"));
                    }
                }
                other => return Err(format!("{at}: system {other:?} is neither {ICD_10_CM} nor {SNOMED_CT}")),
            }
        }
        Ok(())
    }
}

/// A validated set of registries with unique ids.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    registries: Vec<RegistryDefinition>,
}

impl Registries {
    /// The built-in registries of `profiles/registries/`.
    pub fn builtin() -> &'static Registries {
        &BUILTIN
    }

    /// Adds one TOML definition; on error the set is unchanged.
    pub fn add_toml_str(&mut self, file: &str, text: &str) -> Result<(), RegistryError> {
        let definition = RegistryDefinition::from_toml_str(file, text)?;
        if self.get(&definition.id).is_some() {
            return Err(RegistryError::Invalid {
                file: file.to_owned(),
                registry: definition.id,
                reason: "another registry has this id".into(),
            });
        }
        self.registries.push(definition);
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<&RegistryDefinition> {
        self.registries.iter().find(|r| r.id == id)
    }

    pub fn definitions(&self) -> &[RegistryDefinition] {
        &self.registries
    }
}

/// One coding of a Condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    pub system: String,
    pub code: String,
}

/// What membership needs to know about one Condition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConditionFacts {
    /// Condition.code.coding.
    pub codes: Vec<Code>,
    /// Condition.clinicalStatus code (`active`, `recurrence`, `relapse`, `inactive`, `remission`, `resolved`).
    pub clinical_status: Option<String>,
    /// Condition.verificationStatus code; `entered-in-error` and `refuted` do not count.
    pub verification_status: Option<String>,
    /// Condition.onset (dateTime or Period.start).
    pub onset: Option<NaiveDate>,
    /// Condition.recordedDate.
    pub recorded: Option<NaiveDate>,
    /// Condition.abatement (dateTime or Period.end).
    pub abatement: Option<NaiveDate>,
    /// The organization the Condition came from, as `source_organizations` names organizations.
    pub source_organization: Option<String>,
}

/// What membership needs to know about one patient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryPatient {
    pub birth_date: Option<NaiveDate>,
    pub conditions: Vec<ConditionFacts>,
}

/// A patient's membership, as FHIR `Group.member.period` and `Group.member.inactive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    /// The earliest onset (else recorded date) of a qualifying Condition, and not before the day the patient
    /// reached the minimum age; `None` when no qualifying Condition is dated.
    pub start: Option<NaiveDate>,
    /// The latest abatement, when every qualifying Condition has abated with a date.
    pub end: Option<NaiveDate>,
    /// Every qualifying Condition is `inactive`, `remission` or `resolved`.
    pub inactive: bool,
}

/// The patient's membership in the registry on `as_of`, or `None` if not a member.
pub fn is_member(definition: &RegistryDefinition, patient: &RegistryPatient, as_of: NaiveDate) -> Option<Membership> {
    let qualifying: Vec<&ConditionFacts> = patient
        .conditions
        .iter()
        .filter(|c| !matches!(c.verification_status.as_deref(), Some("entered-in-error" | "refuted")))
        .filter(|c| {
            definition.source_organizations.is_empty()
                || c.source_organization.as_ref().is_some_and(|o| definition.source_organizations.contains(o))
        })
        .filter(|c| c.codes.iter().any(|code| definition.inclusion.iter().any(|rule| rule.matches(code))))
        .collect();
    if qualifying.is_empty() {
        return None;
    }
    let mut start = qualifying.iter().filter_map(|c| c.onset.or(c.recorded)).min();
    if let Some(minimum_age) = definition.minimum_age {
        let birth = patient.birth_date?;
        if age_on(birth, as_of)? < minimum_age {
            return None;
        }
        let came_of_age = birth.checked_add_months(chrono::Months::new(minimum_age.saturating_mul(12)));
        start = start.map(|s| came_of_age.map_or(s, |d| s.max(d)));
    }
    let inactive =
        qualifying.iter().all(|c| matches!(c.clinical_status.as_deref(), Some("inactive" | "remission" | "resolved")));
    let end = if inactive && qualifying.iter().all(|c| c.abatement.is_some()) {
        qualifying.iter().filter_map(|c| c.abatement).max()
    } else {
        None
    };
    Some(Membership { start, end, inactive })
}

/// A pseudonymization key. Its bytes never appear in `Debug` output.
#[derive(Clone)]
pub struct PseudonymKey(Vec<u8>);

/// The shortest key accepted: HMAC-SHA-256 keys should be at least as long as the hash (RFC 2104, section 3).
pub const MIN_KEY_BYTES: usize = 32;

/// A key too short to be safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a pseudonymization key needs at least {MIN_KEY_BYTES} bytes")]
pub struct KeyTooShort;

impl PseudonymKey {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<PseudonymKey, KeyTooShort> {
        let bytes = bytes.into();
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyTooShort);
        }
        Ok(PseudonymKey(bytes))
    }
}

impl fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PseudonymKey(<redacted>)")
    }
}

/// The patient's pseudonym in the registry: 32 lower-case hex digits (128 bits of HMAC-SHA-256), usable as a FHIR id.
pub fn pseudonym(key: &PseudonymKey, registry_id: &str, patient_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key.0).expect("HMAC accepts keys of any length");
    // The separator keeps ("ab", "c") and ("a", "bc") apart; registry ids cannot contain it.
    mac.update(registry_id.as_bytes());
    mac.update(&[0]);
    mac.update(patient_id.as_bytes());
    let digest = mac.finalize().into_bytes();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The year of a FHIR `date` (`1956`, `1956-04`, `1956-04-12`): all of a birth date a registry record keeps.
pub fn birth_year(birth_date: &str) -> Option<i32> {
    let year = birth_date.get(..4)?;
    let rest = &birth_date[4..];
    if !year.bytes().all(|b| b.is_ascii_digit()) || !(rest.is_empty() || rest.starts_with('-')) {
        return None;
    }
    year.parse().ok()
}
