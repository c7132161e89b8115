//! Public-API behaviour: error kinds and locations, determinism across updates, and no panics on any input.

use proptest::prelude::*;
use serde_json::Value;
use v2fhir::{ConversionError, convert};

fn run(raw: &str) -> Result<v2fhir::Conversion, ConversionError> {
    convert(&hl7v2::Message::parse(raw.as_bytes()).expect("test message parses"))
}

fn msh(kind: &str) -> String {
    format!("MSH|^~\\&|APP|FAC|GW|GWF|20261123080000-0800||{kind}|C1|P|2.5.1\r")
}

fn ids_of<'a>(c: &'a v2fhir::Conversion, ty: &str) -> Vec<&'a str> {
    c.resources.iter().filter(|r| r["resourceType"] == ty).filter_map(|r| r["id"].as_str()).collect()
}

#[test]
fn missing_pid3_names_the_field() {
    let e = run(&(msh("ADT^A01") + "PID|1||||Doe^Jane\r")).unwrap_err();
    assert!(matches!(e, ConversionError::MissingField { .. }));
    assert_eq!(e.location(), Some("PID-3"));
    let e = run(&(msh("ADT^A01") + "EVN|A01\r")).unwrap_err();
    assert_eq!(e.location(), Some("PID-3"));
}

#[test]
fn malformed_dates_are_errors_with_location_and_no_value() {
    for bad in ["19801301", "1980022", "19800230", "20240101250000", "2024-01-01", "20240101+5"] {
        let e = run(&(msh("ADT^A04") + &format!("PID|1||SECRET123^^^H^MR||Doe^Jane||{bad}\r"))).unwrap_err();
        assert!(matches!(e, ConversionError::InvalidValue { .. }), "{bad}: {e:?}");
        assert_eq!(e.location(), Some("PID-7"));
        assert!(!e.to_string().contains(bad) && !e.to_string().contains("SECRET"), "{e}");
    }
    let e =
        run(&(msh("ORU^R01") + "PID|1||1^^^H^MR\rOBR|1|P1|F1|X^Y^LN\rOBX|1|NM|A^B^LN||1\rOBX|2|DT|A^B^LN||2024x\r"))
            .unwrap_err();
    assert_eq!(e.location(), Some("OBX[2]-5"));
}

#[test]
fn unsupported_message_types_are_refused() {
    for kind in ["SIU^S12", "ADT^A99", "ORM^O01", "ORU^R30"] {
        let e = run(&msh(kind)).unwrap_err();
        assert!(matches!(e, ConversionError::UnsupportedMessageType { .. }), "{kind}");
        assert_eq!(e.location(), None);
    }
}

#[test]
fn an_update_targets_the_same_resources() {
    let a01 = run(&(msh("ADT^A01")
        + "PID|1||M1^^^HOSP^MR~S1^^^SSA^SS||Doe^Jane||19800101|F\rPV1|1|I|W^1||||||||||||||||V1^^^HOSP\r"))
    .unwrap();
    // Identifiers reordered, name and address changed: still the same person and visit.
    let a08 = run(&(msh("ADT^A08")
        + "PID|1||S1^^^SSA^SS~M1^^^HOSP^MR||Roe^Jane||19800101|F|||1 Elm St\rPV1|1|I|W^2||||||||||||||||V1^^^HOSP\r"))
    .unwrap();
    assert_eq!(ids_of(&a01, "Patient"), ids_of(&a08, "Patient"));
    assert_eq!(ids_of(&a01, "Encounter"), ids_of(&a08, "Encounter"));
    // The same MRN from another assigning authority is another person.
    let other = run(&(msh("ADT^A08") + "PID|1||M1^^^CLINIC^MR||Doe^Jane\r")).unwrap();
    assert_ne!(ids_of(&a01, "Patient"), ids_of(&other, "Patient"));
    // An unqualified MRN is namespaced by the sending facility.
    let fac2 = run(&(msh("ADT^A08").replace("|FAC|", "|FAC2|") + "PID|1||M1||Doe^Jane\r")).unwrap();
    let fac1 = run(&(msh("ADT^A08") + "PID|1||M1||Doe^Jane\r")).unwrap();
    assert_ne!(ids_of(&fac1, "Patient"), ids_of(&fac2, "Patient"));
}

#[test]
fn conversion_is_deterministic_and_ids_hide_identifiers() {
    let raw = msh("ORU^R01")
        + "PID|1||MRN777^^^H^MR||Doe^Jane\rOBR|1|ORD555|FIL555|88121-9^HVS^LN|||20261123\r\
           OBX|1|CWE|88122-7^Q1^LN||LA28397-0^Often true^LN||||||F\rOBX|2|NM|8302-2^Height^LN||170|cm^^UCUM|||||F\r";
    let a = run(&raw).unwrap();
    assert_eq!(a, run(&raw).unwrap());
    for r in &a.resources {
        let id = r["id"].as_str().unwrap();
        assert!(id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
        // Hex digits alone cannot spell the identifiers; the letters prove they were not copied in.
        assert!(!id.contains("MRN") && !id.contains("ORD") && !id.contains("FIL"));
    }
    // Referenced resources come before those that reference them.
    let pos = |ty: &str| a.resources.iter().position(|r| r["resourceType"] == ty).unwrap();
    assert!(pos("Organization") < pos("Patient"));
    assert!(pos("Patient") < pos("QuestionnaireResponse"));
    assert!(pos("Observation") < pos("DiagnosticReport"));
}

#[test]
fn merge_links_both_ways_and_refuses_self_merge() {
    let c = run(&(msh("ADT^A40") + "PID|1||NEW1^^^H^MR||Doe^Jane\rMRG|OLD1^^^H^MR\r")).unwrap();
    let patients: Vec<&Value> = c.resources.iter().filter(|r| r["resourceType"] == "Patient").collect();
    assert_eq!(patients.len(), 2);
    assert_eq!(patients[0]["link"][0]["type"], "replaces");
    assert_eq!(
        patients[0]["link"][0]["other"]["reference"],
        format!("Patient/{}", patients[1]["id"].as_str().unwrap())
    );
    assert_eq!(patients[1]["link"][0]["type"], "replaced-by");
    assert_eq!(patients[1]["active"], false);
    let e = run(&(msh("ADT^A40") + "PID|1||NEW1^^^H^MR\rMRG|NEW1^^^H^MR\r")).unwrap_err();
    assert_eq!(e.location(), Some("MRG-1"));
    let e = run(&(msh("ADT^A40") + "PID|1||NEW1^^^H^MR\r")).unwrap_err();
    assert_eq!(e.location(), Some("MRG-1"));
}

#[test]
fn unmapped_value_types_warn_without_values() {
    let c =
        run(&(msh("ORU^R01") + "PID|1||1^^^H^MR\rOBR|1|P1|F1|X^Y^LN\rOBX|1|ED|A^B^LN||^AP^PDF^Base64^SECRETDATA\r"))
            .unwrap();
    assert_eq!(c.warnings, ["OBX-2 value type ED not mapped; OBX[1] skipped"]);
    assert!(c.resources.iter().all(|r| r["resourceType"] != "Observation"));
}

const SEGS: &[&str] = &["PID", "PV1", "PV2", "NK1", "IN1", "OBR", "ORC", "OBX", "RF1", "PRD", "DG1", "MRG", "NTE"];
const TYPES: &[&str] = &["ADT^A01", "ADT^A04", "ADT^A08", "ADT^A31", "ADT^A40", "ORU^R01", "REF^I12", "REF^I14"];

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("\"\"".to_owned()),
        "[0-9]{0,16}",
        "[A-Za-z0-9 .+<>=:/-]{0,12}",
        Just("88121-9^HVS^LN".to_owned()),
        Just("88122-7^Q^LN".to_owned()),
        Just("LA28397-0^Often^LN".to_owned()),
        Just("^1^:^2".to_owned()),
        Just("<^".to_owned()),
        prop::sample::select(vec!["NM", "SN", "ST", "TX", "CWE", "CE", "DT", "TS", "DTM", "TM", "NA", "ED", "F", "C"])
            .prop_map(str::to_owned),
        "[A-Z0-9^&~]{0,20}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn convert_never_panics(
        kind in prop::sample::select(TYPES),
        segs in prop::collection::vec((prop::sample::select(SEGS), prop::collection::vec(field(), 0..40)), 0..10),
    ) {
        let mut raw = msh(kind);
        for (id, fields) in segs {
            raw.push_str(id);
            for f in fields {
                raw.push('|');
                raw.push_str(&f);
            }
            raw.push('\r');
        }
        if let Ok(msg) = hl7v2::Message::parse(raw.as_bytes()) {
            match convert(&msg) {
                Ok(c) => {
                    for r in &c.resources {
                        prop_assert!(r["resourceType"].is_string() && r["id"].is_string());
                    }
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
    }
}

#[test]
fn referral_update_targets_the_same_service_request_and_task() {
    let body = "PRD|RP|Welby^Marcus|||||1234^^^NPI\rPRD|RT|Food Bank|||||CBO1^^^LOCAL\rPID|1||M1^^^H^MR\r";
    let i12 = run(&(msh("REF^I12") + "RF1|P|R|SO|||REF1\r" + body)).unwrap();
    let i14 = run(&(msh("REF^I14") + "RF1|A|R|SO|||REF1\r" + body)).unwrap();
    assert_eq!(ids_of(&i12, "ServiceRequest"), ids_of(&i14, "ServiceRequest"));
    assert_eq!(ids_of(&i12, "Task"), ids_of(&i14, "Task"));
    let task = |c: &v2fhir::Conversion| c.resources.iter().find(|r| r["resourceType"] == "Task").cloned().unwrap();
    assert_eq!(task(&i12)["status"], "requested");
    assert_eq!(task(&i14)["status"], "accepted");
    let t = task(&i12);
    assert_eq!(t["intent"], "order");
    assert!(t["requester"]["reference"].as_str().unwrap().starts_with("PractitionerRole/"));
    assert!(t["owner"]["reference"].as_str().unwrap().starts_with("Organization/"));
    assert!(t["focus"]["reference"].as_str().unwrap().starts_with("ServiceRequest/"));
    let e = run(&(msh("REF^I12") + "RF1|P|R|SO\r" + body)).unwrap_err();
    assert_eq!(e.location(), Some("RF1-6"));
}

#[test]
fn hunger_vital_sign_becomes_a_questionnaire_response() {
    let c = run(&(msh("ORU^R01")
        + "PID|1||M1^^^H^MR\rOBR|1|P1|F1|88121-9^HVS^LN|||20261123080000-0800\r\
           OBX|1|CWE|88122-7^Q1^LN||LA28397-0^Often true^LN||||||F\r\
           OBX|2|CWE|88123-5^Q2^LN||LA28398-8^Never true^LN||||||F\r"))
    .unwrap();
    let types: Vec<&str> = c.resources.iter().filter_map(|r| r["resourceType"].as_str()).collect();
    assert_eq!(types, ["Organization", "Patient", "QuestionnaireResponse"]);
    let qr = &c.resources[2];
    assert_eq!(
        qr["questionnaire"],
        "http://hl7.org/fhir/us/sdoh-clinicalcare/Questionnaire/SDOHCC-QuestionnaireHungerVitalSign"
    );
    assert_eq!(qr["status"], "completed");
    assert_eq!(qr["authored"], "2026-11-23T08:00:00-08:00");
    assert_eq!(qr["subject"]["reference"], format!("Patient/{}", c.resources[1]["id"].as_str().unwrap()));
    assert_eq!(qr["item"][0]["linkId"], "/88122-7");
    assert_eq!(
        qr["item"][0]["answer"][0]["valueCoding"],
        serde_json::json!({"system": "http://loinc.org", "code": "LA28397-0", "display": "Often true"})
    );
    assert_eq!(qr["item"][1]["answer"][0]["valueCoding"]["code"], "LA28398-8");
}

#[test]
fn structured_numerics_and_timestamps() {
    let c = run(&(msh("ORU^R01")
        + "PID|1||M1^^^H^MR\rOBR|1|P1|F1|X^Y^LN|||20261123080000\r\
           OBX|1|SN|A^B^LN||>=^5|mmol/L^^UCUM\rOBX|2|SN|C^D^LN||^2^+\rOBX|3|Patient Doe|E^F^LN||x\r"))
    .unwrap();
    let obs: Vec<&Value> = c.resources.iter().filter(|r| r["resourceType"] == "Observation").collect();
    assert_eq!(
        obs[0]["valueQuantity"],
        serde_json::json!({"value": 5, "comparator": ">=", "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"})
    );
    assert_eq!(obs[1]["valueString"], "^2^+");
    // A time without offset cannot be placed on the timeline: the date is kept and operators are told.
    assert_eq!(obs[0]["effectiveDateTime"], "2026-11-23");
    assert!(c.warnings.iter().any(|w| w == "OBR-7 has a time without UTC offset; only the date was kept"));
    // Free text in a code position is never echoed into warnings.
    assert!(c.warnings.iter().any(|w| w.contains("(unrecognised)")));
    assert!(c.warnings.iter().all(|w| !w.contains("Doe")), "{:?}", c.warnings);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Unstructured bodies: delimiters, escapes and non-ASCII bytes anywhere after a valid MSH.
    #[test]
    fn convert_never_panics_on_raw_bodies(
        kind in prop::sample::select(TYPES),
        body in prop::collection::vec(
            prop::sample::select(b"PIDOBXRF1PRDMRGPV1IN1NK1|||^^~&\\\r0123456789-+.<>:/ EFHNLCXWA\xc3\xa9\xff".to_vec()),
            0..400,
        ),
    ) {
        let mut raw = msh(kind).into_bytes();
        raw.extend_from_slice(b"PID|1||X^^^H^MR\r");
        raw.extend_from_slice(&body);
        if let Ok(msg) = hl7v2::Message::parse(&raw) {
            let _ = convert(&msg);
        }
    }
}

#[test]
fn corrected_results_update_the_same_observations() {
    let first = run(&(msh("ORU^R01")
        + "PID|1||M1^^^H^MR\rOBR|1|P1^EHR||X^Y^LN\rOBX|1|NM|A^B^LN||1||||||F\rOBX|2|NM|C^D^LN||2||||||F\r"))
    .unwrap();
    // The filler number arrives later and the rows come in another order: same order, same observations.
    let corrected = run(&(msh("ORU^R01")
        + "PID|1||M1^^^H^MR\rOBR|1|P1^EHR|F9^LAB|X^Y^LN\rOBX|1|NM|C^D^LN||3||||||C\rOBX|2|NM|A^B^LN||1||||||F\r"))
    .unwrap();
    let mut a = ids_of(&first, "Observation");
    let mut b = ids_of(&corrected, "Observation");
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);
    assert_eq!(ids_of(&first, "DiagnosticReport"), ids_of(&corrected, "DiagnosticReport"));
    assert!(corrected.resources.iter().any(|r| r["status"] == "corrected" && r["valueQuantity"]["value"] == 3));
}

#[test]
fn each_patient_result_group_keeps_its_own_patient() {
    let c = run(&(msh("ORU^R01")
        + "PID|1||A1^^^H^MR\rOBR|1|P1||X^Y^LN\rOBX|1|NM|A^B^LN||1||||||F\r\
           PID|2||B2^^^H^MR\rOBR|1|P2||X^Y^LN\rOBX|1|NM|A^B^LN||2||||||F\r"))
    .unwrap();
    let patients = ids_of(&c, "Patient");
    assert_eq!(patients.len(), 2);
    let subject_of =
        |v: i64| c.resources.iter().find(|r| r["valueQuantity"]["value"] == v).unwrap()["subject"]["reference"].clone();
    assert_eq!(subject_of(1), format!("Patient/{}", patients[0]));
    assert_eq!(subject_of(2), format!("Patient/{}", patients[1]));
    let e = run(&(msh("ORU^R01") + "OBR|1|P1||X^Y^LN\rPID|1||A1^^^H^MR\r")).unwrap_err();
    assert_eq!(e.location(), Some("PID-3"));
}
