//! Benchmark data: a deterministic synthetic population (Patients with demographics and payer, diabetes, encounters,
//! HRSN screenings in five domains, health concerns, referrals with their Tasks) written straight through the
//! store, for measuring registries, exports and equity measures at sizes the FHIR API would take too long to load.
//!
//! Everything is a pure function of (seed, patient number): the same arguments give the same resources, so runs
//! are reproducible and a population can be grown in steps. Resources go through the FHIR write path
//! (`fhir_server::rest::write::create_all`: versions, history, search index, grants) in large transactions, and
//! each patient's registry rows are recorded in the same transaction by the membership worker's own evaluation
//! (`registries::membership::record_evaluation`), from the resources just written rather than read back.

use chrono::{Duration, NaiveDate, Utc};
use serde_json::{Value, json};
use store::{NewJob, Store, StoreError};

use crate::registries::RegistrySet;
use crate::registries::membership::{GROUP_QUEUE, record_evaluation};
use crate::registries::records::PatientData;

const SDOHCC_CODES: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes";
const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const CONDITION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/condition-category";
const US_CORE_CONDITION_CATEGORY: &str = "http://hl7.org/fhir/us/core/CodeSystem/condition-category";
const INTERPRETATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
const REFERRAL_TASK_PROFILE: &str =
    "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-TaskForReferralManagement";

/// The five HRSN domains: SDOHCC category, screening item LOINC, health-concern ICD-10-CM, share screening
/// positive (per mille).
const DOMAINS: [(&str, &str, &str, u64); 5] = [
    ("food-insecurity", "88124-3", "Z59.41", 220),
    ("housing-instability", "71802-3", "Z59.811", 120),
    ("transportation-insecurity", "93030-5", "Z59.82", 150),
    ("utility-insecurity", "96779-4", "Z59.12", 90),
    ("intimate-partner-violence", "95618-5", "Z69.11", 40),
];

/// OMB race categories with their share (per mille) of the population.
const RACES: [(&str, &str, u64); 6] = [
    ("2106-3", "White", 560),
    ("2054-5", "Black or African American", 190),
    ("2028-9", "Asian", 90),
    ("1002-5", "American Indian or Alaska Native", 30),
    ("2076-8", "Native Hawaiian or Other Pacific Islander", 20),
    ("", "", 110),
];
const LANGUAGES: [(&str, u64); 6] = [("en", 720), ("es", 170), ("vi", 30), ("zh", 30), ("ar", 20), ("", 30)];
const PAYERS: [(&str, &str, u64); 5] = [
    ("MCPOL", "Medicare", 300),
    ("MCAID", "Medicaid", 250),
    ("EHCPOL", "Private", 330),
    ("PUBLICPOL", "Other public", 40),
    ("", "", 80),
];
const COUNTIES: [&str; 24] = [
    "Adams",
    "Baker",
    "Benton",
    "Clark",
    "Columbia",
    "Douglas",
    "Franklin",
    "Grant",
    "Jackson",
    "Jefferson",
    "Lake",
    "Lane",
    "Lincoln",
    "Linn",
    "Marion",
    "Morrow",
    "Polk",
    "Union",
    "Wasco",
    "Washington",
    "Wheeler",
    "Yamhill",
    "Coos",
    "Curry",
];

/// SplitMix64: tiny, fast and fixed forever, so a seed means the same data in every version.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, patient: u64) -> Rng {
        let mut rng = Rng(seed ^ patient.wrapping_mul(0xA076_1D64_78BD_642F));
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// 0..n
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability per_mille / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// Index into weighted choices (weights per mille, summing to 1000).
    fn weighted(&mut self, weights: impl Iterator<Item = u64>) -> usize {
        let mut roll = self.below(1000);
        let mut last = 0;
        for (i, w) in weights.enumerate() {
            if roll < w {
                return i;
            }
            roll -= w;
            last = i;
        }
        last
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Population {
    pub seed: u64,
    /// First day of the twelve months screenings, encounters and referrals are spread over.
    pub start: NaiveDate,
}

impl Default for Population {
    fn default() -> Self {
        Population { seed: 8, start: NaiveDate::from_ymd_opt(2025, 7, 1).expect("a date") }
    }
}

fn coding(system: &str, code: &str) -> Value {
    json!({"system": system, "code": code})
}

fn instant(day: NaiveDate, hour: u64) -> String {
    format!("{day}T{:02}:{:02}:00Z", 8 + hour % 9, (hour * 7) % 60)
}

impl Population {
    /// Patient `n`'s resources (the Patient first), the same for the same seed and `n`.
    pub fn patient(&self, n: u64) -> Vec<Value> {
        let mut rng = Rng::new(self.seed, n);
        let pid = format!("bp{n:07}");
        let subject = json!({"reference": format!("Patient/{pid}")});
        let mut out = Vec::new();

        // Ages 5 to 94 on the first day, a few children, so age bands and the adult criteria have something to do.
        let age = if rng.chance(40) { 5 + rng.below(13) } else { 18 + rng.below(77) };
        let birth = self.start - Duration::days((age * 365 + rng.below(365)) as i64);
        let mut extensions = Vec::new();
        let race = rng.weighted(RACES.iter().map(|r| r.2));
        if !RACES[race].0.is_empty() {
            let mut parts = vec![
                json!({"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": RACES[race].0, "display": RACES[race].1}}),
            ];
            if rng.chance(30) {
                parts.push(json!({"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3"}}));
            }
            parts.push(json!({"url": "text", "valueString": RACES[race].1}));
            extensions.push(
                json!({"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race", "extension": parts}),
            );
        }
        let hispanic = rng.chance(180);
        if !rng.chance(50) {
            let (code, text) =
                if hispanic { ("2135-2", "Hispanic or Latino") } else { ("2186-5", "Not Hispanic or Latino") };
            extensions.push(
                json!({"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity", "extension": [
                {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": code}},
                {"url": "text", "valueString": text}]}),
            );
        }
        let mut patient = json!({
            "resourceType": "Patient", "id": pid,
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.999.1", "value": format!("MRN{n:08}")}],
            "name": [{"family": format!("Family{}", n % 9973), "given": [format!("Given{}", n % 997)]}],
            "gender": if rng.chance(490) { "male" } else if rng.chance(990) { "female" } else { "unknown" },
            "birthDate": birth.to_string(),
            "address": [{"use": "home", "line": [format!("{} Main St", 1 + n % 9000)], "city": "Springfield",
                "district": COUNTIES[rng.below(COUNTIES.len() as u64) as usize], "state": "OR",
                "postalCode": format!("97{:03}", n % 1000)}],
        });
        if !extensions.is_empty() {
            patient["extension"] = Value::Array(extensions);
        }
        let language = LANGUAGES[rng.weighted(LANGUAGES.iter().map(|l| l.1))].0;
        if !language.is_empty() {
            patient["communication"] =
                json!([{"language": {"coding": [coding("urn:ietf:bcp:47", language)]}, "preferred": true}]);
        }
        out.push(patient);

        let payer = rng.weighted(PAYERS.iter().map(|p| p.2));
        if !PAYERS[payer].0.is_empty() {
            out.push(json!({
                "resourceType": "Coverage", "id": format!("bcov{n:07}"), "status": "active", "order": 1,
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": PAYERS[payer].0, "display": PAYERS[payer].1}], "text": PAYERS[payer].1},
                "beneficiary": subject, "payor": [{"display": PAYERS[payer].1}],
            }));
        }

        // Most of this population has type 2 diabetes (the registry is the benchmark's subject); a few of those
        // Conditions were entered in error or resolved.
        if rng.chance(900) {
            let onset = self.start - Duration::days(30 + rng.below(3650) as i64);
            let code = ["E11.9", "E11.65", "E11.22", "E11.40"][rng.below(4) as usize];
            let mut condition = json!({
                "resourceType": "Condition", "id": format!("bdm{n:07}"),
                "clinicalStatus": {"coding": [coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active")]},
                "verificationStatus": {"coding": [coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed")]},
                "category": [{"coding": [coding(CONDITION_CATEGORY, "problem-list-item")]}],
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code, "display": "Type 2 diabetes mellitus"}]},
                "subject": subject, "onsetDateTime": onset.to_string(), "recordedDate": onset.to_string(),
            });
            if rng.chance(15) {
                condition["verificationStatus"]["coding"][0]["code"] = json!("entered-in-error");
            }
            out.push(condition);
        }

        // Encounters over the twelve months; a screening happens at some of them.
        let visits = 1 + rng.below(4);
        let mut days: Vec<NaiveDate> =
            (0..visits).map(|_| self.start + Duration::days(rng.below(365) as i64)).collect();
        days.sort();
        for (v, day) in days.iter().enumerate() {
            out.push(json!({
                "resourceType": "Encounter", "id": format!("benc{n:07}-{v}"),
                "status": if rng.chance(30) { "cancelled" } else { "finished" },
                "class": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB"),
                "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003", "display": "Encounter for check up"}]}],
                "subject": subject,
                "period": {"start": instant(*day, n + v as u64), "end": instant(*day, n + v as u64 + 1)},
            }));
            // Screened at about two visits in three; most screenings cover all five domains.
            if !rng.chance(650) {
                continue;
            }
            let all_domains = rng.chance(800);
            let when = instant(*day, n + v as u64);
            let mut members = Vec::new();
            for (d, (category, loinc, icd, positive_rate)) in DOMAINS.iter().enumerate() {
                if !all_domains && d > 0 && rng.chance(500) {
                    continue;
                }
                let positive = rng.chance(*positive_rate);
                let id = format!("bobs{n:07}-{v}-{d}");
                members.push(json!({"reference": format!("Observation/{id}")}));
                out.push(json!({
                    "resourceType": "Observation", "id": id, "status": "final",
                    "category": [
                        {"coding": [coding(OBSERVATION_CATEGORY, "social-history")]},
                        {"coding": [coding(OBSERVATION_CATEGORY, "survey")]},
                        {"coding": [coding(SDOHCC_CODES, category)]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
                    "subject": subject, "effectiveDateTime": when,
                    "valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": if positive { "LA28397-0" } else { "LA28398-8" }}]},
                    "interpretation": [{"coding": [coding(INTERPRETATION, if positive { "POS" } else { "NEG" })]}],
                }));
                if !positive {
                    continue;
                }
                out.push(json!({
                    "resourceType": "Condition", "id": format!("bhc{n:07}-{v}-{d}"),
                    "clinicalStatus": {"coding": [coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active")]},
                    "verificationStatus": {"coding": [coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed")]},
                    "category": [{"coding": [coding(US_CORE_CONDITION_CATEGORY, "health-concern")]}, {"coding": [coding(SDOHCC_CODES, category)]}],
                    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": icd}]},
                    "subject": subject, "onsetDateTime": when,
                    "evidence": [{"detail": [{"reference": format!("Observation/bobs{n:07}-{v}-{d}")}]}],
                }));
                // Most positives are referred within a fortnight; most referrals close, some late or never.
                if !rng.chance(700) {
                    continue;
                }
                let sr = format!("bsr{n:07}-{v}-{d}");
                let authored = *day + Duration::days(rng.below(14) as i64);
                out.push(json!({
                    "resourceType": "ServiceRequest", "id": sr, "status": "active", "intent": "order",
                    "category": [{"coding": [coding(SDOHCC_CODES, category)]},
                        {"coding": [{"system": "http://snomed.info/sct", "code": "410606002", "display": "Social service procedure"}]}],
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "464001000124109"}]},
                    "subject": subject, "authoredOn": instant(authored, n),
                    "reasonReference": [{"reference": format!("Condition/bhc{n:07}-{v}-{d}")}],
                }));
                let mut task = json!({
                    "resourceType": "Task", "id": format!("btask{n:07}-{v}-{d}"),
                    "meta": {"profile": [REFERRAL_TASK_PROFILE]},
                    "status": "requested", "intent": "order",
                    "code": {"coding": [coding("http://hl7.org/fhir/CodeSystem/task-code", "fulfill")]},
                    "focus": {"reference": format!("ServiceRequest/{sr}")}, "for": subject,
                    "authoredOn": instant(authored, n), "lastModified": instant(authored, n),
                    "requester": {"reference": "Organization/bench-clinic"},
                    "owner": {"reference": format!("Organization/bench-cbo-{}", rng.below(40))},
                });
                let outcome = rng.below(1000);
                if outcome < 650 {
                    let closed = authored + Duration::days(1 + rng.below(if outcome < 550 { 29 } else { 90 }) as i64);
                    task["status"] = json!("completed");
                    task["executionPeriod"] = json!({"start": instant(authored, n), "end": instant(closed, n)});
                    task["lastModified"] = json!(instant(closed, n));
                } else if outcome < 850 {
                    task["status"] = json!("in-progress");
                }
                out.push(task);
            }
            // The screening panel, as the normalizer writes one beside its items.
            out.push(json!({
                "resourceType": "Observation", "id": format!("bpanel{n:07}-{v}"), "status": "final",
                "category": [{"coding": [coding(OBSERVATION_CATEGORY, "social-history")]}, {"coding": [coding(OBSERVATION_CATEGORY, "survey")]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "96777-8", "display": "Accountable health communities (AHC) health-related social needs screening (HRSN) tool"}]},
                "subject": subject, "effectiveDateTime": when, "hasMember": members,
            }));
        }
        out
    }
}

/// What a seeding run wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seeded {
    pub patients: u64,
    pub resources: u64,
    pub registry_rows: u64,
}

/// Writes patients `from..to` of `population` into `store`, `per_transaction` patients per transaction, with
/// their registry rows for every registry in `registries`; then queues each registry's Group rebuild and records
/// the registries' key fingerprints, so a gateway started on the store builds the Groups and does not evaluate
/// every patient again. `progress` is told the patients written so far.
pub async fn seed(
    store: &Store,
    registries: &RegistrySet,
    population: &Population,
    from: u64,
    to: u64,
    per_transaction: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<Seeded, StoreError> {
    let today = Utc::now().date_naive();
    let mut seeded = Seeded::default();
    let mut next = from;
    while next < to {
        let end = (next + per_transaction.max(1)).min(to);
        let patients: Vec<(u64, Vec<Value>)> = (next..end).map(|n| (n, population.patient(n))).collect();
        let mut tx = store.begin().await?;
        let all: Vec<Value> = patients.iter().flat_map(|(_, r)| r.iter().cloned()).collect();
        seeded.resources += all.len() as u64;
        fhir_server::rest::write::create_all(&mut tx, all).await?;
        if !registries.is_empty() {
            for (_, resources) in patients {
                let mut data = PatientData::default();
                let mut patient_id = String::new();
                for resource in resources {
                    match resource["resourceType"].as_str().unwrap_or_default() {
                        "Patient" => {
                            patient_id = resource["id"].as_str().unwrap_or_default().to_owned();
                            data.patient = resource;
                        }
                        "Condition" => data.conditions.push(resource),
                        "Observation" => data.observations.push(resource),
                        "ServiceRequest" => data.service_requests.push(resource),
                        "Task" => data.tasks.push(resource),
                        "Encounter" => data.encounters.push(resource),
                        "Coverage" => data.coverages.push(resource),
                        _ => {}
                    }
                }
                seeded.registry_rows += record_evaluation(&mut tx, registries, &patient_id, Some(&data), today).await?;
            }
        }
        tx.commit().await?;
        seeded.patients += end - next;
        next = end;
        progress(next - from, to - from);
    }
    let mut tx = store.begin().await?;
    for registry in registries.iter() {
        let payload = json!({"registry": registry.id()}).to_string();
        if !tx.has_waiting_job(GROUP_QUEUE, &payload).await? {
            tx.enqueue(&NewJob::new(GROUP_QUEUE, payload)).await?;
        }
        let fingerprint = sdoh::registry::pseudonym(&registry.key, registry.id(), "key fingerprint");
        tx.set_registry_fingerprint(registry.id(), &fingerprint).await?;
    }
    tx.commit().await?;
    Ok(seeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_patients_and_another_seed_others() {
        let population = Population::default();
        assert_eq!(population.patient(42), population.patient(42));
        let other = Population { seed: 9, ..population };
        assert_ne!(population.patient(42), other.patient(42));
        let ids: Vec<String> = population.patient(7).iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(ids.len(), unique.len(), "ids within a patient are distinct");
        assert!(ids.iter().all(|id| store::is_valid_id(id)));
    }

    #[test]
    fn a_population_gives_every_measure_something_to_count() {
        let population = Population::default();
        let mut builder = fhir_server::measures::facts::FactsBuilder::new(None);
        let resources: Vec<Value> = (0..2000).flat_map(|n| population.patient(n)).collect();
        resources.iter().for_each(|r| builder.add_resource(r));
        let facts = builder.finish();
        assert_eq!(facts.len(), 2000);
        let measures = sdoh::measures::MeasureSet::builtin();
        let quarter: sdoh::measures::Period = "2026-Q1".parse().expect("a quarter");
        let cells = sdoh::measures::evaluate(measures.definitions(), &facts, &[quarter], &[]);
        assert_eq!(cells.len(), measures.definitions().len());
        for cell in &cells {
            let sdoh::measures::CellValue::Shown(figures) = &cell.value else {
                panic!("{} is suppressed over 2,000 patients", cell.measure)
            };
            assert!(
                figures.numerator > 10,
                "{}: numerator {} of {}",
                cell.measure,
                figures.numerator,
                figures.denominator
            );
            assert!(figures.numerator < figures.denominator, "{}: not everyone qualifies", cell.measure);
        }
    }
}
