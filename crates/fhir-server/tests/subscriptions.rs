//! Subscriptions through the REST router on SQLite and PostgreSQL: events are recorded with the change that causes
//! them, a CBO client's subscription only ever takes events about its own referrals (Tasks it owns or requested,
//! and the ServiceRequests those Tasks are about), and its filter on another owner is refused.

mod common;

use axum::{Extension, Router};
use common::{BASE, TestApp, TestDb};
use fhir_server::FhirState;
use fhir_server::auth::{Caller, Principal, Role};
use serde_json::{Value, json};
use store::Precondition;

for_each_backend!(a_cbo_subscription_takes_only_events_about_its_own_referrals, a_rolled_back_change_records_no_event);

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

async fn app_as(db: &TestDb, caller: Caller) -> TestApp {
    let store = db.store().await;
    let state = FhirState::new(store.clone(), BASE);
    TestApp { router: Router::new().nest("/fhir", fhir_server::router(state)).layer(Extension(caller)), store }
}

fn cbo(organization: &str) -> Caller {
    Caller::Client(Principal { client_id: "cbo-client".into(), role: Role::Cbo, organization: organization.into() })
}

fn subscription(topic: &str, filter: Option<&str>) -> Value {
    let mut s = json!({
        "resourceType": "Subscription", "reason": "referrals", "criteria": topic,
        "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"}
    });
    if let Some(f) = filter {
        s["_criteria"] =
            json!({"extension": [{"url": format!("{BACKPORT}backport-filter-criteria"), "valueString": f}]});
    }
    s
}

/// Moves a Subscription to `active` the way the delivery worker does after a handshake.
async fn activate(app: &TestApp, id: &str) {
    let current = app.store.read("Subscription", id).await.unwrap().unwrap();
    let mut resource: Value = serde_json::from_str(current.content.as_deref().unwrap()).unwrap();
    resource["status"] = json!("active");
    let mut tx = app.store.begin().await.unwrap();
    fhir_server::rest::write::put(&mut tx, resource, Precondition::Version(current.version_id)).await.unwrap();
    tx.commit().await.unwrap();
}

fn task(id: &str, owner: &str, focus: &str) -> Value {
    // A referral Task (code fulfill, focus a ServiceRequest): its owner is granted it and its context.
    json!({"resourceType": "Task", "id": id, "status": "requested", "intent": "order",
           "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
           "focus": {"reference": focus}, "requester": {"reference": "Organization/clinic"},
           "owner": {"reference": owner}})
}

async fn a_cbo_subscription_takes_only_events_about_its_own_referrals(db: TestDb) {
    let cbo_a = app_as(&db, cbo("Organization/cbo-a")).await;
    let system = app_as(&db, Caller::System).await;

    let forbidden = cbo_a
        .create(&subscription(
            "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task",
            Some("Task?owner=Organization/cbo-b"),
        ))
        .await;
    forbidden.outcome(403, "forbidden");

    let tasks =
        cbo_a.create_id(&subscription("http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task", None)).await;
    let requests = cbo_a
        .create_id(&subscription("http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Servicerequest", None))
        .await;
    let everything =
        system.create_id(&subscription("http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task", None)).await;
    let stored = cbo_a.get(&format!("/fhir/Subscription/{tasks}")).await.json;
    assert_eq!(stored["status"], "requested");
    for id in [&tasks, &requests, &everything] {
        activate(&cbo_a, id).await;
    }

    for (sr, task_id, owner) in [("sr-a", "task-a", "Organization/cbo-a"), ("sr-b", "task-b", "Organization/cbo-b")] {
        let reply = system
            .write(
                "PUT",
                &format!("/fhir/ServiceRequest/{sr}"),
                &[],
                &json!({"resourceType": "ServiceRequest",
                "id": sr, "status": "active", "intent": "order", "subject": {"reference": "Patient/p"}}),
            )
            .await;
        assert_eq!(reply.status.as_u16(), 201, "{}", reply.json);
        let reply = system
            .write("PUT", &format!("/fhir/Task/{task_id}"), &[], &task(task_id, owner, &format!("ServiceRequest/{sr}")))
            .await;
        assert_eq!(reply.status.as_u16(), 201, "{}", reply.json);
        let reply = system
            .write(
                "PUT",
                &format!("/fhir/ServiceRequest/{sr}"),
                &[],
                &json!({"resourceType": "ServiceRequest",
                "id": sr, "status": "completed", "intent": "order", "subject": {"reference": "Patient/p"}}),
            )
            .await;
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.json);
    }

    let focus_ids = |id: String| {
        let store = cbo_a.store.clone();
        async move {
            store
                .subscription_events(&id, 1, 100, 100)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.focus_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(focus_ids(tasks.clone()).await, ["task-a"], "CBO A never hears of CBO B's Task");
    assert_eq!(focus_ids(requests.clone()).await, ["sr-a"], "only the ServiceRequest of CBO A's Task");
    assert_eq!(focus_ids(everything.clone()).await, ["task-a", "task-b"], "the system's subscription sees all");

    let status = cbo_a.get(&format!("/fhir/Subscription/{tasks}/$status")).await;
    assert_eq!(status.status.as_u16(), 200, "{}", status.json);
    let params = &status.json["entry"][0]["resource"]["parameter"];
    assert_eq!(params[2]["valueCode"], "active");
    assert_eq!(params[4]["valueString"], "1");
}

async fn a_rolled_back_change_records_no_event(db: TestDb) {
    let app = app_as(&db, Caller::System).await;
    let id = app.create_id(&subscription("https://sdoh-gateway.org/fhir/SubscriptionTopic/new-referral", None)).await;
    activate(&app, &id).await;
    let mut tx = app.store.begin().await.unwrap();
    fhir_server::rest::write::put(&mut tx, task("t-rolled", "Organization/x", "ServiceRequest/s"), Precondition::None)
        .await
        .unwrap();
    assert_eq!(tx.subscription(&id).await.unwrap().unwrap().events_since_start, 1, "recorded inside the write");
    tx.rollback().await.unwrap();
    assert_eq!(app.store.subscription(&id).await.unwrap().unwrap().events_since_start, 0);
    let mut tx = app.store.begin().await.unwrap();
    fhir_server::rest::write::put(&mut tx, task("t-kept", "Organization/x", "ServiceRequest/s"), Precondition::None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let events = app.store.subscription_events(&id, 1, 10, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].number, events[0].focus_id.as_str(), events[0].focus_version), (1, "t-kept", 1));
}
