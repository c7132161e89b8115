//! A registry member's record: a FHIR Bundle (type `collection`) with a pseudonymized Patient and the clinical and
//! social-needs resources the registry's definition asks for, every id and reference rewritten to pseudonyms.
//!
//! Records are built by allow-list: each resource keeps only the elements named here, minus identifiers,
//! narratives, notes, free text and extensions, and a reference survives only when it points at another resource
//! of the same record (rewritten to its pseudonym); anything else (practitioners, organizations, source documents)
//! is dropped with its display text. The Patient keeps birth year, sex, race, ethnicity, preferred language, county
//! and payer type, nothing more. Pseudonyms are `sdoh::registry::pseudonym` per registry: the Patient's of its id,
//! every other resource's of `Type/id`.

use std::collections::HashMap;

use chrono::NaiveDate;
use sdoh::registry::{Code, ConditionFacts, Content, RegistryPatient, is_member, pseudonym};
use serde_json::{Map, Value, json};

use super::Registry;

/// The extension carrying the payer type (the member's Coverage.type) on a record's Patient.
pub const PAYER_TYPE_EXTENSION: &str = "https://example.invalid/sdoh-gateway/fhir/StructureDefinition/payer-type";
const US_CORE_RACE: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race";
const US_CORE_ETHNICITY: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity";
const SDOHCC_CODES: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes";

/// The resource types a registry record can hold (and a group export can write).
pub const RECORD_TYPES: &[&str] = &["Patient", "Condition", "Observation", "ServiceRequest", "Task", "Encounter"];

/// A patient's data as stored: what membership and the record are made from.
#[derive(Debug, Clone, Default)]
pub struct PatientData {
    pub patient: Value,
    pub conditions: Vec<Value>,
    pub observations: Vec<Value>,
    pub service_requests: Vec<Value>,
    pub tasks: Vec<Value>,
    pub encounters: Vec<Value>,
    pub coverages: Vec<Value>,
}

/// What membership needs from a Patient and its Conditions.
pub fn registry_patient(patient: &Value, conditions: &[Value]) -> RegistryPatient {
    RegistryPatient {
        birth_date: patient["birthDate"].as_str().and_then(partial_date),
        conditions: conditions.iter().map(condition_facts).collect(),
    }
}

fn condition_facts(condition: &Value) -> ConditionFacts {
    let first_code = |field: &str| condition[field]["coding"].as_array()?.iter().find_map(|c| c["code"].as_str());
    ConditionFacts {
        codes: codings(&condition["code"])
            .filter_map(|c| Some(Code { system: c["system"].as_str()?.into(), code: c["code"].as_str()?.into() }))
            .collect(),
        clinical_status: first_code("clinicalStatus").map(str::to_owned),
        verification_status: first_code("verificationStatus").map(str::to_owned),
        onset: date_of(&condition["onsetDateTime"]).or_else(|| date_of(&condition["onsetPeriod"]["start"])),
        recorded: date_of(&condition["recordedDate"]),
        abatement: date_of(&condition["abatementDateTime"]).or_else(|| date_of(&condition["abatementPeriod"]["end"])),
        source_organization: None,
    }
}

fn codings(concept: &Value) -> impl Iterator<Item = &Value> {
    concept["coding"].as_array().into_iter().flatten()
}

fn date_of(value: &Value) -> Option<NaiveDate> {
    value.as_str().and_then(|s| NaiveDate::parse_from_str(s.get(..10)?, "%Y-%m-%d").ok())
}

/// A FHIR date of any precision as a day (a year alone as its first day): enough to compare ages by year.
fn partial_date(text: &str) -> Option<NaiveDate> {
    match text.len() {
        4 => NaiveDate::from_ymd_opt(text.parse().ok()?, 1, 1),
        7 => NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d").ok(),
        _ => NaiveDate::parse_from_str(text.get(..10)?, "%Y-%m-%d").ok(),
    }
}

/// Whether one Condition qualifies for the registry by itself (its codes and status; age is the patient's).
fn in_scope(registry: &Registry, condition: &Value, as_of: NaiveDate) -> bool {
    let mut rules = registry.definition.clone();
    rules.minimum_age = None;
    let alone = RegistryPatient { birth_date: None, conditions: vec![condition_facts(condition)] };
    is_member(&rules, &alone, as_of).is_some()
}

fn has_category(resource: &Value, codes: &[&str]) -> bool {
    resource["category"].as_array().into_iter().flatten().flat_map(codings).any(|c| {
        c["code"].as_str().is_some_and(|code| codes.contains(&code)) || c["system"].as_str() == Some(SDOHCC_CODES)
    })
}

fn reference_id<'a>(reference: &'a Value, resource_type: &str) -> Option<&'a str> {
    let text = reference["reference"].as_str()?;
    let (t, id) = text.rsplit_once('/')?;
    (t.rsplit('/').next() == Some(resource_type)).then_some(id)
}

/// The member's record, or `None` when the Patient has no id.
pub fn build_record(registry: &Registry, data: &PatientData, as_of: NaiveDate) -> Option<(String, Value)> {
    let patient_id = data.patient["id"].as_str()?;
    let content = &registry.definition.content;
    let wants = |c: Content| content.contains(&c);
    let mut chosen: Vec<&Value> = Vec::new();
    for condition in &data.conditions {
        let qualifies = in_scope(registry, condition, as_of);
        if (qualifies && wants(Content::Conditions))
            || (!qualifies && wants(Content::HealthConcerns) && has_category(condition, &["health-concern"]))
        {
            chosen.push(condition);
        }
    }
    if wants(Content::SdohScreenings) {
        chosen.extend(data.observations.iter().filter(|o| has_category(o, &["survey", "sdoh"])));
    }
    if wants(Content::Referrals) {
        let focused: Vec<&str> =
            data.tasks.iter().filter_map(|t| reference_id(&t["focus"], "ServiceRequest")).collect();
        let referrals: Vec<&Value> = data
            .service_requests
            .iter()
            .filter(|sr| has_category(sr, &["410606002"]) || sr["id"].as_str().is_some_and(|id| focused.contains(&id)))
            .collect();
        let referral_ids: Vec<&str> = referrals.iter().filter_map(|sr| sr["id"].as_str()).collect();
        chosen.extend(referrals);
        chosen.extend(
            data.tasks
                .iter()
                .filter(|t| reference_id(&t["focus"], "ServiceRequest").is_some_and(|id| referral_ids.contains(&id))),
        );
    }
    if wants(Content::Encounters) {
        chosen.extend(data.encounters.iter());
    }

    let key = &registry.key;
    let registry_id = registry.id();
    let patient_pseudonym = pseudonym(key, registry_id, patient_id);
    let mut ids: HashMap<String, String> = HashMap::new();
    ids.insert(format!("Patient/{patient_id}"), format!("Patient/{patient_pseudonym}"));
    for resource in &chosen {
        if let (Some(t), Some(id)) = (resource["resourceType"].as_str(), resource["id"].as_str()) {
            let local = format!("{t}/{id}");
            let mapped = format!("{t}/{}", pseudonym(key, registry_id, &local));
            ids.insert(local, mapped);
        }
    }

    let mut entries = vec![entry(pseudonymous_patient(&data.patient, &patient_pseudonym, &data.coverages))];
    for resource in chosen {
        if let Some(r) = allowed(resource, &ids) {
            entries.push(entry(r));
        }
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "id": patient_pseudonym,
        "type": "collection",
        "entry": entries,
    });
    Some((patient_pseudonym, bundle))
}

fn entry(resource: Value) -> Value {
    let url = format!("{}/{}", resource["resourceType"].as_str().unwrap_or(""), resource["id"].as_str().unwrap_or(""));
    json!({"fullUrl": url, "resource": resource})
}

fn pseudonymous_patient(patient: &Value, pseudonym: &str, coverages: &[Value]) -> Value {
    let mut out = Map::new();
    out.insert("resourceType".into(), json!("Patient"));
    out.insert("id".into(), json!(pseudonym));
    let mut extensions = Vec::new();
    for ext in patient["extension"].as_array().into_iter().flatten() {
        let url = ext["url"].as_str().unwrap_or_default();
        if url == US_CORE_RACE || url == US_CORE_ETHNICITY {
            let parts: Vec<Value> = ext["extension"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| matches!(p["url"].as_str(), Some("ombCategory" | "detailed")))
                .filter_map(|p| Some(json!({"url": p["url"], "valueCoding": coding(&p["valueCoding"])?})))
                .collect();
            if !parts.is_empty() {
                extensions.push(json!({"url": url, "extension": parts}));
            }
        }
    }
    let payer = coverages
        .iter()
        .filter(|c| c["status"].as_str().is_none_or(|s| s == "active"))
        .find_map(|c| concept(&c["type"]));
    if let Some(payer) = payer {
        extensions.push(json!({"url": PAYER_TYPE_EXTENSION, "valueCodeableConcept": payer}));
    }
    if !extensions.is_empty() {
        out.insert("extension".into(), Value::Array(extensions));
    }
    if let Some(gender) = patient["gender"].as_str() {
        out.insert("gender".into(), json!(gender));
    }
    if let Some(year) = patient["birthDate"].as_str().and_then(sdoh::registry::birth_year) {
        out.insert("birthDate".into(), json!(format!("{year:04}")));
    }
    let county = patient["address"].as_array().into_iter().flatten().find_map(|a| a["district"].as_str());
    if let Some(county) = county.filter(|c| !c.trim().is_empty()) {
        out.insert("address".into(), json!([{"district": county}]));
    }
    let mut languages: Vec<Value> = patient["communication"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["preferred"].as_bool() == Some(true))
        .filter_map(|c| Some(json!({"language": concept(&c["language"])?, "preferred": true})))
        .collect();
    languages.truncate(1);
    if !languages.is_empty() {
        out.insert("communication".into(), Value::Array(languages));
    }
    Value::Object(out)
}

fn coding(value: &Value) -> Option<Value> {
    let mut out = Map::new();
    for key in ["system", "code", "display"] {
        if let Some(text) = value[key].as_str().filter(|t| !t.is_empty()) {
            out.insert(key.into(), json!(text));
        }
    }
    out.contains_key("code").then_some(Value::Object(out))
}

/// A CodeableConcept as codings only (its `text` may be free text from the source).
fn concept(value: &Value) -> Option<Value> {
    let codings: Vec<Value> = codings(value).filter_map(coding).collect();
    (!codings.is_empty()).then(|| json!({"coding": codings}))
}

/// The elements a record keeps of each resource type.
fn allowed_elements(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "Condition" => &[
            "clinicalStatus",
            "verificationStatus",
            "category",
            "code",
            "subject",
            "encounter",
            "onsetDateTime",
            "onsetPeriod",
            "abatementDateTime",
            "abatementPeriod",
            "recordedDate",
            "evidence",
        ],
        "Observation" => &[
            "status",
            "category",
            "code",
            "subject",
            "encounter",
            "effectiveDateTime",
            "effectivePeriod",
            "issued",
            "valueCodeableConcept",
            "valueQuantity",
            "valueBoolean",
            "valueInteger",
            "dataAbsentReason",
            "interpretation",
            "hasMember",
            "component",
        ],
        "ServiceRequest" => &[
            "status",
            "intent",
            "category",
            "priority",
            "code",
            "subject",
            "encounter",
            "authoredOn",
            "reasonReference",
        ],
        "Task" => &[
            "status",
            "businessStatus",
            "intent",
            "priority",
            "code",
            "focus",
            "for",
            "authoredOn",
            "lastModified",
            "executionPeriod",
        ],
        "Encounter" => &["status", "class", "type", "serviceType", "priority", "subject", "period", "reasonCode"],
        _ => &[],
    }
}

/// A resource reduced to its allowed elements with ids and references pseudonymized; `None` if its own id has no
/// pseudonym.
fn allowed(resource: &Value, ids: &HashMap<String, String>) -> Option<Value> {
    let resource_type = resource["resourceType"].as_str()?;
    let local = format!("{resource_type}/{}", resource["id"].as_str()?);
    let mapped = ids.get(&local)?;
    let mut out = Map::new();
    out.insert("resourceType".into(), json!(resource_type));
    out.insert("id".into(), json!(mapped.rsplit('/').next()?));
    for element in allowed_elements(resource_type) {
        if let Some(value) = resource.get(*element).and_then(|v| scrub(v, ids)) {
            out.insert((*element).into(), value);
        }
    }
    // Required elements that scrubbing could not keep (a subject outside the record) leave the resource out.
    let required: &[&str] = match resource_type {
        "Condition" | "Observation" | "ServiceRequest" | "Encounter" => &["subject"],
        _ => &[],
    };
    required.iter().all(|r| out.contains_key(*r)).then_some(Value::Object(out))
}

/// Element content without identifiers, free text, extensions or references outside the record; empty results
/// are `None` (FHIR forbids empty elements).
fn scrub(value: &Value, ids: &HashMap<String, String>) -> Option<Value> {
    match value {
        Value::Object(object) => {
            if let Some(reference) = object.get("reference") {
                let target = reference.as_str().and_then(|r| ids.get(tail(r)))?;
                return Some(json!({"reference": target}));
            }
            let mut out = Map::new();
            for (key, v) in object {
                // Identifiers, narrative, free text (anywhere, components included) and extensions never leave.
                let withheld = matches!(
                    key.as_str(),
                    "identifier"
                        | "text"
                        | "note"
                        | "comment"
                        | "description"
                        | "patientInstruction"
                        | "valueString"
                        | "extension"
                        | "modifierExtension"
                        | "id"
                );
                if withheld {
                    continue;
                }
                if let Some(v) = scrub(v, ids) {
                    out.insert(key.clone(), v);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(items) => {
            let kept: Vec<Value> = items.iter().filter_map(|v| scrub(v, ids)).collect();
            (!kept.is_empty()).then_some(Value::Array(kept))
        }
        Value::String(s) if s.is_empty() => None,
        Value::Null => None,
        other => Some(other.clone()),
    }
}

/// The `Type/id` tail of a relative or absolute reference.
fn tail(reference: &str) -> &str {
    let mut parts = reference.rsplitn(3, '/');
    let (Some(id), Some(t)) = (parts.next(), parts.next()) else { return reference };
    &reference[reference.len() - id.len() - t.len() - 1..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdoh::registry::{PseudonymKey, Registries};

    fn diabetes() -> Registry {
        Registry {
            definition: Registries::builtin().get("diabetes").unwrap().clone(),
            key: PseudonymKey::new(vec![7u8; 32]).unwrap(),
        }
    }

    #[test]
    fn records_keep_only_allowed_facts_and_rewrite_references() {
        let patient = json!({"resourceType": "Patient", "id": "p1", "birthDate": "1956-04-12", "gender": "female",
            "name": [{"family": "Rivera"}], "identifier": [{"value": "MRN123"}],
            "address": [{"line": ["1 Main St"], "city": "Springfield", "district": "Adams", "postalCode": "12345"}],
            "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "es"}], "text": "Spanish"}, "preferred": true}]});
        let condition = json!({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1", "display": "Rivera"},
            "code": {"coding": [{"system": sdoh::registry::ICD_10_CM, "code": "E11.9"}], "text": "free text"},
            "asserter": {"reference": "Practitioner/dr"}, "note": [{"text": "lives with daughter"}],
            "onsetDateTime": "2020-01-01", "evidence": [{"detail": [{"reference": "Observation/elsewhere"}]}]});
        let screening = json!({"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p1"},
            "category": [{"coding": [{"code": "survey"}]}], "code": {"coding": [{"system": "http://loinc.org", "code": "88124-3"}]},
            "component": [{"code": {"coding": [{"code": "x"}]}, "valueString": "daughter pays the rent"}],
            "performer": [{"reference": "Practitioner/dr", "display": "Dr Rivera"}]});
        let data = PatientData {
            patient,
            conditions: vec![condition],
            observations: vec![screening],
            ..PatientData::default()
        };
        let registry = diabetes();
        let as_of = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let facts = registry_patient(&data.patient, &data.conditions);
        assert!(is_member(&registry.definition, &facts, as_of).is_some());
        let (pseudo, record) = build_record(&registry, &data, as_of).unwrap();
        let text = record.to_string();
        for secret in ["Rivera", "MRN123", "Main St", "Springfield", "12345", "p1", "c1", "Practitioner", "daughter"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(record["entry"][0]["resource"]["birthDate"], "1956");
        assert_eq!(record["entry"][0]["resource"]["address"][0]["district"], "Adams");
        assert_eq!(record["entry"][1]["resource"]["subject"]["reference"], format!("Patient/{pseudo}"));
        assert!(record["entry"][1]["resource"].get("evidence").is_none());
        assert_eq!(record["entry"][2]["resource"]["resourceType"], "Observation", "{record}");
        let component = &record["entry"][2]["resource"]["component"][0];
        assert!(component.get("code").is_some() && component.get("valueString").is_none(), "{component}");
        for e in record["entry"].as_array().unwrap() {
            let r = &e["resource"];
            fhir_server::rest::validate::validate_resource(r, r["resourceType"].as_str().unwrap()).unwrap();
        }
    }

    #[test]
    fn reference_tails_are_type_and_id() {
        assert_eq!(tail("Patient/p1"), "Patient/p1");
        assert_eq!(tail("http://x/fhir/Patient/p1"), "Patient/p1");
    }
}
