//! Worker tests against a real SQLite store: idempotent conversion, failure outcomes, lost leases, retractions.

use std::time::Duration;

use serde_json::Value;
use store::{JournalStatus, NewMessage, Precondition, Store, StoreOptions};

use super::convert::{EntryOutcome, convert_entry};
use super::{WorkerSettings, convert, normalize};

const CONVERT: &str = crate::admin::CONVERT_QUEUE;
const NORMALIZE: &str = fhir_server::rest::write::NORMALIZE_QUEUE;

async fn open(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite:{}", dir.path().join("w.db").display());
    let store = Store::connect(&StoreOptions::new(url)).await.unwrap();
    store.migrate().await.unwrap();
    store
}

fn conformance(path: &str) -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../conformance/").to_owned() + path).unwrap()
}

/// Journals a conformance message (queuing its conversion job) and returns its journal id.
async fn journal(store: &Store, name: &str) -> i64 {
    let raw = conformance(&format!("v2fhir/{name}")).trim_end().replace("\r\n", "\r").replace('\n', "\r");
    journal_batch(store, &[raw]).await[0]
}

/// Writes a new version of a Task per status, as a CBO moving the referral along would.
async fn move_task(store: &Store, task_id: &str, statuses: &[&str]) {
    for status in statuses {
        let mut tx = store.begin().await.unwrap();
        let current = tx.read("Task", task_id).await.unwrap().unwrap();
        let mut task: Value = serde_json::from_str(current.content.as_deref().unwrap()).unwrap();
        task["status"] = Value::String((*status).into());
        fhir_server::rest::write::put(&mut tx, task, Precondition::None).await.unwrap();
        tx.commit().await.unwrap();
    }
}

async fn status(store: &Store, id: i64) -> (String, Option<String>) {
    let e = store.journal_entry(id).await.unwrap().unwrap();
    (e.status, e.status_detail)
}

async fn versions(store: &Store) -> Vec<(String, String, i64)> {
    let mut all = Vec::new();
    for entry in store.history(&store::HistoryQuery { limit: 1000, ..Default::default() }).await.unwrap() {
        all.push((entry.resource.resource_type, entry.resource.id, entry.resource.version_id));
    }
    all.sort();
    all
}

#[tokio::test]
async fn conversion_completes_its_job_and_a_second_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let id = journal(&store, "adt_a04.hl7").await;
    let job = store.claim(CONVERT, 1, Duration::from_secs(60)).await.unwrap().remove(0);
    convert::run_jobs(&store, vec![job], &WorkerSettings::default(), &Default::default()).await;
    assert_eq!(status(&store, id).await.0, "converted");
    assert!(store.claim(CONVERT, 1, Duration::from_secs(60)).await.unwrap().is_empty(), "job completed");
    let before = versions(&store).await;
    assert!(before.iter().any(|(t, _, v)| t == "Patient" && *v == 1));
    match convert_entry(&store, id, None, None).await.unwrap() {
        EntryOutcome::Converted { written, unchanged, .. } => assert_eq!((written, unchanged > 0), (0, true)),
        other => panic!("{other:?}"),
    }
    assert_eq!(versions(&store).await, before, "no version churn");
}

#[tokio::test]
async fn a_mapping_failure_fails_the_entry_with_an_outcome_and_completes_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let id = journal(&store, "err_missing_pid3.hl7").await;
    let job = store.claim(CONVERT, 1, Duration::from_secs(60)).await.unwrap().remove(0);
    convert::run_jobs(&store, vec![job], &WorkerSettings::default(), &Default::default()).await;
    let (status, detail) = status(&store, id).await;
    assert_eq!(status, "failed");
    let outcome: Value = serde_json::from_str(&detail.unwrap()).unwrap();
    assert_eq!(outcome["issue"][0]["code"], "processing");
    assert_eq!(outcome["issue"][0]["expression"][0], "PID-3");
    assert!(store.claim(CONVERT, 1, Duration::from_secs(60)).await.unwrap().is_empty());
    assert!(versions(&store).await.is_empty());
    assert_eq!(store.journal_ids_with_status(JournalStatus::Failed, 10).await.unwrap(), vec![id]);
}

#[tokio::test]
async fn a_worker_that_lost_its_lease_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let id = journal(&store, "adt_a04.hl7").await;
    let stale = store.claim(CONVERT, 1, Duration::from_millis(1)).await.unwrap().remove(0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let fresh = store.claim(CONVERT, 1, Duration::from_secs(60)).await.unwrap().remove(0);
    assert_eq!(fresh.id, stale.id);
    convert::run_jobs(&store, vec![stale], &WorkerSettings::default(), &Default::default()).await;
    assert_eq!(status(&store, id).await.0, "received");
    assert!(versions(&store).await.is_empty());
    convert::run_jobs(&store, vec![fresh], &WorkerSettings::default(), &Default::default()).await;
    assert_eq!(status(&store, id).await.0, "converted");
}

#[tokio::test]
async fn normalization_writes_derived_resources_once_and_never_creates_retractions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let qr: Value = serde_json::from_str(&conformance("sdoh/hvs-not-at-risk.input.json")).unwrap();
    let mut tx = store.begin().await.unwrap();
    fhir_server::rest::write::put(&mut tx, qr.clone(), Precondition::None).await.unwrap();
    tx.commit().await.unwrap();
    let job = store.claim(NORMALIZE, 1, Duration::from_secs(60)).await.unwrap().remove(0);
    normalize::run_job(&store, job).await;
    assert!(store.claim(NORMALIZE, 1, Duration::from_secs(60)).await.unwrap().is_empty(), "completed with its work");
    let after = versions(&store).await;
    assert_eq!(after.iter().filter(|(t, _, _)| t == "Observation").count(), 4, "{after:?}");
    assert!(!after.iter().any(|(t, _, _)| t == "Condition"), "a retraction of a never-derived Condition is dropped");

    // The same content again (a new QR version): only the Provenance (naming the new source version) changes.
    let mut tx = store.begin().await.unwrap();
    fhir_server::rest::write::put(&mut tx, qr, Precondition::None).await.unwrap();
    tx.commit().await.unwrap();
    let job = store.claim(NORMALIZE, 1, Duration::from_secs(60)).await.unwrap().remove(0);
    normalize::run_job(&store, job).await;
    let again = versions(&store).await;
    let new: Vec<_> = again.iter().filter(|v| !after.contains(v)).map(|(t, _, v)| (t.as_str(), *v)).collect();
    assert_eq!(new, vec![("Provenance", 2), ("QuestionnaireResponse", 2)]);
}

#[tokio::test]
async fn at_shutdown_a_conversion_job_hands_back_the_entries_it_did_not_reach() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    // More entries than one transaction converts.
    let raws: Vec<String> = (1..=convert::ENTRIES_PER_TRANSACTION + 8)
        .map(|n| message("adt_a04.hl7", &format!("S-{n}"), &[("MRN00000002", &format!("MRN9{n:07}"))]))
        .collect();
    let ids = journal_batch(&store, &raws).await;
    let job = store.claim(CONVERT, 1, Duration::from_secs(60)).await.unwrap().remove(0);
    let shutdown = tokio_util::sync::CancellationToken::new();
    shutdown.cancel();
    convert::run_jobs(&store, vec![job], &WorkerSettings::default(), &shutdown).await;
    // The entries in hand (one transaction's worth) are finished; the rest wait in a new job, not behind an
    // expired lease.
    let mut converted = Vec::new();
    for &id in &ids {
        converted.push(status(&store, id).await.0 == "converted");
    }
    let in_hand = converted.iter().take_while(|c| **c).count();
    assert!((1..ids.len()).contains(&in_hand), "{converted:?}");
    assert!(converted[in_hand..].iter().all(|c| !c), "{converted:?}");
    let rest = store.claim(CONVERT, 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(store::journal_ids_of(&rest[0].payload).unwrap(), ids[in_hand..].to_vec());
}

/// Referral status jobs are reported strictly in queue order: a job whose predecessor is still pending (held by
/// another worker) is deferred, not reported ahead of it; each RRI is queued once, with its job's completion.
#[tokio::test]
async fn referral_status_updates_are_queued_in_order_even_when_an_earlier_one_is_held_elsewhere() {
    const RRI: &str = fhir_server::rest::referral_status::RRI_QUEUE;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let id = journal(&store, "ref_i12.hl7").await;
    convert_entry(&store, id, None, None).await.unwrap();
    let task_id = versions(&store).await.into_iter().find(|(t, _, _)| t == "Task").unwrap().1;
    move_task(&store, &task_id, &["accepted", "in-progress"]).await;
    let destination = crate::config::OutboundDestination {
        name: "clinic".into(),
        address: "127.0.0.1:9".into(),
        receiving_application: "EPIC".into(),
        receiving_facility: "CLINIC-1".into(),
        connect_timeout_secs: 1,
        ack_timeout_secs: 1,
        max_attempts: 3,
        tls: None,
    };
    let config = crate::config::OutboundConfig { destinations: vec![destination], ..Default::default() };
    let settings = WorkerSettings { routes: Some(crate::outbound::Routes::new(&config)), ..WorkerSettings::default() };
    let logged = |store: Store| async move {
        let query = store::OutboundQuery { limit: 10, ..Default::default() };
        store.outbound_list(&query).await.unwrap().into_iter().rev().map(|m| m.control_id).collect::<Vec<_>>()
    };

    // Another worker holds the first change; this one gets the second and must not report it first.
    let held = store.claim(RRI, 1, Duration::from_secs(60)).await.unwrap().remove(0);
    let second = store.claim(RRI, 1, Duration::from_secs(60)).await.unwrap().remove(0);
    assert!(held.id < second.id);
    super::rri::run_job(&store, second, &settings).await;
    assert!(logged(store.clone()).await.is_empty(), "deferred behind the held job");
    let waiting =
        store.job_counts().await.unwrap().into_iter().find(|c| c.queue == RRI && c.state == store::JobState::Ready);
    assert_eq!(waiting.map(|c| c.count), Some(1), "deferred, not dropped");

    super::rri::run_job(&store, held, &settings).await;
    assert_eq!(logged(store.clone()).await, [v2fhir::rri_control_id(&task_id, 2)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let second = loop {
        if let Some(job) = store.claim(RRI, 1, Duration::from_secs(60)).await.unwrap().pop() {
            break job;
        }
        assert!(std::time::Instant::now() < deadline, "the deferred job comes due again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    super::rri::run_job(&store, second, &settings).await;
    assert_eq!(
        logged(store.clone()).await,
        [v2fhir::rri_control_id(&task_id, 2), v2fhir::rri_control_id(&task_id, 3)],
        "in the order of the changes, each once"
    );
    assert!(store.job_counts().await.unwrap().iter().all(|c| c.queue != RRI), "both jobs completed");
    let queued = store.job_counts().await.unwrap();
    let outbound = queued.iter().find(|c| c.queue == crate::outbound::queue_name("clinic")).map(|c| c.count);
    assert_eq!(outbound, Some(2));
}

/// Journals raw messages as one ingest batch (one conversion job) and returns their journal ids.
async fn journal_batch(store: &Store, raws: &[String]) -> Vec<i64> {
    let messages: Vec<NewMessage> = raws
        .iter()
        .map(|raw| {
            let message = hl7v2::Message::parse(raw.as_bytes()).unwrap();
            let h = message.header();
            NewMessage {
                sending_application: h.sending_application.clone(),
                sending_facility: h.sending_facility.clone(),
                receiving_application: h.receiving_application.clone(),
                receiving_facility: h.receiving_facility.clone(),
                message_type: format!("{}^{}", h.message_type, h.trigger_event),
                control_id: h.control_id.clone(),
                version: h.version.clone(),
                raw: raw.clone().into_bytes(),
            }
        })
        .collect();
    store
        .journal_messages(&messages, CONVERT, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|o| match o {
            store::JournalOutcome::Stored { id } => id,
            store::JournalOutcome::Duplicate => panic!("duplicate"),
        })
        .collect()
}

/// A conformance message with its control id and any other text replaced.
fn message(name: &str, control_id: &str, replace: &[(&str, &str)]) -> String {
    let mut raw = conformance(&format!("v2fhir/{name}")).trim_end().replace("\r\n", "\r").replace('\n', "\r");
    let original = raw.split('|').nth(9).unwrap().to_owned();
    raw = raw.replacen(&format!("|{original}|"), &format!("|{control_id}|"), 1);
    for (from, to) in replace {
        assert!(raw.contains(from), "{name} holds {from}");
        raw = raw.replace(from, to);
    }
    raw
}

/// Entries converted together each get their own outcome: a mapping failure and an entry the store refuses (an
/// I14 moving a completed referral) fail alone, the others convert, and every claimed job completes.
#[tokio::test]
async fn entries_converted_together_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let referral = journal(&store, "ref_i12.hl7").await;
    convert_entry(&store, referral, None, None).await.unwrap();
    let task_id = versions(&store).await.into_iter().find(|(t, _, _)| t == "Task").unwrap().1;
    move_task(&store, &task_id, &["accepted", "in-progress", "completed"]).await;
    while let Some(job) = store.claim(CONVERT, 10, Duration::from_secs(60)).await.unwrap().pop() {
        store.complete(&job).await.unwrap();
    }
    let first = journal_batch(&store, &[message("adt_a04.hl7", "B-1", &[])]).await;
    let rest = journal_batch(
        &store,
        &[
            message("ref_i14.hl7", "B-2", &[("RF1|A^Accepted^HL70283", "RF1|E^Expired^HL70283")]),
            message("err_missing_pid3.hl7", "B-3", &[]),
            message("oru_r01_hvs.hl7", "B-4", &[]),
        ],
    )
    .await;
    let jobs = store.claim(CONVERT, 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(jobs.len(), 2);
    convert::run_jobs(&store, jobs, &WorkerSettings::default(), &Default::default()).await;

    assert_eq!(status(&store, first[0]).await.0, "converted");
    let (refused, detail) = status(&store, rest[0]).await;
    assert_eq!(refused, "failed");
    assert!(detail.unwrap().contains("no transition from completed to cancelled"));
    assert_eq!(status(&store, rest[1]).await.0, "failed");
    assert_eq!(status(&store, rest[2]).await.0, "converted");
    let task = store.read("Task", &task_id).await.unwrap().unwrap();
    assert!(task.content.unwrap().contains("\"status\":\"completed\""), "the refused update wrote nothing");
    assert!(store.claim(CONVERT, 10, Duration::from_secs(60)).await.unwrap().is_empty(), "both jobs completed");
    let written = versions(&store).await;
    assert!(written.iter().any(|(t, _, _)| t == "QuestionnaireResponse"), "the screening after the refusal");
    assert_eq!(written.iter().filter(|(t, _, _)| t == "Patient").count(), 2, "{written:?}");
}

/// Writes the same QuestionnaireResponse versions into a store: one of several domains, one at risk then
/// amended (two jobs for one QR), and one that cannot be normalized (no status).
async fn screenings(store: &Store) {
    let several: Value = serde_json::from_str(&conformance("sdoh/ahc-hrsn-several-domains.input.json")).unwrap();
    let at_risk: Value = serde_json::from_str(&conformance("sdoh/hvs-at-risk.input.json")).unwrap();
    let mut amended = at_risk.clone();
    amended["status"] = Value::String("amended".into());
    let mut invalid = several.clone();
    invalid["id"] = Value::String("ahc-invalid".into());
    invalid.as_object_mut().unwrap().remove("status");
    for qr in [several, at_risk, amended, invalid] {
        let mut tx = store.begin().await.unwrap();
        fhir_server::rest::write::put(&mut tx, qr, Precondition::None).await.unwrap();
        tx.commit().await.unwrap();
    }
}

/// Current content of every resource apart from `meta` (and a Provenance's `recorded`).
async fn contents(store: &Store) -> Vec<(String, String, i64, Value)> {
    let mut all = Vec::new();
    for (resource_type, id, _) in versions(store).await {
        let current = store.read(&resource_type, &id).await.unwrap().unwrap();
        let mut content: Value = serde_json::from_str(current.content.as_deref().unwrap()).unwrap();
        content.as_object_mut().unwrap().remove("meta");
        content.as_object_mut().unwrap().remove("recorded");
        all.push((resource_type, id, current.version_id, content));
    }
    all.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    all
}

/// Normalizing many jobs in one transaction writes exactly what normalizing them one at a time writes, and the
/// job whose QR cannot be normalized is dead-lettered alone.
#[tokio::test]
async fn normalizing_jobs_together_writes_what_one_at_a_time_writes() {
    let together_dir = tempfile::tempdir().unwrap();
    let together = open(&together_dir).await;
    screenings(&together).await;
    let jobs = together.claim(NORMALIZE, 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(jobs.len(), 4);
    normalize::run_jobs(&together, jobs).await;

    let apart_dir = tempfile::tempdir().unwrap();
    let apart = open(&apart_dir).await;
    screenings(&apart).await;
    while let Some(job) = apart.claim(NORMALIZE, 1, Duration::from_secs(60)).await.unwrap().pop() {
        normalize::run_job(&apart, job).await;
    }

    let written = contents(&together).await;
    assert_eq!(written, contents(&apart).await);
    let conditions: Vec<_> = written.iter().filter(|(t, _, _, _)| t == "Condition").collect();
    assert!(conditions.len() >= 2, "several domains at risk: {conditions:?}");
    let hvs_derived: Vec<_> =
        written.iter().filter(|(t, _, _, c)| t == "Observation" && c.to_string().contains("hvs-0002")).collect();
    assert!(!hvs_derived.is_empty());
    // Both jobs of the amended QR normalize its current version: the derived results are corrected ones.
    let results: Vec<_> = hvs_derived.iter().filter(|(_, _, _, c)| c.get("valueCodeableConcept").is_some()).collect();
    assert!(!results.is_empty() && results.iter().all(|(_, _, v, c)| c["status"] == "corrected" && *v == 1));
    for store in [&together, &apart] {
        assert!(store.claim(NORMALIZE, 10, Duration::from_secs(60)).await.unwrap().is_empty());
        let dead = store.dead_jobs(NORMALIZE, 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].1.contains("ahc-invalid"), "{dead:?}");
    }
}

/// On PostgreSQL workers convert side by side: two batches whose messages all create one new Organization race to
/// create it. The loser's transaction runs again at once and finds it stored, so every entry converts and every
/// job completes on its first claim instead of waiting for a retry.
#[tokio::test]
async fn side_by_side_conversions_creating_the_same_resources_all_complete_at_once() {
    let base =
        std::env::var("SDOH_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = Store::connect(&StoreOptions::new(base.clone())).await.expect("PostgreSQL is required for this test");
    let schema = format!("worker_race_{}", std::process::id());
    store::testing::execute(&admin, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let store =
        Store::connect(&StoreOptions::new(format!("{base}?options=-c%20search_path%3D{schema}"))).await.unwrap();
    store.migrate().await.unwrap();
    for round in 0..3 {
        let facility = format!("RACE-CLINIC-{round}");
        let batch = |first: usize| -> Vec<String> {
            (first..first + 10)
                .map(|n| {
                    message(
                        "oru_r01_hvs.hl7",
                        &format!("R{round}-{n}"),
                        &[("|CLINIC-1|", &format!("|{facility}|")), ("MRN00000002", &format!("MRN8{round}{n:06}"))],
                    )
                })
                .collect()
        };
        let ids = [journal_batch(&store, &batch(0)).await, journal_batch(&store, &batch(10)).await].concat();
        let first = store.claim(CONVERT, 1, Duration::from_secs(60)).await.unwrap();
        let second = store.claim(CONVERT, 1, Duration::from_secs(60)).await.unwrap();
        let settings = WorkerSettings::default();
        let none = tokio_util::sync::CancellationToken::new();
        tokio::join!(
            convert::run_jobs(&store, first, &settings, &none),
            convert::run_jobs(&store, second, &settings, &none)
        );
        for id in ids {
            assert_eq!(status(&store, id).await.0, "converted", "round {round}");
        }
        let left = store.job_counts().await.unwrap();
        assert!(left.iter().all(|c| c.queue != CONVERT), "round {round}: {left:?}");
    }
    store.close().await;
    store::testing::execute(&admin, &format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

/// A batch in which the same resource comes back (the sending facility in every message, a derived resource
/// named twice) writes what writing each candidate in its own call writes, with the same outcomes.
#[tokio::test]
async fn repeated_candidates_write_and_report_as_one_at_a_time() {
    use super::{Candidate, Upsert, upsert_all};
    let org = serde_json::json!({"resourceType": "Organization", "id": "fac", "name": "Clinic"});
    let patient = serde_json::json!({"resourceType": "Patient", "id": "p", "gender": "female"});
    let changed = serde_json::json!({"resourceType": "Patient", "id": "p", "gender": "male"});
    let retraction = serde_json::json!({"resourceType": "Condition", "id": "c", "verificationStatus": {"text": "x"}});
    let candidate = |resource: &Value, only_if_absent, only_if_present| Candidate {
        resource: resource.clone(),
        only_if_absent,
        only_if_present,
        rows: None,
    };
    let batch = || {
        vec![
            candidate(&org, true, false),
            candidate(&patient, false, false),
            candidate(&org, true, false),
            candidate(&patient, false, false),
            candidate(&changed, false, false),
            candidate(&changed, false, false),
            candidate(&retraction, false, true),
            candidate(&retraction, false, true),
        ]
    };

    let together_dir = tempfile::tempdir().unwrap();
    let together = open(&together_dir).await;
    let mut tx = together.begin().await.unwrap();
    let outcomes = upsert_all(&mut tx, batch()).await.unwrap();
    tx.commit().await.unwrap();

    let alone_dir = tempfile::tempdir().unwrap();
    let alone = open(&alone_dir).await;
    let mut one_at_a_time = Vec::new();
    for c in batch() {
        let mut tx = alone.begin().await.unwrap();
        one_at_a_time.extend(upsert_all(&mut tx, vec![c]).await.unwrap());
        tx.commit().await.unwrap();
    }

    use Upsert::{Kept, Unchanged, Written};
    assert_eq!(one_at_a_time, [Written, Written, Kept, Unchanged, Written, Unchanged, Kept, Kept]);
    assert_eq!(outcomes, one_at_a_time);
    assert_eq!(versions(&together).await, versions(&alone).await);
    assert_eq!(versions(&together).await.len(), 3, "Organization v1, Patient v1 and v2");
}

/// A screening is derived on a reader before its transaction; when its QR has a new version by the time the
/// transaction reads it, the transaction derives again from that version instead of writing the stale derivation.
#[tokio::test]
async fn a_screening_changed_after_its_early_derivation_is_derived_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let negative: Value = serde_json::from_str(&conformance("sdoh/hvs-not-at-risk.input.json")).unwrap();
    let mut at_risk: Value = serde_json::from_str(&conformance("sdoh/hvs-at-risk.input.json")).unwrap();
    let id = negative["id"].as_str().unwrap().to_owned();
    at_risk["id"] = Value::String(id.clone());
    let mut tx = store.begin().await.unwrap();
    fhir_server::rest::write::put(&mut tx, negative, Precondition::None).await.unwrap();
    tx.commit().await.unwrap();

    let recorded = store::format_instant(store::Timestamp::now());
    let ahead = normalize::derive_ahead(&store, &[id.as_str()], &recorded).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    fhir_server::rest::write::put(&mut tx, at_risk, Precondition::None).await.unwrap();
    tx.commit().await.unwrap();

    let jobs = store.claim(NORMALIZE, 10, Duration::from_secs(60)).await.unwrap();
    let named: Vec<_> = jobs.into_iter().map(|job| (job, id.clone())).collect();
    let outcomes = normalize::normalize_with(&store, &named, ahead, &recorded).await.unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let written = versions(&store).await;
    assert!(
        written.iter().any(|(t, _, _)| t == "Condition"),
        "the at-risk version's food insecurity concern: {written:?}"
    );
}
