//! Equity-measure facts from stored resources: one [`PatientFacts`] per patient, built by scanning the store type
//! by type, so memory holds the facts (a few dozen bytes per encounter, screening and referral), never the
//! resources.
//!
//! What is read, and why:
//! - `Patient`: birth date, gender (sex stratum), US Core race and ethnicity (OMB categories; several races are
//!   "Multiple races"), preferred language (`communication`), county (`address.district` of the home address).
//!   A Patient `replaced-by` another (an A40 merge) lends its data to the survivor instead of counting twice.
//! - `Coverage`: the payer type (`Coverage.type`) of the patient's active coverage with the lowest `order`.
//! - `Encounter`: the day of `period.start` (planned, cancelled and entered-in-error encounters never happened).
//! - `Observation` with an SDOHCC domain category (the normalizer's screening responses, or an EHR's own): one
//!   screening per HRSN domain on the day of `effective[x]`, positive when `interpretation` is `POS` (the IG puts
//!   POS only on answers that signal a need). AHC safety (HITS) items carry `sdoh-category-unspecified` and are
//!   recognised by their LOINC codes. Only `final`, `amended` and `corrected` results count.
//! - `ServiceRequest` with an SDOHCC domain category: a referral created on `authoredOn` (else its Task's), unless
//!   draft or entered in error; completed on the day its referral `Task` (not a sub-Task) reached `completed`
//!   (`executionPeriod.end`, else `lastModified`).

use std::collections::{HashMap, HashSet};

use chrono::{Datelike, NaiveDate};
use sdoh::measures::{HrsnDomain, PatientFacts, Referral, Screening, parse_iso_date};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use store::{Store, StoreError};

/// The SDOHCC temporary code system: domain categories of screenings, conditions and referrals.
pub const SDOHCC_CODES: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes";
const US_CORE_RACE: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race";
const US_CORE_ETHNICITY: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity";
/// AHC HRSN safety (HITS) items and their total, which the normalizer files under `sdoh-category-unspecified`.
const HITS_LOINC: &[&str] = &["95618-5", "95617-7", "95616-9", "95615-1", "95614-4"];
/// Label of a patient reporting more than one OMB race category.
pub const MULTIPLE_RACES: &str = "Multiple races";

/// Resources read per store round trip.
const PAGE_SIZE: u32 = 1000;

/// OMB race and ethnicity categories (CDC Race & Ethnicity code system, as US Core binds them). The label is the
/// category's display, whatever display the sender wrote, so strata do not split on spelling.
fn omb_label(code: &str) -> Option<&'static str> {
    Some(match code {
        "1002-5" => "American Indian or Alaska Native",
        "2028-9" => "Asian",
        "2054-5" => "Black or African American",
        "2076-8" => "Native Hawaiian or Other Pacific Islander",
        "2106-3" => "White",
        "2135-2" => "Hispanic or Latino",
        "2186-5" => "Not Hispanic or Latino",
        _ => return None,
    })
}

/// The id of a patient referenced as `Patient/{id}` (relative, absolute or versioned).
pub fn patient_id(reference: &Value) -> Option<&str> {
    referenced_id(reference, "Patient")
}

fn referenced_id<'a>(reference: &'a Value, resource_type: &str) -> Option<&'a str> {
    let text = reference.get("reference")?.as_str()?;
    let text = text.split_once("/_history/").map_or(text, |(head, _)| head);
    let mut segments = text.rsplit('/');
    let id = segments.next()?;
    (segments.next()? == resource_type && !id.is_empty()).then_some(id)
}

fn date_of(value: Option<&Value>) -> Option<NaiveDate> {
    value.and_then(Value::as_str).and_then(|text| parse_iso_date(text).ok())
}

fn codings(concept: &Value) -> impl Iterator<Item = &Value> {
    concept.get("coding").and_then(Value::as_array).into_iter().flatten()
}

fn has_coding(concept: &Value, system: &str, code: &str) -> bool {
    codings(concept).any(|c| c["system"] == system && c["code"] == code)
}

/// The HRSN domains an SDOHCC-categorised resource is about (its `category` codes; HITS items by their code).
pub fn domains_of(resource: &Value) -> Vec<HrsnDomain> {
    let mut domains = Vec::new();
    for category in resource.get("category").and_then(Value::as_array).into_iter().flatten() {
        for coding in codings(category).filter(|c| c["system"] == SDOHCC_CODES) {
            let Some(code) = coding["code"].as_str() else { continue };
            let domain = match HrsnDomain::from_sdohcc_category(code) {
                Some(domain) => Some(domain),
                None if code == "sdoh-category-unspecified"
                    && HITS_LOINC.iter().any(|loinc| has_coding(&resource["code"], "http://loinc.org", loinc)) =>
                {
                    Some(HrsnDomain::InterpersonalSafety)
                }
                None => None,
            };
            if let Some(domain) = domain
                && !domains.contains(&domain)
            {
                domains.push(domain);
            }
        }
    }
    domains
}

/// The demographic facts of a Patient resource (no encounters, screenings or referrals yet).
pub fn patient_facts(patient: &Value) -> PatientFacts {
    let sex = patient["gender"].as_str().filter(|g| !g.is_empty() && *g != "unknown").map(str::to_owned);
    PatientFacts {
        birth_date: date_of(patient.get("birthDate")),
        sex,
        race: omb_categories(patient, US_CORE_RACE),
        ethnicity: omb_categories(patient, US_CORE_ETHNICITY),
        language: preferred_language(patient),
        county: county(patient),
        ..PatientFacts::default()
    }
}

fn omb_categories(patient: &Value, url: &str) -> Option<String> {
    let extension = patient.get("extension")?.as_array()?.iter().find(|e| e["url"] == url)?;
    let mut labels: Vec<&str> = extension
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e["url"] == "ombCategory")
        .filter_map(|e| e["valueCoding"]["code"].as_str().and_then(omb_label))
        .collect();
    labels.dedup();
    match labels.as_slice() {
        [] => None,
        [one] => Some((*one).to_owned()),
        _ => Some(MULTIPLE_RACES.to_owned()),
    }
}

fn preferred_language(patient: &Value) -> Option<String> {
    let communications = patient.get("communication")?.as_array()?;
    let chosen =
        communications.iter().find(|c| c["preferred"] == Value::Bool(true)).or_else(|| communications.first())?;
    let language = &chosen["language"];
    codings(language)
        .find_map(|c| c["code"].as_str())
        .or_else(|| language["text"].as_str())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

fn county(patient: &Value) -> Option<String> {
    let addresses = patient.get("address")?.as_array()?;
    let current: Vec<&Value> = addresses.iter().filter(|a| a["use"] != "old").collect();
    let chosen = current.iter().find(|a| a["use"] == "home").or_else(|| current.first())?;
    chosen["district"].as_str().map(str::trim).filter(|d| !d.is_empty()).map(str::to_owned)
}

/// The survivor a merged Patient was replaced by, if any.
fn replaced_by(patient: &Value) -> Option<&str> {
    patient
        .get("link")?
        .as_array()?
        .iter()
        .find(|l| l["type"] == "replaced-by")
        .and_then(|l| referenced_id(&l["other"], "Patient"))
}

/// The (order, payer type) of an active Coverage, and its beneficiary.
fn coverage_payer(coverage: &Value) -> Option<(&str, u64, String)> {
    if !matches!(coverage["status"].as_str(), None | Some("active")) {
        return None;
    }
    let beneficiary = patient_id(&coverage["beneficiary"])?;
    let kind = &coverage["type"];
    let label = kind["text"]
        .as_str()
        .or_else(|| codings(kind).find_map(|c| c["display"].as_str()))
        .or_else(|| codings(kind).find_map(|c| c["code"].as_str()))
        .map(str::trim)
        .filter(|l| !l.is_empty())?;
    Some((beneficiary, coverage["order"].as_u64().unwrap_or(u64::MAX), label.to_owned()))
}

/// The patient and day of an Encounter that took place.
fn encounter_day(encounter: &Value) -> Option<(&str, NaiveDate)> {
    if matches!(encounter["status"].as_str(), Some("planned" | "cancelled" | "entered-in-error")) {
        return None;
    }
    Some((patient_id(&encounter["subject"])?, date_of(encounter["period"].get("start"))?))
}

/// The patient and screenings an Observation records.
pub fn observation_screenings(observation: &Value) -> Option<(&str, Vec<Screening>)> {
    if !matches!(observation["status"].as_str(), Some("final" | "amended" | "corrected")) {
        return None;
    }
    let patient = patient_id(&observation["subject"])?;
    let date = date_of(observation.get("effectiveDateTime"))
        .or_else(|| date_of(observation.get("effectiveInstant")))
        .or_else(|| date_of(observation["effectivePeriod"].get("start")))?;
    let positive = observation
        .get("interpretation")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|i| codings(i).any(|c| c["code"] == "POS"));
    let screenings: Vec<Screening> =
        domains_of(observation).into_iter().map(|domain| Screening { domain, date, positive }).collect();
    (!screenings.is_empty()).then_some((patient, screenings))
}

/// A referral ServiceRequest: its id, patient, domain and creation day (if it says).
fn service_request_referral(request: &Value) -> Option<(&str, &str, HrsnDomain, Option<NaiveDate>)> {
    if matches!(request["status"].as_str(), Some("draft" | "entered-in-error")) {
        return None;
    }
    let id = request["id"].as_str()?;
    let patient = patient_id(&request["subject"])?;
    let domain = *domains_of(request).first()?;
    Some((id, patient, domain, date_of(request.get("authoredOn"))))
}

/// What a referral Task says about its ServiceRequest: (ServiceRequest id, authored day, completion day).
fn task_progress(task: &Value) -> Option<(&str, Option<NaiveDate>, Option<NaiveDate>)> {
    if task.get("partOf").is_some() || task["status"] == "entered-in-error" {
        return None;
    }
    let request = referenced_id(&task["focus"], "ServiceRequest")?;
    let completed = (task["status"] == "completed")
        .then(|| {
            date_of(task["executionPeriod"].get("end"))
                .or_else(|| date_of(task.get("lastModified")))
                .or_else(|| date_of(task["meta"].get("lastUpdated")))
        })
        .flatten();
    Some((request, date_of(task.get("authoredOn")), completed))
}

/// The types that contribute measure facts, and the text a document of the type must contain to contribute (only
/// SDOHCC-categorised Observations and ServiceRequests, and Tasks about a ServiceRequest: the rest are passed over
/// unparsed by the backfill).
const FACT_TYPES: [(&str, Option<&str>); 6] = [
    ("Patient", None),
    ("Coverage", None),
    ("Encounter", None),
    ("Observation", Some(SDOHCC_CODES)),
    ("ServiceRequest", Some(SDOHCC_CODES)),
    ("Task", Some("ServiceRequest/")),
];

/// Whether resources of the type may contribute measure facts (and so have a `measure_facts` row to keep current).
pub fn is_fact_type(resource_type: &str) -> bool {
    FACT_TYPES.iter().any(|(t, _)| *t == resource_type)
}

/// Fact rows read per store round trip.
const FACT_PAGE_SIZE: u32 = 10_000;

/// What one resource contributes to the measures: the few fields [`FactsBuilder`] needs, stored as a compact JSON
/// row (`measure_facts`) beside the resource so a measure never parses documents. Days are days from the common
/// era (`NaiveDate::num_days_from_ce`). Keys are one letter: a row is a few dozen bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Fact {
    /// A Patient's demographics, as stratum labels.
    #[serde(rename = "P")]
    Patient {
        #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
        birth_date: Option<i32>,
        #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
        sex: Option<String>,
        #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
        race: Option<String>,
        #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
        ethnicity: Option<String>,
        #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
        language: Option<String>,
        #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
        county: Option<String>,
    },
    /// A Patient `replaced-by` another (an A40 merge): resolved to the survivor when the facts are finished.
    #[serde(rename = "M")]
    Merged {
        #[serde(rename = "s")]
        survivor: String,
    },
    /// An active Coverage: beneficiary, order (absent: last) and payer type.
    #[serde(rename = "C")]
    Coverage {
        #[serde(rename = "p")]
        beneficiary: String,
        #[serde(rename = "o")]
        order: u64,
        #[serde(rename = "t")]
        payer: String,
    },
    /// An Encounter that took place, on its start day.
    #[serde(rename = "E")]
    Encounter {
        #[serde(rename = "p")]
        patient: String,
        #[serde(rename = "d")]
        day: i32,
    },
    /// A final screening Observation: its HRSN domains, day and result.
    #[serde(rename = "O")]
    Screening {
        #[serde(rename = "p")]
        patient: String,
        #[serde(rename = "d")]
        day: i32,
        #[serde(rename = "+")]
        positive: bool,
        #[serde(rename = "h")]
        domains: Vec<HrsnDomain>,
    },
    /// A referral ServiceRequest (the row's id is the request's).
    #[serde(rename = "S")]
    Referral {
        #[serde(rename = "p")]
        patient: String,
        #[serde(rename = "h")]
        domain: HrsnDomain,
        #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
        authored: Option<i32>,
    },
    /// A referral Task (not a sub-Task): the ServiceRequest it is about, its authored and completion days.
    #[serde(rename = "T")]
    Task {
        #[serde(rename = "r")]
        request: String,
        #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
        authored: Option<i32>,
        #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
        completed: Option<i32>,
    },
}

fn to_days(date: NaiveDate) -> i32 {
    date.num_days_from_ce()
}

fn from_days(days: i32) -> Option<NaiveDate> {
    NaiveDate::from_num_days_from_ce_opt(days)
}

/// What a resource contributes to the measures, if anything. A Task's completion may fall back to its
/// `meta.lastUpdated`, so Tasks are reduced from the version as stored (stamped).
pub fn contribution(resource: &Value) -> Option<Fact> {
    match resource["resourceType"].as_str()? {
        "Patient" => Some(match replaced_by(resource) {
            Some(survivor) => Fact::Merged { survivor: survivor.to_owned() },
            None => {
                let f = patient_facts(resource);
                Fact::Patient {
                    birth_date: f.birth_date.map(to_days),
                    sex: f.sex,
                    race: f.race,
                    ethnicity: f.ethnicity,
                    language: f.language,
                    county: f.county,
                }
            }
        }),
        "Coverage" => coverage_payer(resource).map(|(beneficiary, order, payer)| Fact::Coverage {
            beneficiary: beneficiary.to_owned(),
            order,
            payer,
        }),
        "Encounter" => encounter_day(resource)
            .map(|(patient, day)| Fact::Encounter { patient: patient.to_owned(), day: to_days(day) }),
        "Observation" => {
            let (patient, screenings) = observation_screenings(resource)?;
            let first = screenings.first()?;
            Some(Fact::Screening {
                patient: patient.to_owned(),
                day: to_days(first.date),
                positive: first.positive,
                domains: screenings.iter().map(|s| s.domain).collect(),
            })
        }
        "ServiceRequest" => service_request_referral(resource).map(|(_, patient, domain, authored)| Fact::Referral {
            patient: patient.to_owned(),
            domain,
            authored: authored.map(to_days),
        }),
        "Task" => task_progress(resource).map(|(request, authored, completed)| Fact::Task {
            request: request.to_owned(),
            authored: authored.map(to_days),
            completed: completed.map(to_days),
        }),
        _ => None,
    }
}

/// The `measure_facts` payload of a resource: `None` when it contributes nothing (then it has no row).
pub fn fact_payload(resource: &Value) -> Option<String> {
    contribution(resource).map(|fact| serde_json::to_string(&fact).expect("facts serialize"))
}

/// The fact types, in the order `load_facts` reads them.
fn fact_type_names() -> Vec<&'static str> {
    FACT_TYPES.iter().map(|(t, _)| *t).collect()
}

/// Builds the facts of every patient (or of the `cohort`'s patients) from the materialized fact rows: one pass over
/// `measure_facts`, a page of rows at a time (`Store::scan_facts`), the next page read while this one is decoded.
pub async fn load_facts(store: &Store, cohort: Option<&HashSet<String>>) -> Result<Vec<PatientFacts>, StoreError> {
    let mut builder = FactsBuilder::new(cohort);
    let types = fact_type_names();
    let (mut page, mut next) = store.scan_facts(&types, &store::FactCursor::default(), FACT_PAGE_SIZE).await?;
    loop {
        let fetch = async {
            match &next {
                Some(cursor) => store.scan_facts(&types, cursor, FACT_PAGE_SIZE).await.map(Some),
                None => Ok(None),
            }
        };
        let decode = async {
            for (id, payload) in page.rows() {
                match serde_json::from_str::<Fact>(payload) {
                    Ok(fact) => builder.add(id, fact),
                    Err(_) => {
                        tracing::warn!(resource_type = %page.resource_type, id, "unreadable measure fact row; skipped")
                    }
                }
            }
        };
        let (fetched, ()) = tokio::join!(fetch, decode);
        match fetched? {
            Some((following, after)) => (page, next) = (following, after),
            None => return Ok(builder.finish()),
        }
    }
}

/// Fills `measure_facts` for the resources written before it existed, once (migration 0010 leaves a marker that
/// this removes): every live resource of a fact type is reduced as the write path would, in one transaction that
/// keeps other writers of fact rows out until it commits. The gateway runs it when it opens the database; it
/// returns the rows written (0 when there was nothing to do).
pub async fn backfill(store: &Store) -> Result<u64, StoreError> {
    let mut tx = store.begin().await?;
    if !tx.begin_fact_backfill().await? {
        tx.rollback().await?;
        return Ok(0);
    }
    let types: Vec<&str> = FACT_TYPES.iter().map(|(t, _)| *t).collect();
    let finders: Vec<Option<memchr::memmem::Finder>> =
        FACT_TYPES.iter().map(|(_, needle)| needle.map(memchr::memmem::Finder::new)).collect();
    let mut written = 0;
    let mut cursor = store::ScanCursor::default();
    loop {
        let (page, next) = store.scan_types(&types, &cursor, PAGE_SIZE).await?;
        let mut rows: Vec<(String, String, String)> = Vec::new();
        for stored in &page {
            let Some(content) = stored.content.as_deref() else { continue };
            let Some(kind) = types.iter().position(|t| *t == stored.resource_type) else { continue };
            if finders[kind].as_ref().is_some_and(|f| f.find(content.as_bytes()).is_none()) {
                continue;
            }
            let Ok(resource) = serde_json::from_str::<Value>(content) else {
                tracing::warn!(resource_type = %stored.resource_type, id = %stored.id, "stored resource is not JSON; skipped");
                continue;
            };
            if let Some(payload) = fact_payload(&resource) {
                rows.push((stored.resource_type.clone(), stored.id.clone(), payload));
            }
        }
        let borrowed: Vec<(&str, &str, &str)> =
            rows.iter().map(|(t, i, p)| (t.as_str(), i.as_str(), p.as_str())).collect();
        tx.put_facts(&borrowed).await?;
        written += rows.len() as u64;
        match next {
            Some(after) => cursor = after,
            None => break,
        }
    }
    tx.finish_fact_backfill().await?;
    tx.commit().await?;
    // PostgreSQL would otherwise plan the first measures as if the table were still empty.
    store.refresh_statistics().await?;
    Ok(written)
}

/// Calls `visit` on every live resource of the type (whose JSON contains `containing`, when given), a page at a
/// time in id order, continuing after the last id (so the whole read is linear in the table's size). Aggregates
/// are computed over everything: the caller's access was checked before, and every output is suppressed, so no
/// scope narrows the reads.
pub async fn for_each(
    store: &Store,
    resource_type: &str,
    containing: Option<&str>,
    mut visit: impl FnMut(&Value),
) -> Result<(), StoreError> {
    let mut after: Option<String> = None;
    loop {
        let page = store.scan_current(resource_type, after.as_deref(), PAGE_SIZE).await?;
        for stored in &page {
            let Some(content) = stored.content.as_deref() else { continue };
            if containing.is_some_and(|needle| !content.contains(needle)) {
                continue;
            }
            match serde_json::from_str::<Value>(content) {
                Ok(resource) => visit(&resource),
                Err(_) => tracing::warn!(resource_type, id = %stored.id, "stored resource is not JSON; skipped"),
            }
        }
        if page.len() < PAGE_SIZE as usize {
            return Ok(());
        }
        after = page.last().map(|r| r.id.clone());
    }
}

/// What is known of one patient id while resources stream past: what its own resources say, and whether its
/// Patient has been seen (resources may come before their Patient).
#[derive(Default)]
struct Collected {
    facts: PatientFacts,
    has_patient: bool,
}

/// Collects the facts as resources stream past, in any order (types interleaved); patients, merges and the cohort
/// are resolved at [`FactsBuilder::finish`].
pub struct FactsBuilder<'c> {
    cohort: Option<&'c HashSet<String>>,
    patients: HashMap<String, Collected>,
    /// Merged-away patient -> survivor.
    aliases: HashMap<String, String>,
    /// Beneficiary -> (order, Coverage id, payer type) of its preferred active Coverage.
    coverage: HashMap<String, (u64, String, String)>,
    /// ServiceRequest id -> (patient, domain, authored day).
    requests: HashMap<String, (String, HrsnDomain, Option<NaiveDate>)>,
    /// ServiceRequest id -> (earliest Task authored day, earliest Task completion).
    tasks: HashMap<String, (Option<NaiveDate>, Option<NaiveDate>)>,
}

impl<'c> FactsBuilder<'c> {
    pub fn new(cohort: Option<&'c HashSet<String>>) -> Self {
        FactsBuilder {
            cohort,
            patients: HashMap::new(),
            aliases: HashMap::new(),
            coverage: HashMap::new(),
            requests: HashMap::new(),
            tasks: HashMap::new(),
        }
    }

    fn collected(&mut self, id: &str) -> &mut Collected {
        if !self.patients.contains_key(id) {
            self.patients.insert(id.to_owned(), Collected::default());
        }
        self.patients.get_mut(id).expect("inserted above")
    }

    /// Adds what a resource document contributes (as its fact row would).
    pub fn add_resource(&mut self, resource: &Value) {
        let id = resource["id"].as_str().unwrap_or_default().to_owned();
        if let Some(fact) = contribution(resource) {
            self.add(&id, fact);
        }
    }

    /// Adds the fact of the resource `id` (its fact row's key).
    pub fn add(&mut self, id: &str, fact: Fact) {
        match fact {
            Fact::Patient { birth_date, sex, race, ethnicity, language, county } => {
                if id.is_empty() {
                    return;
                }
                let entry = self.collected(id);
                let facts = &mut entry.facts;
                facts.birth_date = birth_date.and_then(from_days);
                facts.sex = sex;
                facts.race = race;
                facts.ethnicity = ethnicity;
                facts.language = language;
                facts.county = county;
                entry.has_patient = true;
            }
            Fact::Merged { survivor } => {
                if !id.is_empty() {
                    self.aliases.insert(id.to_owned(), survivor);
                }
            }
            Fact::Coverage { beneficiary, order, payer } => {
                let better =
                    self.coverage.get(&beneficiary).is_none_or(|(best, best_id, _)| (order, id) < (*best, best_id));
                if better {
                    self.coverage.insert(beneficiary, (order, id.to_owned(), payer));
                }
            }
            Fact::Encounter { patient, day } => {
                if let Some(day) = from_days(day) {
                    self.collected(&patient).facts.encounters.push(day);
                }
            }
            Fact::Screening { patient, day, positive, domains } => {
                let Some(date) = from_days(day) else { return };
                let facts = &mut self.collected(&patient).facts;
                for domain in domains {
                    add_screening(&mut facts.screenings, Screening { domain, date, positive });
                }
            }
            Fact::Referral { patient, domain, authored } => {
                if !id.is_empty() {
                    self.requests.insert(id.to_owned(), (patient, domain, authored.and_then(from_days)));
                }
            }
            Fact::Task { request, authored, completed } => {
                let entry = self.tasks.entry(request).or_default();
                entry.0 = earliest(entry.0, authored.and_then(from_days));
                entry.1 = earliest(entry.1, completed.and_then(from_days));
            }
        }
    }

    /// The facts, in patient id order: a merged-away patient's data goes to its survivor, patients without a
    /// Patient resource or outside the cohort are dropped.
    pub fn finish(mut self) -> Vec<PatientFacts> {
        let aliases = std::mem::take(&mut self.aliases);
        let resolve = |id: &str| aliases.get(id).cloned().unwrap_or_else(|| id.to_owned());
        for (merged, survivor) in &aliases {
            let Some(gone) = self.patients.remove(merged) else { continue };
            if let Some(kept) = self.patients.get_mut(survivor) {
                kept.facts.encounters.extend(gone.facts.encounters);
                for screening in gone.facts.screenings {
                    add_screening(&mut kept.facts.screenings, screening);
                }
            }
        }
        let cohort = self.cohort;
        self.patients.retain(|id, c| c.has_patient && cohort.is_none_or(|ids| ids.contains(id)));
        // Among a survivor's Coverages and its merged-away patients', the lowest order wins, then the lowest id:
        // the same answer every time.
        let mut payers: HashMap<String, (u64, String, String)> = HashMap::new();
        for (beneficiary, candidate) in self.coverage.drain() {
            let patient = resolve(&beneficiary);
            let better = payers.get(&patient).is_none_or(|best| (candidate.0, &candidate.1) < (best.0, &best.1));
            if better {
                payers.insert(patient, candidate);
            }
        }
        for (patient, (_, _, payer)) in payers {
            if let Some(c) = self.patients.get_mut(&patient) {
                c.facts.payer = Some(payer);
            }
        }
        for (request, (patient, domain, authored)) in self.requests.drain() {
            let (task_authored, completed) = self.tasks.get(&request).copied().unwrap_or_default();
            let Some(created) = authored.or(task_authored) else { continue };
            if let Some(c) = self.patients.get_mut(&resolve(&patient)) {
                c.facts.referrals.push(Referral { domain, created, completed });
            }
        }
        let mut patients: Vec<(String, PatientFacts)> =
            self.patients.into_iter().map(|(id, c)| (id, c.facts)).collect();
        patients.sort_by(|a, b| a.0.cmp(&b.0));
        patients
            .into_iter()
            .map(|(_, mut facts)| {
                facts.encounters.sort();
                facts.screenings.sort_by_key(|s| (s.date, s.domain));
                facts.referrals.sort_by_key(|r| (r.created, r.domain, r.completed));
                facts
            })
            .collect()
    }
}

/// One entry per domain and day, positive if any answer that day was.
fn add_screening(screenings: &mut Vec<Screening>, screening: Screening) {
    match screenings.iter_mut().find(|s| s.domain == screening.domain && s.date == screening.date) {
        Some(existing) => existing.positive |= screening.positive,
        None => screenings.push(screening),
    }
}

fn earliest(a: Option<NaiveDate>, b: Option<NaiveDate>) -> Option<NaiveDate> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn day(text: &str) -> NaiveDate {
        parse_iso_date(text).unwrap()
    }

    #[test]
    fn patients_give_their_demographics_as_stratum_labels() {
        let patient = json!({
            "resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1980-06-01",
            "extension": [
                {"url": US_CORE_RACE, "extension": [
                    {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3", "display": "white"}},
                    {"url": "text", "valueString": "White"}]},
                {"url": US_CORE_ETHNICITY, "extension": [
                    {"url": "ombCategory", "valueCoding": {"code": "2186-5"}}]}
            ],
            "communication": [
                {"language": {"coding": [{"code": "en"}]}},
                {"language": {"coding": [{"code": "es"}]}, "preferred": true}
            ],
            "address": [{"use": "old", "district": "Gone"}, {"use": "home", "district": " Adams "}]
        });
        let facts = patient_facts(&patient);
        assert_eq!(facts.birth_date, Some(day("1980-06-01")));
        assert_eq!(facts.sex.as_deref(), Some("female"));
        assert_eq!(facts.race.as_deref(), Some("White"));
        assert_eq!(facts.ethnicity.as_deref(), Some("Not Hispanic or Latino"));
        assert_eq!(facts.language.as_deref(), Some("es"));
        assert_eq!(facts.county.as_deref(), Some("Adams"));

        let several = json!({"resourceType": "Patient", "id": "p2", "gender": "unknown", "birthDate": "1980",
            "extension": [{"url": US_CORE_RACE, "extension": [
                {"url": "ombCategory", "valueCoding": {"code": "2106-3"}},
                {"url": "ombCategory", "valueCoding": {"code": "2028-9"}}]}]});
        let facts = patient_facts(&several);
        assert_eq!(facts.race.as_deref(), Some(MULTIPLE_RACES));
        assert_eq!((facts.sex, facts.birth_date, facts.language, facts.county), (None, None, None, None));
    }

    #[test]
    fn normalizer_output_becomes_screenings_with_positives() {
        // An AHC HRSN screening as the gateway normalizes it: the Observations are the normalizer's own output.
        let qr = json!({
            "resourceType": "QuestionnaireResponse", "id": "qr-1", "status": "completed",
            "questionnaire": "http://hl7.org/fhir/us/sdoh-clinicalcare/Questionnaire/SDOHCC-QuestionnaireHungerVitalSign",
            "subject": {"reference": "Patient/p1"}, "authored": "2026-01-15T10:00:00Z",
            "item": [
                {"linkId": "88122-7", "answer": [{"valueCoding": {"system": "http://loinc.org", "code": "LA28397-0", "display": "Often true"}}]},
                {"linkId": "88123-5", "answer": [{"valueCoding": {"system": "http://loinc.org", "code": "LA6729-3", "display": "Sometimes true"}}]}
            ]
        });
        let derived = sdoh::normalize(&qr, &sdoh::Context { recorded: "2026-01-15T10:00:00Z", agent: "Device/gw" })
            .expect("normalizes")
            .expect("a known instrument");
        let mut builder = FactsBuilder::new(None);
        builder.add_resource(&json!({"resourceType": "Patient", "id": "p1"}));
        for resource in derived.resources.iter().filter(|r| r["resourceType"] == "Observation") {
            builder.add_resource(resource);
        }
        let facts = builder.finish();
        assert_eq!(
            facts[0].screenings,
            vec![Screening { domain: HrsnDomain::Food, date: day("2026-01-15"), positive: true }]
        );
    }

    #[test]
    fn referrals_join_their_tasks_and_merged_patients_join_their_survivor() {
        let mut builder = FactsBuilder::new(None);
        builder.add_resource(&json!({"resourceType": "Patient", "id": "keep"}));
        builder.add_resource(&json!({"resourceType": "Patient", "id": "old",
            "link": [{"other": {"reference": "Patient/keep"}, "type": "replaced-by"}]}));
        let food = json!([{"coding": [{"system": SDOHCC_CODES, "code": "food-insecurity"}]}]);
        builder.add_resource(&json!({"resourceType": "Encounter", "status": "finished",
            "subject": {"reference": "Patient/old"}, "period": {"start": "2026-01-10T09:00:00-05:00"}}));
        builder.add_resource(&json!({"resourceType": "Encounter", "status": "cancelled",
            "subject": {"reference": "Patient/keep"}, "period": {"start": "2026-01-11"}}));
        builder.add_resource(&json!({"resourceType": "ServiceRequest", "id": "sr1", "status": "active",
            "category": food, "subject": {"reference": "Patient/old"}, "authoredOn": "2026-01-12"}));
        builder.add_resource(&json!({"resourceType": "ServiceRequest", "id": "sr2", "status": "active",
            "category": food, "subject": {"reference": "Patient/keep"}}));
        builder.add_resource(&json!({"resourceType": "ServiceRequest", "id": "sr3",
            "status": "entered-in-error", "category": food, "subject": {"reference": "Patient/keep"},
            "authoredOn": "2026-01-12"}));
        builder.add_resource(&json!({"resourceType": "Task", "status": "completed",
            "focus": {"reference": "ServiceRequest/sr1"}, "executionPeriod": {"end": "2026-01-20T12:00:00Z"}}));
        builder
            .add_resource(&json!({"resourceType": "Task", "status": "completed", "partOf": [{"reference": "Task/t"}],
            "focus": {"reference": "ServiceRequest/sr2"}, "executionPeriod": {"end": "2026-01-13"}}));
        builder.add_resource(&json!({"resourceType": "Task", "status": "in-progress",
            "focus": {"reference": "ServiceRequest/sr2"}, "authoredOn": "2026-01-14"}));
        let facts = builder.finish();
        assert_eq!(facts.len(), 1, "the merged-away patient is not counted on its own");
        assert_eq!(facts[0].encounters, vec![day("2026-01-10")]);
        assert_eq!(
            facts[0].referrals,
            vec![
                Referral { domain: HrsnDomain::Food, created: day("2026-01-12"), completed: Some(day("2026-01-20")) },
                Referral { domain: HrsnDomain::Food, created: day("2026-01-14"), completed: None },
            ]
        );
    }

    #[test]
    fn facts_do_not_depend_on_the_order_resources_arrive_in() {
        let food = json!([{"coding": [{"system": SDOHCC_CODES, "code": "food-insecurity"}]}]);
        let resources = vec![
            json!({"resourceType": "Patient", "id": "keep", "gender": "female", "birthDate": "1970-01-01"}),
            json!({"resourceType": "Patient", "id": "old", "link": [{"other": {"reference": "Patient/keep"}, "type": "replaced-by"}]}),
            json!({"resourceType": "Coverage", "id": "c2", "status": "active", "order": 1,
                "beneficiary": {"reference": "Patient/old"}, "type": {"text": "Medicare"}}),
            json!({"resourceType": "Coverage", "id": "c1", "status": "active", "order": 1,
                "beneficiary": {"reference": "Patient/keep"}, "type": {"text": "Medicaid"}}),
            json!({"resourceType": "Encounter", "status": "finished", "subject": {"reference": "Patient/old"},
                "period": {"start": "2026-01-10"}}),
            json!({"resourceType": "Observation", "status": "final", "category": food, "subject": {"reference": "Patient/old"},
                "effectiveDateTime": "2026-01-10", "interpretation": [{"coding": [{"code": "POS"}]}]}),
            json!({"resourceType": "Observation", "status": "final", "category": food, "subject": {"reference": "Patient/keep"},
                "effectiveDateTime": "2026-01-10"}),
            json!({"resourceType": "ServiceRequest", "id": "sr1", "status": "active", "category": food,
                "subject": {"reference": "Patient/old"}, "authoredOn": "2026-01-12"}),
            json!({"resourceType": "Task", "status": "completed", "focus": {"reference": "ServiceRequest/sr1"},
                "executionPeriod": {"end": "2026-01-20"}}),
            json!({"resourceType": "Encounter", "status": "finished", "subject": {"reference": "Patient/nobody"},
                "period": {"start": "2026-01-11"}}),
        ];
        let build = |order: &[Value]| {
            let mut builder = FactsBuilder::new(None);
            for r in order {
                builder.add_resource(r);
            }
            builder.finish()
        };
        let forward = build(&resources);
        let reversed: Vec<Value> = resources.iter().rev().cloned().collect();
        assert_eq!(forward, build(&reversed));
        assert_eq!(forward.len(), 1, "the merged-away patient and the one without a Patient are not counted");
        let facts = &forward[0];
        assert_eq!(facts.payer.as_deref(), Some("Medicaid"), "equal orders: the lowest Coverage id");
        assert_eq!(facts.encounters, vec![day("2026-01-10")]);
        assert_eq!(
            facts.screenings,
            vec![Screening { domain: HrsnDomain::Food, date: day("2026-01-10"), positive: true }]
        );
        assert_eq!(facts.referrals[0].completed, Some(day("2026-01-20")));
    }

    #[test]
    fn a_cohort_limits_the_population_and_coverage_order_picks_the_payer() {
        let cohort: HashSet<String> = ["a".to_owned()].into();
        let mut builder = FactsBuilder::new(Some(&cohort));
        builder.add_resource(&json!({"resourceType": "Patient", "id": "a"}));
        builder.add_resource(&json!({"resourceType": "Patient", "id": "b"}));
        builder.add_resource(&json!({"resourceType": "Coverage", "status": "active", "order": 2,
            "beneficiary": {"reference": "Patient/a"}, "type": {"coding": [{"code": "MCPOL", "display": "Medicare"}]}}));
        builder.add_resource(&json!({"resourceType": "Coverage", "status": "active", "order": 1,
            "beneficiary": {"reference": "Patient/a"}, "type": {"text": "Medicaid"}}));
        builder.add_resource(&json!({"resourceType": "Coverage", "status": "cancelled", "order": 0,
            "beneficiary": {"reference": "Patient/a"}, "type": {"text": "Private"}}));
        let facts = builder.finish();
        assert_eq!(facts.len(), 1);
        assert_eq!(facts[0].payer.as_deref(), Some("Medicaid"));
    }
}
