//! The conversion worker: journaled HL7 v2 messages -> FHIR resources (`v2fhir`), many entries per transaction.
//!
//! Each entry's resources and its journal status (`converted` with any warnings, or `failed` with an
//! OperationOutcome naming the location at fault) commit together; a job completes in its last entry's
//! transaction. Batching entries is what makes conversion keep up with ingest: one commit, one read of the
//! messages and one bulk write of their resources for up to 64 entries (one while messages are arriving). Writes are
//! idempotent (deterministic ids, nothing written when the stored content already says the same), so an entry
//! processed twice, or reprocessed by an operator, makes no new versions.

use std::collections::BTreeMap;
use std::time::Instant;

use store::{Job, JournalStatus, NewJob, Store, StoreError, StoreTx};
use tokio_util::sync::CancellationToken;

use hl7v2::{ErrorCode, ErrorLocation};

use super::{Candidate, Upsert, WorkerSettings, dead_letter, operation_outcome, retry_later, upsert_all};
use crate::outbound::{self, AppOutcome, OutboundError, OutboundMessage, Routes};

/// What became of one journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    Converted {
        written: usize,
        unchanged: usize,
        kept: usize,
        warnings: usize,
    },
    Failed,
    /// No such journal entry (deleted by an operator): nothing to do.
    Missing,
}

/// Journal entries converted in one transaction: one commit, one read of the messages and one bulk write of
/// their resources for all of them.
pub(super) const ENTRIES_PER_TRANSACTION: usize = 64;
/// Transactions of entries run again at once after losing a race to create the same resource.
const MAX_IMMEDIATE_RETRIES: u32 = 3;

/// Converts the journal entries the claimed jobs name, in order, [`ENTRIES_PER_TRANSACTION`] at a time; each job
/// completes in the transaction of its last entry. At shutdown, what is left is handed back as new jobs.
pub(super) async fn run_jobs(store: &Store, jobs: Vec<Job>, settings: &WorkerSettings, shutdown: &CancellationToken) {
    let mut claimed: Vec<(Job, Vec<i64>)> = Vec::with_capacity(jobs.len());
    for job in jobs {
        match store::journal_ids_of(&job.payload) {
            None => dead_letter(store, &job, "payload is not {\"journal_ids\":[...]}").await,
            Some(ids) if ids.is_empty() => {
                if let Err(e) = store.complete(&job).await {
                    tracing::warn!(job_id = job.id, error = %e, "completing an empty conversion job failed");
                }
            }
            Some(ids) => claimed.push((job, ids)),
        }
    }
    // Every entry with the index of its job; a job is done once its last entry is.
    let work: Vec<(usize, i64)> =
        claimed.iter().enumerate().flat_map(|(j, (_, ids))| ids.iter().map(move |&id| (j, id))).collect();
    let mut last_entry = vec![0; claimed.len()];
    for (n, (j, _)) in work.iter().enumerate() {
        last_entry[*j] = n;
    }
    // Jobs whose lease went to another worker: their entries are left to it.
    let mut lost = vec![false; claimed.len()];
    let mut conflicts = 0;
    let mut start = 0;
    while start < work.len() {
        if start > 0 && shutdown.is_cancelled() {
            for (j, (job, _)) in claimed.iter().enumerate() {
                let remaining: Vec<i64> = work[start..].iter().filter(|(k, _)| *k == j).map(|(_, id)| *id).collect();
                if !lost[j] && !remaining.is_empty() {
                    hand_back(store, job, &remaining, settings.max_attempts).await;
                }
            }
            return;
        }
        // Renew leases while plenty of the batch is left rather than let them lapse mid-job.
        for (j, (job, _)) in claimed.iter_mut().enumerate() {
            let left = job.lease_until.micros() - store::Timestamp::now().micros();
            if !lost[j]
                && last_entry[j] >= start
                && left < i64::try_from(settings.lease.as_micros() / 2).unwrap_or(i64::MAX)
                && let Err(e) = store.extend_lease(job, settings.lease).await
            {
                tracing::warn!(job_id = job.id, error = %e, "conversion job lease lost; leaving it to its new holder");
                lost[j] = true;
            }
        }
        settings.give_way().await;
        let end = (start + settings.batch(ENTRIES_PER_TRANSACTION)).min(work.len());
        let ids: Vec<i64> = work[start..end].iter().filter(|(j, _)| !lost[*j]).map(|(_, id)| *id).collect();
        let finishing: Vec<Job> = (0..claimed.len())
            .filter(|&j| !lost[j] && (start..end).contains(&last_entry[j]))
            .map(|j| claimed[j].0.clone())
            .collect();
        match convert_entries(store, &ids, &finishing, settings.routes.as_ref()).await {
            Ok(_) => {
                start = end;
                conflicts = 0;
            }
            // Another worker created a resource these entries also create (their Organization, a shared Patient)
            // between this transaction's read and its insert (PostgreSQL runs workers side by side): nothing
            // committed, and run again the entries find it stored.
            Err(StoreError::VersionConflict { .. }) if conflicts < MAX_IMMEDIATE_RETRIES => conflicts += 1,
            Err(StoreError::LeaseLost { job_id }) => {
                // Nothing of this transaction committed: run it again without the job that is no longer ours.
                tracing::warn!(job_id, "conversion job lease lost before completion; leaving it to its new holder");
                match claimed.iter().position(|(job, _)| job.id == job_id) {
                    Some(j) => lost[j] = true,
                    None => return,
                }
            }
            Err(e) => {
                for (j, (job, _)) in claimed.iter().enumerate() {
                    if !lost[j] && last_entry[j] >= start {
                        retry_later(store, job, &e).await;
                    }
                }
                return;
            }
        }
    }
}

/// At shutdown, completes the job and queues the entries it did not reach as a new job, in one transaction, so
/// they are converted at once by another replica or after restart instead of waiting for the lease to expire.
async fn hand_back(store: &Store, job: &Job, remaining: &[i64], max_attempts: i32) {
    let payload = serde_json::json!({ "journal_ids": remaining }).to_string();
    let outcome = async {
        let mut tx = store.begin().await?;
        tx.complete_job(job).await?;
        tx.enqueue(&NewJob::new(crate::admin::CONVERT_QUEUE, payload).max_attempts(max_attempts)).await?;
        tx.commit().await
    }
    .await;
    match outcome {
        Ok(()) => tracing::info!(job_id = job.id, remaining = remaining.len(), "shutdown: conversion job re-queued"),
        Err(e) => tracing::warn!(job_id = job.id, error = %e, "shutdown: could not re-queue; the lease will expire"),
    }
}

/// Converts one journal entry in one transaction, completing `job` in it when given; see [`convert_entries`].
pub async fn convert_entry(
    store: &Store,
    id: i64,
    job: Option<&Job>,
    routes: Option<&Routes>,
) -> Result<EntryOutcome, StoreError> {
    let complete: Vec<Job> = job.into_iter().cloned().collect();
    Ok(convert_entries(store, &[id], &complete, routes).await?.remove(0))
}

/// One entry's conversion, before anything is written.
enum Prepared<'a> {
    Missing,
    Failed {
        control_id: Option<String>,
        message_type: String,
        /// The OperationOutcome recorded on the entry.
        detail: String,
        /// The application acknowledgment of the failure, when the sender asked for one.
        ack: Option<(hl7v2::Message<'a>, AppOutcome)>,
    },
    Ready {
        message: hl7v2::Message<'a>,
        message_type: String,
        candidates: Vec<Candidate>,
        warnings: Vec<String>,
    },
}

/// Parses and maps one message (pure: nothing is written).
fn prepare(raw: Option<&Vec<u8>>) -> Prepared<'_> {
    let Some(raw) = raw else { return Prepared::Missing };
    let message = match hl7v2::Message::parse(raw) {
        Ok(m) => m,
        Err(e) => {
            // Code and location only: the parser's message may quote the input.
            let text = format!("HL7 v2 parse error {} ({}) at {}", e.code.code(), e.code.text(), e.location);
            let location = e.location.to_string();
            let detail = operation_outcome(&[("error", "structure", text, Some(&location))]);
            return Prepared::Failed { control_id: None, message_type: "unknown".into(), detail, ack: None };
        }
    };
    let header = message.header();
    let message_type = label(&header.message_type, &header.trigger_event);
    let control_id = Some(header.control_id.clone());
    let conversion = match v2fhir::convert(&message) {
        Ok(c) => c,
        Err(e) => {
            let detail = operation_outcome(&[("error", "processing", e.to_string(), e.location())]);
            let ack = Some((message, conversion_failure(&e)));
            return Prepared::Failed { control_id, message_type, detail, ack };
        }
    };
    // Patient and Organization from a result or referral carry a short PID/MSH: they never replace what an ADT
    // feed recorded, they only stand in until one does.
    let from_adt = header.message_type == "ADT";
    let candidates = conversion
        .resources
        .into_iter()
        .map(|resource| {
            let stand_in = !from_adt
                && matches!(resource.get("resourceType").and_then(|t| t.as_str()), Some("Patient" | "Organization"));
            Candidate { resource, only_if_absent: stand_in, only_if_present: false, rows: None }
        })
        .collect();
    Prepared::Ready { message, message_type, candidates, warnings: conversion.warnings }
}

/// Converts journal entries in one transaction, in order, completing `complete` in it: each entry's resources,
/// its journal status (`converted` with any warnings, or `failed` with an OperationOutcome naming the location at
/// fault) and, when the sender asked for one and `routes` names where to send it, its application acknowledgment
/// (which goes out only if, and after, the outcome is committed). When the store refuses an entry's resources,
/// the entries are converted again one per transaction, so only that entry fails.
pub async fn convert_entries(
    store: &Store,
    ids: &[i64],
    complete: &[Job],
    routes: Option<&Routes>,
) -> Result<Vec<EntryOutcome>, StoreError> {
    let started = Instant::now();
    let mut tx = store.begin().await?;
    let raws = tx.journal_raw_many(ids).await?;
    let mut entries: Vec<Prepared<'_>> = ids.iter().map(|id| prepare(raws.get(id))).collect();
    let mut sizes = Vec::with_capacity(entries.len());
    let mut candidates = Vec::new();
    for entry in &mut entries {
        match entry {
            Prepared::Ready { candidates: own, .. } => {
                sizes.push(own.len());
                candidates.append(own);
            }
            _ => sizes.push(0),
        }
    }
    let mut upserts = match upsert_all(&mut tx, candidates).await {
        Ok(outcomes) => outcomes.into_iter(),
        Err(StoreError::Invalid(reason) | StoreError::BusinessRule(reason)) => {
            // The mapping produced something the store refuses (a mapping bug), or a message asks for what the
            // workflow forbids (an I14 moving a closed referral): final for that entry, not a transient failure.
            tx.rollback().await?;
            if ids.len() > 1 {
                return one_by_one(store, ids, complete, routes).await;
            }
            let Some(Prepared::Ready { message, message_type, .. }) = entries.pop() else {
                return Err(StoreError::Invalid(reason));
            };
            let mut tx = store.begin().await?;
            let text = format!("a converted resource could not be stored: {reason}");
            let detail = operation_outcome(&[("error", "processing", text, None)]);
            let outcome = AppOutcome::Error {
                code: ErrorCode::ApplicationInternalError,
                location: None,
                text: "the message could not be stored".into(),
            };
            queue_application_ack(&mut tx, routes, &message, outcome).await?;
            tx.set_journal_status(ids[0], JournalStatus::Failed, Some(&detail)).await?;
            tx.complete_jobs(complete).await?;
            tx.commit().await?;
            let control_id = message.header().control_id;
            record_failure(ids[0], Some(&control_id), &message_type, started.elapsed());
            return Ok(vec![EntryOutcome::Failed]);
        }
        Err(e) => return Err(e),
    };
    let mut outcomes = Vec::with_capacity(entries.len());
    // Converted entries by their status detail (their warnings; a feed's messages usually share them): each
    // group's status is set with one statement.
    let mut converted: BTreeMap<Option<String>, Vec<i64>> = BTreeMap::new();
    for ((&id, entry), size) in ids.iter().zip(&entries).zip(sizes) {
        let outcome = match entry {
            Prepared::Missing => EntryOutcome::Missing,
            Prepared::Failed { detail, ack, .. } => {
                if let Some((message, outcome)) = ack {
                    queue_application_ack(&mut tx, routes, message, outcome.clone()).await?;
                }
                tx.set_journal_status(id, JournalStatus::Failed, Some(detail)).await?;
                EntryOutcome::Failed
            }
            Prepared::Ready { message, warnings, .. } => {
                let (mut written, mut unchanged, mut kept) = (0, 0, 0);
                for outcome in upserts.by_ref().take(size) {
                    match outcome {
                        Upsert::Written => written += 1,
                        Upsert::Unchanged => unchanged += 1,
                        Upsert::Kept => kept += 1,
                    }
                }
                let detail = (!warnings.is_empty()).then(|| {
                    let issues: Vec<_> =
                        warnings.iter().map(|w| ("warning", "informational", w.clone(), None)).collect();
                    operation_outcome(&issues)
                });
                converted.entry(detail).or_default().push(id);
                queue_application_ack(&mut tx, routes, message, AppOutcome::Accepted).await?;
                EntryOutcome::Converted { written, unchanged, kept, warnings: warnings.len() }
            }
        };
        outcomes.push(outcome);
    }
    for (detail, group) in &converted {
        tx.set_journal_statuses(group, JournalStatus::Converted, detail.as_deref()).await?;
    }
    tx.complete_jobs(complete).await?;
    tx.commit().await?;
    // Each entry's share of the transaction's time.
    let elapsed = started.elapsed().div_f64(ids.len().max(1) as f64);
    for ((&id, entry), outcome) in ids.iter().zip(&entries).zip(&outcomes) {
        match (entry, outcome) {
            (Prepared::Missing, _) => tracing::warn!(journal_id = id, "journal entry to convert no longer exists"),
            (Prepared::Failed { control_id, message_type, .. }, _) => {
                record_failure(id, control_id.as_deref(), message_type, elapsed)
            }
            (
                Prepared::Ready { message_type, message, .. },
                EntryOutcome::Converted { written, unchanged, kept, warnings },
            ) => {
                metrics::counter!("conversion_total", "outcome" => "converted", "message_type" => message_type.clone())
                    .increment(1);
                metrics::histogram!("conversion_duration_seconds", "outcome" => "converted").record(elapsed);
                let control_id = message.header().control_id;
                tracing::info!(journal_id = id, control_id, message_type = %message_type, written, unchanged, kept, warnings, "message converted");
            }
            _ => {}
        }
    }
    Ok(outcomes)
}

/// [`convert_entries`] one entry per transaction; the jobs complete with the last.
async fn one_by_one(
    store: &Store,
    ids: &[i64],
    complete: &[Job],
    routes: Option<&Routes>,
) -> Result<Vec<EntryOutcome>, StoreError> {
    let mut outcomes = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let jobs = if i + 1 == ids.len() { complete } else { &[] };
        outcomes.extend(Box::pin(convert_entries(store, std::slice::from_ref(id), jobs, routes)).await?);
    }
    Ok(outcomes)
}

fn record_failure(id: i64, control_id: Option<&str>, message_type: &str, elapsed: std::time::Duration) {
    metrics::counter!("conversion_total", "outcome" => "failed", "message_type" => message_type.to_owned())
        .increment(1);
    metrics::histogram!("conversion_duration_seconds", "outcome" => "failed").record(elapsed);
    tracing::warn!(journal_id = id, control_id = control_id.unwrap_or(""), message_type, "message conversion failed");
}

/// Queues the application acknowledgment of `outcome` when the message asked for one (MSH-15/16 rules, see
/// `outbound::application_ack`). A sender without a configured destination is logged, not failed: the conversion
/// itself succeeded or failed regardless of whether its acknowledgment can be delivered.
async fn queue_application_ack(
    tx: &mut StoreTx,
    routes: Option<&Routes>,
    message: &hl7v2::Message<'_>,
    outcome: AppOutcome,
) -> Result<(), StoreError> {
    let Some(routes) = routes else { return Ok(()) };
    let Some(ack) = outbound::application_ack(message, outcome) else { return Ok(()) };
    let control_id = message.header().control_id;
    match OutboundMessage::parse(ack) {
        Ok(ack) => match outbound::queue(tx, routes, ack).await {
            Ok(queued) => {
                tracing::info!(control_id = %control_id, destination = %queued.destination, "application ACK queued");
                Ok(())
            }
            Err(OutboundError::Store(e)) => Err(e),
            Err(e) => {
                tracing::warn!(control_id = %control_id, error = %e, "application ACK not queued");
                Ok(())
            }
        },
        Err(e) => {
            tracing::warn!(control_id = %control_id, error = %e, "application ACK could not be built");
            Ok(())
        }
    }
}

/// The application acknowledgment of a mapping failure: AR for a message type nothing maps, AE with the field at
/// fault otherwise (HL7 table 0357 codes).
fn conversion_failure(e: &v2fhir::ConversionError) -> AppOutcome {
    let location = e.location().and_then(error_location);
    match e {
        v2fhir::ConversionError::UnsupportedMessageType { .. } => AppOutcome::Rejected {
            code: ErrorCode::UnsupportedMessageType,
            location: Some(ErrorLocation::field("MSH", 1, 9)),
            text: e.to_string(),
        },
        v2fhir::ConversionError::MissingField { .. } => {
            AppOutcome::Error { code: ErrorCode::RequiredFieldMissing, location, text: e.to_string() }
        }
        v2fhir::ConversionError::InvalidValue { .. } => {
            AppOutcome::Error { code: ErrorCode::DataType, location, text: e.to_string() }
        }
    }
}

/// `PID-7`, `OBX[2]-5` or `PID-3.1` (a v2fhir location) as an HL7 error location.
fn error_location(text: &str) -> Option<ErrorLocation> {
    let (segment, rest) = text.split_once('-')?;
    let (id, sequence) = match segment.split_once('[') {
        Some((id, n)) => (id, n.strip_suffix(']')?.parse().ok()?),
        None => (segment, 1),
    };
    let mut parts = rest.split('.');
    let field = parts.next()?.parse().ok()?;
    let location = ErrorLocation::field(id, sequence, field);
    Some(match parts.next().and_then(|c| c.parse().ok()) {
        Some(component) => location.with_component(component),
        None => location,
    })
}

/// `TYPE^EVENT` as a metric label: HL7 codes are short and alphanumeric; anything else is withheld.
fn label(message_type: &str, trigger_event: &str) -> String {
    let code = |c: &str| (1..=7).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_alphanumeric());
    if code(message_type) && code(trigger_event) {
        format!("{message_type}^{trigger_event}")
    } else {
        "unknown".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_locations_become_hl7_error_locations() {
        assert_eq!(error_location("PID-7"), Some(ErrorLocation::field("PID", 1, 7)));
        assert_eq!(error_location("OBX[2]-5"), Some(ErrorLocation::field("OBX", 2, 5)));
        assert_eq!(error_location("PID-3.1"), Some(ErrorLocation::field("PID", 1, 3).with_component(1)));
        assert_eq!(error_location("nonsense"), None);
        assert_eq!(error_location("OBX[x]-5"), None);
    }

    #[test]
    fn labels_are_codes_or_unknown() {
        assert_eq!(label("ADT", "A04"), "ADT^A04");
        assert_eq!(label("ADT", "Jane Doe"), "unknown");
        assert_eq!(label("", "A04"), "unknown");
    }
}
