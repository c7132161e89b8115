//! The referral status worker: an `rri` job (a referral Task version whose status changed, queued by the FHIR write
//! path) becomes an RRI^I12 to the EHR that sent the referral, queued for outbound delivery in the transaction that
//! completes the job, so each status change is queued exactly once even if the worker dies half-way.
//!
//! The RRI reports the status of the version named in the job, not the current one: three quick changes give three
//! RRIs in order. One worker task consumes the queue (per replica), taking the oldest job first; a job whose queue
//! still holds an older one (being reported by another replica, or waiting for its retry) is deferred, so the RRIs
//! are queued for delivery in the order of the changes even across replicas and failures.

use serde_json::Value;
use store::{Backoff, Job, Store, StoreError, StoreTx};

use super::{WorkerSettings, dead_letter, retry_later};
use crate::outbound::{self, OutboundError, OutboundMessage};

/// What became of one status change; the label of `rri_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RriOutcome {
    /// Queued for delivery to the EHR.
    Queued,
    /// No `[[outbound.destinations]]` rule takes the EHR (or outbound delivery is off): nothing sent, counted.
    NoDestination,
    /// The status has no HL7 v2 referral status (entered-in-error): nothing to tell.
    UnmappedStatus,
    /// The Task version or the referral message it came from is not known (deleted by an operator).
    Missing,
}

impl RriOutcome {
    pub fn label(self) -> &'static str {
        match self {
            RriOutcome::Queued => "queued",
            RriOutcome::NoDestination => "no_destination",
            RriOutcome::UnmappedStatus => "unmapped_status",
            RriOutcome::Missing => "missing",
        }
    }
}

#[derive(serde::Deserialize)]
struct Payload {
    id: String,
    #[serde(rename = "versionId")]
    version_id: i64,
}

pub(super) async fn run_job(store: &Store, job: Job, settings: &WorkerSettings) {
    let Ok(payload) = serde_json::from_str::<Payload>(&job.payload) else {
        dead_letter(store, &job, "payload does not name a Task version").await;
        return;
    };
    settings.give_way().await;
    match report(store, &payload, &job, settings).await {
        Ok(None) => {
            tracing::debug!(job_id = job.id, "referral status job deferred behind an earlier one");
            let reason = "an earlier referral status change is still being reported";
            if let Err(e) = store.fail(&job, reason, &Backoff::default()).await {
                tracing::warn!(job_id = job.id, error = %e, "could not defer the referral status job (lease expires)");
            }
        }
        Ok(Some(outcome)) => {
            metrics::counter!("rri_total", "outcome" => outcome.label()).increment(1);
            let (id, version) = (&payload.id, payload.version_id);
            match outcome {
                RriOutcome::Queued => {
                    tracing::info!(resource_type = "Task", id = %id, version, "referral status update queued")
                }
                RriOutcome::NoDestination => tracing::warn!(
                    resource_type = "Task",
                    id = %id,
                    version,
                    "referral status update not sent: no outbound destination for the referring EHR"
                ),
                RriOutcome::UnmappedStatus => tracing::info!(
                    resource_type = "Task",
                    id = %id,
                    version,
                    "referral status has no HL7 v2 referral status; no update sent"
                ),
                RriOutcome::Missing => tracing::warn!(
                    resource_type = "Task",
                    id = %id,
                    version,
                    "referral status update not sent: the Task version or its referral source is gone"
                ),
            }
        }
        Err(StoreError::LeaseLost { .. }) => {
            tracing::warn!(job_id = job.id, "referral status job lease lost; its work was rolled back")
        }
        Err(e) => retry_later(store, &job, &e).await,
    }
}

/// Builds the RRI for the Task version and queues it, completing `job`, in one transaction; `None` (nothing done)
/// while an older job of the queue is still pending.
async fn report(
    store: &Store,
    payload: &Payload,
    job: &Job,
    settings: &WorkerSettings,
) -> Result<Option<RriOutcome>, StoreError> {
    let mut tx = store.begin().await?;
    if tx.earlier_job_pending(job).await? {
        tx.rollback().await?;
        return Ok(None);
    }
    let outcome = build_and_queue(&mut tx, payload, settings).await?;
    tx.complete_job(job).await?;
    tx.commit().await?;
    Ok(Some(outcome))
}

async fn build_and_queue(
    tx: &mut StoreTx,
    payload: &Payload,
    settings: &WorkerSettings,
) -> Result<RriOutcome, StoreError> {
    let Some(task) = tx.vread("Task", &payload.id, payload.version_id).await?.and_then(|v| json(v.content)) else {
        return Ok(RriOutcome::Missing);
    };
    let service_request = referenced(tx, &task, "focus").await?;
    let source =
        v2fhir::MessageSource::of(&task).or_else(|| service_request.as_ref().and_then(v2fhir::MessageSource::of));
    let Some(source) = source else { return Ok(RriOutcome::Missing) };
    let patient = referenced(tx, &task, "for").await?;
    let owner = referenced(tx, &task, "owner").await?;
    let requester = referenced(tx, &task, "requester").await?;
    let requester_practitioner = match &requester {
        Some(role) if role.get("resourceType").and_then(Value::as_str) == Some("PractitionerRole") => {
            referenced(tx, role, "practitioner").await?
        }
        _ => None,
    };
    let control_id = v2fhir::rri_control_id(&payload.id, payload.version_id);
    let timestamp = chrono::Utc::now().format("%Y%m%d%H%M%S%.3f+0000").to_string();
    let update = v2fhir::ReferralStatusUpdate {
        task: &task,
        source: &source,
        service_request: service_request.as_ref(),
        patient: patient.as_ref(),
        owner: owner.as_ref(),
        requester: requester.as_ref(),
        requester_practitioner: requester_practitioner.as_ref(),
        sending_application: &settings.sender.application,
        sending_facility: &settings.sender.facility,
        control_id: &control_id,
        timestamp: &timestamp,
    };
    let bytes = match v2fhir::build_rri(&update) {
        Ok(bytes) => bytes,
        Err(v2fhir::RriError::NoStatus | v2fhir::RriError::UnmappedStatus(_)) => return Ok(RriOutcome::UnmappedStatus),
    };
    let Some(routes) = settings.routes.as_ref() else { return Ok(RriOutcome::NoDestination) };
    let message = match OutboundMessage::parse(bytes) {
        Ok(m) => m,
        Err(e) => return Err(StoreError::Invalid(format!("the RRI^I12 built is not sendable: {e}"))),
    };
    match outbound::queue(tx, routes, message).await {
        Ok(queued) => {
            tracing::debug!(control_id = %control_id, destination = %queued.destination, "RRI^I12 queued");
            Ok(RriOutcome::Queued)
        }
        Err(OutboundError::NoDestination { .. }) => Ok(RriOutcome::NoDestination),
        Err(OutboundError::Store(e)) => Err(e),
        Err(e) => Err(StoreError::Invalid(e.to_string())),
    }
}

fn json(content: Option<String>) -> Option<Value> {
    serde_json::from_str(&content?).ok()
}

/// The current version of the resource `resource.<element>.reference` names (relative references only).
async fn referenced(tx: &mut StoreTx, resource: &Value, element: &str) -> Result<Option<Value>, StoreError> {
    let reference = resource.get(element).and_then(|r| r.get("reference")).and_then(Value::as_str);
    let Some((resource_type, id)) = reference.and_then(|r| r.split_once('/')) else { return Ok(None) };
    if id.contains('/') || !store::is_valid_id(id) {
        return Ok(None);
    }
    Ok(tx.read(resource_type, id).await?.filter(|c| !c.deleted).and_then(|c| json(c.content)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_trigger_recognises_the_sources_the_conversion_writes() {
        assert_eq!(fhir_server::rest::referral_status::V2_SOURCE_PREFIX, v2fhir::MESSAGE_SOURCE_PREFIX);
        let source = v2fhir::MessageSource { control_id: "REF-1".into(), ..Default::default() };
        let task = serde_json::json!({"meta": {"source": source.to_uri()}});
        assert_eq!(fhir_server::rest::referral_status::v2_source(&task), Some(source.to_uri().as_str()));
    }
}
