//! SQLite commits at full durability: the write lock is released at commit and one WAL fsync covers every commit
//! that finished before it, and nobody is told a commit happened before the fsync covering it is done.

mod common;

use common::TestDb;
use serde_json::json;
use store::{Precondition, SqliteDurability, Store};

async fn write_patient(store: &Store, id: &str) -> store::CommitTicket {
    let mut tx = store.begin().await.unwrap();
    tx.put(json!({"resourceType": "Patient", "id": id}), Precondition::MustNotExist).await.unwrap();
    tx.commit_visible().await.unwrap()
}

#[tokio::test]
async fn each_commit_is_synced_before_commit_returns() {
    let db = TestDb::sqlite().await;
    let store = db.store().await;
    let before = store.commit_sync_stats().expect("full durability syncs commits");
    let mut tx = store.begin().await.unwrap();
    tx.put(json!({"resourceType": "Patient", "id": "p1"}), Precondition::MustNotExist).await.unwrap();
    tx.commit().await.unwrap();
    let after = store.commit_sync_stats().unwrap();
    assert_eq!(after.commits, before.commits + 1);
    assert_eq!(after.syncs, before.syncs + 1, "commit() returned without an fsync covering it");
}

#[tokio::test]
async fn one_fsync_covers_every_commit_made_before_it() {
    let db = TestDb::sqlite().await;
    let store = db.store().await;
    let before = store.commit_sync_stats().unwrap();
    // Three transactions commit one after another without waiting for their fsync: each released the write lock.
    let tickets =
        [write_patient(&store, "a").await, write_patient(&store, "b").await, write_patient(&store, "c").await];
    // Visible to other connections at once, durable or not.
    assert!(store.read("Patient", "c").await.unwrap().is_some());
    assert_eq!(store.commit_sync_stats().unwrap().syncs, before.syncs, "nothing synced before anyone asked");
    for ticket in tickets {
        ticket.durable().await.unwrap();
    }
    let after = store.commit_sync_stats().unwrap();
    assert_eq!(after.commits, before.commits + 3);
    assert_eq!(after.syncs, before.syncs + 1, "the first fsync covered all three commits");
    // A later commit needs a fsync of its own.
    write_patient(&store, "d").await.durable().await.unwrap();
    assert_eq!(store.commit_sync_stats().unwrap().syncs, before.syncs + 2);
}

#[tokio::test]
async fn concurrent_writers_share_fsyncs_and_lose_nothing() {
    let db = TestDb::sqlite().await;
    let store = db.store().await;
    let before = store.commit_sync_stats().unwrap();
    let writers: Vec<_> = (0..64)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut tx = store.begin().await.unwrap();
                tx.put(json!({"resourceType": "Patient", "id": format!("w{n}")}), Precondition::MustNotExist)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let after = store.commit_sync_stats().unwrap();
    assert_eq!(after.commits - before.commits, 64);
    assert!(after.syncs - before.syncs <= 64 && after.syncs > before.syncs);
    // Reopened (a restart), every acknowledged commit is there.
    store.close().await;
    let reopened = db.store().await;
    for n in 0..64 {
        assert!(reopened.read("Patient", &format!("w{n}")).await.unwrap().is_some(), "w{n} lost");
    }
}

#[tokio::test]
async fn autocommit_writes_are_synced_too() {
    let db = TestDb::sqlite().await;
    let store = db.store().await;
    let before = store.commit_sync_stats().unwrap();
    store.add_client("registry loader", "registry", "Organization/registry").await.unwrap();
    let after = store.commit_sync_stats().unwrap();
    assert_eq!((after.commits, after.syncs), (before.commits + 1, before.syncs + 1));
}

#[tokio::test]
async fn normal_durability_and_postgres_do_not_sync_commits_themselves() {
    let db = TestDb::sqlite().await;
    let mut options = db.options();
    options.sqlite_durability = SqliteDurability::Normal;
    let store = Store::connect(&options).await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.commit_sync_stats(), None);
    write_patient(&store, "n1").await.durable().await.unwrap();
    assert!(store.read("Patient", "n1").await.unwrap().is_some());

    let pg = TestDb::postgres().await;
    let store = pg.store().await;
    assert_eq!(store.commit_sync_stats(), None);
    write_patient(&store, "pg1").await.durable().await.unwrap();
    assert!(store.read("Patient", "pg1").await.unwrap().is_some());
}
