//! Property test: normalize never panics, whatever JSON it is given.

use proptest::prelude::*;
use sdoh::{Context, normalize};
use serde_json::{Value, json};

const CTX: Context<'static> = Context { recorded: "2026-01-01T00:00:00Z", agent: "Device/sdoh-gateway" };

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        prop_oneof![
            Just("QuestionnaireResponse".to_owned()),
            Just("/88122-7".to_owned()),
            Just("88124-3".to_owned()),
            Just("LA28397-0".to_owned()),
            Just("LA19952-3".to_owned()),
            Just("http://loinc.org".to_owned()),
            Just("completed".to_owned()),
            Just("amended".to_owned()),
            Just("entered-in-error".to_owned()),
            ".{0,12}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("resourceType".to_owned()),
                    Just("id".to_owned()),
                    Just("status".to_owned()),
                    Just("subject".to_owned()),
                    Just("reference".to_owned()),
                    Just("authored".to_owned()),
                    Just("item".to_owned()),
                    Just("linkId".to_owned()),
                    Just("answer".to_owned()),
                    Just("valueCoding".to_owned()),
                    Just("valueInteger".to_owned()),
                    Just("code".to_owned()),
                    Just("system".to_owned()),
                    Just("questionnaire".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..8,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A QR skeleton with arbitrary items, so the deep paths are reached often.
fn arb_qr() -> impl Strategy<Value = Value> {
    (
        arb_json(),
        prop_oneof![Just("completed"), Just("amended"), Just("entered-in-error"), Just("stopped")],
        prop::option::of(prop_oneof![
            Just("http://hl7.org/fhir/us/sdoh-clinicalcare/Questionnaire/SDOHCC-QuestionnaireHungerVitalSign"),
            Just("http://loinc.org/q/96777-8"),
            Just("http://hl7.org/fhir/us/sdoh-clinicalcare/Questionnaire/SDOHCC-QuestionnairePRAPARE"),
        ]),
    )
        .prop_map(|(items, status, q)| {
            let mut qr = json!({
                "resourceType": "QuestionnaireResponse", "id": "p1", "status": status,
                "subject": { "reference": "Patient/p" }, "authored": "2025-01-01T00:00:00Z", "item": items
            });
            if let Some(q) = q {
                qr["questionnaire"] = json!(q);
            }
            qr
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_json(v in arb_json()) {
        let _ = normalize(&v, &CTX);
    }

    #[test]
    fn never_panics_on_arbitrary_strings(authored in "\\PC{0,40}", link in "\\PC{0,20}", code in "\\PC{0,12}") {
        let qr = json!({
            "resourceType": "QuestionnaireResponse", "id": "p1", "status": "completed",
            "questionnaire": "http://hl7.org/fhir/us/sdoh-clinicalcare/Questionnaire/SDOHCC-QuestionnaireHungerVitalSign",
            "subject": { "reference": "Patient/p" }, "authored": authored,
            "item": [{ "linkId": link, "answer": [{ "valueCoding": { "code": code } }] }]
        });
        let _ = normalize(&qr, &CTX);
    }

    #[test]
    fn never_panics_on_qr_shaped_json(qr in arb_qr()) {
        if let Ok(Some(d)) = normalize(&qr, &CTX) {
            // Whatever comes out is deterministic and well-formed enough to store.
            prop_assert_eq!(normalize(&qr, &CTX).unwrap().unwrap(), d.clone());
            for r in &d.resources {
                prop_assert!(r["resourceType"].is_string() && r["id"].is_string());
            }
            for r in &d.retractions {
                prop_assert!(!r.id.is_empty());
            }
        }
    }
}
