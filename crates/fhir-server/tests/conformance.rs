//! Round trip of the SDOH Clinical Care IG examples (`conformance/fhir/sdoh-cc/`) through create, update and read.

mod common;

use std::path::PathBuf;

use common::TestDb;
use serde_json::{Value, json};

fn folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../conformance/fhir/sdoh-cc")
}

fn fixtures() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(folder())
        .expect("conformance/fhir/sdoh-cc exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            let text = std::fs::read_to_string(&p).expect("readable fixture");
            (name, serde_json::from_str(&text).expect("fixture is JSON"))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The resource without the parts the server owns: `meta.versionId`/`meta.lastUpdated`, and the id when asked.
fn comparable(resource: &Value, keep_id: bool) -> Value {
    let mut r = resource.clone();
    if let Some(object) = r.as_object_mut() {
        if !keep_id {
            object.remove("id");
        }
        if let Some(meta) = object.get_mut("meta").and_then(Value::as_object_mut) {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            if meta.is_empty() {
                object.remove("meta");
            }
        }
    }
    r
}

#[test]
fn the_fixture_set_covers_the_required_examples() {
    let all = fixtures();
    let readme = std::fs::read_to_string(folder().join("README.md")).expect("README");
    let count = |t: &str| all.iter().filter(|(_, r)| r["resourceType"] == t).count();
    assert_eq!(count("QuestionnaireResponse"), 1);
    assert_eq!(count("Observation"), 5);
    assert_eq!(count("Condition"), 2);
    assert_eq!(count("Goal"), 1);
    assert_eq!(count("ServiceRequest"), 1);
    assert_eq!(count("Task"), 4);
    assert_eq!(count("Procedure"), 1);
    assert_eq!(count("Consent"), 1);
    assert_eq!(count("Group"), 1);
    for (name, resource) in &all {
        assert!(readme.contains(&format!("`{name}`")), "{name} has a _source row in the README");
        assert!(resource.get("_source").is_none(), "{name}: provenance belongs in the README");
        assert_eq!(format!("{}.json", resource["id"].as_str().unwrap_or("")), *name, "file is named by id");
    }
    // The IG's codes are kept exactly.
    let qr = &all.iter().find(|(_, r)| r["resourceType"] == "QuestionnaireResponse").expect("QR").1;
    let answers: Vec<&str> = qr["item"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["answer"][0]["valueCoding"]["code"].as_str())
        .collect();
    assert_eq!(answers, ["LA28397-0", "LA28397-0", "LA19952-3"]);
    let q = &all.iter().find(|(_, r)| r["resourceType"] == "Questionnaire").expect("Questionnaire").1;
    let options: Vec<&str> = q["item"][0]["answerOption"]
        .as_array()
        .expect("options")
        .iter()
        .filter_map(|o| o["valueCoding"]["code"].as_str())
        .collect();
    assert_eq!(options, ["LA28397-0", "LA6729-3", "LA28398-8", "LA15775-2"]);
}

async fn every_example_survives_create_and_read(db: TestDb) {
    let app = db.app_with(|s| s.max_body_bytes = 1024 * 1024).await;
    let all = fixtures();
    assert!(all.len() >= 17);
    for (name, resource) in &all {
        let t = resource["resourceType"].as_str().expect("type");
        let created = app.create(resource).await;
        assert_eq!(created.status, 201, "{name}: {}", created.json);
        let id = created.json["id"].as_str().expect("id");
        let read = app.get(&format!("/fhir/{t}/{id}")).await;
        assert_eq!(read.status, 200, "{name}");
        assert_eq!(comparable(&read.json, false), comparable(resource, false), "{name} after create");
        assert_eq!(read.json["meta"]["profile"], resource["meta"]["profile"], "{name}");

        // Under its IG id (update as create), the id survives too.
        let ig_id = resource["id"].as_str().expect("IG id");
        let put = app.write("PUT", &format!("/fhir/{t}/{ig_id}"), &[], resource).await;
        assert_eq!(put.status, 201, "{name}: {}", put.json);
        let read = app.get(&format!("/fhir/{t}/{ig_id}")).await;
        assert_eq!(comparable(&read.json, true), comparable(resource, true), "{name} after update-as-create");
        assert_eq!(read.json["meta"]["versionId"], json!("1"));
    }
    let history = app.get("/fhir/_history?_count=100").await;
    let entries = history.json["entry"].as_array().expect("history entries");
    let (first, later): (Vec<&Value>, Vec<&Value>) =
        entries.iter().partition(|e| e["resource"]["meta"]["versionId"] == json!("1"));
    assert_eq!(first.len(), all.len() * 2);
    // The only later versions are ServiceRequests following the status of a referral Task example.
    assert!(later.iter().all(|e| e["resource"]["resourceType"] == "ServiceRequest"), "{later:?}");
}

for_each_backend!(every_example_survives_create_and_read);
