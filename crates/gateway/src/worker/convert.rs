//! The conversion worker: journaled HL7 v2 messages -> FHIR resources (`v2fhir`), one transaction per entry.
//!
//! Each entry's resources, its journal status (`converted` with any warnings, or `failed` with an OperationOutcome
//! naming the location at fault) commit together; the job completes in its last entry's transaction. Writes are
//! idempotent (deterministic ids, nothing written when the stored content already says the same), so an entry
//! processed twice, or reprocessed by an operator, makes no new versions.

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

pub(super) async fn run_job(store: &Store, mut job: Job, settings: &WorkerSettings, shutdown: &CancellationToken) {
    let Some(ids) = store::journal_ids_of(&job.payload) else {
        dead_letter(store, &job, "payload is not {\"journal_ids\":[...]}").await;
        return;
    };
    if ids.is_empty() {
        if let Err(e) = store.complete(&job).await {
            tracing::warn!(job_id = job.id, error = %e, "completing an empty conversion job failed");
        }
        return;
    }
    for (i, &id) in ids.iter().enumerate() {
        if i > 0 && shutdown.is_cancelled() {
            hand_back(store, &job, &ids[i..], settings.max_attempts).await;
            return;
        }
        // Renew the lease while plenty of the batch is left rather than let it lapse mid-job.
        let left = job.lease_until.micros() - store::Timestamp::now().micros();
        if left < i64::try_from(settings.lease.as_micros() / 2).unwrap_or(i64::MAX)
            && let Err(e) = store.extend_lease(&mut job, settings.lease).await
        {
            tracing::warn!(job_id = job.id, error = %e, "conversion job lease lost; leaving it to its new holder");
            return;
        }
        settings.give_way().await;
        let last = i + 1 == ids.len();
        match convert_entry(store, id, last.then_some(&job), settings.routes.as_ref()).await {
            Ok(_) => {}
            Err(StoreError::LeaseLost { .. }) => {
                tracing::warn!(job_id = job.id, journal_id = id, "conversion job lease lost before completion");
                return;
            }
            Err(e) => {
                retry_later(store, &job, &e).await;
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

/// Converts one journal entry in one transaction, completing `job` in it when given. When the sender asked for an
/// application acknowledgment (MSH-16) and `routes` names where to send it, the acknowledgment of the outcome is
/// queued in the same transaction: it goes out only if, and after, the outcome is committed.
pub async fn convert_entry(
    store: &Store,
    id: i64,
    job: Option<&Job>,
    routes: Option<&Routes>,
) -> Result<EntryOutcome, StoreError> {
    let started = Instant::now();
    let mut tx = store.begin().await?;
    let Some(raw) = tx.journal_raw(id).await? else {
        tracing::warn!(journal_id = id, "journal entry to convert no longer exists");
        if let Some(job) = job {
            tx.complete_job(job).await?;
        }
        tx.commit().await?;
        return Ok(EntryOutcome::Missing);
    };
    let message = match hl7v2::Message::parse(&raw) {
        Ok(m) => m,
        Err(e) => {
            // Code and location only: the parser's message may quote the input.
            let text = format!("HL7 v2 parse error {} ({}) at {}", e.code.code(), e.code.text(), e.location);
            let location = e.location.to_string();
            let detail = operation_outcome(&[("error", "structure", text, Some(&location))]);
            return fail_entry(tx, id, None, "unknown", &detail, job, started).await;
        }
    };
    let header = message.header();
    let message_type = label(&header.message_type, &header.trigger_event);
    let control_id = header.control_id.as_str();
    let conversion = match v2fhir::convert(&message) {
        Ok(c) => c,
        Err(e) => {
            let detail = operation_outcome(&[("error", "processing", e.to_string(), e.location())]);
            queue_application_ack(&mut tx, routes, &message, conversion_failure(&e)).await?;
            return fail_entry(tx, id, Some(control_id), &message_type, &detail, job, started).await;
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
            Candidate { resource, only_if_absent: stand_in, only_if_present: false }
        })
        .collect();
    let (mut written, mut unchanged, mut kept) = (0, 0, 0);
    match upsert_all(&mut tx, candidates).await {
        Ok(outcomes) => {
            for outcome in outcomes {
                match outcome {
                    Upsert::Written => written += 1,
                    Upsert::Unchanged => unchanged += 1,
                    Upsert::Kept => kept += 1,
                }
            }
        }
        Err(StoreError::Invalid(reason) | StoreError::BusinessRule(reason)) => {
            // The mapping produced something the store refuses (a mapping bug), or the message asks for what
            // the workflow forbids (an I14 moving a closed referral): final, not a transient failure.
            tx.rollback().await?;
            let mut tx = store.begin().await?;
            let text = format!("a converted resource could not be stored: {reason}");
            let detail = operation_outcome(&[("error", "processing", text, None)]);
            let outcome = AppOutcome::Error {
                code: ErrorCode::ApplicationInternalError,
                location: None,
                text: "the message could not be stored".into(),
            };
            queue_application_ack(&mut tx, routes, &message, outcome).await?;
            return fail_entry(tx, id, Some(control_id), &message_type, &detail, job, started).await;
        }
        Err(e) => return Err(e),
    }
    let warnings = conversion.warnings.len();
    let detail = (!conversion.warnings.is_empty()).then(|| {
        let issues: Vec<_> = conversion.warnings.into_iter().map(|w| ("warning", "informational", w, None)).collect();
        operation_outcome(&issues)
    });
    tx.set_journal_status(id, JournalStatus::Converted, detail.as_deref()).await?;
    queue_application_ack(&mut tx, routes, &message, AppOutcome::Accepted).await?;
    if let Some(job) = job {
        tx.complete_job(job).await?;
    }
    tx.commit().await?;
    metrics::counter!("conversion_total", "outcome" => "converted", "message_type" => message_type.clone())
        .increment(1);
    metrics::histogram!("conversion_duration_seconds", "outcome" => "converted").record(started.elapsed());
    tracing::info!(journal_id = id, control_id, message_type = %message_type, written, unchanged, kept, warnings, "message converted");
    Ok(EntryOutcome::Converted { written, unchanged, kept, warnings })
}

async fn fail_entry(
    mut tx: StoreTx,
    id: i64,
    control_id: Option<&str>,
    message_type: &str,
    detail: &str,
    job: Option<&Job>,
    started: Instant,
) -> Result<EntryOutcome, StoreError> {
    tx.set_journal_status(id, JournalStatus::Failed, Some(detail)).await?;
    if let Some(job) = job {
        tx.complete_job(job).await?;
    }
    tx.commit().await?;
    metrics::counter!("conversion_total", "outcome" => "failed", "message_type" => message_type.to_owned())
        .increment(1);
    metrics::histogram!("conversion_duration_seconds", "outcome" => "failed").record(started.elapsed());
    tracing::warn!(journal_id = id, control_id = control_id.unwrap_or(""), message_type, "message conversion failed");
    Ok(EntryOutcome::Failed)
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
