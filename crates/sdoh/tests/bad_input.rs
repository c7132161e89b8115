//! Bad input: unknown instruments are `Ok(None)` (the caller stores the QR unnormalized and reports it), unknown
//! answer codes and missing elements are errors with clear reasons that name only element paths and LOINC item codes,
//! and an error never comes with part of a derivation.

use std::path::PathBuf;

use sdoh::{Context, NormalizeError, normalize};
use serde_json::{Value, json};

const CTX: Context<'static> = Context { recorded: "2026-01-01T00:00:00Z", agent: "Device/sdoh-gateway" };

fn case(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../conformance/sdoh/{name}.input.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Every answered item of a QR (depth first), as mutable references.
fn answered_items(v: &mut Value) -> Vec<&mut Value> {
    let mut out = Vec::new();
    if let Some(items) = v.get_mut("item").and_then(Value::as_array_mut) {
        for it in items {
            if it.get("answer").is_some() {
                out.push(it);
            } else {
                out.extend(answered_items(it));
            }
        }
    }
    out
}

#[test]
fn unknown_instrument_is_none() {
    // Unknown canonical, unknown items.
    let phq = json!({
        "resourceType": "QuestionnaireResponse", "id": "phq", "status": "completed",
        "questionnaire": "http://example.org/Questionnaire/phq-9|3",
        "subject": { "reference": "Patient/p" }, "authored": "2025-01-01",
        "item": [{ "linkId": "44250-9", "answer": [{ "valueCoding": { "system": "http://loinc.org", "code": "LA6568-5" } }] }]
    });
    assert_eq!(normalize(&phq, &CTX), Ok(None));
    // No canonical, no LOINC codes at all.
    let free = json!({
        "resourceType": "QuestionnaireResponse", "id": "free", "status": "completed",
        "subject": { "reference": "Patient/p" }, "authored": "2025-01-01",
        "item": [{ "linkId": "q1", "answer": [{ "valueString": "fine" }] }]
    });
    assert_eq!(normalize(&free, &CTX), Ok(None));
    // A foreign form that reuses one HVS question among three of its own is not taken over.
    let mixed = json!({
        "resourceType": "QuestionnaireResponse", "id": "mixed", "status": "completed",
        "subject": { "reference": "Patient/p" }, "authored": "2025-01-01",
        "item": [
            { "linkId": "88122-7", "answer": [{ "valueCoding": { "system": "http://loinc.org", "code": "LA28397-0" } }] },
            { "linkId": "44250-9", "answer": [{ "valueCoding": { "code": "LA6568-5" } }] },
            { "linkId": "44255-8", "answer": [{ "valueCoding": { "code": "LA6568-5" } }] },
            { "linkId": "44259-0", "answer": [{ "valueCoding": { "code": "LA6568-5" } }] }
        ]
    });
    assert_eq!(normalize(&mixed, &CTX), Ok(None));
}

#[test]
fn unknown_answer_code_names_the_item_code_only() {
    // For every instrument: an unknown code on the last answered item, after valid ones.
    for (name, item_code) in
        [("hvs-not-at-risk", "88123-5"), ("ahc-hrsn-all-negative", "95615-1"), ("prapare-all-negative", "93038-8")]
    {
        let mut qr = case(name);
        // A linkId carrying free text (here a fake name) must not leak into the error either.
        let mut items = answered_items(&mut qr);
        let last = items.pop().unwrap();
        last["linkId"] = json!(format!("Jane Roe answered {item_code}"));
        last["code"] = json!([{ "system": "http://loinc.org", "code": item_code }]);
        last["answer"] = json!([{ "valueCoding": { "system": "http://loinc.org", "code": "LA99999-9" } }]);
        let err = normalize(&qr, &CTX).unwrap_err();
        assert_eq!(
            err,
            NormalizeError::InvalidAnswer {
                link_id: item_code.to_owned(),
                reason: "answer code is not in the instrument's answer list"
            },
            "{name}"
        );
        let text = err.to_string();
        assert_eq!(
            text,
            format!("invalid answer to item {item_code}: answer code is not in the instrument's answer list")
        );
        assert!(!text.contains("LA99999-9") && !text.contains("Jane"), "{text}");
    }
}

#[test]
fn decline_code_an_instrument_does_not_define_is_an_invalid_answer() {
    // The AHC HRSN core questions offer no "choose not to answer" option (see conformance/sdoh/README.md).
    let mut qr = case("ahc-hrsn-all-negative");
    let items = answered_items(&mut qr);
    let food = items.into_iter().find(|i| i["linkId"] == "/96777-8/88122-7").unwrap();
    food["answer"][0]["valueCoding"]["code"] = json!("LA30122-8");
    assert!(matches!(
        normalize(&qr, &CTX),
        Err(NormalizeError::InvalidAnswer { link_id, .. }) if link_id == "88122-7"
    ));
}

#[test]
fn missing_or_unusable_subject_is_an_error() {
    let want = Err(NormalizeError::MissingElement { path: "QuestionnaireResponse.subject" });
    for subject in [
        None,
        Some(json!({})),
        Some(json!({ "reference": "" })),
        Some(json!({ "display": "Jane Roe" })),
        Some(json!("Patient/p")),
    ] {
        for name in ["ig-hvs-example", "ahc-hrsn-food", "prapare-core"] {
            let mut qr = case(name);
            match &subject {
                None => {
                    qr.as_object_mut().unwrap().remove("subject");
                }
                Some(s) => qr["subject"] = s.clone(),
            }
            assert_eq!(normalize(&qr, &CTX), want, "{name} {subject:?}");
        }
    }
}

#[test]
fn not_a_questionnaire_response() {
    let qr = case("ig-hvs-example");
    let mut no_type = qr.clone();
    no_type.as_object_mut().unwrap().remove("resourceType");
    let mut lower = qr.clone();
    lower["resourceType"] = json!("questionnaireresponse");
    let mut questionnaire = qr.clone();
    questionnaire["resourceType"] = json!("Questionnaire");
    let bundle = json!({ "resourceType": "Bundle", "type": "collection", "entry": [{ "resource": qr }] });
    for bad in [
        json!(null),
        json!("QuestionnaireResponse"),
        json!([qr]),
        json!({ "resourceType": "Patient", "id": "p" }),
        no_type,
        lower,
        questionnaire,
        bundle,
    ] {
        assert_eq!(normalize(&bad, &CTX), Err(NormalizeError::NotAQuestionnaireResponse), "{bad}");
    }
}

/// The API returns `Result<Option<Derived>, _>`, so an error cannot carry resources; this pins that the error is
/// found before anything is returned even when it sits in the last item, and that the same QR with the defect
/// repaired derives the full set (the error was not a truncated success).
#[test]
fn nothing_partial_on_error() {
    for (name, item_code, good) in [
        ("ahc-hrsn-food", "95615-1", "LA6270-8"),
        ("prapare-core", "93038-8", "LA13902-4"),
        ("hvs-at-risk", "88123-5", "LA6729-3"),
    ] {
        let full = normalize(&case(name), &CTX).unwrap().unwrap();
        let with_last_answer = |answer: Value| {
            let mut qr = case(name);
            let mut items = answered_items(&mut qr);
            let last = items.pop().unwrap();
            assert!(last["linkId"].as_str().unwrap().ends_with(item_code), "{name}");
            last["answer"] = answer;
            qr
        };
        let coding = |code: &str| json!({ "valueCoding": { "system": "http://loinc.org", "code": code } });
        // An unknown code, several answers to a single-answer item, a wrong value type: all fail as a whole.
        for bad in [json!([coding("LA00000-0")]), json!([coding(good), coding(good)]), json!([{ "valueString": good }])]
        {
            let qr = with_last_answer(bad.clone());
            assert!(matches!(normalize(&qr, &CTX), Err(NormalizeError::InvalidAnswer { .. })), "{name} {bad}");
        }
        let repaired = with_last_answer(json!([coding(good)]));
        assert_eq!(normalize(&repaired, &CTX).unwrap().unwrap(), full, "{name}: repaired QR derives everything");
    }
}

#[test]
fn other_missing_elements_name_their_path() {
    for (field, path) in [
        ("id", "QuestionnaireResponse.id"),
        ("status", "QuestionnaireResponse.status"),
        ("authored", "QuestionnaireResponse.authored"),
    ] {
        let mut qr = case("ahc-hrsn-food");
        qr.as_object_mut().unwrap().remove(field);
        let err = normalize(&qr, &CTX).unwrap_err();
        assert_eq!(err, NormalizeError::MissingElement { path });
        assert_eq!(err.to_string(), format!("missing required element {path}"));
    }
    let mut qr = case("ahc-hrsn-food");
    qr["item"] = json!({ "linkId": "x" });
    assert!(matches!(
        normalize(&qr, &CTX),
        Err(NormalizeError::InvalidElement { path: "QuestionnaireResponse.item", .. })
    ));
}
