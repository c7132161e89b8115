//! Store throughput: resource writes (single and batched), reads by id, and job queue cycles, on SQLite and PostgreSQL.
//!
//! PostgreSQL runs against `SDOH_TEST_POSTGRES_URL` (default postgres://postgres@127.0.0.1:5432/test) in a fresh schema.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use store::{NewJob, Precondition, Store, StoreOptions};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

struct Backend {
    name: &'static str,
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let mut sqlite = StoreOptions::new(format!("sqlite:{}", dir.path().join("bench.db").display()));
    sqlite.max_connections = 8;
    let sqlite = Store::connect(&sqlite).await.unwrap();
    sqlite.migrate().await.unwrap();
    let mut out = vec![Backend { name: "sqlite", store: sqlite, _dir: Some(dir) }];

    let base =
        std::env::var("SDOH_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = Store::connect(&StoreOptions::new(base.clone())).await.expect("PostgreSQL for the benchmarks");
    let schema = format!("bench_{}", std::process::id());
    store::testing::execute(&admin, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let mut pg = StoreOptions::new(format!("{base}?options=-c%20search_path%3D{schema}"));
    pg.max_connections = 16;
    let pg = Store::connect(&pg).await.unwrap();
    pg.migrate().await.unwrap();
    out.push(Backend { name: "postgres", store: pg, _dir: None });
    out
}

fn observation(id: usize) -> serde_json::Value {
    json!({
        "resourceType": "Observation", "id": format!("obs-{id}"), "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "social-history"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "88122-7"}]},
        "subject": {"reference": format!("Patient/p-{}", id % 1000)},
        "valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "LA28397-0", "display": "Often true"}]}
    })
}

fn journal_message(n: u64) -> store::NewMessage {
    let mut raw =
        format!("MSH|^~\\&|EPIC|CLINIC|SDOH-GATEWAY|SDOH-HUB|20261123||ORU^R01^ORU_R01|B{n}|P|2.5.1\r").into_bytes();
    raw.resize(1000, b'X');
    store::NewMessage {
        sending_application: "EPIC".into(),
        sending_facility: "CLINIC".into(),
        receiving_application: "SDOH-GATEWAY".into(),
        receiving_facility: "SDOH-HUB".into(),
        message_type: "ORU^R01".into(),
        control_id: format!("B{n}"),
        version: "2.5.1".into(),
        raw,
    }
}

fn bench_store(c: &mut Criterion) {
    let rt = runtime();
    let backends = rt.block_on(backends());
    let mut group = c.benchmark_group("store");
    group.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    for backend in &backends {
        let store = &backend.store;
        // The read benchmark's working set, so it does not depend on what the write benchmarks left behind.
        rt.block_on(async {
            let mut tx = store.begin().await.unwrap();
            for id in 1..=500 {
                tx.put(observation(id), Precondition::None).await.unwrap();
            }
            tx.commit().await.unwrap();
        });
        let mut next_id = 10_000_000usize;
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("write_single", backend.name), |b| {
            b.to_async(&rt).iter(|| {
                next_id += 1;
                let id = next_id;
                async move {
                    let mut tx = store.begin().await.unwrap();
                    tx.put(observation(id), Precondition::None).await.unwrap();
                    tx.commit().await.unwrap();
                }
            })
        });
        group.throughput(Throughput::Elements(100));
        group.bench_function(BenchmarkId::new("write_batch_100", backend.name), |b| {
            b.to_async(&rt).iter(|| {
                let start = next_id;
                next_id += 100;
                async move {
                    let mut tx = store.begin().await.unwrap();
                    for id in start..start + 100 {
                        tx.put(observation(1_000_000 + id), Precondition::None).await.unwrap();
                    }
                    tx.commit().await.unwrap();
                }
            })
        });
        // Reads by id from 16 concurrent tasks, as concurrent API clients would.
        const READERS: usize = 16;
        const READS_EACH: usize = 250;
        group.throughput(Throughput::Elements((READERS * READS_EACH) as u64));
        group.bench_function(BenchmarkId::new("read_by_id_x16", backend.name), |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let started = Instant::now();
                for _ in 0..iters {
                    let mut tasks = tokio::task::JoinSet::new();
                    for r in 0..READERS {
                        let store = store.clone();
                        tasks.spawn(async move {
                            for i in 0..READS_EACH {
                                let id = format!("obs-{}", 1 + (r * READS_EACH + i) % 500);
                                assert!(store.read("Observation", &id).await.unwrap().is_some());
                            }
                        });
                    }
                    while tasks.join_next().await.is_some() {}
                }
                started.elapsed()
            })
        });
        // Group commit as ingest does it: 16 HL7 messages (about 1 KiB each) per journal transaction.
        group.throughput(Throughput::Elements(16));
        let mut next_message = 0u64;
        group.bench_function(BenchmarkId::new("journal_commit_16", backend.name), |b| {
            b.to_async(&rt).iter(|| {
                let batch: Vec<store::NewMessage> = (0..16)
                    .map(|_| {
                        next_message += 1;
                        journal_message(next_message)
                    })
                    .collect();
                async move {
                    store.journal_messages(&batch, "convert", 10).await.unwrap();
                }
            })
        });
        // Enqueue in batches, then 4 workers claim 32 at a time and complete in one transaction per batch.
        const JOBS: usize = 2000;
        group.throughput(Throughput::Elements(JOBS as u64));
        group.bench_function(BenchmarkId::new("job_cycle_4_workers", backend.name), |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let started = Instant::now();
                for _ in 0..iters {
                    for chunk in 0..JOBS / 200 {
                        let mut tx = store.begin().await.unwrap();
                        for i in 0..200 {
                            tx.enqueue(&NewJob::new("bench", format!("{{\"n\":{}}}", chunk * 200 + i))).await.unwrap();
                        }
                        tx.commit().await.unwrap();
                    }
                    let mut workers = tokio::task::JoinSet::new();
                    for _ in 0..4 {
                        let store = store.clone();
                        workers.spawn(async move {
                            loop {
                                let jobs = store.claim("bench", 32, Duration::from_secs(60)).await.unwrap();
                                if jobs.is_empty() {
                                    break;
                                }
                                store.complete_many(&jobs).await.unwrap();
                            }
                        });
                    }
                    while workers.join_next().await.is_some() {}
                }
                started.elapsed()
            })
        });
    }
    group.finish();
    bench_rusqlite_peer(c, &backends[0]);
}

/// The peer: rusqlite on the same database file and the same statements, without sqlx's async layer.
fn bench_rusqlite_peer(c: &mut Criterion, sqlite: &Backend) {
    let path = sqlite._dir.as_ref().expect("sqlite folder").path().join("bench.db");
    let mut group = c.benchmark_group("peer_rusqlite");
    group.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    const READERS: usize = 2;
    const READS_EACH: usize = 2000;
    group.throughput(Throughput::Elements((READERS * READS_EACH) as u64));
    group.bench_function("read_by_id_x2_threads", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                std::thread::scope(|scope| {
                    for r in 0..READERS {
                        let path = path.clone();
                        scope.spawn(move || {
                            let conn = rusqlite::Connection::open(&path).unwrap();
                            let mut stmt = conn
                                .prepare_cached(
                                    "SELECT resource_type, id, version_id, last_updated_us, deleted, content \
                                     FROM resources WHERE resource_type = ?1 AND id = ?2",
                                )
                                .unwrap();
                            for i in 0..READS_EACH {
                                let id = format!("obs-{}", 1 + (r * READS_EACH + i) % 500);
                                let found: Option<String> =
                                    stmt.query_row(rusqlite::params!["Observation", id], |row| row.get(5)).ok();
                                assert!(found.is_some());
                            }
                        });
                    }
                });
            }
            started.elapsed()
        })
    });
    group.throughput(Throughput::Elements(100));
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    let mut next = 5_000_000usize;
    group.bench_function("write_batch_100", |b| {
        b.iter(|| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
            for _ in 0..100 {
                next += 1;
                let id = format!("obs-{next}");
                let mut resource = observation(next);
                resource["meta"] = json!({"versionId": "1", "lastUpdated": "2026-11-23T10:00:00.000000Z"});
                let content = serde_json::to_string(&resource).unwrap();
                let existing: Option<i64> = tx
                    .query_row(
                        "SELECT version_id FROM resources WHERE resource_type = ?1 AND id = ?2",
                        rusqlite::params!["Observation", id],
                        |r| r.get(0),
                    )
                    .ok();
                assert!(existing.is_none());
                for sql in [
                    "INSERT INTO resources (resource_type, id, version_id, last_updated_us, deleted, content) VALUES (?1, ?2, 1, 0, 0, ?3)",
                    "INSERT INTO resource_history (resource_type, id, version_id, last_updated_us, deleted, content) VALUES (?1, ?2, 1, 0, 0, ?3)",
                ] {
                    tx.prepare_cached(sql).unwrap().execute(rusqlite::params!["Observation", id, content]).unwrap();
                }
            }
            tx.commit().unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, bench_store);
criterion_main!(benches);
