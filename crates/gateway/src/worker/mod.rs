//! Background workers: durable-queue consumers that turn journaled HL7 v2 messages into FHIR resources
//! ([`convert`]), QuestionnaireResponses into SDOHCC Observations and Conditions ([`normalize`]), and referral Task
//! status changes into RRI^I12 messages to the referring EHR ([`rri`]).
//!
//! Each worker task claims one job at a time under a lease, does its work in store transactions that also record
//! the outcome (journal status, job completion), and waits for the next job on the store's enqueue notification
//! with a fallback poll, so jobs queued by another replica are picked up too. Workers stop between jobs (or, for a
//! long conversion job, between journal entries) once shutdown is requested.

pub mod convert;
pub mod normalize;
pub mod rri;

use std::time::Duration;

use serde_json::Value;
use store::{Backoff, Job, Store, StoreError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How the workers run.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Worker tasks per queue; 0 runs none.
    pub count: usize,
    /// Lease taken on each claimed job; long jobs renew it.
    pub lease: Duration,
    /// Fallback poll interval when no enqueue notification arrives.
    pub poll_interval: Duration,
    /// Attempts for jobs the workers queue themselves (a conversion job's remainder at shutdown).
    pub max_attempts: i32,
    /// Where application acknowledgments and referral status updates go (`[outbound]` destinations); `None` sends
    /// none.
    pub routes: Option<crate::outbound::Routes>,
    /// This gateway's MSH-3/MSH-4 in the messages it originates (RRI^I12): `ingest.receiving_application`/`facility`.
    pub sender: crate::outbound::AckSender,
    /// On SQLite, workers give way to messages waiting for their journal commit (one writer for both).
    pub ingest: Option<crate::ingest::commit::IngestActivity>,
}

/// Longest a worker waits for ingest to go idle before taking its turn at the writer anyway.
const GIVE_WAY_AT_MOST: Duration = Duration::from_millis(250);

impl WorkerSettings {
    /// Waits (bounded) while ingest has messages waiting for the writer.
    pub(crate) async fn give_way(&self) {
        if let Some(ingest) = &self.ingest {
            ingest.wait_idle(GIVE_WAY_AT_MOST).await;
        }
    }

    /// How much work one transaction may take on: `large` while the writer is free, one item while messages are
    /// arriving, so a worker's transaction never holds up their journal commits (and their ACKs) for long.
    pub(crate) fn batch(&self, large: usize) -> usize {
        match &self.ingest {
            Some(ingest) if ingest.is_streaming() => 1,
            _ => large,
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            count: 2,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            max_attempts: 10,
            routes: None,
            sender: crate::outbound::AckSender { application: "SDOH-GATEWAY".into(), facility: "SDOH-HUB".into() },
            ingest: None,
        }
    }
}

/// The queues the workers consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Convert,
    Normalize,
    Rri,
}

impl Kind {
    fn queue(self) -> &'static str {
        match self {
            Kind::Convert => crate::admin::CONVERT_QUEUE,
            Kind::Normalize => fhir_server::rest::write::NORMALIZE_QUEUE,
            Kind::Rri => fhir_server::rest::referral_status::RRI_QUEUE,
        }
    }

    /// Jobs claimed at once. Conversion and normalization do a claim's work in a few transactions (one commit
    /// and a handful of statements for many messages or screenings, instead of each its own); referral status
    /// updates go one at a time, in order.
    fn jobs_per_claim(self) -> usize {
        match self {
            Kind::Convert => 32,
            Kind::Normalize => 128,
            Kind::Rri => 1,
        }
    }

    /// Worker tasks for this queue: referral status updates are taken one at a time, so the RRIs of one Task are
    /// queued for delivery in the order of its changes.
    fn tasks(self, count: usize) -> usize {
        match self {
            Kind::Rri => count.min(1),
            _ => count,
        }
    }
}

/// Starts `settings.count` workers per queue; they stop after their current job once `shutdown` is cancelled.
/// Join the returned set to wait for them.
pub async fn spawn(store: Store, settings: WorkerSettings, shutdown: CancellationToken) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    if settings.count == 0 {
        return tasks;
    }
    if let Err(e) = normalize::ensure_device(&store).await {
        tracing::warn!(error = %e, "could not record the gateway's Device resource; normalization will retry it");
    }
    for kind in [Kind::Convert, Kind::Normalize, Kind::Rri] {
        for n in 0..kind.tasks(settings.count) {
            let (store, settings, shutdown) = (store.clone(), settings.clone(), shutdown.clone());
            tasks.spawn(async move { run(kind, n, store, settings, shutdown).await });
        }
    }
    tasks
}

async fn run(kind: Kind, n: usize, store: Store, settings: WorkerSettings, shutdown: CancellationToken) {
    tracing::debug!(queue = kind.queue(), worker = n, "worker started");
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        settings.give_way().await;
        let jobs_per_claim = u32::try_from(settings.batch(kind.jobs_per_claim())).unwrap_or(1);
        match store.claim(kind.queue(), jobs_per_claim, settings.lease).await {
            Ok(jobs) if !jobs.is_empty() => {
                match kind {
                    Kind::Convert => convert::run_jobs(&store, jobs, &settings, &shutdown).await,
                    Kind::Normalize => normalize::run_jobs(&store, jobs).await,
                    Kind::Rri => {
                        for job in jobs {
                            rri::run_job(&store, job, &settings).await;
                        }
                    }
                }
                // More may be due: look again at once.
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(queue = kind.queue(), error = %e, "claiming jobs failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = store.job_enqueued() => {}
            _ = tokio::time::sleep(settings.poll_interval) => {}
        }
    }
    tracing::debug!(queue = kind.queue(), worker = n, "worker stopped");
}

/// Retries a job later (the database went away, a write conflicted): the work was rolled back.
async fn retry_later(store: &Store, job: &Job, error: &StoreError) {
    tracing::warn!(queue = %job.queue, job_id = job.id, attempt = job.attempts, error = %error, "job failed; will retry");
    match store.fail(job, &error.to_string(), &Backoff::default()).await {
        Ok(store::FailOutcome::DeadLettered) => {
            tracing::error!(queue = %job.queue, job_id = job.id, "job dead-lettered after its last attempt")
        }
        Ok(store::FailOutcome::RetryAt(_)) => {}
        Err(e) => tracing::warn!(job_id = job.id, error = %e, "could not record the job failure (lease expires)"),
    }
}

/// Dead-letters a job at once: retrying cannot help (its input is wrong). The store dead-letters a failing job on
/// its last attempt, so the failure is recorded as that.
async fn dead_letter(store: &Store, job: &Job, error: &str) {
    tracing::error!(queue = %job.queue, job_id = job.id, error, "job dead-lettered");
    let last = Job { attempts: job.max_attempts, ..job.clone() };
    if let Err(e) = store.fail(&last, error, &Backoff::default()).await {
        tracing::warn!(job_id = job.id, error = %e, "could not dead-letter the job (lease expires)");
    }
}

/// True when `stored` (a stored version's JSON) equals `new` apart from `meta` (and, for a Provenance, the
/// `recorded` time that changes on every run): writing `new` would only churn versions.
pub fn same_content(stored: &str, new: &Value) -> bool {
    let Ok(mut old) = serde_json::from_str::<Value>(stored) else { return false };
    let mut new = new.clone();
    for v in [&mut old, &mut new] {
        if let Some(obj) = v.as_object_mut() {
            obj.remove("meta");
            if obj.get("resourceType").and_then(Value::as_str) == Some("Provenance") {
                obj.remove("recorded");
            }
        }
    }
    old == new
}

/// A resource's type and id, as written by the pure mappers.
fn type_and_id(resource: &Value) -> Option<(String, String)> {
    Some((resource.get("resourceType")?.as_str()?.to_owned(), resource.get("id")?.as_str()?.to_owned()))
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upsert {
    Written,
    Unchanged,
    Kept,
}

/// A resource to write unless the current version already says the same, with the rule for when it may be written.
struct Candidate {
    resource: Value,
    /// Never replace a live resource (stand-ins).
    only_if_absent: bool,
    /// Never create one (retractions).
    only_if_present: bool,
    /// The resource's index rows when extracted before the transaction (`write::index_rows`).
    rows: Option<Vec<store::IndexRow>>,
}

impl Candidate {
    fn same_as(&self, other: &Candidate) -> bool {
        self.only_if_absent == other.only_if_absent
            && self.only_if_present == other.only_if_present
            && self.resource == other.resource
    }
}

/// Writes each candidate in order unless the stored version already says the same (apart from `meta`): a whole
/// conversion or normalization costs one read for all of them, and the brand-new ones (ids never stored) are
/// created with bulk inserts, instead of a read, a read-for-update and two inserts each. A candidate identical to
/// one earlier in the list (the sending facility's Organization in every message of a batch) writes nothing more:
/// its outcome is what the earlier write leaves it (see [`Upsert::of_repeat`]). Any other resource repeated in the
/// list starts a new run, so it sees the earlier write as one at a time would.
async fn upsert_all(tx: &mut store::StoreTx, candidates: Vec<Candidate>) -> Result<Vec<Upsert>, StoreError> {
    let mut outcomes = Vec::with_capacity(candidates.len());
    let mut run: Vec<(Candidate, (String, String))> = Vec::new();
    // The place in `run` of each resource it holds (a batch holds hundreds).
    let mut in_run: std::collections::HashMap<(String, String), usize> = std::collections::HashMap::new();
    // Where each candidate's outcome comes from: its place in its run, or the candidate it repeats.
    let mut sources: Vec<Source> = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        let key = type_and_id(&candidate.resource)
            .ok_or_else(|| StoreError::Invalid("resource without resourceType or id".into()))?;
        if let Some(&first) = in_run.get(&key) {
            if run[first].0.same_as(&candidate) {
                sources.push(Source::Repeat { of: outcomes.len() + first, only_if_absent: candidate.only_if_absent });
                continue;
            }
            outcomes.extend(upsert_run(tx, std::mem::take(&mut run)).await?);
            in_run.clear();
        }
        sources.push(Source::Run(outcomes.len() + run.len()));
        in_run.insert(key.clone(), run.len());
        run.push((candidate, key));
    }
    outcomes.extend(upsert_run(tx, run).await?);
    Ok(sources
        .into_iter()
        .map(|source| match source {
            Source::Run(at) => outcomes[at],
            Source::Repeat { of, only_if_absent } => Upsert::of_repeat(outcomes[of], only_if_absent),
        })
        .collect())
}

/// Where [`upsert_all`] finds a candidate's outcome: at this index of the written runs' outcomes, or from the
/// identical candidate at that index.
enum Source {
    Run(usize),
    Repeat { of: usize, only_if_absent: bool },
}

impl Upsert {
    /// The outcome of writing a candidate again right after an identical one had `first`: a stand-in finds the
    /// resource live (kept); a retraction of nothing still finds nothing (kept); anything else finds its own content
    /// stored (unchanged).
    fn of_repeat(first: Upsert, only_if_absent: bool) -> Upsert {
        if only_if_absent || first == Upsert::Kept { Upsert::Kept } else { Upsert::Unchanged }
    }
}

/// [`upsert_all`] for candidates with distinct ids.
async fn upsert_run(
    tx: &mut store::StoreTx,
    run: Vec<(Candidate, (String, String))>,
) -> Result<Vec<Upsert>, StoreError> {
    if run.is_empty() {
        return Ok(Vec::new());
    }
    let lookup: Vec<(&str, &str)> = run.iter().map(|(_, (t, i))| (t.as_str(), i.as_str())).collect();
    let stored = tx.read_many(&lookup).await?;
    let mut outcomes = Vec::with_capacity(run.len());
    let mut creates = Vec::new();
    for (c, key) in run {
        let current = stored.get(&key);
        let outcome = match current.filter(|s| !s.deleted) {
            Some(_) if c.only_if_absent => Upsert::Kept,
            None if c.only_if_present => Upsert::Kept,
            Some(s) if s.content.as_deref().is_some_and(|content| same_content(content, &c.resource)) => {
                Upsert::Unchanged
            }
            _ if current.is_none() => {
                creates.push((c.resource, c.rows));
                Upsert::Written
            }
            _ => {
                // Writes keep their order: what was queued for creation goes first.
                if !creates.is_empty() {
                    fhir_server::rest::write::create_all_indexed(tx, std::mem::take(&mut creates)).await?;
                }
                fhir_server::rest::write::put(tx, c.resource, store::Precondition::None).await?;
                Upsert::Written
            }
        };
        outcomes.push(outcome);
    }
    if !creates.is_empty() {
        fhir_server::rest::write::create_all_indexed(tx, creates).await?;
    }
    Ok(outcomes)
}

/// A FHIR OperationOutcome with one issue per `(severity, code, diagnostics, location)`.
fn operation_outcome(issues: &[(&str, &str, String, Option<&str>)]) -> String {
    let issues: Vec<Value> = issues
        .iter()
        .map(|(severity, code, diagnostics, location)| {
            let mut issue = serde_json::json!({"severity": severity, "code": code, "diagnostics": diagnostics});
            if let Some(location) = location {
                issue["location"] = serde_json::json!([location]);
                issue["expression"] = serde_json::json!([location]);
            }
            issue
        })
        .collect();
    serde_json::json!({"resourceType": "OperationOutcome", "issue": issues}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn same_content_ignores_meta_and_provenance_recorded_only() {
        let stored = json!({"resourceType": "Patient", "id": "p", "meta": {"versionId": "3"}, "gender": "female"});
        assert!(same_content(&stored.to_string(), &json!({"resourceType": "Patient", "id": "p", "gender": "female"})));
        assert!(!same_content(&stored.to_string(), &json!({"resourceType": "Patient", "id": "p", "gender": "male"})));
        let prov = json!({"resourceType": "Provenance", "id": "x", "recorded": "2026-01-01T00:00:00Z", "target": []});
        let again = json!({"resourceType": "Provenance", "id": "x", "recorded": "2026-02-01T00:00:00Z", "target": []});
        assert!(same_content(&prov.to_string(), &again));
        let obs = json!({"resourceType": "Observation", "id": "o", "issued": "2026-01-01T00:00:00Z"});
        let later = json!({"resourceType": "Observation", "id": "o", "issued": "2026-02-01T00:00:00Z"});
        assert!(!same_content(&obs.to_string(), &later));
        assert!(!same_content("not json", &later));
    }

    #[test]
    fn operation_outcomes_name_the_location() {
        let oo: Value = serde_json::from_str(&operation_outcome(&[(
            "error",
            "processing",
            "required field PID-3 is missing".into(),
            Some("PID-3"),
        )]))
        .unwrap();
        assert_eq!(oo["resourceType"], "OperationOutcome");
        assert_eq!(oo["issue"][0]["expression"][0], "PID-3");
        assert_eq!(oo["issue"][0]["location"][0], "PID-3");
        assert_eq!(oo["issue"][0]["severity"], "error");
    }
}

#[cfg(test)]
mod store_tests;
