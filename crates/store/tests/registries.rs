//! Registry rows and export rows on both backends: the change sequence is commit order even under concurrent
//! writers, feed and membership paging, and the per-client export limit holds under concurrent kick-offs.

mod common;

use std::collections::HashSet;

use common::TestDb;
use store::{ExportStatus, MemberQuery, NewExport, RegistryMember, Timestamp};

for_each_backend!(
    concurrent_changes_get_distinct_sequences_in_commit_order,
    members_page_by_sequence_and_by_patient,
    the_export_limit_holds_under_concurrent_kick_offs,
    key_fingerprints_and_due_evaluations_are_taken_once,
);

fn member(patient: &str, is_member: bool) -> RegistryMember {
    RegistryMember {
        registry_id: "diabetes".into(),
        patient_id: patient.into(),
        pseudonym: format!("pseudo-{patient}"),
        member: is_member,
        period_start: Some("2020-01-01".into()),
        period_end: None,
        inactive: false,
        record: is_member.then(|| format!("{{\"id\":\"{patient}\"}}")),
        seq: 0,
        changed: Timestamp(0),
    }
}

async fn concurrent_changes_get_distinct_sequences_in_commit_order(db: TestDb) {
    let store = db.store().await;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..24 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut tx = store.begin().await.unwrap();
            let seq = tx.put_registry_member(&member(&format!("p{}", n % 8), true)).await.unwrap();
            tx.commit().await.unwrap();
            seq
        });
    }
    let mut seqs = HashSet::new();
    while let Some(seq) = tasks.join_next().await {
        assert!(seqs.insert(seq.unwrap()), "a sequence number was handed out twice");
    }
    // Eight patients, each row holding the sequence of its last change; together they are the newest eight.
    let rows = store
        .registry_members(&MemberQuery {
            registry_id: "diabetes".into(),
            after_seq: Some(0),
            limit: 100,
            ..MemberQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 8);
    let max = *seqs.iter().max().unwrap();
    assert_eq!(max, 24, "sequences are dense: 1..=24");
    let mut got: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    got.sort();
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*got.last().unwrap(), max);
}

async fn members_page_by_sequence_and_by_patient(db: TestDb) {
    let store = db.store().await;
    for (patient, is_member) in [("p3", true), ("p1", true), ("p2", false), ("p4", true)] {
        let mut tx = store.begin().await.unwrap();
        tx.put_registry_member(&member(patient, is_member)).await.unwrap();
        tx.commit().await.unwrap();
    }
    let query = |after_seq, after_patient: Option<&str>, members_only| MemberQuery {
        registry_id: "diabetes".into(),
        after_seq,
        after_patient: after_patient.map(str::to_owned),
        members_only,
        limit: 2,
        ..MemberQuery::default()
    };
    let page = store.registry_members(&query(Some(0), None, false)).await.unwrap();
    assert_eq!(page.iter().map(|m| m.patient_id.as_str()).collect::<Vec<_>>(), ["p3", "p1"]);
    let page = store.registry_members(&query(Some(page[1].seq), None, false)).await.unwrap();
    assert_eq!(page.iter().map(|m| m.patient_id.as_str()).collect::<Vec<_>>(), ["p2", "p4"]);
    assert!(page[0].record.is_none() && !page[0].member);
    let page = store.registry_members(&query(None, None, true)).await.unwrap();
    assert_eq!(page.iter().map(|m| m.patient_id.as_str()).collect::<Vec<_>>(), ["p1", "p3"]);
    let page = store.registry_members(&query(None, Some("p3"), true)).await.unwrap();
    assert_eq!(page.iter().map(|m| m.patient_id.as_str()).collect::<Vec<_>>(), ["p4"]);
    assert_eq!(store.registry_member_count("diabetes", None).await.unwrap(), 3);
    let future = Timestamp(Timestamp::now().micros() + 60_000_000);
    assert_eq!(store.registry_member_count("diabetes", Some(future)).await.unwrap(), 0);
    assert_eq!(store.registry_member_count("ckd", None).await.unwrap(), 0);
}

async fn the_export_limit_holds_under_concurrent_kick_offs(db: TestDb) {
    let store = db.store().await;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..6 {
        let store = store.clone();
        tasks.spawn(async move {
            let export = NewExport {
                id: format!("e{n}"),
                client_id: "client-a".into(),
                request: "r".into(),
                params: "{}".into(),
                transaction_time: Timestamp::now(),
            };
            let mut tx = store.begin().await.unwrap();
            let accepted = tx.insert_export(&export, 2).await.unwrap();
            tx.commit().await.unwrap();
            accepted
        });
    }
    let mut accepted = 0;
    while let Some(ok) = tasks.join_next().await {
        accepted += usize::from(ok.unwrap());
    }
    assert_eq!(accepted, 2, "exactly the limit is accepted");
    // Finishing one frees a slot; a cancelled export leaves when its time comes.
    let ids: Vec<String> = (0..6).map(|n| format!("e{n}")).collect();
    let mut live = Vec::new();
    for id in &ids {
        if let Some(e) = store.export(id).await.unwrap() {
            assert_eq!(e.status, ExportStatus::Queued);
            live.push(e.id);
        }
    }
    assert!(store.update_export(&live[0], ExportStatus::Completed, None, Some("{}"), None, None).await.unwrap());
    assert!(
        !store.update_export(&live[0], ExportStatus::Running, None, None, None, None).await.unwrap(),
        "finished stays finished"
    );
    let mut tx = store.begin().await.unwrap();
    let again = NewExport {
        id: "e9".into(),
        client_id: "client-a".into(),
        request: "r".into(),
        params: "{}".into(),
        transaction_time: Timestamp::now(),
    };
    assert!(tx.insert_export(&again, 2).await.unwrap());
    tx.commit().await.unwrap();
    assert!(store.cancel_export(&live[1], Timestamp(0)).await.unwrap());
    assert!(
        !store.update_export(&live[1], ExportStatus::Running, None, None, None, None).await.unwrap(),
        "a cancelled export does not run"
    );
    assert_eq!(store.expired_exports(Timestamp::now()).await.unwrap(), vec![live[1].clone()]);
    store.delete_export(&live[1]).await.unwrap();
    assert!(store.export(&live[1]).await.unwrap().is_none());
}

async fn key_fingerprints_and_due_evaluations_are_taken_once(db: TestDb) {
    let store = db.store().await;
    for (fingerprint, changed) in [("k1", true), ("k1", false), ("k2", true)] {
        let mut tx = store.begin().await.unwrap();
        assert_eq!(tx.set_registry_fingerprint("diabetes", fingerprint).await.unwrap(), changed, "{fingerprint}");
        tx.commit().await.unwrap();
    }
    let mut tx = store.begin().await.unwrap();
    assert!(!tx.take_registry_evaluation("diabetes", Timestamp(0)).await.unwrap(), "not due yet");
    tx.commit().await.unwrap();
    // Due: the last evaluation was queued before now; whoever takes it moves it past `due_before`.
    let due_before = Timestamp(Timestamp::now().micros() + 1);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut tx = store.begin().await.unwrap();
            let taken = tx.take_registry_evaluation("diabetes", due_before).await.unwrap();
            tx.commit().await.unwrap();
            taken
        });
    }
    let mut taken = 0;
    while let Some(t) = tasks.join_next().await {
        taken += usize::from(t.unwrap());
    }
    assert_eq!(taken, 1, "one replica takes a due evaluation");
}
