//! Bulk Data export (FHIR Bulk Data Access IG): the export job on the durable queue, the streaming NDJSON writer it
//! shares with `sdoh-gateway export`, and the sweeper that deletes expired exports.
//!
//! The writer pages through the store and appends each resource as one line to its type's file as it goes, so
//! memory stays flat however large the export. A group export writes the members' pseudonymized registry records
//! (the materialized rows of `registry_members`), never the stored resources; system and Patient exports write
//! stored resources as they are, for the admin role only. A job that dies is taken over when its lease expires
//! and starts its files again; the manifest exists only once every file is complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use store::{ExportStatus, Job, MemberQuery, Store, StoreError, Timestamp};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::records::RECORD_TYPES;
use super::{RegistryWorkers, dead_letter, retry_later};

/// Queue of export jobs, payload `{"export": id}`.
pub const EXPORT_QUEUE: &str = "bulk-export";

/// Resource types of the Patient compartment that a Patient-level export writes.
pub const PATIENT_TYPES: &[&str] = &[
    "Patient",
    "Condition",
    "Observation",
    "QuestionnaireResponse",
    "ServiceRequest",
    "Task",
    "Encounter",
    "Coverage",
    "Goal",
    "Procedure",
    "Consent",
    "DiagnosticReport",
    "RelatedPerson",
];

/// Members (group) or resources (system, Patient) read per page.
const GROUP_PAGE: u32 = 200;
const RESOURCE_PAGE: u32 = 1000;
/// How often a running export reports progress and looks for a cancellation.
const REPORT_EVERY: Duration = Duration::from_millis(500);

/// What an export covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    System,
    Patient,
    Group,
}

/// An export's parameters, as recorded with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRequest {
    pub level: Level,
    /// The registry of a group export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// `_since`, microseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// `_type`; empty: every type the level covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
}

impl ExportRequest {
    /// The types this level can export.
    pub fn exportable(level: Level) -> Vec<&'static str> {
        match level {
            Level::Group => RECORD_TYPES.to_vec(),
            Level::Patient => {
                PATIENT_TYPES.iter().copied().filter(|t| fhir_server::rest::SUPPORTED_TYPES.contains(t)).collect()
            }
            Level::System => fhir_server::rest::SUPPORTED_TYPES.to_vec(),
        }
    }

    /// The types that go into the files, in file order.
    fn wanted(&self) -> Vec<String> {
        let all = ExportRequest::exportable(self.level);
        if self.types.is_empty() {
            all.iter().map(|t| (*t).to_owned()).collect()
        } else {
            all.iter().filter(|t| self.types.iter().any(|w| w == *t)).map(|t| (*t).to_owned()).collect()
        }
    }
}

/// One NDJSON file of a finished export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub file: String,
    pub count: u64,
}

/// Why an export could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export files failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Told how far an export has come; answers whether to go on.
pub trait Progress {
    fn report(&mut self, done: u64, total: u64) -> impl std::future::Future<Output = bool> + Send;
}

/// Open NDJSON files, one per type, created on their first line.
struct Files {
    dir: PathBuf,
    open: BTreeMap<String, (tokio::io::BufWriter<tokio::fs::File>, u64)>,
}

impl Files {
    async fn write(&mut self, resource_type: &str, resource: &Value) -> Result<(), ExportError> {
        if !self.open.contains_key(resource_type) {
            let file = tokio::fs::File::create(self.dir.join(file_name(resource_type))).await?;
            self.open.insert(resource_type.to_owned(), (tokio::io::BufWriter::with_capacity(256 * 1024, file), 0));
        }
        let (writer, count) = self.open.get_mut(resource_type).expect("opened above");
        let mut line = serde_json::to_vec(resource).map_err(std::io::Error::other)?;
        line.push(b'\n');
        writer.write_all(&line).await?;
        *count += 1;
        Ok(())
    }

    async fn finish(self) -> Result<Vec<OutputFile>, ExportError> {
        let mut files = Vec::new();
        for (resource_type, (mut writer, count)) in self.open {
            writer.flush().await?;
            writer.get_ref().sync_all().await?;
            files.push(OutputFile { file: file_name(&resource_type), resource_type, count });
        }
        Ok(files)
    }
}

pub fn file_name(resource_type: &str) -> String {
    format!("{resource_type}.ndjson")
}

/// Writes the export's NDJSON files into `dir` (which must exist), reporting progress; `None` when `progress`
/// asked to stop.
pub async fn write_files<P: Progress>(
    store: &Store,
    request: &ExportRequest,
    dir: &Path,
    progress: &mut P,
) -> Result<Option<Vec<OutputFile>>, ExportError> {
    let since = request.since.map(Timestamp);
    let wanted = request.wanted();
    let mut files = Files { dir: dir.to_owned(), open: BTreeMap::new() };
    let mut done = 0u64;
    if request.level == Level::Group {
        let registry = request.registry.clone().unwrap_or_default();
        let total = store.registry_member_count(&registry, since).await?.max(0) as u64;
        if !progress.report(0, total).await {
            return Ok(None);
        }
        let mut after: Option<String> = None;
        loop {
            let query = MemberQuery {
                registry_id: registry.clone(),
                since,
                after_patient: after.clone(),
                members_only: true,
                limit: GROUP_PAGE,
                ..MemberQuery::default()
            };
            let page = store.registry_members(&query).await?;
            for member in &page {
                let Some(record) = member.record.as_deref().and_then(|r| serde_json::from_str::<Value>(r).ok()) else {
                    continue;
                };
                for entry in record["entry"].as_array().into_iter().flatten() {
                    let resource = &entry["resource"];
                    if let Some(t) = resource["resourceType"].as_str()
                        && wanted.iter().any(|w| w == t)
                    {
                        files.write(t, resource).await?;
                    }
                }
            }
            done += page.len() as u64;
            if !progress.report(done, total).await {
                return Ok(None);
            }
            match page.last() {
                Some(last) if page.len() as u32 == GROUP_PAGE => after = Some(last.patient_id.clone()),
                _ => break,
            }
        }
    } else {
        let mut total = 0u64;
        for t in &wanted {
            total += store.resource_count(t, since).await?.max(0) as u64;
        }
        if !progress.report(0, total).await {
            return Ok(None);
        }
        for t in &wanted {
            let mut after = String::new();
            loop {
                let page = store.resources_page(t, since, &after, RESOURCE_PAGE).await?;
                for stored in &page {
                    if let Some(resource) =
                        stored.content.as_deref().and_then(|c| serde_json::from_str::<Value>(c).ok())
                    {
                        files.write(t, &resource).await?;
                    }
                }
                done += page.len() as u64;
                if !progress.report(done, total).await {
                    return Ok(None);
                }
                match page.last() {
                    Some(last) if page.len() as u32 == RESOURCE_PAGE => after = last.id.clone(),
                    _ => break,
                }
            }
        }
    }
    files.finish().await.map(Some)
}

/// The manifest as stored: everything but the file URLs, which depend on how the poller reaches the gateway.
pub fn stored_manifest(transaction_time: Timestamp, request: &str, files: &[OutputFile]) -> String {
    json!({"transactionTime": store::format_instant(transaction_time), "request": request, "files": files}).to_string()
}

/// Where an export's files live.
pub fn export_dir(folder: &Path, export_id: &str) -> PathBuf {
    folder.join(export_id)
}

async fn remove_dir(dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "could not remove an export folder"),
    }
}

/// Reports an export job's progress to the store, renews its lease, and stops on cancellation or shutdown.
struct JobProgress<'a> {
    store: &'a Store,
    export_id: &'a str,
    job: Job,
    lease: Duration,
    last: Option<Instant>,
    shutdown: &'a CancellationToken,
    cancelled: bool,
}

impl Progress for JobProgress<'_> {
    async fn report(&mut self, done: u64, total: u64) -> bool {
        if self.shutdown.is_cancelled() {
            return false;
        }
        if self.last.is_some_and(|at| at.elapsed() < REPORT_EVERY) {
            return true;
        }
        self.last = Some(Instant::now());
        let percent = (done * 100).checked_div(total).map_or(100, |p| p.min(99));
        let text = format!("{percent}% ({done} of {total})");
        match self.store.update_export(self.export_id, ExportStatus::Running, Some(&text), None, None, None).await {
            Ok(true) => {}
            Ok(false) => {
                self.cancelled = true;
                return false;
            }
            Err(e) => tracing::warn!(error = %e, "could not record export progress"),
        }
        if let Err(e) = self.store.extend_lease(&mut self.job, self.lease).await {
            tracing::warn!(error = %e, "export lease lost; another worker takes the export over");
            return false;
        }
        true
    }
}

#[derive(Deserialize)]
struct Payload {
    export: String,
}

pub(super) async fn run_job(workers: &RegistryWorkers, job: Job, shutdown: &CancellationToken) {
    let store = &workers.store;
    let Ok(payload) = serde_json::from_str::<Payload>(&job.payload) else {
        dead_letter(store, &job, "payload does not name an export").await;
        return;
    };
    let export = match store.export(&payload.export).await {
        Ok(export) => export,
        Err(e) => return retry_later(store, &job, &e).await,
    };
    let dir = export_dir(&workers.exports.folder, &payload.export);
    let Some(export) = export.filter(|e| matches!(e.status, ExportStatus::Queued | ExportStatus::Running)) else {
        // Cancelled (or forgotten) before it ran.
        remove_dir(&dir).await;
        if let Err(e) = store.complete(&job).await {
            retry_later(store, &job, &e).await;
        }
        return;
    };
    let Ok(request) = serde_json::from_str::<ExportRequest>(&export.params) else {
        let _ = store
            .update_export(&export.id, ExportStatus::Failed, None, None, Some("unreadable parameters"), None)
            .await;
        dead_letter(store, &job, "export parameters are unreadable").await;
        return;
    };
    let started = Instant::now();
    remove_dir(&dir).await;
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        tracing::error!(export_id = %export.id, error = %e, "cannot create the export folder");
        fail_export(store, &export.id, &job, "the export folder cannot be written").await;
        return;
    }
    let mut progress = JobProgress {
        store,
        export_id: &export.id,
        job: job.clone(),
        lease: workers.settings.lease,
        last: None,
        shutdown,
        cancelled: false,
    };
    let outcome = write_files(store, &request, &dir, &mut progress).await;
    let (cancelled, job) = (progress.cancelled, progress.job);
    match outcome {
        Ok(Some(files)) => {
            let manifest = stored_manifest(export.transaction_time, &export.request, &files);
            let expires =
                Timestamp(Timestamp::now().micros() + (workers.exports.expiry_secs as i64).saturating_mul(1_000_000));
            let written = files.iter().map(|f| f.count).sum::<u64>();
            match store
                .update_export(&export.id, ExportStatus::Completed, Some("100%"), Some(&manifest), None, Some(expires))
                .await
            {
                Ok(true) => tracing::info!(
                    export_id = %export.id,
                    resources = written,
                    files = files.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "export completed"
                ),
                Ok(false) => remove_dir(&dir).await,
                Err(e) => return retry_later(store, &job, &e).await,
            }
            metrics::counter!("bulk_export_resources_total").increment(written);
            if let Err(e) = store.complete(&job).await {
                tracing::warn!(error = %e, "could not complete the export job");
            }
        }
        Ok(None) if cancelled => {
            remove_dir(&dir).await;
            tracing::info!(export_id = %export.id, "export cancelled");
            let _ = store.complete(&job).await;
        }
        // Shutdown or a lost lease: the export starts over on the next claim.
        Ok(None) => retry_later(store, &job, &StoreError::Unavailable("export interrupted".into())).await,
        Err(ExportError::Store(e)) => retry_later(store, &job, &e).await,
        Err(ExportError::Io(e)) => {
            tracing::error!(export_id = %export.id, error = %e, "export failed writing its files");
            remove_dir(&dir).await;
            fail_export(store, &export.id, &job, "writing the export files failed").await;
        }
    }
}

/// Deletes expired exports (files and row) every few seconds.
pub(super) async fn remove_expired(store: Store, folder: PathBuf, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(2));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {
                let Ok(expired) = store.expired_exports(Timestamp::now()).await else { continue };
                for id in expired {
                    remove_dir(&export_dir(&folder, &id)).await;
                    match store.delete_export(&id).await {
                        Ok(()) => tracing::info!(export_id = %id, "expired export removed"),
                        Err(e) => tracing::warn!(error = %e, "could not remove an expired export"),
                    }
                }
            }
        }
    }
}

/// Records an export as failed for a reason the client may read, and completes its job: retrying cannot help.
async fn fail_export(store: &Store, export_id: &str, job: &Job, reason: &str) {
    let _ = store.update_export(export_id, ExportStatus::Failed, None, None, Some(reason), None).await;
    let _ = store.complete(job).await;
}
