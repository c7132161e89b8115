//! The store test suite, run identically against an SQLite file and a PostgreSQL schema.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestDb;
use serde_json::{Value, json};
use store::{Backoff, FailOutcome, HistoryQuery, JobState, NewJob, Precondition, StoreError};
use store::{JournalOutcome, JournalQuery, JournalStatus, NewMessage};

for_each_backend!(
    create_read_update_and_versions,
    create_only_and_version_preconditions_fail_cleanly,
    bulk_creates_write_versions_and_history_and_refuse_a_taken_id,
    concurrent_writers_to_one_resource_exactly_one_wins,
    delete_is_logical_and_history_keeps_every_version,
    history_filters_and_pages,
    a_rolled_back_transaction_leaves_nothing_behind,
    jobs_enqueue_claim_complete,
    failed_jobs_retry_then_dead_letter,
    an_expired_lease_is_claimed_again_and_the_old_holder_cannot_complete,
    many_claimers_on_many_pools_never_share_a_job_and_lose_none,
    invalid_resources_are_refused,
    journal_stores_once_queues_a_job_and_lists_without_bodies,
    journal_status_and_reprocess,
    outbound_log_follows_its_jobs_transactions,
    scans_read_every_live_resource_of_a_type_by_key,
    read_many_sees_tombstones_and_the_transactions_own_writes,
    multi_type_scans_read_every_live_resource_of_the_types_once,
    jobs_queued_in_bulk_keep_their_order_and_complete_together,
    background_checkpoints_copy_the_wal_into_the_database,
    claiming_from_an_idle_queue_leaves_the_writer_to_others,
);

async fn read_many_sees_tombstones_and_the_transactions_own_writes(db: TestDb) {
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    for id in ["a", "b", "gone"] {
        tx.put(patient(id, "Alpha"), Precondition::MustNotExist).await.unwrap();
    }
    tx.delete("Patient", "gone", Precondition::None).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    tx.put(patient("new", "Beta"), Precondition::MustNotExist).await.unwrap();
    let many: Vec<String> = (0..450).map(|n| format!("absent-{n}")).collect();
    let mut keys: Vec<(&str, &str)> = many.iter().map(|id| ("Patient", id.as_str())).collect();
    keys.extend([("Patient", "a"), ("Patient", "gone"), ("Patient", "new"), ("Observation", "b")]);
    let found = tx.read_many(&keys).await.unwrap();
    let key = |id: &str| ("Patient".to_owned(), id.to_owned());
    assert_eq!(found.len(), 3, "{:?}", found.keys().collect::<Vec<_>>());
    assert_eq!(content(&found[&key("a")])["name"][0]["family"], "Alpha");
    assert!(found[&key("gone")].deleted);
    assert_eq!(found[&key("new")].version_id, 1, "the transaction's own write");
    assert!(tx.read_many(&[]).await.unwrap().is_empty());

    // A reader sees what is committed, not the open transaction's write.
    let committed = store.read_many(&keys).await.unwrap();
    assert_eq!(committed.len(), 2, "{:?}", committed.keys().collect::<Vec<_>>());
    assert_eq!(committed[&key("a")].version_id, 1);
    assert!(committed[&key("gone")].deleted);
    tx.rollback().await.unwrap();
}

fn patient(id: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]})
}

fn content(stored: &store::StoredResource) -> Value {
    serde_json::from_str(stored.content.as_deref().expect("live resource has content")).expect("stored JSON")
}

async fn create_read_update_and_versions(db: TestDb) {
    let store = db.store().await;
    store.refresh_statistics().await.expect("statistics refresh runs on an empty database");
    let mut tx = store.begin().await.unwrap();
    let first = tx.put(patient("p1", "Alpha"), Precondition::MustNotExist).await.unwrap();
    tx.commit().await.unwrap();
    assert!(first.created);
    assert_eq!(first.resource.version_id, 1);

    let read = store.read("Patient", "p1").await.unwrap().expect("stored");
    let body = content(&read);
    assert_eq!(body["meta"]["versionId"], "1");
    assert_eq!(body["name"][0]["family"], "Alpha");
    assert_eq!(body["meta"]["lastUpdated"], store::format_instant(read.last_updated));

    let mut tx = store.begin().await.unwrap();
    let second = tx.put(patient("p1", "Beta"), Precondition::Version(1)).await.unwrap();
    tx.commit().await.unwrap();
    assert!(!second.created);
    assert_eq!(second.resource.version_id, 2);
    assert!(second.resource.last_updated > first.resource.last_updated);

    let v1 = store.vread("Patient", "p1", 1).await.unwrap().expect("version 1 kept");
    assert_eq!(content(&v1)["name"][0]["family"], "Alpha");
    let v2 = store.vread("Patient", "p1", 2).await.unwrap().expect("version 2 kept");
    assert_eq!(content(&v2)["name"][0]["family"], "Beta");
    assert!(store.vread("Patient", "p1", 3).await.unwrap().is_none());
    assert!(store.read("Patient", "nope").await.unwrap().is_none());
}

async fn create_only_and_version_preconditions_fail_cleanly(db: TestDb) {
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    tx.put(patient("p1", "A"), Precondition::None).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    let err = tx.put(patient("p1", "B"), Precondition::MustNotExist).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
    drop(tx);

    let mut tx = store.begin().await.unwrap();
    let err = tx.put(patient("p1", "B"), Precondition::Version(7)).await.unwrap_err();
    match err {
        StoreError::VersionConflict { expected, current, .. } => {
            assert_eq!(expected, "7");
            assert_eq!(current, "1");
        }
        other => panic!("expected a version conflict, got {other:?}"),
    }
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    let err = tx.put(patient("p9", "B"), Precondition::Version(1)).await.unwrap_err();
    assert!(matches!(err, StoreError::VersionConflict { .. }), "{err:?}");
    drop(tx);
    // Nothing changed.
    assert_eq!(store.read("Patient", "p1").await.unwrap().unwrap().version_id, 1);
    assert!(store.read("Patient", "p9").await.unwrap().is_none());
}

async fn bulk_creates_write_versions_and_history_and_refuse_a_taken_id(db: TestDb) {
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    let batch: Vec<Value> = (0..250).map(|i| patient(&format!("bulk{i}"), &format!("F{i}"))).collect();
    let written = tx.create_all(batch).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(written.len(), 250);
    for (i, w) in written.iter().enumerate() {
        assert!(w.created);
        assert_eq!((w.resource.id.as_str(), w.resource.version_id), (format!("bulk{i}").as_str(), 1));
        let read = store.read("Patient", &w.resource.id).await.unwrap().expect("stored");
        assert_eq!(content(&read)["name"][0]["family"], format!("F{i}"));
        assert_eq!(content(&read)["meta"]["versionId"], "1");
        assert!(store.vread("Patient", &w.resource.id, 1).await.unwrap().is_some(), "history row for {i}");
    }

    // One taken id sinks the whole call, and the transaction writes nothing.
    let mut tx = store.begin().await.unwrap();
    let err = tx.create_all(vec![patient("fresh", "X"), patient("bulk7", "Y")]).await.unwrap_err();
    assert!(matches!(err, StoreError::VersionConflict { .. }), "{err:?}");
    drop(tx);
    assert!(store.read("Patient", "fresh").await.unwrap().is_none());
    assert_eq!(content(&store.read("Patient", "bulk7").await.unwrap().unwrap())["name"][0]["family"], "F7");

    let mut tx = store.begin().await.unwrap();
    let err = tx.create_all(vec![json!({"resourceType": "Patient", "id": "bad id"})]).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
}

async fn concurrent_writers_to_one_resource_exactly_one_wins(db: TestDb) {
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    tx.put(patient("shared", "Start"), Precondition::MustNotExist).await.unwrap();
    tx.commit().await.unwrap();

    // Several replicas (separate pools), each writer expecting version 1.
    let mut handles = Vec::new();
    for writer in 0..8 {
        let replica = db.store().await;
        handles.push(tokio::spawn(async move {
            let mut tx = replica.begin().await?;
            tx.put(patient("shared", &format!("Writer{writer}")), Precondition::Version(1)).await?;
            tx.commit().await
        }));
    }
    let mut wins = 0;
    let mut conflicts = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(()) => wins += 1,
            Err(StoreError::VersionConflict { .. }) => conflicts += 1,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!((wins, conflicts), (1, 7));
    let current = store.read("Patient", "shared").await.unwrap().unwrap();
    assert_eq!(current.version_id, 2);
    let history =
        store.history(&HistoryQuery { id: Some("shared".into()), limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(history.len(), 2, "no version from a losing writer is in history");

    // Creates of one new id race the same way.
    let mut handles = Vec::new();
    for writer in 0..6 {
        let replica = db.store().await;
        handles.push(tokio::spawn(async move {
            let mut tx = replica.begin().await?;
            tx.put(patient("fresh", &format!("W{writer}")), Precondition::MustNotExist).await?;
            tx.commit().await
        }));
    }
    let mut wins = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(()) => wins += 1,
            Err(StoreError::AlreadyExists { .. } | StoreError::VersionConflict { .. }) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(wins, 1);
}

async fn delete_is_logical_and_history_keeps_every_version(db: TestDb) {
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    tx.put(patient("d1", "A"), Precondition::None).await.unwrap();
    tx.put(patient("d1", "B"), Precondition::None).await.unwrap();
    let deleted = tx.delete("Patient", "d1", Precondition::None).await.unwrap().expect("was live");
    assert_eq!(deleted.version_id, 3);
    assert!(tx.delete("Patient", "d1", Precondition::None).await.unwrap().is_none(), "already deleted");
    assert!(tx.delete("Patient", "never", Precondition::None).await.unwrap().is_none());
    tx.commit().await.unwrap();

    let tomb = store.read("Patient", "d1").await.unwrap().expect("tombstone");
    assert!(tomb.deleted);
    assert_eq!(tomb.content, None);
    let history = store
        .history(&HistoryQuery {
            resource_type: Some("Patient".into()),
            id: Some("d1".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let versions: Vec<(i64, bool)> = history.iter().map(|h| (h.resource.version_id, h.resource.deleted)).collect();
    assert_eq!(versions, vec![(3, true), (2, false), (1, false)]);

    let mut tx = store.begin().await.unwrap();
    let again = tx.put(patient("d1", "C"), Precondition::MustNotExist).await.unwrap();
    tx.commit().await.unwrap();
    assert!(again.created, "re-create after delete counts as a create");
    assert_eq!(again.resource.version_id, 4);
}

async fn history_filters_and_pages(db: TestDb) {
    let store = db.store().await;
    for i in 0..5 {
        let mut tx = store.begin().await.unwrap();
        tx.put(patient(&format!("h{i}"), "X"), Precondition::None).await.unwrap();
        tx.put(json!({"resourceType": "Observation", "id": format!("o{i}"), "status": "final"}), Precondition::None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let all = store.history(&HistoryQuery { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 10);
    assert!(all.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");

    let observations = store
        .history(&HistoryQuery { resource_type: Some("Observation".into()), limit: 100, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(observations.len(), 5);
    assert!(observations.iter().all(|h| h.resource.resource_type == "Observation"));

    let page1 = store.history(&HistoryQuery { limit: 4, ..Default::default() }).await.unwrap();
    let page2 = store
        .history(&HistoryQuery { limit: 4, before_seq: Some(page1.last().unwrap().seq), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(page1.len(), 4);
    assert_eq!(page2.len(), 4);
    assert!(page2[0].seq < page1[3].seq);

    let cutoff = all[2].resource.last_updated;
    let since = store.history(&HistoryQuery { since: Some(cutoff), limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(since.len(), 3);
    let until = store.history(&HistoryQuery { until: Some(cutoff), limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(until.len(), 8);
}

async fn a_rolled_back_transaction_leaves_nothing_behind(db: TestDb) {
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    tx.put(patient("r1", "A"), Precondition::None).await.unwrap();
    tx.enqueue(&NewJob::new("convert", "{\"id\":1}")).await.unwrap();
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    tx.put(patient("r2", "A"), Precondition::None).await.unwrap();
    tx.enqueue(&NewJob::new("convert", "{\"id\":2}")).await.unwrap();
    tx.rollback().await.unwrap();

    assert!(store.read("Patient", "r1").await.unwrap().is_none());
    assert!(store.read("Patient", "r2").await.unwrap().is_none());
    assert!(store.history(&HistoryQuery { limit: 10, ..Default::default() }).await.unwrap().is_empty());
    assert!(store.claim("convert", 10, Duration::from_secs(30)).await.unwrap().is_empty());
    assert!(store.job_counts().await.unwrap().is_empty());
}

async fn jobs_enqueue_claim_complete(db: TestDb) {
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    tx.put(patient("j1", "A"), Precondition::None).await.unwrap();
    for i in 0..3 {
        tx.enqueue(&NewJob::new("convert", format!("{{\"n\":{i}}}"))).await.unwrap();
    }
    tx.enqueue(&NewJob::new("other", "{}")).await.unwrap();
    tx.commit().await.unwrap();

    let counts = store.job_counts().await.unwrap();
    let ready: i64 =
        counts.iter().filter(|c| c.queue == "convert" && c.state == JobState::Ready).map(|c| c.count).sum();
    assert_eq!(ready, 3);

    let jobs = store.claim("convert", 2, Duration::from_secs(30)).await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].payload, "{\"n\":0}", "oldest first");
    assert!(jobs.iter().all(|j| j.attempts == 1 && j.queue == "convert"));
    let rest = store.claim("convert", 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(rest.len(), 1, "leased jobs are not handed out again");
    assert_eq!(rest[0].payload, "{\"n\":2}");

    // Completing in the same transaction as the work it did.
    let mut tx = store.begin().await.unwrap();
    tx.put(patient("j2", "B"), Precondition::None).await.unwrap();
    tx.complete_job(&jobs[0]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.complete_many(&[jobs[1].clone(), rest[0].clone()]).await.unwrap(), Vec::<i64>::new());
    assert!(matches!(store.complete(&jobs[0]).await, Err(StoreError::LeaseLost { .. })), "completed once only");

    let counts = store.job_counts().await.unwrap();
    assert!(counts.iter().all(|c| c.queue == "other"), "{counts:?}");
}

async fn failed_jobs_retry_then_dead_letter(db: TestDb) {
    let store = db.store().await;
    store.enqueue(&NewJob::new("q", "payload").max_attempts(2)).await.unwrap();
    let immediate = Backoff { base: Duration::ZERO, max: Duration::ZERO };
    let slow = Backoff { base: Duration::from_secs(3600), max: Duration::from_secs(3600) };

    let job = store.claim("q", 1, Duration::from_secs(30)).await.unwrap().remove(0);
    let outcome = store.fail(&job, "first failure", &slow).await.unwrap();
    match outcome {
        FailOutcome::RetryAt(at) => {
            assert!(at.micros() > store::Timestamp::now().micros() + 60_000_000)
        }
        other => panic!("expected a retry, got {other:?}"),
    }
    assert!(store.claim("q", 1, Duration::from_secs(30)).await.unwrap().is_empty(), "not due before its backoff");

    // A zero backoff makes the retry due at once, so the test does not wait.
    store.requeue_dead(job.id).await.unwrap();
    store.enqueue(&NewJob::new("q2", "p2").max_attempts(2)).await.unwrap();
    let job = store.claim("q2", 1, Duration::from_secs(30)).await.unwrap().remove(0);
    assert!(matches!(store.fail(&job, "e1", &immediate).await.unwrap(), FailOutcome::RetryAt(_)));
    let job = store.claim("q2", 1, Duration::from_secs(30)).await.unwrap().remove(0);
    assert_eq!(job.attempts, 2);
    assert_eq!(store.fail(&job, "e2: final", &immediate).await.unwrap(), FailOutcome::DeadLettered);
    assert!(store.claim("q2", 1, Duration::from_secs(30)).await.unwrap().is_empty());
    let dead = store.dead_jobs("q2", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].2.as_deref(), Some("e2: final"));

    assert!(store.requeue_dead(job.id).await.unwrap());
    let again = store.claim("q2", 1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1, "a requeued job gets a fresh set of attempts");
}

async fn an_expired_lease_is_claimed_again_and_the_old_holder_cannot_complete(db: TestDb) {
    let store = db.store().await;
    store.enqueue(&NewJob::new("q", "work").max_attempts(3)).await.unwrap();
    // A zero lease is already expired for any later claim: the holder "died".
    let first = store.claim("q", 1, Duration::ZERO).await.unwrap().remove(0);
    let second = store.claim("q", 1, Duration::from_secs(60)).await.unwrap();
    assert_eq!(second.len(), 1, "an expired lease makes the job claimable");
    assert_eq!(second[0].id, first.id);
    assert_eq!(second[0].attempts, 2);
    assert!(matches!(store.complete(&first).await, Err(StoreError::LeaseLost { .. })));
    assert!(matches!(store.fail(&first, "late", &Backoff::default()).await, Err(StoreError::LeaseLost { .. })));
    store.complete(&second[0]).await.unwrap();

    // A job whose final attempt's lease expires is dead-lettered, not retried forever.
    store.enqueue(&NewJob::new("q3", "work").max_attempts(1)).await.unwrap();
    let _lost = store.claim("q3", 1, Duration::ZERO).await.unwrap().remove(0);
    assert!(store.claim("q3", 1, Duration::from_secs(60)).await.unwrap().is_empty());
    assert_eq!(store.dead_jobs("q3", 10).await.unwrap().len(), 1);
}

async fn many_claimers_on_many_pools_never_share_a_job_and_lose_none(db: TestDb) {
    const JOBS: usize = 600;
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    for i in 0..JOBS {
        tx.enqueue(&NewJob::new("bulk", i.to_string()).max_attempts(100)).await.unwrap();
    }
    tx.commit().await.unwrap();

    // (job id, lease start, lease end) of every claim, and every successful completion.
    let claims: Arc<Mutex<Vec<(i64, i64, i64)>>> = Arc::default();
    let completed: Arc<Mutex<Vec<i64>>> = Arc::default();
    let lease = Duration::from_millis(300);
    let mut workers = Vec::new();
    for replica in 0..4 {
        let pool = db.store().await;
        for worker in 0..3 {
            let (pool, claims, completed) = (pool.clone(), claims.clone(), completed.clone());
            // One claimer per replica "dies" repeatedly: it takes jobs and abandons them mid-lease.
            let dies = worker == 0;
            workers.push(tokio::spawn(async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(120);
                while std::time::Instant::now() < deadline {
                    if completed.lock().unwrap().len() >= JOBS {
                        break;
                    }
                    let jobs = pool.claim("bulk", 8, lease).await.expect("claim");
                    {
                        let mut claims = claims.lock().unwrap();
                        for j in &jobs {
                            let start = j.lease_until.micros() - lease.as_micros() as i64;
                            claims.push((j.id, start, j.lease_until.micros()));
                        }
                    }
                    if jobs.is_empty() {
                        tokio::select! {
                            _ = pool.job_enqueued() => {}
                            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                        }
                        continue;
                    }
                    if dies && replica % 2 == 0 {
                        continue;
                    }
                    let lost = pool.complete_many(&jobs).await.expect("complete");
                    let mut done = completed.lock().unwrap();
                    done.extend(jobs.iter().map(|j| j.id).filter(|id| !lost.contains(id)));
                }
            }));
        }
    }
    for w in workers {
        w.await.unwrap();
    }
    let completed = completed.lock().unwrap().clone();
    let unique: HashSet<i64> = completed.iter().copied().collect();
    assert_eq!(unique.len(), completed.len(), "a job was completed twice");
    assert_eq!(unique.len(), JOBS, "every job completed (none lost)");
    assert!(store.job_counts().await.unwrap().is_empty());

    // No two claims of one job ever held overlapping live leases.
    let mut by_job: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
    for (id, start, end) in claims.lock().unwrap().iter() {
        by_job.entry(*id).or_default().push((*start, *end));
    }
    let mut reclaimed = 0;
    for (id, mut leases) in by_job {
        leases.sort();
        reclaimed += leases.len() - 1;
        for w in leases.windows(2) {
            assert!(w[1].0 > w[0].1, "job {id} was handed out while its lease was live: {leases:?}");
        }
    }
    assert!(reclaimed > 0, "the dying claimers' jobs were claimed again");
}

async fn invalid_resources_are_refused(db: TestDb) {
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    for bad in [
        json!({"id": "x"}),
        json!({"resourceType": "Patient"}),
        json!({"resourceType": "Patient", "id": "has space"}),
        json!({"resourceType": "patient", "id": "x"}),
        json!({"resourceType": "Patient", "id": "x", "meta": "not an object"}),
        json!(["not", "an", "object"]),
    ] {
        let err = tx.put(bad.clone(), Precondition::None).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{bad}: {err:?}");
    }
    tx.commit().await.unwrap();
    assert!(store.history(&HistoryQuery { limit: 10, ..Default::default() }).await.unwrap().is_empty());
}

fn message(control_id: &str, message_type: &str) -> NewMessage {
    // Latin-1 bytes on purpose: the journal keeps bytes exactly as received.
    let raw = format!(
        "MSH|^~\\&|EHR|CLINIC|GW|HUB|20261123||{message_type}|{control_id}|P|2.5.1\rPID|||1^^^MRN||M\u{00fc}ller"
    )
    .into_bytes();
    let raw: Vec<u8> = raw.into_iter().chain([0xFC, 0x0D]).collect();
    NewMessage {
        sending_application: "EHR".into(),
        sending_facility: "CLINIC".into(),
        receiving_application: "GW".into(),
        receiving_facility: "HUB".into(),
        message_type: message_type.into(),
        control_id: control_id.into(),
        version: "2.5.1".into(),
        raw,
    }
}

async fn journal_stores_once_queues_a_job_and_lists_without_bodies(db: TestDb) {
    let store = db.store().await;
    let batch = vec![message("c1", "ADT^A01"), message("c2", "ORU^R01"), message("c1", "ADT^A01")];
    let outcomes = store.journal_messages(&batch, "convert", 5).await.unwrap();
    assert!(matches!(outcomes[0], JournalOutcome::Stored { .. }));
    assert!(matches!(outcomes[1], JournalOutcome::Stored { .. }));
    assert_eq!(outcomes[2], JournalOutcome::Duplicate, "a repeat within one batch");
    let again =
        store.journal_messages(&[message("c2", "ORU^R01"), message("c3", "ADT^A04")], "convert", 5).await.unwrap();
    assert_eq!(again[0], JournalOutcome::Duplicate, "a repeat of a committed message");
    let JournalOutcome::Stored { id: c3 } = again[1] else { panic!("c3 stored") };

    // Another sender may reuse a control id.
    let mut other = message("c1", "ADT^A01");
    other.sending_facility = "OTHER".into();
    assert!(matches!(store.journal_messages(&[other], "convert", 5).await.unwrap()[0], JournalOutcome::Stored { .. }));

    let jobs = store.claim("convert", 100, Duration::from_secs(30)).await.unwrap();
    let queued: Vec<i64> = jobs.iter().flat_map(|j| store::journal_ids_of(&j.payload).expect("journal job")).collect();
    assert_eq!(jobs.len(), 3, "one conversion job per commit that stored something");
    assert_eq!(queued.len(), 4, "every stored message is queued once");
    assert!(queued.contains(&c3));

    let all = store.journal_list(&JournalQuery { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let listed = serde_json::to_string(&all).unwrap();
    assert!(!listed.contains("ller"), "lists never carry message bodies");
    let oru = store
        .journal_list(&JournalQuery { message_type: Some("ORU^R01".into()), limit: 100, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(oru.len(), 1);
    assert_eq!(oru[0].control_id, "c2");
    assert_eq!(oru[0].status, "received");

    let entry = store.journal_find("EHR", "CLINIC", "c3").await.unwrap().expect("found by key");
    assert_eq!(entry.id, c3);
    let body = store.journal_body(c3).await.unwrap().unwrap();
    assert_eq!(body, message("c3", "ADT^A04").raw, "bytes kept exactly");
    assert_eq!(entry.size_bytes, body.len() as i64);
}

async fn journal_status_and_reprocess(db: TestDb) {
    let store = db.store().await;
    let outcomes =
        store.journal_messages(&[message("a", "ADT^A01"), message("b", "ADT^A08")], "convert", 5).await.unwrap();
    let ids: Vec<i64> = outcomes
        .iter()
        .map(|o| match o {
            JournalOutcome::Stored { id } => *id,
            _ => panic!(),
        })
        .collect();
    let jobs = store.claim("convert", 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(jobs.len(), 1, "one job for the commit");

    let mut tx = store.begin().await.unwrap();
    tx.set_journal_status(ids[0], JournalStatus::Converted, None).await.unwrap();
    tx.set_journal_status(ids[1], JournalStatus::Failed, Some("{\"resourceType\":\"OperationOutcome\"}"))
        .await
        .unwrap();
    tx.complete_job(&jobs[0]).await.unwrap();
    tx.commit().await.unwrap();

    let failed = store.journal_ids_with_status(JournalStatus::Failed, 10).await.unwrap();
    assert_eq!(failed, vec![ids[1]]);
    let entry = store.journal_entry(ids[1]).await.unwrap().unwrap();
    assert_eq!(entry.status, "failed");
    assert!(entry.status_detail.unwrap().contains("OperationOutcome"));
    let mut counts = store.journal_counts().await.unwrap();
    counts.sort();
    assert_eq!(counts, vec![("converted".to_owned(), 1), ("failed".to_owned(), 1)]);

    assert_eq!(store.journal_reprocess(&failed, "convert", 5).await.unwrap(), 1);
    assert_eq!(store.journal_entry(ids[1]).await.unwrap().unwrap().status, "received");
    let requeued = store.claim("convert", 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(requeued.len(), 1);
    assert_eq!(store::journal_ids_of(&requeued[0].payload), Some(vec![ids[1]]));
    assert_eq!(store.journal_reprocess(&[999_999], "convert", 5).await.unwrap(), 0, "unknown ids are skipped");
}

/// The outbound log: a row per queued message, written and settled in the transactions of its job (a rolled-back
/// queueing leaves none; a failure that loses its lease records nothing; a job the queue dead-letters by itself is
/// marked dead); lists newest first by state and destination, without the receivers' texts; `earlier_job_pending`
/// sees older live jobs of the queue only.
async fn outbound_log_follows_its_jobs_transactions(db: TestDb) {
    use store::{OutboundAck, OutboundQuery, OutboundState};
    let store = db.store().await;
    async fn queue(tx: &mut store::StoreTx, destination: &str, control_id: &str, attempts: i32) -> i64 {
        let job = NewJob::new(format!("out-{destination}"), control_id).max_attempts(attempts);
        let job_id = tx.enqueue_returning_id(&job).await.unwrap();
        tx.log_outbound_queued(job_id, destination, "RRI^I12^RRI_I12", control_id).await.unwrap()
    }
    let mut tx = store.begin().await.unwrap();
    queue(&mut tx, "gone", "X", 2).await;
    tx.rollback().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    let first = queue(&mut tx, "ehr", "C1", 2).await;
    let second = queue(&mut tx, "ehr", "C2", 2).await;
    let stranded = queue(&mut tx, "lab", "C3", 1).await;
    tx.commit().await.unwrap();
    let listed = |state: Option<OutboundState>, destination: Option<&str>| {
        let query = OutboundQuery { state, destination: destination.map(str::to_owned), limit: 10, before_id: None };
        let store = store.clone();
        async move { store.outbound_list(&query).await.unwrap().into_iter().map(|m| m.control_id).collect::<Vec<_>>() }
    };
    assert_eq!(listed(None, None).await, ["C3", "C2", "C1"], "newest first, the rolled-back one absent");
    assert_eq!(listed(Some(OutboundState::Queued), Some("ehr")).await, ["C2", "C1"]);

    let jobs = store.claim("out-ehr", 2, Duration::from_secs(30)).await.unwrap();
    assert_eq!(store.outbound_record(first).await.unwrap().unwrap().job_id, jobs[0].id);
    let mut tx = store.begin().await.unwrap();
    assert!(!tx.earlier_job_pending(&jobs[0]).await.unwrap());
    assert!(tx.earlier_job_pending(&jobs[1]).await.unwrap());
    tx.rollback().await.unwrap();

    // First attempt of C1: sent, answered AE (negative ACK recorded), retried.
    store.log_outbound_sending(jobs[0].id, jobs[0].attempts).await.unwrap();
    assert_eq!(listed(Some(OutboundState::Sent), None).await, ["C1"]);
    let negative = OutboundAck {
        code: "AE".into(),
        control_id: Some("A1".into()),
        error_code: Some("207".into()),
        text: Some("receiver busy".into()),
    };
    let immediate = Backoff { base: Duration::ZERO, max: Duration::ZERO };
    let reason = "answered AE (HL7 error 207)";
    let mut tx = store.begin().await.unwrap();
    assert!(matches!(tx.fail_job(&jobs[0], reason, &immediate).await.unwrap(), FailOutcome::RetryAt(_)));
    tx.log_outbound_failed(jobs[0].id, jobs[0].attempts, false, Some(&negative), reason).await.unwrap();
    tx.commit().await.unwrap();
    let record = store.outbound_record(first).await.unwrap().unwrap();
    assert_eq!((record.state.as_str(), record.attempts), ("failed", 1));
    assert_eq!((record.ack_code.as_deref(), record.ack_error_code.as_deref()), (Some("AE"), Some("207")));
    assert_eq!(record.ack_text.as_deref(), Some("receiver busy"), "shown one at a time");
    let list = store.outbound_list(&OutboundQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert!(list.iter().all(|m| m.ack_text.is_none()), "lists leave the receivers' texts out");

    // A failure recorded with a lost lease commits nothing, the log included.
    let stale = store::Job { lease_token: jobs[1].lease_token ^ 1, ..jobs[1].clone() };
    let mut tx = store.begin().await.unwrap();
    assert!(matches!(tx.fail_job(&stale, "late", &immediate).await, Err(StoreError::LeaseLost { .. })));
    drop(tx);
    assert_eq!(store.outbound_record(second).await.unwrap().unwrap().state, "queued");

    // C1's second attempt is acknowledged with the job's completion; C2 dies on its last attempt.
    let retry = store.claim("out-ehr", 1, Duration::from_secs(30)).await.unwrap().remove(0);
    assert_eq!((retry.id, retry.attempts), (jobs[0].id, 2));
    let positive = OutboundAck { code: "AA".into(), control_id: Some("A2".into()), ..Default::default() };
    let mut tx = store.begin().await.unwrap();
    tx.complete_job(&retry).await.unwrap();
    tx.log_outbound_acknowledged(retry.id, retry.attempts, &positive).await.unwrap();
    tx.commit().await.unwrap();
    let last = store::Job { attempts: 2, ..jobs[1].clone() };
    let mut tx = store.begin().await.unwrap();
    let outcome = tx.fail_job(&last, "connect to destination failed", &immediate).await.unwrap();
    assert_eq!(outcome, FailOutcome::DeadLettered);
    tx.log_outbound_failed(last.id, 2, true, None, "connect to destination failed").await.unwrap();
    tx.commit().await.unwrap();

    let record = store.outbound_record(first).await.unwrap().unwrap();
    assert_eq!((record.state.as_str(), record.attempts, record.ack_code.as_deref()), ("acknowledged", 2, Some("AA")));
    assert!(record.acknowledged.is_some() && record.sent.is_some());
    let dead = store.outbound_record(second).await.unwrap().unwrap();
    assert_eq!((dead.state.as_str(), dead.ack_code.as_deref()), ("dead", None));
    assert_eq!(dead.last_error.as_deref(), Some("connect to destination failed"));
    assert!(store.outbound_record(stranded + 1000).await.unwrap().is_none());

    // C3's worker stops mid-delivery on its only attempt: the queue dead-letters the job when its lease expires,
    // and the log follows.
    assert_eq!(store.outbound_mark_dead_letters().await.unwrap(), 0, "nothing stranded yet");
    let held = store.claim("out-lab", 1, Duration::from_millis(1)).await.unwrap().remove(0);
    store.log_outbound_sending(held.id, held.attempts).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.dead_jobs("out-lab", 10).await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the expired final lease is dead-lettered by the next claim");
        assert!(store.claim("out-lab", 1, Duration::from_secs(30)).await.unwrap().is_empty());
    }
    assert_eq!(store.outbound_record(stranded).await.unwrap().unwrap().state, "sent");
    assert_eq!(store.outbound_mark_dead_letters().await.unwrap(), 1);
    let record = store.outbound_record(stranded).await.unwrap().unwrap();
    assert_eq!(record.state, "dead");
    assert!(record.last_error.unwrap().contains("lease expired"));
    let mut counts = store.outbound_counts().await.unwrap();
    counts.sort();
    assert_eq!(counts, [("acknowledged".to_owned(), 1), ("dead".to_owned(), 2)]);
}

async fn scans_read_every_live_resource_of_a_type_by_key(db: TestDb) {
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    for i in 0..7 {
        tx.put(patient(&format!("s{i}"), "A"), Precondition::None).await.unwrap();
    }
    tx.put(
        json!({"resourceType": "Observation", "id": "s9", "status": "final", "code": {"text": "x"}}),
        Precondition::None,
    )
    .await
    .unwrap();
    tx.delete("Patient", "s3", Precondition::None).await.unwrap();
    tx.commit().await.unwrap();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.scan_current("Patient", after.as_deref(), 2).await.unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|r| r.id.clone()));
        if page.len() < 2 {
            break;
        }
        after = page.last().map(|r| r.id.clone());
    }
    assert_eq!(seen, ["s0", "s1", "s2", "s4", "s5", "s6"], "in id order, deleted ones and other types left out");
    assert!(store.scan_current("Patient", Some("s6"), 10).await.unwrap().is_empty());
}

async fn multi_type_scans_read_every_live_resource_of_the_types_once(db: TestDb) {
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    // Types interleaved as a patient's data arrives; one of each deleted, one other type never asked for.
    for i in 0..5 {
        tx.put(patient(&format!("m{i}"), "A"), Precondition::None).await.unwrap();
        for kind in ["Encounter", "Coverage", "Goal"] {
            let resource = json!({"resourceType": kind, "id": format!("{kind}-{i}"), "status": "active"});
            tx.put(resource, Precondition::None).await.unwrap();
        }
    }
    tx.delete("Patient", "m2", Precondition::None).await.unwrap();
    tx.delete("Encounter", "Encounter-4", Precondition::None).await.unwrap();
    tx.commit().await.unwrap();

    let types = ["Patient", "Encounter", "Coverage"];
    let mut seen = Vec::new();
    let mut cursor = store::ScanCursor::default();
    let mut pages = 0;
    loop {
        let (page, next) = store.scan_types(&types, &cursor, 3).await.unwrap();
        assert!(page.len() <= 3);
        pages += 1;
        seen.extend(page.iter().map(|r| format!("{}/{}", r.resource_type, r.id)));
        match next {
            Some(next) => cursor = next,
            None => break,
        }
        assert!(pages < 20, "the scan ends");
    }
    seen.sort();
    let mut expected: Vec<String> = Vec::new();
    for i in [0, 1, 3, 4] {
        expected.push(format!("Patient/m{i}"));
    }
    for i in 0..5 {
        expected.push(format!("Coverage/Coverage-{i}"));
        if i != 4 {
            expected.push(format!("Encounter/Encounter-{i}"));
        }
    }
    expected.sort();
    assert_eq!(seen, expected, "every live resource of the types exactly once, nothing else");
    let (none, next) = store.scan_types(&[], &store::ScanCursor::default(), 3).await.unwrap();
    assert!(none.is_empty() && next.is_none());
}

/// Jobs queued in a transaction are inserted together at commit (or before the transaction reads the queue), in
/// the order queued, and only if it commits; many jobs complete with one statement, and none does when one of
/// them is no longer held; many journal entries are read at once.
async fn jobs_queued_in_bulk_keep_their_order_and_complete_together(db: TestDb) {
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    for i in 0..450 {
        tx.enqueue(&NewJob::new("bulk", format!("{i}"))).await.unwrap();
    }
    let returned = tx.enqueue_returning_id(&NewJob::new("bulk", "450")).await.unwrap();
    tx.enqueue(&NewJob::new("bulk", "451")).await.unwrap();
    assert!(store.job_counts().await.unwrap().iter().all(|c| c.queue != "bulk"), "invisible before commit");
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.enqueue(&NewJob::new("bulk", "rolled back")).await.unwrap();
    tx.rollback().await.unwrap();

    let jobs = store.claim("bulk", 1000, Duration::from_secs(30)).await.unwrap();
    let payloads: Vec<String> = jobs.iter().map(|j| j.payload.clone()).collect();
    let expected: Vec<String> = (0..452).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected, "every job once, in the order queued, none from the rollback");
    assert_eq!(jobs.iter().find(|j| j.payload == "450").map(|j| j.id), Some(returned));

    // One job no longer held (completed elsewhere): nothing completes.
    store.complete(&jobs[7]).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let outcome = tx.complete_jobs(&jobs[..300]).await;
    assert!(matches!(outcome, Err(StoreError::LeaseLost { job_id }) if job_id == jobs[7].id), "{outcome:?}");
    tx.rollback().await.unwrap();
    let held: Vec<_> = jobs.iter().filter(|j| j.id != jobs[7].id).cloned().collect();
    let mut tx = store.begin().await.unwrap();
    tx.complete_jobs(&held).await.unwrap();
    tx.commit().await.unwrap();
    assert!(store.job_counts().await.unwrap().iter().all(|c| c.queue != "bulk"), "all completed");

    let stored: Vec<i64> = store
        .journal_messages(&[message("r1", "ADT^A01"), message("r2", "ORU^R01")], "convert", 5)
        .await
        .unwrap()
        .into_iter()
        .map(|o| match o {
            JournalOutcome::Stored { id } => id,
            JournalOutcome::Duplicate => panic!("stored"),
        })
        .collect();
    let mut tx = store.begin().await.unwrap();
    let raws = tx.journal_raw_many(&[stored[1], 999_999, stored[0]]).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(raws.len(), 2, "an id never journaled is absent");
    assert_eq!(raws[&stored[0]], message("r1", "ADT^A01").raw);
    assert_eq!(raws[&stored[1]], message("r2", "ORU^R01").raw);
}

/// SQLite's background checkpoint runs on a connection that may write the database file and copies every
/// committed page when nothing else is writing; PostgreSQL checkpoints by itself.
async fn background_checkpoints_copy_the_wal_into_the_database(db: TestDb) {
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    for i in 0..50 {
        tx.put(patient(&format!("ck{i}"), "Checkpoint"), Precondition::None).await.unwrap();
    }
    tx.commit().await.unwrap();
    let progress = store.checkpoint().await.unwrap();
    match store.backend() {
        store::BackendKind::Sqlite => {
            let progress = progress.expect("SQLite reports its WAL");
            assert!(progress.wal_pages > 0, "{progress:?}");
            assert_eq!(progress.copied_pages, progress.wal_pages, "all committed pages copied");
        }
        store::BackendKind::Postgres => assert_eq!(progress, None),
    }
    assert_eq!(store.read("Patient", "ck49").await.unwrap().map(|p| p.version_id), Some(1));
}

/// Idle workers poll their queues; on SQLite a claim that found nothing still took the one writer (and waited for
/// a commit's sync) from the writers that had work. While a write transaction is open, a claim on a queue with
/// nothing due answers at once, and one with a due job waits its turn and gets it.
async fn claiming_from_an_idle_queue_leaves_the_writer_to_others(db: TestDb) {
    let store = db.store().await;
    store.enqueue(&NewJob::new("busy", "{}")).await.unwrap();
    let writing = store.begin().await.unwrap();
    let idle = tokio::time::timeout(Duration::from_secs(5), store.claim("idle", 8, Duration::from_secs(30))).await;
    assert!(idle.expect("an idle queue's claim does not wait for the writer").unwrap().is_empty());
    let busy = tokio::spawn({
        let store = store.clone();
        async move { store.claim("busy", 8, Duration::from_secs(30)).await }
    });
    writing.rollback().await.unwrap();
    let claimed = tokio::time::timeout(Duration::from_secs(30), busy).await.unwrap().unwrap().unwrap();
    assert_eq!(claimed.len(), 1);
}
