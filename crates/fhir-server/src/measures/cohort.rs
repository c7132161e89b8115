//! Registry cohorts for measures: which patients a registry's measures are computed over.
//!
//! [`CohortSource`] is the seam: a deployment that keeps registry membership current (FHIR Group per registry) can
//! answer from it. [`ComputedMembership`], the default, works membership out on demand from the stored Conditions
//! with the registry definition's own rules (`sdoh::registry::is_member`), as of the last day evaluated.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;

use chrono::NaiveDate;
use sdoh::measures::parse_iso_date;
use sdoh::registry::{Code, ConditionFacts, RegistryDefinition, RegistryPatient, is_member};
use serde_json::Value;
use store::{Store, StoreError};

use super::facts::{for_each, patient_id};

/// Answers the ids of a registry's members on a day.
pub trait CohortSource: Send + Sync {
    fn members<'a>(
        &'a self,
        registry: &'a RegistryDefinition,
        as_of: NaiveDate,
    ) -> Pin<Box<dyn Future<Output = Result<HashSet<String>, StoreError>> + Send + 'a>>;
}

/// Membership computed from the stored Conditions and Patients at each request.
pub struct ComputedMembership {
    pub store: Store,
}

impl CohortSource for ComputedMembership {
    fn members<'a>(
        &'a self,
        registry: &'a RegistryDefinition,
        as_of: NaiveDate,
    ) -> Pin<Box<dyn Future<Output = Result<HashSet<String>, StoreError>> + Send + 'a>> {
        Box::pin(computed_members(&self.store, registry, as_of))
    }
}

fn date_of(value: &Value) -> Option<NaiveDate> {
    value.as_str().and_then(|text| parse_iso_date(text).ok())
}

fn status_code(concept: &Value) -> Option<String> {
    concept["coding"].as_array()?.iter().find_map(|c| c["code"].as_str()).map(str::to_owned)
}

/// What registry membership reads from a Condition.
pub fn condition_facts(condition: &Value) -> ConditionFacts {
    let codes = condition["code"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some(Code { system: c["system"].as_str()?.to_owned(), code: c["code"].as_str()?.to_owned() }))
        .collect();
    ConditionFacts {
        codes,
        clinical_status: status_code(&condition["clinicalStatus"]),
        verification_status: status_code(&condition["verificationStatus"]),
        onset: date_of(&condition["onsetDateTime"]).or_else(|| date_of(&condition["onsetPeriod"]["start"])),
        recorded: date_of(&condition["recordedDate"]),
        abatement: date_of(&condition["abatementDateTime"]).or_else(|| date_of(&condition["abatementPeriod"]["end"])),
        source_organization: None,
    }
}

async fn computed_members(
    store: &Store,
    registry: &RegistryDefinition,
    as_of: NaiveDate,
) -> Result<HashSet<String>, StoreError> {
    // A Condition is kept only if it would qualify on its own (age aside), so memory follows the registry's size.
    let mut ageless = registry.clone();
    ageless.minimum_age = None;
    let mut candidates: HashMap<String, Vec<ConditionFacts>> = HashMap::new();
    for_each(store, "Condition", None, |condition| {
        let Some(patient) = patient_id(&condition["subject"]) else { return };
        let facts = condition_facts(condition);
        let alone = RegistryPatient { birth_date: None, conditions: vec![facts] };
        if is_member(&ageless, &alone, as_of).is_some() {
            candidates.entry(patient.to_owned()).or_default().extend(alone.conditions);
        }
    })
    .await?;
    if candidates.is_empty() {
        return Ok(HashSet::new());
    }
    let mut members = HashSet::new();
    for_each(store, "Patient", None, |patient| {
        let Some(id) = patient["id"].as_str() else { return };
        let Some(conditions) = candidates.remove(id) else { return };
        let facts = RegistryPatient { birth_date: date_of(&patient["birthDate"]), conditions };
        if is_member(registry, &facts, as_of).is_some() {
            members.insert(id.to_owned());
        }
    })
    .await?;
    Ok(members)
}
