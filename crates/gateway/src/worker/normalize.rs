//! The normalization worker: QuestionnaireResponse versions -> SDOHCC Observations, health-concern Conditions and
//! Provenance (`sdoh::normalize`), stored in one transaction with the job's completion.
//!
//! A job names the QR version that was written, but the CURRENT version is what gets normalized: derived resources
//! must reflect the latest answers whichever job runs last. A deleted QR is treated as entered-in-error: its last
//! live version is normalized with that status, which retracts everything it derived. Retractions apply only to
//! resources that exist, and nothing is written where the stored content already says the same.

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
    upsert_all(&mut tx, vec![Candidate { resource: device, only_if_absent: true, only_if_present: false }]).await?;
    tx.commit().await
}

pub(super) async fn run_job(store: &Store, job: Job) {
    let started = Instant::now();
    let Ok(payload) = serde_json::from_str::<Payload>(&job.payload) else {
        dead_letter(store, &job, "payload does not name a QuestionnaireResponse id").await;
        return;
    };
    match normalize(store, &payload.id, &job).await {
        Ok(outcome) => {
            let label = match &outcome {
                NormalizeOutcome::Normalized { .. } => "normalized",
                NormalizeOutcome::Skipped => "skipped",
                NormalizeOutcome::Unsupported => "unsupported_instrument",
            };
            metrics::counter!("normalization_total", "outcome" => label).increment(1);
            metrics::histogram!("normalization_duration_seconds", "outcome" => label).record(started.elapsed());
            match outcome {
                NormalizeOutcome::Normalized { instrument, written, unchanged, retracted } => tracing::info!(
                    resource_type = QR,
                    id = %payload.id,
                    instrument,
                    written,
                    unchanged,
                    retracted,
                    "questionnaire response normalized"
                ),
                NormalizeOutcome::Skipped => {
                    tracing::debug!(resource_type = QR, id = %payload.id, "nothing to normalize")
                }
                NormalizeOutcome::Unsupported => tracing::info!(
                    resource_type = QR,
                    id = %payload.id,
                    "questionnaire response of no supported screening instrument; stored, not normalized"
                ),
            }
        }
        Err(Failure::Input(e)) => {
            metrics::counter!("normalization_total", "outcome" => "failed").increment(1);
            // The error names element paths and LOINC codes only, never answers.
            dead_letter(store, &job, &format!("{QR}/{}: {e}", payload.id)).await;
        }
        Err(Failure::Store(StoreError::LeaseLost { .. })) => {
            tracing::warn!(job_id = job.id, "normalization job lease lost; its work was rolled back")
        }
        Err(Failure::Store(e)) => retry_later(store, &job, &e).await,
    }
}

enum Failure {
    Input(sdoh::NormalizeError),
    Store(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

/// Normalizes the current version of `QuestionnaireResponse/<id>` and completes `job` in the same transaction.
async fn normalize(store: &Store, id: &str, job: &Job) -> Result<NormalizeOutcome, Failure> {
    let mut tx = store.begin().await?;
    // Two jobs for one QR (two quick updates) must not interleave their reads and writes.
    tx.serialize_on(&format!("normalize:{QR}/{id}")).await?;
    let current = tx.read(QR, id).await?;
    let (qr, retract_all) = match current {
        None => (None, false),
        Some(c) if c.deleted => (last_live_version(store, id).await?.map(entered_in_error), true),
        Some(c) => {
            let qr = c.content.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok());
            let retract = qr.as_ref().and_then(|q| q.get("status")).and_then(Value::as_str) == Some("entered-in-error");
            (qr, retract)
        }
    };
    let Some(qr) = qr else {
        tx.complete_job(job).await?;
        tx.commit().await?;
        return Ok(NormalizeOutcome::Skipped);
    };
    let recorded = store::format_instant(Timestamp::now());
    let context = sdoh::Context { recorded: &recorded, agent: AGENT };
    let derived = match sdoh::normalize(&qr, &context) {
        Ok(Some(d)) => d,
        Ok(None) => {
            tx.complete_job(job).await?;
            tx.commit().await?;
            // In-progress responses are not screenings yet; anything else here is an instrument we do not know.
            let in_progress = qr.get("status").and_then(Value::as_str) == Some("in-progress");
            return Ok(if in_progress { NormalizeOutcome::Skipped } else { NormalizeOutcome::Unsupported });
        }
        Err(e) => return Err(Failure::Input(e)),
    };
    let (mut written, mut unchanged, mut retracted) = (0, 0, 0);
    // An entered-in-error (or deleted) QR retracts what exists and creates nothing.
    let candidates = derived
        .resources
        .into_iter()
        .map(|resource| Candidate { resource, only_if_absent: false, only_if_present: retract_all })
        .collect();
    for outcome in upsert_all(&mut tx, candidates).await? {
        match outcome {
            Upsert::Written if retract_all => retracted += 1,
            Upsert::Written => written += 1,
            Upsert::Unchanged => unchanged += 1,
            Upsert::Kept => {}
        }
    }
    // Resources an earlier version derived and this one does not are marked entered-in-error; ids never derived
    // (most of the list) are looked up together and write nothing.
    let keys: Vec<(&str, &str)> = derived.retractions.iter().map(|r| (r.resource_type, r.id.as_str())).collect();
    let existing = tx.read_many(&keys).await?;
    for key in &keys {
        let Some(stored) = existing.get(&(key.0.to_owned(), key.1.to_owned())).filter(|c| !c.deleted) else { continue };
        let Some(stored) = stored.content.as_deref() else { continue };
        let Ok(content) = serde_json::from_str::<Value>(stored) else { continue };
        let retraction = sdoh::retract(&content);
        // The stored version was just read: write it directly rather than through `upsert_all`, which reads again.
        if !same_content(stored, &retraction) {
            fhir_server::rest::write::put(&mut tx, retraction, store::Precondition::None).await?;
            retracted += 1;
        }
    }
    tx.complete_job(job).await?;
    tx.commit().await?;
    Ok(NormalizeOutcome::Normalized { instrument: derived.instrument, written, unchanged, retracted })
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
