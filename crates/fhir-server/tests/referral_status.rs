//! Referral status changes queue an `rri` job in the transaction of the write, for Tasks that came from an HL7 v2
//! REF only, never for the referring EHR's own update, whichever interaction (PUT, PATCH) changes the status.

mod common;

use common::TestDb;
use fhir_server::rest::referral_status::RRI_QUEUE;
use serde_json::{Value, json};

const SOURCE: &str = "https://sdoh-gateway.org/hl7v2/EPIC/CLINIC-1#REF-1";

/// Claims and completes every queued `rri` job, returning (id, version) of each.
async fn rri_jobs(store: &store::Store) -> Vec<(String, i64)> {
    let jobs = store.claim(RRI_QUEUE, 100, std::time::Duration::from_secs(60)).await.expect("claim");
    let mut named = Vec::new();
    for job in &jobs {
        store.complete(job).await.expect("complete");
        let payload: Value = serde_json::from_str(&job.payload).expect("payload");
        assert_eq!(payload["resourceType"], "Task");
        named.push((payload["id"].as_str().unwrap().to_owned(), payload["versionId"].as_i64().unwrap()));
    }
    named
}

fn task(id: &str, status: &str, source: Option<&str>, focus: &str) -> Value {
    let mut t = json!({
        "resourceType": "Task", "id": id, "status": status, "intent": "order",
        "focus": {"reference": format!("ServiceRequest/{focus}")},
        "for": {"reference": "Patient/p"},
    });
    if let Some(source) = source {
        t["meta"] = json!({"source": source});
    }
    t
}

async fn put(app: &common::TestApp, resource: &Value) {
    let uri = format!("/fhir/{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
    let reply = app.write("PUT", &uri, &[], resource).await;
    assert!(reply.status.is_success(), "PUT {uri}: {}", reply.json);
}

async fn status_changes_of_v2_referrals_queue_rri_jobs(db: TestDb) {
    let app = db.app().await;
    let sr = json!({"resourceType": "ServiceRequest", "id": "sr1", "status": "active", "intent": "order",
        "subject": {"reference": "Patient/p"}, "meta": {"source": SOURCE}});
    put(&app, &sr).await;

    // Created by the conversion: nothing to report yet. A write that keeps the status reports nothing.
    put(&app, &task("t1", "requested", Some(SOURCE), "sr1")).await;
    let mut noted = task("t1", "requested", Some(SOURCE), "sr1");
    noted["note"] = json!([{"text": "called"}]);
    put(&app, &noted).await;
    assert_eq!(rri_jobs(&app.store).await, []);

    // A CBO accepts, keeping the source it read: reported (version 3).
    put(&app, &task("t1", "accepted", Some(SOURCE), "sr1")).await;
    assert_eq!(rri_jobs(&app.store).await, [("t1".to_owned(), 3)]);

    // A client that drops meta: the focus ServiceRequest still names the REF.
    put(&app, &task("t1", "in-progress", None, "sr1")).await;
    assert_eq!(rri_jobs(&app.store).await, [("t1".to_owned(), 4)]);

    // JSON Patch of the status is a status change like any other.
    let operations = json!([{"op": "replace", "path": "/status", "value": "on-hold"}]);
    let patched = app.patch("/fhir/Task/t1", &[], &operations).await;
    assert!(patched.status.is_success(), "{}", patched.json);
    assert_eq!(rri_jobs(&app.store).await, [("t1".to_owned(), 5)]);

    // The conversion of a newer message from the same EHR (REF^I14) is its own update: not echoed.
    let i14 = "https://sdoh-gateway.org/hl7v2/EPIC/CLINIC-1#REF-2";
    put(&app, &task("t1", "cancelled", Some(i14), "sr1")).await;
    assert_eq!(rri_jobs(&app.store).await, []);

    // A Task that did not come from HL7 v2 (nor does its focus): nothing to send back.
    put(
        &app,
        &json!({"resourceType": "ServiceRequest", "id": "sr2", "status": "active", "intent": "order",
        "subject": {"reference": "Patient/p"}}),
    )
    .await;
    put(&app, &task("t2", "requested", None, "sr2")).await;
    put(&app, &task("t2", "accepted", Some("https://cbo.example.org/fhir"), "sr2")).await;
    assert_eq!(rri_jobs(&app.store).await, []);

    // A rolled-back transaction queues nothing.
    let mut tx = app.store.begin().await.unwrap();
    fhir_server::rest::write::put(&mut tx, task("t1", "completed", Some(SOURCE), "sr1"), store::Precondition::None)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(rri_jobs(&app.store).await, []);
}

for_each_backend!(status_changes_of_v2_referrals_queue_rri_jobs);
