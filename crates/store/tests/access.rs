//! Access scoping in the store on both backends: grants decide what a scoped read returns, whatever the read.

mod common;

use common::TestDb;
use serde_json::json;
use store::{
    Cond, Grant, HistoryQuery, IndexEntry, IndexRow, Precondition, Scope, SearchQuery, Store, StoreError, ValueTest,
};

fn subject_row(patient: &str) -> IndexRow {
    IndexRow {
        param: "subject".into(),
        group: 0,
        component: 0,
        value: IndexEntry::Reference {
            target_type: Some("Patient".into()),
            target_id: Some(patient.into()),
            url: None,
            version: None,
            identifier_system: None,
            identifier_value: None,
        },
    }
}

async fn put(store: &Store, t: &str, id: &str, rows: &[IndexRow]) {
    let mut tx = store.begin().await.unwrap();
    tx.put(json!({"resourceType": t, "id": id}), Precondition::None).await.unwrap();
    tx.replace_index(t, id, rows).await.unwrap();
    tx.commit().await.unwrap();
}

fn grant(org: &str, t: &str, id: &str) -> Grant {
    Grant { organization: org.into(), resource_type: t.into(), id: id.into() }
}

async fn ids(store: &Store, query: SearchQuery) -> Vec<String> {
    store.search(&query).await.unwrap().resources.into_iter().map(|r| r.id).collect()
}

async fn grants_decide_every_scoped_read(db: TestDb) {
    let store = db.store().await;
    put(&store, "Patient", "p1", &[]).await;
    put(&store, "Patient", "p2", &[]).await;
    put(&store, "Observation", "o-shared", &[subject_row("p1")]).await;
    put(&store, "Observation", "o-private", &[subject_row("p1")]).await;
    let mut tx = store.begin().await.unwrap();
    let via_task = [grant("Organization/a", "Patient", "p1"), grant("Organization/a", "Observation", "o-shared")];
    tx.set_task_grants("t1", &via_task).await.unwrap();
    tx.commit().await.unwrap();

    let a = Scope::Organization("Organization/a".into());
    let b = Scope::Organization("Organization/b".into());
    // The service directory is readable by every scope; nothing else is without a grant.
    put(&store, "HealthcareService", "hs", &[]).await;
    assert!(store.read_as(&b, "HealthcareService", "hs").await.unwrap().is_some());
    let services =
        SearchQuery { resource_type: "HealthcareService".into(), count: 10, scope: b.clone(), ..Default::default() };
    assert_eq!(ids(&store, services).await, ["hs"]);
    assert!(store.read_as(&a, "Patient", "p1").await.unwrap().is_some());
    assert!(store.read_as(&a, "Patient", "p2").await.unwrap().is_none());
    assert!(store.read_as(&b, "Patient", "p1").await.unwrap().is_none());
    assert!(store.vread_as(&a, "Observation", "o-private", 1).await.unwrap().is_none());
    assert!(store.vread_as(&Scope::All, "Observation", "o-private", 1).await.unwrap().is_some());

    let all_obs = |scope: &Scope| SearchQuery {
        resource_type: "Observation".into(),
        count: 10,
        scope: scope.clone(),
        ..Default::default()
    };
    assert_eq!(ids(&store, all_obs(&a)).await, ["o-shared"]);
    assert!(ids(&store, all_obs(&b)).await.is_empty());
    assert_eq!(ids(&store, all_obs(&Scope::All)).await.len(), 2);
    // Reverse chaining cannot reveal what the scope hides: o-private is not a witness for a.
    let has_private = |scope: &Scope| SearchQuery {
        resource_type: "Patient".into(),
        clauses: vec![vec![Cond::Has {
            source_type: "Observation".into(),
            param: "subject".into(),
            conds: vec![vec![Cond::Id("o-private".into())]],
        }]],
        count: 10,
        scope: scope.clone(),
        ..Default::default()
    };
    assert_eq!(ids(&store, has_private(&Scope::All)).await, ["p1"]);
    assert!(ids(&store, has_private(&a)).await.is_empty());
    let by_subject = SearchQuery {
        resource_type: "Observation".into(),
        clauses: vec![vec![Cond::Match {
            param: "subject".into(),
            test: ValueTest::Reference { target_type: Some("Patient".into()), target_id: "p1".into() },
        }]],
        count: 10,
        scope: a.clone(),
        ..Default::default()
    };
    assert_eq!(ids(&store, by_subject).await, ["o-shared"]);

    let rev = store.revincluded(&a, "Observation", "subject", &[("Patient".into(), "p1".into())]).await.unwrap();
    assert_eq!(rev.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["o-shared"]);
    let inc = store.included(&b, "Observation", &["o-shared".into()], "subject", None).await.unwrap();
    assert!(inc.is_empty());
    let history = store.history(&HistoryQuery { limit: 100, scope: a.clone(), ..Default::default() }).await.unwrap();
    let mut seen: Vec<_> = history.iter().map(|h| h.resource.id.as_str()).collect();
    seen.sort();
    assert_eq!(seen, ["hs", "o-shared", "p1"]);
    let typed =
        HistoryQuery { resource_type: Some("Observation".into()), limit: 100, scope: a.clone(), ..Default::default() };
    let typed = store.history(&typed).await.unwrap();
    assert_eq!(typed.iter().map(|h| h.resource.id.as_str()).collect::<Vec<_>>(), ["o-shared"]);
    let newest = history.iter().map(|h| h.seq).max().unwrap();
    let older = HistoryQuery { before_seq: Some(newest), limit: 100, scope: a.clone(), ..Default::default() };
    assert_eq!(store.history(&older).await.unwrap().len(), 2, "paging by seq cursor works scoped");
    let later =
        HistoryQuery { since: Some(store::Timestamp::now()), limit: 100, scope: a.clone(), ..Default::default() };
    assert!(store.history(&later).await.unwrap().is_empty());

    // A Task's grants are replaced as a whole; grants made by creation stay.
    let mut tx = store.begin().await.unwrap();
    tx.insert_grants("", &[grant("Organization/a", "Patient", "p2")]).await.unwrap();
    tx.set_task_grants("t1", &[grant("Organization/a", "Patient", "p1")]).await.unwrap();
    assert!(!tx.visible(&a, "Observation", "o-shared").await.unwrap());
    assert!(tx.visible(&a, "Patient", "p2").await.unwrap());
    assert_eq!(tx.task_grants_on("Patient", "p1").await.unwrap(), [("Organization/a".to_owned(), "t1".to_owned())]);
    tx.commit().await.unwrap();
    assert!(store.read_as(&a, "Observation", "o-shared").await.unwrap().is_none());
}

async fn clients_authenticate_until_revoked(db: TestDb) {
    let store = db.store().await;
    let created = store.add_client("Food bank", "cbo", "Organization/fb").await.unwrap();
    let found = store.authenticate_client(&created.token).await.unwrap().expect("the token authenticates");
    assert_eq!((found.role.as_str(), found.organization.as_str()), ("cbo", "Organization/fb"));
    let (id, secret) = created.token.split_once('.').unwrap();
    assert!(store.authenticate_client(&format!("{id}.{secret}x")).await.unwrap().is_none());
    assert!(store.authenticate_client("garbage").await.unwrap().is_none());
    assert!(matches!(store.add_client("x", "superuser", "Organization/fb").await, Err(StoreError::Invalid(_))));
    assert!(matches!(store.add_client("x", "cbo", "Patient/1").await, Err(StoreError::Invalid(_))));
    let listed = store.list_clients().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(store.revoke_client(id).await.unwrap());
    assert!(!store.revoke_client(id).await.unwrap(), "revoking twice reports nothing to revoke");
    assert!(store.authenticate_client(&created.token).await.unwrap().is_none());
    assert!(store.list_clients().await.unwrap()[0].revoked.is_some());
}

for_each_backend!(grants_decide_every_scoped_read, clients_authenticate_until_revoked);
