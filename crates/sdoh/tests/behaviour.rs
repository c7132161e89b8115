//! Idempotence, amendment and retraction semantics, instrument recognition and error cases of the normalizer.

use std::collections::BTreeSet;
use std::path::PathBuf;

use sdoh::{Context, Derived, Instruments, NormalizeError, normalize, normalize_with};
use serde_json::{Value, json};

const CTX: Context<'static> = Context { recorded: "2026-01-01T00:00:00Z", agent: "Device/sdoh-gateway" };

fn case(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../conformance/sdoh/{name}.input.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn run(qr: &Value) -> Derived {
    normalize(qr, &CTX).unwrap().expect("supported instrument")
}

fn ids(resources: &[Value]) -> BTreeSet<String> {
    resources.iter().map(|r| format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())).collect()
}

fn hvs(answers: &[(&str, &str)]) -> Value {
    let items: Vec<Value> = answers
        .iter()
        .map(|(link, code)| json!({ "linkId": link, "answer": [{ "valueCoding": { "system": "http://loinc.org", "code": code } }] }))
        .collect();
    json!({
        "resourceType": "QuestionnaireResponse",
        "id": "t1",
        "questionnaire": "http://hl7.org/fhir/us/sdoh-clinicalcare/Questionnaire/SDOHCC-QuestionnaireHungerVitalSign",
        "status": "completed",
        "subject": { "reference": "Patient/p1" },
        "authored": "2025-01-01T00:00:00Z",
        "item": items
    })
}

#[test]
fn same_input_twice_gives_identical_output() {
    for name in ["ig-hvs-example", "ahc-hrsn-several-domains", "prapare-core", "hvs-amended"] {
        let qr = case(name);
        assert_eq!(run(&qr), run(&qr), "{name}");
    }
}

#[test]
fn ids_are_unique_within_one_derivation() {
    for name in ["ig-hvs-example", "ahc-hrsn-several-domains", "prapare-core"] {
        let d = run(&case(name));
        let all: Vec<Value> = d.resources.iter().cloned().chain(retraction_keys(&d)).collect();
        assert_eq!(ids(&all).len(), all.len(), "{name}");
    }
}

#[test]
fn amended_version_updates_the_same_resources() {
    let first = run(&case("ig-hvs-example"));
    let amended = run(&case("hvs-amended"));
    let first_ids = ids(&first.resources);
    let amended_all: Vec<Value> = amended.resources.iter().cloned().chain(retraction_keys(&amended)).collect();
    assert!(first_ids.is_subset(&ids(&amended_all)), "every earlier id is updated or retracted");

    let cond_id = first.resources.iter().find(|r| r["resourceType"] == "Condition").unwrap()["id"].clone();
    assert!(amended.resources.iter().all(|r| r["resourceType"] != "Condition"));
    assert!(
        amended.retractions.iter().any(|r| r.resource_type == "Condition" && r.id == cond_id),
        "condition retracted"
    );
    let existing = first.resources.iter().find(|r| r["id"] == cond_id).unwrap();
    let retracted = sdoh::retract(existing);
    assert_eq!(retracted["verificationStatus"]["coding"][0]["code"], "entered-in-error");
    assert!(retracted.get("clinicalStatus").is_none(), "con-5");
    assert_eq!(retracted["code"], existing["code"], "the record keeps what was retracted");
    assert_eq!(retracted["evidence"], existing["evidence"]);

    for r in amended.resources.iter().filter(|r| r["resourceType"] == "Observation") {
        assert_eq!(r["status"], "corrected");
    }
    let risk = amended.resources.iter().find(|r| r["code"]["coding"][0]["code"] == "88124-3").unwrap();
    assert_eq!(risk["valueCodeableConcept"]["coding"][0]["code"], "LA19983-8");
    assert!(risk.get("interpretation").is_none(), "never NEG, no POS when not at risk");
    assert_eq!(
        amended.resources.last().unwrap()["entity"][0]["what"]["reference"],
        json!(format!("QuestionnaireResponse/{}/_history/2", "SDOHCC-QuestionnaireResponseHungerVitalSignExample"))
    );
}

#[test]
fn entered_in_error_retracts_everything() {
    let first = run(&case("ig-hvs-example"));
    let eie = run(&case("hvs-entered-in-error"));
    assert_eq!(ids(&first.resources), ids(&eie.resources));
    for r in &eie.resources {
        match r["resourceType"].as_str().unwrap() {
            "Observation" => {
                assert_eq!(r["status"], "entered-in-error");
                assert!(r.get("interpretation").is_none());
            }
            "Condition" => {
                assert_eq!(r["verificationStatus"]["coding"][0]["code"], "entered-in-error");
                assert!(r.get("clinicalStatus").is_none());
            }
            "Provenance" => {}
            other => panic!("unexpected {other}"),
        }
    }
    let derived_ids = ids(&eie.resources);
    for r in &eie.retractions {
        assert!(
            !derived_ids.contains(&format!("{}/{}", r.resource_type, r.id)),
            "{} is both derived and retracted",
            r.id
        );
    }
    let first = run(&case("ig-hvs-example"));
    for existing in first.resources.iter().filter(|r| r["resourceType"] == "Observation") {
        assert_eq!(sdoh::retract(existing)["status"], "entered-in-error");
    }
}

#[test]
fn entered_in_error_never_fails_on_bad_answers() {
    let mut qr = hvs(&[("/88122-7", "LA0000-0"), ("/88123-5", "LA28397-0")]);
    qr["status"] = json!("entered-in-error");
    let d = run(&qr);
    assert!(d.resources.iter().any(|r| r["code"]["coding"][0]["code"] == "88123-5"));
}

#[test]
fn computed_risk_follows_the_questionnaire_rule() {
    let cases = [
        (vec![("/88122-7", "LA28397-0")], Some("LA19952-3")),
        (vec![("/88122-7", "LA28398-8"), ("/88123-5", "LA6729-3")], Some("LA19952-3")),
        (vec![("/88122-7", "LA28398-8"), ("/88123-5", "LA15775-2")], Some("LA19983-8")),
        (vec![("/88122-7", "LA15775-2")], Some("LA19983-8")),
        // The rule wins over a contradicting supplied result.
        (vec![("/88122-7", "LA28398-8"), ("/88124-3", "LA19952-3")], Some("LA19983-8")),
        // A supplied result alone is kept.
        (vec![("/88124-3", "LA19952-3")], Some("LA19952-3")),
    ];
    for (answers, want) in cases {
        let d = run(&hvs(&answers));
        let risk = d.resources.iter().find(|r| r["code"]["coding"][0]["code"] == "88124-3");
        assert_eq!(
            risk.map(|r| r["valueCodeableConcept"]["coding"][0]["code"].clone()),
            want.map(|w| json!(w)),
            "{answers:?}"
        );
        let has_condition = d.resources.iter().any(|r| r["resourceType"] == "Condition");
        assert_eq!(has_condition, want == Some("LA19952-3"), "{answers:?}");
    }
}

#[test]
fn no_answers_derive_nothing_but_retract_everything() {
    let d = run(&hvs(&[]));
    assert!(d.resources.is_empty(), "no Provenance without targets");
    assert_eq!(d.retractions.len(), 5, "3 items + panel + condition");
}

#[test]
fn recognises_by_codes_without_canonical() {
    let mut qr = hvs(&[("88122-7", "LA28397-0")]);
    qr.as_object_mut().unwrap().remove("questionnaire");
    assert_eq!(run(&qr).instrument, "hunger-vital-sign");

    let prapare_housing = json!({
        "resourceType": "QuestionnaireResponse", "id": "x", "status": "completed",
        "subject": { "reference": "Patient/p" }, "authored": "2025-01-01",
        "item": [{ "linkId": "71802-3", "answer": [{ "valueCoding": { "system": "http://loinc.org", "code": "LA30190-5" } }] }]
    });
    let d = run(&prapare_housing);
    assert_eq!(d.instrument, "prapare");
    assert!(d.resources.iter().any(|r| r["code"]["coding"][0]["code"] == "32911000"));
}

#[test]
fn unsupported_or_in_progress_is_none() {
    let other = json!({
        "resourceType": "QuestionnaireResponse", "id": "x", "status": "completed",
        "questionnaire": "http://example.org/Questionnaire/phq-9",
        "subject": { "reference": "Patient/p" }, "authored": "2025-01-01",
        "item": [{ "linkId": "44250-9", "answer": [{ "valueCoding": { "code": "LA6568-5" } }] },
                 { "linkId": "44255-8", "answer": [{ "valueCoding": { "code": "LA6568-5" } }] }]
    });
    assert_eq!(normalize(&other, &CTX).unwrap(), None);
    let mut qr = hvs(&[("/88122-7", "LA28397-0")]);
    qr["status"] = json!("in-progress");
    assert_eq!(normalize(&qr, &CTX).unwrap(), None);
}

#[test]
fn bad_input_gives_the_right_error() {
    assert_eq!(normalize(&json!([1, 2]), &CTX), Err(NormalizeError::NotAQuestionnaireResponse));
    assert_eq!(normalize(&json!({ "resourceType": "Patient" }), &CTX), Err(NormalizeError::NotAQuestionnaireResponse));

    let secret = "LA-SECRET-9";
    let err = normalize(&hvs(&[("/88122-7", secret)]), &CTX).unwrap_err();
    assert!(matches!(&err, NormalizeError::InvalidAnswer { link_id, .. } if link_id == "88122-7"), "{err:?}");
    assert!(!err.to_string().contains(secret), "error text must not echo input values");

    let mut qr = hvs(&[("/88122-7", "LA28397-0")]);
    qr.as_object_mut().unwrap().remove("subject");
    assert_eq!(normalize(&qr, &CTX), Err(NormalizeError::MissingElement { path: "QuestionnaireResponse.subject" }));

    let mut qr = hvs(&[("/88122-7", "LA28397-0")]);
    qr.as_object_mut().unwrap().remove("authored");
    assert_eq!(normalize(&qr, &CTX), Err(NormalizeError::MissingElement { path: "QuestionnaireResponse.authored" }));

    let mut qr = hvs(&[("/88122-7", "LA28397-0")]);
    qr["authored"] = json!("last tuesday");
    assert!(matches!(
        normalize(&qr, &CTX),
        Err(NormalizeError::InvalidElement { path: "QuestionnaireResponse.authored", .. })
    ));

    let mut qr = hvs(&[("/88122-7", "LA28397-0")]);
    qr.as_object_mut().unwrap().remove("id");
    assert_eq!(normalize(&qr, &CTX), Err(NormalizeError::MissingElement { path: "QuestionnaireResponse.id" }));

    let mut qr = hvs(&[("/88122-7", "LA28397-0")]);
    qr["status"] = json!("done");
    assert!(matches!(
        normalize(&qr, &CTX),
        Err(NormalizeError::InvalidElement { path: "QuestionnaireResponse.status", .. })
    ));

    let mut qr = hvs(&[("/88122-7", "LA28397-0")]);
    qr["item"][0]["answer"][0]["valueCoding"]["system"] = json!("http://snomed.info/sct");
    assert!(matches!(normalize(&qr, &CTX), Err(NormalizeError::InvalidAnswer { .. })));

    let mut qr = hvs(&[("/88122-7", "LA28397-0")]);
    qr["item"][0]["answer"] =
        json!([{ "valueCoding": { "code": "LA28397-0" } }, { "valueCoding": { "code": "LA6729-3" } }]);
    assert!(matches!(normalize(&qr, &CTX), Err(NormalizeError::InvalidAnswer { .. })));

    let qr = hvs(&[("/88122-7", "LA28397-0"), ("88122-7", "LA28397-0")]);
    assert!(matches!(normalize(&qr, &CTX), Err(NormalizeError::InvalidAnswer { .. })));

    let mut qr = hvs(&[("/88122-7", "LA28397-0")]);
    qr["item"][0]["answer"] = json!([{ "valueString": "often" }]);
    assert!(matches!(normalize(&qr, &CTX), Err(NormalizeError::InvalidAnswer { .. })));
}

#[test]
fn provenance_records_caller_context_and_source_version() {
    let mut qr = hvs(&[("/88122-7", "LA28397-0")]);
    qr["meta"] = json!({ "versionId": "7" });
    let ctx = Context { recorded: "2026-02-03T04:05:06Z", agent: "Organization/gw" };
    let d = normalize(&qr, &ctx).unwrap().unwrap();
    let prov = d.resources.last().unwrap();
    assert_eq!(prov["resourceType"], "Provenance");
    assert_eq!(prov["recorded"], "2026-02-03T04:05:06Z");
    assert_eq!(prov["agent"][0]["who"]["reference"], "Organization/gw");
    assert_eq!(prov["entity"][0]["what"]["reference"], "QuestionnaireResponse/t1/_history/7");
    assert_eq!(prov["entity"][0]["role"], "source");
    let cond = d.resources.iter().find(|r| r["resourceType"] == "Condition").unwrap();
    assert!(cond.get("extension").is_none(), "the asserter extension only takes a Device");
    let with_device = run(&qr);
    let cond = with_device.resources.iter().find(|r| r["resourceType"] == "Condition").unwrap();
    assert_eq!(cond["extension"][0]["valueReference"]["reference"], "Device/sdoh-gateway");
}

#[test]
fn extra_instruments_load_from_json() {
    let def = r#"{
        "id": "mini", "title": "Mini", "questionnaires": ["http://example.org/Questionnaire/mini"],
        "panel": { "code": "11111-1", "display": "Mini panel" },
        "items": [
            { "code": "22222-2", "display": "Any trouble paying bills?", "type": "boolean", "domains": ["financial-insecurity"] },
            { "code": "33333-3", "display": "Ride?", "type": "choice", "domains": ["transportation-insecurity"],
              "answers": [ { "code": "LA33-6", "display": "Yes", "positive": true }, { "code": "LA32-8", "display": "No" } ] }
        ]
    }"#;
    let set = Instruments::from_json_str(def).unwrap();
    let qr = json!({
        "resourceType": "QuestionnaireResponse", "id": "m1", "status": "completed",
        "questionnaire": "http://example.org/Questionnaire/mini|1",
        "subject": { "reference": "Patient/p" }, "authored": "2025-01-01T00:00:00Z",
        "item": [ { "linkId": "22222-2", "answer": [ { "valueBoolean": true } ] },
                  { "linkId": "33333-3", "answer": [ { "valueCoding": { "code": "LA33-6" } } ] } ]
    });
    let d = normalize_with(&qr, &set, &CTX).unwrap().unwrap();
    assert_eq!(d.instrument, "mini");
    assert!(d.resources.iter().any(|r| r["valueBoolean"] == true));
    assert!(d.resources.iter().any(|r| r["code"]["coding"][0]["code"] == "713458007"));
    assert_eq!(normalize_with(&case("ig-hvs-example"), &set, &CTX).unwrap(), None);

    let mut extended = Instruments::builtin().clone();
    extended.add_json_str(def).unwrap();
    assert!(extended.get("mini").is_some() && extended.get("prapare").is_some());
    assert!(extended.add_json_str(def).is_err(), "duplicate id");

    for bad in [
        "not json",
        r#"{ "id": "x", "title": "x", "panel": { "code": "1-1", "display": "p" }, "items": [ { "code": "2-2", "display": "q", "type": "choice", "domains": ["no-such-domain"], "answers": [ { "code": "LA1-1", "display": "a" } ] } ] }"#,
        r#"{ "id": "x", "title": "x", "panel": { "code": "1-1", "display": "p" }, "items": [ { "code": "2-2", "display": "q", "type": "choice", "domains": ["stress"], "answers": [] } ] }"#,
        r#"{ "id": "x", "title": "x", "panel": { "code": "1-1", "display": "p" }, "items": [], "computed": [ { "code": "3-3", "display": "c", "type": "quantity", "domains": ["stress"], "rule": { "kind": "sum", "items": ["9-9"], "positive_at_least": 1 } } ] }"#,
    ] {
        assert!(Instruments::from_json_str(bad).is_err(), "{bad}");
    }
}

#[test]
fn builtin_instruments_load() {
    let b = Instruments::builtin();
    let ids: Vec<&str> = b.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["hunger-vital-sign", "ahc-hrsn", "prapare"]);
    assert_eq!(b.domain("food-insecurity").unwrap().display, "Food Insecurity");
}

/// Retractions as `{resourceType, id}` objects, to compare ids with derived resources.
fn retraction_keys(d: &sdoh::Derived) -> Vec<Value> {
    d.retractions.iter().map(|r| json!({"resourceType": r.resource_type, "id": r.id})).collect()
}
