//! Profile conformance of what the mapping emits, and bad OBX values.
//!
//! - REF^I12/I14: the ServiceRequest and Task carry what SDOHCC-ServiceRequest and SDOHCC-TaskForReferralManagement
//!   (SDOH Clinical Care 2.2.0) require, and the elements they mark must-support that the message supplies.
//! - ORU^R01: an OBX whose OBX-5 does not fit its OBX-2 value type fails the conversion with the location at fault
//!   and nothing else (no resources, so nothing half-written), or is skipped with a warning naming the row.

use serde_json::Value;
use std::path::Path;
use v2fhir::{Conversion, ConversionError, convert};

const SR_PROFILE: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-ServiceRequest";
const TASK_PROFILE: &str =
    "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-TaskForReferralManagement";

fn run(raw: &str) -> Result<Conversion, ConversionError> {
    convert(&hl7v2::Message::parse(raw.as_bytes()).expect("test message parses"))
}

fn conformance(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/v2fhir").join(name);
    std::fs::read_to_string(path).unwrap().lines().filter(|l| !l.is_empty()).map(|l| format!("{l}\r")).collect()
}

fn msh(kind: &str, facility: &str) -> String {
    format!("MSH|^~\\&|APP|{facility}|GW|GWF|20261123080000-0800||{kind}|C1|P|2.5.1\r")
}

fn one<'a>(c: &'a Conversion, ty: &str) -> &'a Value {
    let found: Vec<&Value> = c.resources.iter().filter(|r| r["resourceType"] == ty).collect();
    assert_eq!(found.len(), 1, "expected one {ty}");
    found[0]
}

/// The reference's target, which must be a resource of this conversion of one of `types`.
fn target<'a>(c: &'a Conversion, reference: &Value, types: &[&str], what: &str) -> &'a Value {
    let r = reference["reference"].as_str().unwrap_or_else(|| panic!("{what}: no reference in {reference}"));
    let (ty, id) = r.split_once('/').unwrap_or_else(|| panic!("{what}: {r} is not Type/id"));
    assert!(types.contains(&ty), "{what}: {ty} is not one of {types:?}");
    c.resources
        .iter()
        .find(|x| x["resourceType"] == ty && x["id"] == id)
        .unwrap_or_else(|| panic!("{what}: {r} is not among the converted resources"))
}

fn has_profile(r: &Value, profile: &str) -> bool {
    r["meta"]["profile"].as_array().is_some_and(|p| p.iter().any(|x| x == profile))
}

/// A FHIR dateTime (date to the day at least, or a full time with offset).
fn is_date_time(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let b = s.as_bytes();
    let date = |n: usize| s.len() >= n && b[..n].iter().enumerate().all(|(i, c)| [4, 7].contains(&i) == (*c == b'-'));
    match s.len() {
        4 | 7 | 10 => date(s.len()),
        _ => s.len() >= 20 && date(10) && b[10] == b'T' && (s.ends_with('Z') || s[19..].contains(['+', '-'])),
    }
}

fn codeable_has_content(c: &Value) -> bool {
    c["coding"].as_array().is_some_and(|a| a.iter().any(|x| x["code"].is_string())) || c["text"].is_string()
}

/// SDOHCC-ServiceRequest: status, intent, code 1..1, subject; must-support authoredOn, requester
/// (and performer, priority, occurrence when the message has them).
fn check_service_request(c: &Conversion) -> &Value {
    let sr = one(c, "ServiceRequest");
    assert!(has_profile(sr, SR_PROFILE), "{sr}");
    let status = sr["status"].as_str().expect("ServiceRequest.status");
    assert!(
        ["draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"].contains(&status),
        "{status}"
    );
    assert_eq!(sr["intent"], "order");
    assert!(codeable_has_content(&sr["code"]), "ServiceRequest.code: {}", sr["code"]);
    target(c, &sr["subject"], &["Patient"], "ServiceRequest.subject");
    assert!(is_date_time(&sr["authoredOn"]), "ServiceRequest.authoredOn: {}", sr["authoredOn"]);
    target(c, &sr["requester"], &["PractitionerRole", "Organization", "Practitioner"], "ServiceRequest.requester");
    for p in sr["performer"].as_array().into_iter().flatten() {
        target(c, p, &["Organization", "PractitionerRole", "Practitioner", "HealthcareService"], "performer");
    }
    if let Some(p) = sr.get("priority") {
        assert!(["routine", "urgent", "asap", "stat"].contains(&p.as_str().unwrap()), "{p}");
    }
    for cat in sr["category"].as_array().into_iter().flatten() {
        assert!(codeable_has_content(cat), "{cat}");
    }
    sr
}

/// SDOHCC-TaskForReferralManagement: status from the Referral Task Status value set, intent `order`, code
/// task-code#fulfill, focus -> the SDOHCC ServiceRequest, for -> Patient, authoredOn, requester ->
/// PractitionerRole|Organization (all 1..1); owner must-support.
fn check_task<'a>(c: &'a Conversion, sr: &Value) -> &'a Value {
    let task = one(c, "Task");
    assert!(has_profile(task, TASK_PROFILE), "{task}");
    let status = task["status"].as_str().expect("Task.status");
    let referral_task_status = [
        "draft",
        "requested",
        "accepted",
        "rejected",
        "cancelled",
        "in-progress",
        "on-hold",
        "failed",
        "completed",
        "entered-in-error",
    ];
    assert!(referral_task_status.contains(&status), "{status} is not a referral Task status");
    assert_eq!(task["intent"], "order");
    let coding = task["code"]["coding"].as_array().expect("Task.code.coding");
    assert!(
        coding.iter().any(|x| x["system"] == "http://hl7.org/fhir/CodeSystem/task-code" && x["code"] == "fulfill"),
        "{}",
        task["code"]
    );
    let focus = target(c, &task["focus"], &["ServiceRequest"], "Task.focus");
    assert_eq!(focus["id"], sr["id"]);
    assert!(has_profile(focus, SR_PROFILE));
    let patient = target(c, &task["for"], &["Patient"], "Task.for");
    assert_eq!(
        Some(patient["id"].as_str().unwrap()),
        sr["subject"]["reference"].as_str().unwrap().strip_prefix("Patient/")
    );
    assert!(is_date_time(&task["authoredOn"]), "Task.authoredOn: {}", task["authoredOn"]);
    target(c, &task["requester"], &["PractitionerRole", "Organization"], "Task.requester");
    if let Some(owner) = task.get("owner") {
        target(c, owner, &["Organization", "PractitionerRole", "Practitioner", "HealthcareService"], "Task.owner");
    }
    if task["status"] == "rejected" || task["status"] == "cancelled" {
        // statusReason is optional; when given, its text is required.
        if let Some(reason) = task.get("statusReason") {
            assert!(reason["text"].is_string());
        }
    }
    assert!(task.get("businessStatus").is_none(), "businessStatus is not used by the profile");
    task
}

#[test]
fn conformance_referrals_carry_what_the_sdohcc_profiles_require() {
    for (case, status) in [("ref_i12.hl7", "requested"), ("ref_i14.hl7", "accepted")] {
        let c = run(&conformance(case)).unwrap();
        let sr = check_service_request(&c);
        // RT provider: performer of the request, owner of the Task.
        assert_eq!(sr["performer"].as_array().map(Vec::len), Some(1), "{case}");
        let task = check_task(&c, sr);
        assert_eq!(task["status"], status, "{case}");
        assert_eq!(task["owner"], sr["performer"][0], "{case}");
        assert_eq!(task["requester"], sr["requester"], "{case}");
        assert_eq!(task["authoredOn"], sr["authoredOn"], "{case}");
        target(&c, &task["requester"], &["PractitionerRole"], "RP provider");
    }
}

#[test]
fn sparse_referrals_still_carry_what_the_profiles_require() {
    let pid = "PID|1||M1^^^H^MR||Doe^Jane\r";
    // No dates in RF1 (authoredOn from MSH-7), no PRD at all (requester: the sending facility; no owner).
    let c = run(&(msh("REF^I12", "CLINIC") + "RF1|P|R|SO|||REF1\r" + pid)).unwrap();
    let sr = check_service_request(&c);
    let task = check_task(&c, sr);
    assert_eq!(task["authoredOn"], "2026-11-23T08:00:00-08:00");
    target(&c, &task["requester"], &["Organization"], "sending facility");
    assert!(task.get("owner").is_none(), "no RT provider: the Task is unowned (claimable)");
    // The load tool's referral shape: times without offsets are cut to the date (with a warning), still present.
    let c = run(&(msh("REF^I12", "CLINIC-1").replace("20261123080000-0800", "20261123080000")
        + "RF1|P^Pending^HL70283|R^Routine^HL70280|SO^Social services^HL70281|||REF00000009\r\
           PRD|RP|Welby^Marcus^^^Dr|||||1234^^^NPI\rPRD|RT|Community Food Bank^^^^|||||CBO-FOODBANK^^^LOCAL\r"
        + pid
        + "DG1|1||Z59.41^Food insecurity^I10||20261123\r"))
    .unwrap();
    let sr = check_service_request(&c);
    let task = check_task(&c, sr);
    assert_eq!(task["authoredOn"], "2026-11-23");
    // Each I14 answer maps to a referral Task status.
    for (rf1, status) in
        [("A", "accepted"), ("R", "rejected"), ("E", "cancelled"), ("P", "requested"), ("Q", "requested")]
    {
        let c = run(&(msh("REF^I14", "CLINIC") + &format!("RF1|{rf1}|R|SO|||REF1\r") + pid)).unwrap();
        let task = check_task(&c, check_service_request(&c));
        assert_eq!(task["status"], status, "RF1-1 {rf1}");
    }
}

#[test]
fn a_referral_without_requester_or_date_is_refused_not_half_written() {
    let pid = "PID|1||M1^^^H^MR||Doe^Jane\r";
    // Neither an RP provider nor a sending facility: Task.requester (1..1) cannot be filled.
    let e =
        run(&(msh("REF^I12", "") + "RF1|P|R|SO|||REF1\r" + "PRD|RT|Food Bank|||||CBO1^^^LOCAL\r" + pid)).unwrap_err();
    assert!(matches!(e, ConversionError::MissingField { .. }), "{e:?}");
    assert_eq!(e.location(), Some("PRD-1"));
    // No RF1-9, RF1-7 nor MSH-7: Task.authoredOn (1..1) cannot be filled.
    let e =
        run(&(msh("REF^I12", "CLINIC").replace("20261123080000-0800", "") + "RF1|P|R|SO|||REF1\r" + pid)).unwrap_err();
    assert_eq!(e.location(), Some("RF1-9"));
    assert_eq!(e.to_string(), "required field RF1-9 is missing");
}

fn oru(obx: &str) -> Result<Conversion, ConversionError> {
    run(&(msh("ORU^R01", "CLINIC") + "PID|1||M1^^^H^MR\rOBR|1|P1|F1|24323-8^Panel^LN|||20261123080000-0800\r" + obx))
}

/// An invalid value fails the whole message with the location and reason, never quoting the value (PHI).
fn assert_refused(obx: &str, location: &str, reason: &str, secret: &str) {
    let e = oru(obx).unwrap_err();
    assert!(matches!(e, ConversionError::InvalidValue { .. }), "{obx}: {e:?}");
    assert_eq!(e.location(), Some(location), "{obx}");
    let text = e.to_string();
    assert!(text.contains(reason), "{obx}: {text}");
    assert!(!secret.is_empty() && !text.contains(secret), "{obx}: {text} echoes the value");
}

#[test]
fn obx_values_that_do_not_fit_their_value_type_are_refused_with_the_location() {
    let ok = "OBX|1|NM|2345-7^Glucose^LN||105|mg/dL^^UCUM|||||F\r";
    for (obx, reason, secret) in [
        ("OBX|2|NM|2345-7^Glucose^LN||high|mg/dL^^UCUM|||||F\r", "NM value is not a number", "high"),
        ("OBX|2|NM|2345-7^Glucose^LN||1O5|mg/dL^^UCUM|||||F\r", "NM value is not a number", "1O5"),
        ("OBX|2|NM|2345-7^Glucose^LN||<abc|mg/dL^^UCUM|||||F\r", "NM value is not a number", "abc"),
        ("OBX|2|NM|2345-7^Glucose^LN||12 mg|mg/dL^^UCUM|||||F\r", "NM value is not a number", "12 mg"),
        ("OBX|2|SN|5130-0^Titer^LN||<^ten|||||F\r", "SN-2 is not a number", "ten"),
        ("OBX|2|SN|5130-0^Titer^LN||^1^:^many|||||F\r", "SN-4 is not a number", "many"),
        ("OBX|2|SN|5130-0^Titer^LN||about^10|||||F\r", "SN-1 is not a comparator", "about"),
        ("OBX|2|SN|5130-0^Titer^LN||Positive|||||F\r", "SN-1 is not a comparator", "Positive"),
        ("OBX|2|SN|5130-0^Titer^LN||<|||||F\r", "SN-2 (the number) is missing", "<"),
        ("OBX|2|DT|21112-8^Birth date^LN||yesterday||||||F\r", "not a v2 date/time", "yesterday"),
        ("OBX|2|TS|33882-2^Collected^LN||today||||||F\r", "not a v2 date/time", "today"),
        ("OBX|2|TM|X^Time^LN||noon||||||F\r", "not a v2 time", "noon"),
        ("OBX|2|NA|8867-4^Heart rate series^LN||72^fast^80||||||F\r", "NA element is not a number", "fast"),
    ] {
        assert_refused(&format!("{ok}{obx}"), "OBX[2]-5", reason, secret);
    }
    // A screening answer is checked the same way (the row would become a QuestionnaireResponse answer).
    let e = run(&(msh("ORU^R01", "CLINIC")
        + "PID|1||M1^^^H^MR\rOBR|1|P1|F1|88121-9^HVS^LN|||20261123080000-0800\r\
           OBX|1|CWE|88122-7^Q1^LN||LA28397-0^Often true^LN||||||F\rOBX|2|NM|88123-5^Q2^LN||often||||||F\r"))
    .unwrap_err();
    assert_eq!(e.location(), Some("OBX[2]-5"));
    assert_eq!(e.to_string(), "invalid value in OBX[2]-5: NM value is not a number");
}

#[test]
fn obx_rows_that_cannot_be_mapped_are_skipped_whole_with_a_warning() {
    let ok = "OBX|1|NM|2345-7^Glucose^LN||105|mg/dL^^UCUM|||||F\r";
    for (obx, warning) in [
        ("OBX|2||5778-6^Color^LN||Yellow||||||F\r", "OBX[2]-2 value type missing; OBX[2] skipped"),
        ("OBX|2|XYZ|5778-6^Color^LN||Yellow||||||F\r", "OBX[2]-2 value type XYZ not mapped; OBX[2] skipped"),
        (
            "OBX|2|ED|11502-2^Report^LN||^AP^PDF^Base64^AAAA||||||F\r",
            "OBX[2]-2 value type ED not mapped; OBX[2] skipped",
        ),
    ] {
        let c = oru(&format!("{ok}{obx}")).unwrap();
        assert_eq!(c.warnings, [warning], "{obx}");
        // Only the valid row became an Observation, and the report lists only it: no partial resource for OBX 2.
        let obs: Vec<&Value> = c.resources.iter().filter(|r| r["resourceType"] == "Observation").collect();
        assert_eq!(obs.len(), 1, "{obx}");
        assert_eq!(obs[0]["code"]["coding"][0]["code"], "2345-7");
        let report = one(&c, "DiagnosticReport");
        assert_eq!(report["result"].as_array().map(Vec::len), Some(1), "{obx}");
        assert!(!serde_json::to_string(&c.resources).unwrap().contains("Yellow"), "{obx}");
    }
    // Values that fit are mapped by type.
    let c = oru(&format!("{ok}OBX|2|ST|5778-6^Color^LN||Yellow||||||F\rOBX|3|SN|5196-1^Ratio^LN||^1^:^128||||||F\r"))
        .unwrap();
    let obs: Vec<&Value> = c.resources.iter().filter(|r| r["resourceType"] == "Observation").collect();
    assert_eq!(obs[0]["valueQuantity"]["value"], 105);
    assert_eq!(obs[1]["valueString"], "Yellow");
    assert_eq!(obs[2]["valueRatio"]["denominator"]["value"], 128);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}
