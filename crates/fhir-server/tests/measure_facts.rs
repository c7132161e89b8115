//! Materialized measure facts (`measure_facts`) on both backends: the row of each resource follows its creates,
//! updates (REST PUT and PATCH, a screening turning negative, a merge), deletes and Bundles in the write's own
//! transaction; measures from the rows equal those from a full document scan; an upgraded database whose
//! resources predate the table is filled once by the backfill.

mod common;

use std::collections::BTreeMap;

use common::{TestApp, TestDb};
use fhir_server::measures::facts::{self, Fact, FactsBuilder};
use sdoh::measures::{HrsnDomain, PatientFacts};
use serde_json::{Value, json};
use store::{FactCursor, Store};

const SDOHCC: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes";

macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::TestDb::sqlite().await).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::TestDb::postgres().await).await })*
        }
    };
}

for_each_backend!(
    fact_rows_follow_creates_updates_merges_and_deletes,
    measures_from_fact_rows_equal_a_document_scan,
    an_upgraded_database_is_backfilled_once,
);

/// Every fact row, by (type, id), decoded.
async fn rows(store: &Store) -> BTreeMap<(String, String), Fact> {
    let mut all = BTreeMap::new();
    let mut cursor = FactCursor::default();
    loop {
        // A small page, so paging itself is exercised.
        let types = ["Patient", "Coverage", "Encounter", "Observation", "ServiceRequest", "Task"];
        let (page, next) = store.scan_facts(&types, &cursor, 3).await.unwrap();
        for (id, payload) in page.rows() {
            let fact: Fact = serde_json::from_str(payload).unwrap();
            assert!(all.insert((page.resource_type.clone(), id.to_owned()), fact).is_none(), "each row once");
        }
        match next {
            Some(after) => cursor = after,
            None => return all,
        }
    }
}

async fn row(store: &Store, resource_type: &str, id: &str) -> Option<Fact> {
    rows(store).await.remove(&(resource_type.to_owned(), id.to_owned()))
}

/// The facts as the measures built them before they were materialized: every live document of the fact types.
async fn facts_from_documents(store: &Store) -> Vec<PatientFacts> {
    let types = ["Patient", "Coverage", "Encounter", "Observation", "ServiceRequest", "Task"];
    let mut builder = FactsBuilder::new(None);
    let mut cursor = store::ScanCursor::default();
    loop {
        let (page, next) = store.scan_types(&types, &cursor, 50).await.unwrap();
        for stored in page {
            let resource: Value = serde_json::from_str(stored.content.as_deref().unwrap()).unwrap();
            builder.add_resource(&resource);
        }
        match next {
            Some(after) => cursor = after,
            None => return builder.finish(),
        }
    }
}

fn days(date: &str) -> i32 {
    use chrono::Datelike;
    sdoh::measures::parse_iso_date(date).unwrap().num_days_from_ce()
}

fn screening(id: &str, patient: &str, day: &str, positive: bool) -> Value {
    let mut observation = json!({"resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": SDOHCC, "code": "food-insecurity"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "88122-7"}]},
        "subject": {"reference": format!("Patient/{patient}")}, "effectiveDateTime": day});
    if positive {
        observation["interpretation"] = json!([{"coding": [{"code": "POS"}]}]);
    }
    observation
}

async fn put(app: &TestApp, resource: &Value) {
    let uri = format!("/fhir/{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
    let reply = app.write("PUT", &uri, &[], resource).await;
    assert!(reply.status.is_success(), "{uri}: {} {}", reply.status, reply.json);
}

async fn fact_rows_follow_creates_updates_merges_and_deletes(db: TestDb) {
    let app = db.app().await;
    let store = &app.store;
    put(&app, &json!({"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1980-06-01"})).await;
    put(&app, &json!({"resourceType": "Patient", "id": "p2", "gender": "male"})).await;
    put(&app, &screening("o1", "p1", "2026-01-15", true)).await;
    assert_eq!(
        row(store, "Observation", "o1").await,
        Some(Fact::Screening {
            patient: "p1".into(),
            day: days("2026-01-15"),
            positive: true,
            domains: vec![HrsnDomain::Food]
        })
    );
    // A screening turning negative.
    put(&app, &screening("o1", "p1", "2026-01-15", false)).await;
    assert!(matches!(row(store, "Observation", "o1").await, Some(Fact::Screening { positive: false, .. })));
    // A version that no longer contributes (no SDOHCC category) leaves no row; neither does an ordinary lab.
    put(
        &app,
        &json!({"resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"text": "glucose"}, "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-01-15"}),
    )
    .await;
    assert_eq!(row(store, "Observation", "o1").await, None);
    // A PATCH goes through the same path.
    put(
        &app,
        &json!({"resourceType": "Encounter", "id": "e1", "status": "finished",
        "subject": {"reference": "Patient/p1"}, "period": {"start": "2026-02-01T09:00:00Z"}}),
    )
    .await;
    assert_eq!(
        row(store, "Encounter", "e1").await,
        Some(Fact::Encounter { patient: "p1".into(), day: days("2026-02-01") })
    );
    let reply = app
        .patch("/fhir/Encounter/e1", &[], &json!([{"op": "replace", "path": "/status", "value": "cancelled"}]))
        .await;
    assert!(reply.status.is_success(), "{}", reply.json);
    assert_eq!(row(store, "Encounter", "e1").await, None, "a cancelled encounter never happened");
    // A delete removes the row.
    put(
        &app,
        &json!({"resourceType": "Coverage", "id": "c1", "status": "active", "order": 1,
        "beneficiary": {"reference": "Patient/p2"}, "type": {"text": "Medicaid"}}),
    )
    .await;
    assert!(row(store, "Coverage", "c1").await.is_some());
    assert!(app.send("DELETE", "/fhir/Coverage/c1", &[], None).await.status.is_success());
    assert_eq!(row(store, "Coverage", "c1").await, None);
    // An A40-style merge: the merged-away Patient's row becomes its link, and its data goes to the survivor.
    put(&app, &screening("o2", "p2", "2026-01-20", true)).await;
    put(
        &app,
        &json!({"resourceType": "Patient", "id": "p2", "active": false,
        "link": [{"other": {"reference": "Patient/p1"}, "type": "replaced-by"}]}),
    )
    .await;
    assert_eq!(row(store, "Patient", "p2").await, Some(Fact::Merged { survivor: "p1".into() }));
    // A referral whose Task completes (in a transaction Bundle).
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "ServiceRequest", "id": "sr1", "status": "active", "intent": "order",
            "category": [{"coding": [{"system": SDOHCC, "code": "food-insecurity"}]}],
            "subject": {"reference": "Patient/p1"}, "authoredOn": "2026-01-21"},
         "request": {"method": "PUT", "url": "ServiceRequest/sr1"}},
        {"resource": {"resourceType": "Task", "id": "t1", "status": "requested", "intent": "order",
            "focus": {"reference": "ServiceRequest/sr1"}, "for": {"reference": "Patient/p1"},
            "authoredOn": "2026-01-21"},
         "request": {"method": "PUT", "url": "Task/t1"}}
    ]});
    let reply = app.write("POST", "/fhir", &[], &bundle).await;
    assert!(reply.status.is_success(), "{}", reply.json);
    assert_eq!(
        row(store, "Task", "t1").await,
        Some(Fact::Task { request: "sr1".into(), authored: Some(days("2026-01-21")), completed: None })
    );
    for status in ["accepted", "in-progress", "completed"] {
        let mut task = app.get("/fhir/Task/t1").await.json;
        task["status"] = json!(status);
        if status == "completed" {
            task["executionPeriod"] = json!({"end": "2026-02-03T12:00:00Z"});
        }
        put(&app, &task).await;
    }
    assert_eq!(
        row(store, "Task", "t1").await,
        Some(Fact::Task {
            request: "sr1".into(),
            authored: Some(days("2026-01-21")),
            completed: Some(days("2026-02-03"))
        })
    );

    let measured = facts::load_facts(store, None).await.unwrap();
    assert_eq!(measured, facts_from_documents(store).await);
    assert_eq!(measured.len(), 1, "the merged-away patient counts as its survivor");
    let survivor = &measured[0];
    assert_eq!(survivor.screenings.len(), 1, "o1 no longer screens; o2 moved to the survivor");
    assert!(survivor.screenings[0].positive);
    assert!(survivor.encounters.is_empty());
    assert_eq!(survivor.referrals.len(), 1);
    assert!(survivor.referrals[0].completed.is_some());
}

/// A population with every kind of fact, some written in bulk (`create_all`, as the workers and the seeder do),
/// some one by one, then changed and partly deleted.
async fn write_population(store: &Store, patients: usize) {
    let food = json!([{"coding": [{"system": SDOHCC, "code": "food-insecurity"}]}]);
    let housing = json!([{"coding": [{"system": SDOHCC, "code": "housing-instability"}]}]);
    let mut bulk = Vec::new();
    for n in 0..patients {
        let p = format!("pat-{n:04}");
        let mut patient = json!({"resourceType": "Patient", "id": p, "gender": (["female", "male", "unknown"][n % 3]),
            "birthDate": format!("{}-0{}-1{}", 1940 + n % 60, 1 + n % 9, n % 10),
            "address": [{"use": "home", "district": (["Alpha", "Beta"][n % 2])}],
            "communication": [{"language": {"coding": [{"code": (["en", "es"][n % 2])}]}, "preferred": true}]});
        if n % 17 == 5 {
            patient["link"] =
                json!([{"other": {"reference": format!("Patient/pat-{:04}", n - 1)}, "type": "replaced-by"}]);
        }
        bulk.push(patient);
        bulk.push(json!({"resourceType": "Coverage", "id": format!("cov-{n}"), "status": "active", "order": n % 2,
            "beneficiary": {"reference": format!("Patient/{p}")}, "type": {"text": (["Medicaid", "Medicare", "Private"][n % 3])}}));
        for e in 0..(n % 3) {
            bulk.push(json!({"resourceType": "Encounter", "id": format!("enc-{n}-{e}"),
                "status": (["finished", "planned", "in-progress"][(n + e) % 3]),
                "subject": {"reference": format!("Patient/{p}")}, "period": {"start": format!("2026-0{}-1{e}", 1 + n % 3)}}));
        }
        if n % 2 == 0 {
            let mut obs = json!({"resourceType": "Observation", "id": format!("obs-{n}"), "status": "final",
                "category": if n % 4 == 0 { food.clone() } else { housing.clone() },
                "subject": {"reference": format!("Patient/{p}")}, "effectiveDateTime": format!("2026-02-0{}", 1 + n % 9)});
            if n % 3 == 0 {
                obs["interpretation"] = json!([{"coding": [{"code": "POS"}]}]);
            }
            bulk.push(obs);
        }
        if n % 3 == 0 {
            bulk.push(json!({"resourceType": "ServiceRequest", "id": format!("sr-{n}"), "status": "active",
                "intent": "order", "category": food.clone(), "subject": {"reference": format!("Patient/{p}")},
                "authoredOn": "2026-02-10"}));
            let mut task = json!({"resourceType": "Task", "id": format!("task-{n}"), "status": "requested",
                "intent": "order", "focus": {"reference": format!("ServiceRequest/sr-{n}")},
                "for": {"reference": format!("Patient/{p}")}, "authoredOn": "2026-02-10"});
            if n % 2 == 0 {
                task["status"] = json!("completed");
                task["executionPeriod"] = json!({"end": "2026-03-01"});
            }
            bulk.push(task);
        }
    }
    let mut tx = store.begin().await.unwrap();
    fhir_server::rest::write::create_all(&mut tx, bulk).await.unwrap();
    tx.commit().await.unwrap();
    // Changes one by one: screenings turning negative, a coverage cancelled, an encounter deleted.
    let mut tx = store.begin().await.unwrap();
    for n in (0..patients).step_by(6) {
        let stored = tx.read("Observation", &format!("obs-{n}")).await.unwrap().unwrap();
        let mut obs: Value = serde_json::from_str(stored.content.as_deref().unwrap()).unwrap();
        obs.as_object_mut().unwrap().remove("interpretation");
        fhir_server::rest::write::put(&mut tx, obs, store::Precondition::None).await.unwrap();
    }
    for n in (1..patients).step_by(7) {
        let stored = tx.read("Coverage", &format!("cov-{n}")).await.unwrap().unwrap();
        let mut coverage: Value = serde_json::from_str(stored.content.as_deref().unwrap()).unwrap();
        coverage["status"] = json!("cancelled");
        fhir_server::rest::write::put(&mut tx, coverage, store::Precondition::None).await.unwrap();
    }
    for n in (2..patients).step_by(9) {
        fhir_server::rest::write::delete(&mut tx, "Encounter", &format!("enc-{n}-0"), store::Precondition::None)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn measures_from_fact_rows_equal_a_document_scan(db: TestDb) {
    let store = db.store().await;
    write_population(&store, 120).await;
    let from_rows = facts::load_facts(&store, None).await.unwrap();
    let from_documents = facts_from_documents(&store).await;
    assert_eq!(from_rows, from_documents);
    assert!(from_rows.len() > 100);
    assert!(from_rows.iter().any(|f| !f.referrals.is_empty() && !f.screenings.is_empty() && f.payer.is_some()));
    let measures = sdoh::measures::MeasureSet::builtin();
    let quarter: sdoh::measures::Period = "2026-Q1".parse().unwrap();
    let cells = |facts: &[PatientFacts]| sdoh::measures::evaluate(measures.definitions(), facts, &[quarter], &[]);
    assert_eq!(format!("{:?}", cells(&from_rows)), format!("{:?}", cells(&from_documents)));
}

async fn an_upgraded_database_is_backfilled_once(db: TestDb) {
    let store = db.store().await;
    write_population(&store, 60).await;
    let expected = facts_from_documents(&store).await;
    // The database as it was before migration 0010: resources, no fact rows, and the marker the migration leaves.
    store::testing::execute(&store, "DELETE FROM measure_facts").await.unwrap();
    store::testing::execute(&store, "INSERT INTO measure_facts_backfill (pending) VALUES (1)").await.unwrap();
    assert!(facts::load_facts(&store, None).await.unwrap().is_empty());
    let filled = facts::backfill(&store).await.unwrap();
    assert!(filled > 60, "{filled} rows");
    assert_eq!(facts::load_facts(&store, None).await.unwrap(), expected);
    assert_eq!(facts::backfill(&store).await.unwrap(), 0, "once only");
    // A fresh database: the marker is there, but there is nothing to fill.
    let fresh = TestDb::sqlite().await;
    let fresh = fresh.store().await;
    assert_eq!(facts::backfill(&fresh).await.unwrap(), 0);
}
