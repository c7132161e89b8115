//! Registry membership follows the data: a write that can change a patient's registry membership or record queues
//! a `registry-membership` job in the write's own transaction.
//!
//! The job names the written version, not the patient: the worker reads that version and the one before it, so a
//! deletion, or a Condition moved from one patient to another, re-evaluates every patient involved. Queuing is off
//! until the gateway enables it (it tracks registries only when some are configured), so deployments without
//! registries pay nothing on their write path.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;
use store::{NewJob, StoreError, StoreTx, StoredResource};

/// Queue of membership jobs, payload `{"resourceType", "id", "versionId"}` of the written version.
pub const MEMBERSHIP_QUEUE: &str = "registry-membership";

/// The resource types whose writes can change a registry member's membership or record.
pub const TRACKED_TYPES: &[&str] =
    &["Patient", "Condition", "Observation", "ServiceRequest", "Task", "Encounter", "Coverage"];

static TRACKING: AtomicBool = AtomicBool::new(false);

/// Turns membership jobs on or off for this process (on while registries are configured).
pub fn track_registries(on: bool) {
    TRACKING.store(on, Ordering::Relaxed);
}

pub fn tracking_registries() -> bool {
    TRACKING.load(Ordering::Relaxed)
}

/// Queues the membership job a new version (or a deletion) of a tracked type triggers.
pub(crate) async fn after_change(tx: &mut StoreTx, version: &StoredResource) -> Result<(), StoreError> {
    if !tracking_registries() || !TRACKED_TYPES.contains(&version.resource_type.as_str()) {
        return Ok(());
    }
    let payload = json!({"resourceType": version.resource_type, "id": version.id, "versionId": version.version_id});
    tx.enqueue(&NewJob::new(MEMBERSHIP_QUEUE, payload.to_string())).await
}
