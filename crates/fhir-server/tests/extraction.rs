//! Extraction over realistic resources (tests/data/*.json), checked through the same query semantics a search uses.

use fhir_server::search::{
    DateRange, IndexValue, ParamEntries, ParamQuery, SearchParamRegistry, extract, parse_date_range,
    resource_matches_at,
};
use serde_json::Value;

/// 2026-11-23T00:00:00Z, so `ap` comparisons do not depend on when the tests run.
const NOW: i64 = 1_795_392_000_000_000;

struct Indexed {
    resource_type: String,
    entries: Vec<ParamEntries>,
}

impl Indexed {
    fn load(file: &str) -> Indexed {
        let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let resource: Value = serde_json::from_str(&text).unwrap();
        let registry = SearchParamRegistry::r4().unwrap();
        Indexed {
            resource_type: resource["resourceType"].as_str().unwrap().to_owned(),
            entries: extract(registry, &resource).unwrap(),
        }
    }

    fn values(&self, code: &str) -> &[IndexValue] {
        self.entries.iter().find(|e| e.code == code).map_or(&[], |e| e.values.as_slice())
    }

    /// Whether `code[:modifier]=raw` selects this resource.
    fn hit(&self, param: &str, raw: &str) -> bool {
        let (code, modifier) = match param.split_once(':') {
            Some((c, m)) => (c, Some(m)),
            None => (param, None),
        };
        let registry = SearchParamRegistry::r4().unwrap();
        let def = registry.get(&self.resource_type, code).unwrap_or_else(|| panic!("no parameter {code}"));
        let query = ParamQuery::parse(def, modifier, raw).unwrap_or_else(|e| panic!("{param}={raw}: {e}"));
        // As a search does: a parameter whose values other parameters' rows hold matches through any of them
        // (`:not` through none).
        let mut holders = def.index_codes().into_iter().map(|c| resource_matches_at(self.values(c), &query, NOW));
        if modifier == Some("not") { holders.all(|hit| hit) } else { holders.any(|hit| hit) }
    }
}

#[test]
fn patient() {
    let p = Indexed::load("patient.json");
    // Common parameters.
    assert!(p.hit("_id", "pat-1"));
    assert!(p.hit("_lastUpdated", "2026-11-20"));
    assert!(p.hit("_lastUpdated", "lt2026-11-20T13:04:00Z"), "+01:00 offset is converted to UTC");
    assert!(p.hit("_tag", "http://sdoh-gateway.example/tags|hl7v2-ingest"));
    assert!(p.hit("_profile", "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"));
    assert!(p.hit("_source", "urn:sdoh-gateway:adt-feed"));

    // Names: every part, accent- and case-insensitive prefix.
    assert!(p.hit("name", "alvarez"));
    assert!(p.hit("name", "JOSE"));
    assert!(p.hit("name", "maria"));
    assert!(p.hit("name", "pepe"));
    assert!(p.hit("name", "sr"));
    assert!(!p.hit("name", "munoz"), "starts-with, not contains");
    assert!(p.hit("name:contains", "munoz"));
    assert!(p.hit("name:exact", "Álvarez-Muñoz"));
    assert!(!p.hit("name:exact", "alvarez-munoz"));
    assert!(p.hit("family", "álv"));
    assert!(!p.hit("family", "jose"));
    assert!(p.hit("given", "José,Nobody"));

    // Identifiers, including the :of-type form.
    assert!(p.hit("identifier", "urn:oid:2.16.840.1.113883.19.5|MRN-00042"));
    assert!(p.hit("identifier", "MRN-00042"));
    assert!(!p.hit("identifier", "urn:other|MRN-00042"));
    assert!(p.hit("identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203|MR|MRN-00042"));
    assert!(!p.hit("identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203|MR|999-00-1234"));
    assert!(p.hit("identifier:text", "mrn"));

    // Address parts.
    assert!(p.hit("address", "123 nandu"));
    assert!(!p.hit("address", "nandu"), "starts-with applies to each address part, not to words");
    assert!(p.hit("address:contains", "nandu"));
    assert!(p.hit("address-city", "san jose"));
    assert!(p.hit("address", "santa clara"));
    assert!(p.hit("address-postalcode", "951"));
    assert!(p.hit("address-state", "ca"));
    assert!(p.hit("address-use", "home"));

    // Telecom: ContactPoint value as code, its system as system.
    assert!(p.hit("phone", "+1-555-0100"));
    assert!(!p.hit("phone", "jose@example.org"));
    assert!(p.hit("email", "jose@example.org"));
    assert!(p.hit("telecom", "email|jose@example.org"));

    // Birth date precision.
    assert!(p.hit("birthdate", "1970"));
    assert!(p.hit("birthdate", "1970-01"));
    assert!(p.hit("birthdate", "1970-01-01"));
    assert!(!p.hit("birthdate", "1970-01-02"));
    assert!(p.hit("birthdate", "lt1971"));
    assert!(p.hit("birthdate", "ge1970-01-01"));
    assert!(p.hit("birthdate", "sa1969"));
    assert!(p.hit("birthdate", "eb1970-01-02"));
    assert!(!p.hit("birthdate", "sa1970"));

    assert!(p.hit("gender", "male"));
    assert!(p.hit("gender:not", "female"));
    assert!(p.hit("active", "true"));
    assert!(p.hit("deceased", "false"));
    assert!(!p.hit("deceased", "true"));
    assert!(p.hit("death-date:missing", "true"));
    assert!(p.hit("language", "urn:ietf:bcp:47|es"));
    assert!(p.hit("language:text", "span"));

    // References: relative, absolute (keeps the URL too), contained (skipped).
    assert!(p.hit("general-practitioner", "Practitioner/prac-7"));
    assert!(p.hit("general-practitioner", "prac-7"));
    assert!(p.hit("general-practitioner:Practitioner", "prac-7"));
    assert!(!p.hit("general-practitioner", "PractitionerRole/prac-7"));
    assert!(p.hit("organization", "https://partner.example/fhir/Organization/org-3"));
    assert!(p.hit("organization", "Organization/org-3"));
    assert!(p.values("link").is_empty(), "#contained references are not indexed");
    assert!(p.hit("link:missing", "true"));
}

#[test]
fn observation() {
    let o = Indexed::load("observation.json");
    assert!(o.hit("code", "http://loinc.org|85354-9"));
    assert!(o.hit("code:text", "blood"));
    assert!(o.hit("category", "sdoh"));
    assert!(o.hit("category", "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"));
    assert!(o.hit("category:text", "social"));
    assert!(o.hit("status", "final"));
    assert!(o.hit("status:not", "preliminary"));
    assert!(o.hit("subject", "Patient/pat-1"));
    assert!(o.hit("patient", "pat-1"));
    assert!(o.hit("performer", "Organization/org-3"));
    assert!(o.hit("encounter", "enc-5"));

    // effectiveDateTime 09:30 at -05:00 is 14:30 UTC, still 2026-11-23.
    assert!(o.hit("date", "2026-11-23"));
    assert!(o.hit("date", "ge2026-11"));
    assert!(o.hit("date", "ap2026-11-23"));
    assert!(o.hit("date", "ap2026-11"));
    assert!(!o.hit("date", "ap2026-11-22"), "a day before now allows only ~2.4h of tolerance");
    assert!(o.hit("date", "gt2026-11-23T14:00:00Z"));
    assert!(!o.hit("date", "gt2026-11-23T15:00:00Z"));

    assert!(o.hit("value-quantity", "72"));
    assert!(o.hit("value-quantity", "gt70|http://unitsofmeasure.org|/min"));
    assert!(!o.hit("value-quantity", "120"), "component values are not the observation's value");
    assert!(o.hit("component-value-quantity", "120||mm[Hg]"));
    assert!(o.hit("combo-value-quantity", "72"));
    assert!(o.hit("combo-value-quantity", "80"));
    assert!(o.hit("component-code", "8480-6"));
    assert!(o.hit("combo-code", "85354-9"));
    assert!(o.hit("combo-code", "8462-4"));
    assert!(o.hit("component-value-concept", "LA31993-1"));

    // Composites keep components of one node together.
    assert!(o.hit("component-code-value-quantity", "http://loinc.org|8480-6$gt100"));
    assert!(!o.hit("component-code-value-quantity", "http://loinc.org|8462-4$gt100"), "diastolic is 80");
    assert!(o.hit("component-code-value-quantity", "8462-4$lt90|http://unitsofmeasure.org|mm[Hg]"));
    assert!(o.hit("code-value-quantity", "85354-9$72"));
    assert!(o.hit("combo-code-value-quantity", "8480-6$120"));
    assert!(o.hit("combo-code-value-concept", "71802-3$LA31993-1"));
    assert!(!o.hit("code-value-concept", "71802-3$LA31993-1"));
    assert!(!o.hit("combo-code:not", "8462-4"));
    assert!(o.hit("combo-code:not", "1234-5"));
    // The combo parameters' values are the rows of the parameters they are made of, not written again.
    for combo in ["combo-code", "combo-value-concept", "combo-code-value-quantity", "combo-code-value-concept"] {
        assert!(o.values(combo).is_empty(), "{combo} indexed a second time");
    }
    let tuples = o.values("component-code-value-quantity");
    assert_eq!(tuples.len(), 2);
}

#[test]
fn condition() {
    let c = Indexed::load("condition.json");
    assert!(c.hit("code", "http://hl7.org/fhir/sid/icd-10-cm|Z59.41"));
    assert!(c.hit("code:text", "food"));
    assert!(c.hit("category", "health-concern,problem-list-item"));
    assert!(c.hit("clinical-status", "active"));
    assert!(c.hit("verification-status", "confirmed"));
    assert!(c.hit("patient", "Patient/pat-1"));
    assert!(c.hit("subject", "pat-1"));
    assert!(c.hit("evidence-detail", "Observation/obs-bp-1"));
    assert!(c.hit("asserter", "Practitioner/prac-7"));
    assert!(c.hit("recorded-date", "2026-11-23"));
    assert!(c.hit("abatement-string", "resolved"));

    // onsetPeriod 2026-03 .. 2026-10-15.
    let onset = c.values("onset-date");
    assert_eq!(
        onset,
        [IndexValue::Date(DateRange {
            low: parse_date_range("2026-03-01").unwrap().low,
            high: parse_date_range("2026-10-15").unwrap().high,
        })]
    );
    assert!(c.hit("onset-date", "2026"));
    assert!(!c.hit("onset-date", "2026-06"), "eq needs the month to contain the whole period");
    assert!(c.hit("onset-date", "gt2026-06"));
    assert!(c.hit("onset-date", "lt2026-06"));
    assert!(c.hit("onset-date", "sa2026-02"));
    assert!(c.hit("onset-date", "eb2026-11"));
    assert!(!c.hit("onset-date", "eb2026-10"));
    assert!(c.hit("onset-age:missing", "true"));
}

#[test]
fn task() {
    let t = Indexed::load("task.json");
    assert!(t.hit("status", "in-progress"));
    assert!(t.hit("status", "requested,in-progress"));
    assert!(!t.hit("status", "completed"));
    assert!(t.hit("business-status:text", "awaiting"));
    assert!(t.hit("intent", "order"));
    assert!(t.hit("priority", "urgent"));
    assert!(t.hit("code", "http://hl7.org/fhir/CodeSystem/task-code|fulfill"));
    assert!(t.hit("focus", "ServiceRequest/sr-2"));
    assert!(t.hit("based-on", "sr-2"));
    assert!(t.hit("patient", "Patient/pat-1"));
    assert!(t.hit("subject", "pat-1"));
    assert!(t.hit("requester", "PractitionerRole/role-1"));
    assert!(t.hit("identifier", "http://sdoh-gateway.example/task|T-0009"));
    assert!(t.hit("performer", "performer"));

    // A logical owner reference: searchable by :identifier only.
    assert!(t.hit("owner:identifier", "http://hl7.org/fhir/sid/us-npi|1234567893"));
    assert!(!t.hit("owner:identifier", "http://hl7.org/fhir/sid/us-npi|0"));
    assert!(!t.hit("owner", "1234567893"));

    // An open execution period is ongoing.
    assert!(t.hit("period", "gt2030"));
    assert!(t.hit("period", "sa2026-11-19"));
    assert!(t.hit("authored-on", "2026-11-19"));
    assert!(t.hit("modified", "2026-11-21T10:00:00Z"), "the second contains the half-second instant");
    assert!(!t.hit("modified", "2026-11-21T10:00:00.4Z"));
}

#[test]
fn service_request() {
    let s = Indexed::load("servicerequest.json");
    assert!(s.hit("code", "467771000124109"));
    assert!(s.hit("code:text", "food program"), "display words are searchable");
    assert!(s.hit("category", "http://snomed.info/sct|410606002"));
    assert!(s.hit("status", "active"));
    assert!(s.hit("intent", "order"));
    assert!(s.hit("priority", "routine"));
    assert!(s.hit("subject", "Patient/pat-1"));
    assert!(s.hit("patient", "pat-1"));
    assert!(s.hit("performer", "Organization/cbo-food-bank"));
    assert!(s.hit("requester", "prac-7"));
    assert!(s.hit("requisition", "REQ-77"));
    assert!(s.hit("order-detail", "Call before 5pm"));
    assert!(s.hit("occurrence", "2026"));
    assert!(s.hit("occurrence", "ge2026-11-24"));
    assert!(s.hit("occurrence", "sa2026-11-23"));
    assert!(s.hit("authored", "2026-11-23"));
    assert!(s.hit("instantiates-canonical", "http://sdoh-gateway.example/PlanDefinition/food-referral"));
    assert!(s.hit("instantiates-canonical", "http://sdoh-gateway.example/PlanDefinition/food-referral|1.2"));
    assert!(!s.hit("instantiates-canonical", "http://sdoh-gateway.example/PlanDefinition/food-referral|2.0"));
}

#[test]
fn questionnaire_response() {
    let q = Indexed::load("questionnaireresponse.json");
    assert!(q.hit("status", "completed"));
    assert!(q.hit("identifier", "QR-1"));
    assert!(q.hit("patient", "Patient/pat-1"));
    assert!(q.hit("subject", "pat-1"));
    assert!(q.hit("author", "Patient/pat-1"));
    assert!(q.hit("source", "RelatedPerson/rp-2"));
    assert!(q.hit("encounter", "enc-5"));
    assert!(q.hit("authored", "2026-11-23"));
    assert!(q.hit("authored", "ap2026-11-23T14:15:00Z"));
    assert!(q.hit(
        "questionnaire",
        "http://hl7.org/fhir/us/sdoh-clinicalcare/Questionnaire/SDOHCC-QuestionnaireHungerVitalSign"
    ));
    assert!(q.hit(
        "questionnaire",
        "http://hl7.org/fhir/us/sdoh-clinicalcare/Questionnaire/SDOHCC-QuestionnaireHungerVitalSign|2.0.0"
    ));
}

#[test]
fn non_resources_are_rejected_without_panicking() {
    let registry = SearchParamRegistry::r4().unwrap();
    for v in [
        serde_json::json!(null),
        serde_json::json!([1, 2]),
        serde_json::json!({"resourceType": 5}),
        serde_json::json!({"resourceType": "Basic"}),
    ] {
        assert!(extract(registry, &v).is_err(), "{v}");
    }
    // Wrongly-typed fields are skipped, not fatal.
    let odd = serde_json::json!({"resourceType": "Patient", "birthDate": 1970, "name": "x", "telecom": [null, 3],
        "identifier": {"value": {"nested": true}}, "meta": {"lastUpdated": "yesterday"}});
    let entries = extract(registry, &odd).unwrap();
    assert!(entries.iter().all(|e| e.code != "birthdate" && e.code != "_lastUpdated"));
}
