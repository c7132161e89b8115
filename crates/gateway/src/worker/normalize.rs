//! The normalization worker: QuestionnaireResponse versions -> SDOHCC Observations, health-concern Conditions and
//! Provenance (`sdoh::normalize`), stored in one transaction with the job's completion.
//!
//! A job names the QR version that was written, but the CURRENT version is what gets normalized: derived resources
//! must reflect the latest answers whichever job runs last. A deleted QR is treated as entered-in-error: its last
//! live version is normalized with that status, which retracts everything it derived. Retractions apply only to
//! resources that exist, and nothing is written where the stored content already says the same.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::Value;
use store::{HistoryQuery, Job, Store, StoreError, Timestamp};

use super::{Candidate, Upsert, dead_letter, retry_later, same_content, upsert_all};

/// The gateway as the author of derived resources (Provenance agent, Condition asserter).
pub const AGENT: &str = "Device/sdoh-gateway";
const DEVICE_ID: &str = "sdoh-gateway";
const QR: &str = "QuestionnaireResponse";

/// What one normalization did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NormalizeOutcome {
    Normalized {
        instrument: String,
        written: usize,
        unchanged: usize,
        retracted: usize,
    },
    /// Still in progress, or the QR never existed: nothing to derive.
    Skipped,
    /// Stored as sent, but no supported instrument recognised: nothing derived, counted and logged for operators.
    Unsupported,
}

#[derive(serde::Deserialize)]
struct Payload {
    id: String,
}

/// Records `Device/sdoh-gateway` if it is not there, so derived resources' references resolve.
pub async fn ensure_device(store: &Store) -> Result<(), StoreError> {
    let device = serde_json::json!({
        "resourceType": "Device",
        "id": DEVICE_ID,
        "status": "active",
        "deviceName": [{"name": "sdoh-gateway", "type": "manufacturer-name"}],
        "type": {"text": "SDOH gateway: HL7 v2 conversion and screening normalization"},
    });
    let mut tx = store.begin().await?;
    // Replicas starting together must not both create it.
    tx.serialize_on("device:sdoh-gateway").await?;
    let device = Candidate { resource: device, only_if_absent: true, only_if_present: false, rows: None };
    upsert_all(&mut tx, vec![device]).await?;
    tx.commit().await
}

pub(super) async fn run_job(store: &Store, job: Job) {
    let started = Instant::now();
    let Ok(payload) = serde_json::from_str::<Payload>(&job.payload) else {
        dead_letter(store, &job, "payload does not name a QuestionnaireResponse id").await;
        return;
    };
    let named = [(job, payload.id)];
    match normalize_many(store, &named).await {
        Ok(outcomes) => settle(store, &named, outcomes, started).await,
        Err(StoreError::LeaseLost { .. }) => {
            tracing::warn!(job_id = named[0].0.id, "normalization job lease lost; its work was rolled back")
        }
        Err(e) => retry_later(store, &named[0].0, &e).await,
    }
}

/// Reports each job's outcome, and dead-letters the jobs whose QR could not be normalized (the error names
/// element paths and LOINC codes only, never answers).
async fn settle(
    store: &Store,
    named: &[(Job, String)],
    outcomes: Vec<Result<NormalizeOutcome, sdoh::NormalizeError>>,
    started: Instant,
) {
    let elapsed = started.elapsed().div_f64(named.len().max(1) as f64);
    for ((job, id), outcome) in named.iter().zip(outcomes) {
        match outcome {
            Ok(outcome) => report(id, &outcome, elapsed),
            Err(e) => {
                metrics::counter!("normalization_total", "outcome" => "failed").increment(1);
                dead_letter(store, job, &format!("{QR}/{id}: {e}")).await;
            }
        }
    }
}

/// Counts and logs one job's outcome (`elapsed`: its share of the time).
fn report(id: &str, outcome: &NormalizeOutcome, elapsed: std::time::Duration) {
    let label = match outcome {
        NormalizeOutcome::Normalized { .. } => "normalized",
        NormalizeOutcome::Skipped => "skipped",
        NormalizeOutcome::Unsupported => "unsupported_instrument",
    };
    metrics::counter!("normalization_total", "outcome" => label).increment(1);
    metrics::histogram!("normalization_duration_seconds", "outcome" => label).record(elapsed);
    match outcome {
        NormalizeOutcome::Normalized { instrument, written, unchanged, retracted } => tracing::info!(
            resource_type = QR,
            id,
            instrument,
            written,
            unchanged,
            retracted,
            "questionnaire response normalized"
        ),
        NormalizeOutcome::Skipped => tracing::debug!(resource_type = QR, id, "nothing to normalize"),
        NormalizeOutcome::Unsupported => tracing::info!(
            resource_type = QR,
            id,
            "questionnaire response of no supported screening instrument; stored, not normalized"
        ),
    }
}

/// Derivations made before a transaction, by QR id, with the `(versionId, deleted)` of the QR version they are of.
pub(super) type Ahead = HashMap<String, ((i64, bool), Prepared)>;

/// What a QuestionnaireResponse's current version asks for.
pub(super) enum Prepared {
    /// Nothing to write.
    Done(NormalizeOutcome),
    Derive(Derivation),
    /// The response cannot be normalized as it stands (the error names paths and codes, never answers).
    Invalid(sdoh::NormalizeError),
}

/// What one QR derives, and whether it retracts everything instead (entered in error, or deleted).
pub(super) struct Derivation {
    derived: sdoh::Derived,
    retract_all: bool,
    /// The derived resources' index rows, in their order, when extracted before the transaction.
    rows: Option<Vec<Vec<store::IndexRow>>>,
}

async fn prepare(
    store: &Store,
    id: &str,
    current: Option<store::StoredResource>,
    recorded: &str,
) -> Result<Prepared, StoreError> {
    let (qr, retract_all) = match current {
        None => (None, false),
        Some(c) if c.deleted => (last_live_version(store, id).await?.map(entered_in_error), true),
        Some(c) => {
            let qr = c.content.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok());
            let retract = qr.as_ref().and_then(|q| q.get("status")).and_then(Value::as_str) == Some("entered-in-error");
            (qr, retract)
        }
    };
    let Some(qr) = qr else { return Ok(Prepared::Done(NormalizeOutcome::Skipped)) };
    let context = sdoh::Context { recorded, agent: AGENT };
    Ok(match sdoh::normalize(&qr, &context) {
        Ok(Some(derived)) => Prepared::Derive(Derivation { derived, retract_all, rows: None }),
        Ok(None) => {
            // In-progress responses are not screenings yet; anything else here is an instrument we do not know.
            let in_progress = qr.get("status").and_then(Value::as_str) == Some("in-progress");
            Prepared::Done(if in_progress { NormalizeOutcome::Skipped } else { NormalizeOutcome::Unsupported })
        }
        Err(e) => Prepared::Invalid(e),
    })
}

/// Writes what each QR derives: all their resources through one [`upsert_all`] (one read, bulk creates), then the
/// retractions of what earlier versions derived and these no longer do, found with one read.
async fn write_derived(
    tx: &mut store::StoreTx,
    derivations: Vec<Derivation>,
) -> Result<Vec<NormalizeOutcome>, StoreError> {
    let mut sizes = Vec::with_capacity(derivations.len());
    let mut candidates = Vec::new();
    let mut rest = Vec::with_capacity(derivations.len());
    for Derivation { derived, retract_all, rows } in derivations {
        sizes.push(derived.resources.len());
        let mut rows = rows.map(Vec::into_iter);
        // An entered-in-error (or deleted) QR retracts what exists and creates nothing.
        candidates.extend(derived.resources.into_iter().map(|resource| Candidate {
            resource,
            only_if_absent: false,
            only_if_present: retract_all,
            rows: rows.as_mut().and_then(Iterator::next),
        }));
        rest.push((derived.instrument, derived.retractions, retract_all));
    }
    let mut upserts = upsert_all(tx, candidates).await?.into_iter();
    let mut counts = Vec::with_capacity(rest.len());
    for (size, (_, _, retract_all)) in sizes.iter().zip(&rest) {
        let (mut written, mut unchanged, mut retracted) = (0, 0, 0);
        for outcome in upserts.by_ref().take(*size) {
            match outcome {
                Upsert::Written if *retract_all => retracted += 1,
                Upsert::Written => written += 1,
                Upsert::Unchanged => unchanged += 1,
                Upsert::Kept => {}
            }
        }
        counts.push((written, unchanged, retracted));
    }
    // Resources an earlier version derived and this one does not are marked entered-in-error; ids never derived
    // (most of the list) are looked up together and write nothing.
    let keys: Vec<(&str, &str)> = rest
        .iter()
        .flat_map(|(_, retractions, _)| retractions.iter().map(|r| (r.resource_type, r.id.as_str())))
        .collect();
    let existing = tx.read_many(&keys).await?;
    let mut outcomes = Vec::with_capacity(rest.len());
    for ((instrument, retractions, _), (written, unchanged, mut retracted)) in rest.iter().zip(counts) {
        for r in retractions {
            let key = (r.resource_type.to_owned(), r.id.clone());
            let Some(stored) = existing.get(&key).filter(|c| !c.deleted) else { continue };
            let Some(stored) = stored.content.as_deref() else { continue };
            let Ok(content) = serde_json::from_str::<Value>(stored) else { continue };
            let retraction = sdoh::retract(&content);
            // The stored version was just read: write it directly rather than through `upsert_all`, which reads again.
            if !same_content(stored, &retraction) {
                fhir_server::rest::write::put(tx, retraction, store::Precondition::None).await?;
                retracted += 1;
            }
        }
        outcomes.push(NormalizeOutcome::Normalized { instrument: instrument.clone(), written, unchanged, retracted });
    }
    Ok(outcomes)
}

/// Normalizes the QRs many jobs name in one transaction with the jobs' completion: one commit, one read of the
/// QRs and one [`upsert_all`] for all of them, instead of one of each per job. A job whose QR cannot be normalized
/// is dead-lettered after the others commit; when the transaction itself fails, each job runs on its own, so one
/// job's failure is retried or reported as its own.
pub(super) async fn run_jobs(store: &Store, jobs: Vec<Job>) {
    if jobs.len() < 2 {
        for job in jobs {
            run_job(store, job).await;
        }
        return;
    }
    let started = Instant::now();
    let mut named = Vec::with_capacity(jobs.len());
    for job in jobs {
        match serde_json::from_str::<Payload>(&job.payload) {
            Ok(payload) => named.push((job, payload.id)),
            Err(_) => dead_letter(store, &job, "payload does not name a QuestionnaireResponse id").await,
        }
    }
    match normalize_many(store, &named).await {
        Ok(outcomes) => settle(store, &named, outcomes, started).await,
        Err(e) => {
            tracing::warn!(jobs = named.len(), error = %e, "normalizing jobs together failed; running them one by one");
            for (job, _) in named {
                run_job(store, job).await;
            }
        }
    }
}

/// Normalizes the current version of each QR the `(job, QR id)` pairs name, in one transaction that completes
/// the jobs, and returns each job's outcome: normalized (or skipped), or why its QR could not be normalized (that
/// job is not completed here). Each QR is normalized once however many jobs name it: its current version is what
/// every one of them asks for.
async fn normalize_many(
    store: &Store,
    named: &[(Job, String)],
) -> Result<Vec<Result<NormalizeOutcome, sdoh::NormalizeError>>, StoreError> {
    let recorded = store::format_instant(Timestamp::now());
    // SQLite's one writer is held by a transaction from its first statement to its commit, so deriving before
    // taking it lets ingest and conversion write meanwhile. PostgreSQL runs transactions side by side: there the
    // early reads would only add round trips (normalization measured 15-20 % slower with them).
    let ahead = match store.backend() {
        store::BackendKind::Sqlite => derive_ahead(store, &distinct_ids(named), &recorded).await?,
        store::BackendKind::Postgres => Ahead::new(),
    };
    normalize_with(store, named, ahead, &recorded).await
}

/// The QR ids the jobs name, each once, in the order every worker takes their locks.
fn distinct_ids(named: &[(Job, String)]) -> Vec<&str> {
    let mut ids: Vec<&str> = named.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// [`normalize_many`]'s transaction, given what [`derive_ahead`] derived before it.
pub(super) async fn normalize_with(
    store: &Store,
    named: &[(Job, String)],
    mut ahead: Ahead,
    recorded: &str,
) -> Result<Vec<Result<NormalizeOutcome, sdoh::NormalizeError>>, StoreError> {
    let ids = distinct_ids(named);
    let mut tx = store.begin().await?;
    // Two jobs for one QR (two quick updates) must not interleave their reads and writes; taken in one order by
    // every worker, so two batches naming the same QRs cannot deadlock.
    for id in &ids {
        tx.serialize_on(&format!("normalize:{QR}/{id}")).await?;
    }
    let keys: Vec<(&str, &str)> = ids.iter().map(|id| (QR, *id)).collect();
    let mut current = tx.read_many(&keys).await?;
    let mut by_id: HashMap<&str, Result<NormalizeOutcome, sdoh::NormalizeError>> = HashMap::new();
    let (mut deriving, mut derivations) = (Vec::new(), Vec::new());
    for id in ids {
        let stored = current.remove(&(QR.to_owned(), id.to_owned()));
        let prepared = match (ahead.remove(id), &stored) {
            (Some((version, prepared)), Some(s)) if version == (s.version_id, s.deleted) => prepared,
            // Changed since it was read ahead (or not there then): derived again from what the transaction sees.
            _ => prepare(store, id, stored, recorded).await?,
        };
        match prepared {
            Prepared::Done(outcome) => {
                by_id.insert(id, Ok(outcome));
            }
            Prepared::Invalid(e) => {
                by_id.insert(id, Err(e));
            }
            Prepared::Derive(derivation) => {
                deriving.push(id);
                derivations.push(derivation);
            }
        }
    }
    for (id, outcome) in deriving.into_iter().zip(write_derived(&mut tx, derivations).await?) {
        by_id.insert(id, Ok(outcome));
    }
    let outcomes: Vec<_> = named.iter().map(|(_, id)| by_id[id.as_str()].clone()).collect();
    let completed: Vec<Job> =
        named.iter().zip(&outcomes).filter(|(_, o)| o.is_ok()).map(|((job, _), _)| job.clone()).collect();
    tx.complete_jobs(&completed).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// Each QR's current version read on a reader and derived, with the derived resources' index rows, before the
/// transaction begins: the transaction uses a derivation whose QR version it finds unchanged, so SQLite's one writer
/// is held for writing rather than for normalizing and extracting index rows (a fifth of a batch's time).
pub(super) async fn derive_ahead(store: &Store, ids: &[&str], recorded: &str) -> Result<Ahead, StoreError> {
    let keys: Vec<(&str, &str)> = ids.iter().map(|id| (QR, *id)).collect();
    let mut ahead = HashMap::with_capacity(ids.len());
    for ((_, id), stored) in store.read_many(&keys).await? {
        let version = (stored.version_id, stored.deleted);
        let mut prepared = prepare(store, &id, Some(stored), recorded).await?;
        if let Prepared::Derive(derivation) = &mut prepared {
            let rows = derivation.derived.resources.iter().map(fhir_server::rest::write::index_rows).collect();
            derivation.rows = Some(rows);
        }
        ahead.insert(id, (version, prepared));
    }
    Ok(ahead)
}

/// The newest version of the QR that was not a deletion.
async fn last_live_version(store: &Store, id: &str) -> Result<Option<Value>, StoreError> {
    let mut before = None;
    loop {
        let page = store
            .history(&HistoryQuery {
                resource_type: Some(QR.into()),
                id: Some(id.into()),
                before_seq: before,
                limit: 50,
                ..HistoryQuery::default()
            })
            .await?;
        for entry in &page {
            if let Some(content) = entry.resource.content.as_deref().filter(|_| !entry.resource.deleted) {
                return Ok(serde_json::from_str(content).ok());
            }
        }
        match page.last() {
            Some(last) if page.len() == 50 => before = Some(last.seq),
            _ => return Ok(None),
        }
    }
}

fn entered_in_error(mut qr: Value) -> Value {
    qr["status"] = Value::String("entered-in-error".into());
    qr
}
