//! Subscription delivery state on both backends: gap-free event numbers under concurrent writers, one delivery job
//! per subscription, the cursor, rolled-back events, listening and heartbeat selection.

mod common;

use common::TestDb;
use serde_json::json;
use store::{Precondition, Store, StoredResource, SubscriptionSpec, Timestamp};

for_each_backend!(
    events_are_numbered_without_gaps_and_flag_one_delivery,
    delivery_ends_only_when_caught_up_and_rolled_back_events_leave_nothing,
    only_active_or_erroring_subscriptions_listen_and_due_heartbeats_are_flagged_once,
);

fn spec(id: &str, status: &str) -> SubscriptionSpec {
    SubscriptionSpec {
        id: id.into(),
        topic: "urn:topic".into(),
        focus_type: "Task".into(),
        filters: vec!["Task?owner=Organization/a".into()],
        organization: Some("Organization/a".into()),
        status: status.into(),
        heartbeat_secs: None,
    }
}

async fn task(store: &Store, id: &str) -> StoredResource {
    let mut tx = store.begin().await.unwrap();
    let written = tx
        .put(json!({"resourceType": "Task", "id": id, "status": "requested", "intent": "order"}), Precondition::None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    written.resource
}

async fn active(store: &Store, id: &str) {
    let mut tx = store.begin().await.unwrap();
    assert!(!tx.sync_subscription(&spec(id, "active"), false).await.unwrap());
    tx.commit().await.unwrap();
}

async fn events_are_numbered_without_gaps_and_flag_one_delivery(db: TestDb) {
    let store = db.store().await;
    active(&store, "s1").await;
    let focus = task(&store, "t1").await;
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (store, focus) = (store.clone(), focus.clone());
        writers.spawn(async move {
            let mut got = Vec::new();
            for _ in 0..10 {
                let mut tx = store.begin().await.unwrap();
                got.push(tx.record_subscription_event("s1", &focus, Timestamp::now()).await.unwrap());
                tx.commit().await.unwrap();
            }
            got
        });
    }
    let mut all = Vec::new();
    while let Some(got) = writers.join_next().await {
        all.extend(got.unwrap());
    }
    let mut numbers: Vec<i64> = all.iter().map(|(n, _)| *n).collect();
    numbers.sort();
    assert_eq!(numbers, (1..=40).collect::<Vec<_>>());
    assert_eq!(all.iter().filter(|(_, queue)| *queue).count(), 1, "one delivery job for the subscription");
    let events = store.subscription_events("s1", 1, 40, 100).await.unwrap();
    assert_eq!(events.iter().map(|e| e.number).collect::<Vec<_>>(), (1..=40).collect::<Vec<_>>());
    assert_eq!(events[0].focus_id, "t1");
    let row = store.subscription("s1").await.unwrap().unwrap();
    assert_eq!((row.events_since_start, row.delivered_through, row.delivery_queued), (40, 0, true));
    assert_eq!(store.subscription_events("s1", 39, 40, 100).await.unwrap().len(), 2);
}

async fn delivery_ends_only_when_caught_up_and_rolled_back_events_leave_nothing(db: TestDb) {
    let store = db.store().await;
    active(&store, "s2").await;
    let focus = task(&store, "t2").await;
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.record_subscription_event("s2", &focus, Timestamp::now()).await.unwrap(), (1, true));
    assert_eq!(tx.record_subscription_event("s2", &focus, Timestamp::now()).await.unwrap(), (2, false));
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    tx.record_subscription_event("s2", &focus, Timestamp::now()).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(store.subscription("s2").await.unwrap().unwrap().events_since_start, 2);
    assert!(store.subscription_events("s2", 3, 3, 10).await.unwrap().is_empty());

    let mut tx = store.begin().await.unwrap();
    assert!(!tx.finish_subscription_delivery("s2").await.unwrap(), "two events are not delivered yet");
    tx.subscription_delivered("s2", 2, Timestamp::now()).await.unwrap();
    tx.subscription_delivered("s2", 1, Timestamp::now()).await.unwrap();
    assert!(tx.finish_subscription_delivery("s2").await.unwrap());
    tx.commit().await.unwrap();
    let row = store.subscription("s2").await.unwrap().unwrap();
    assert_eq!((row.delivered_through, row.delivery_queued), (2, false), "the cursor never moves back");

    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.record_subscription_event("s2", &focus, Timestamp::now()).await.unwrap(), (3, true));
    assert_eq!(tx.subscription_failed("s2").await.unwrap(), 1);
    assert_eq!(tx.subscription_failed("s2").await.unwrap(), 2);
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.subscription_delivered("s2", 3, Timestamp::now()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.subscription("s2").await.unwrap().unwrap().consecutive_failures, 0);
}

async fn only_active_or_erroring_subscriptions_listen_and_due_heartbeats_are_flagged_once(db: TestDb) {
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    assert!(tx.sync_subscription(&spec("new", "requested"), true).await.unwrap(), "a handshake is queued");
    assert!(!tx.sync_subscription(&spec("new", "requested"), true).await.unwrap(), "but only once");
    for (id, status) in [("a", "active"), ("e", "error"), ("o", "off")] {
        tx.sync_subscription(&spec(id, status), false).await.unwrap();
    }
    let mut beating = spec("hb", "active");
    beating.heartbeat_secs = Some(1);
    tx.sync_subscription(&beating, false).await.unwrap();
    let listening: Vec<String> =
        tx.listening_subscriptions("Task").await.unwrap().into_iter().map(|s| s.spec.id).collect();
    assert_eq!(listening, ["a", "e", "hb"]);
    assert!(tx.listening_subscriptions("Patient").await.unwrap().is_empty());
    tx.drop_subscription("a").await.unwrap();
    assert_eq!(tx.listening_subscriptions("Task").await.unwrap().len(), 2);
    tx.commit().await.unwrap();
    let new = store.subscription("new").await.unwrap().unwrap();
    assert!(new.handshake_pending && new.delivery_queued);
    assert_eq!(new.spec.filters, ["Task?owner=Organization/a"]);

    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.flag_due_heartbeats(Timestamp::now()).await.unwrap(), ["hb"]);
    assert!(tx.flag_due_heartbeats(Timestamp::now()).await.unwrap().is_empty(), "already queued");
    tx.commit().await.unwrap();
}
