//! The one write path for FHIR resources: a version, its search index rows and the work it triggers, together.
//!
//! Every writer (REST interactions, Bundles, group-committed creates, the gateway's conversion and normalization
//! workers) goes through these functions inside its own transaction, so a resource is never stored without its
//! index rows, and derived work (normalizing a QuestionnaireResponse) is queued in the same commit as its source:
//! it is neither lost when the process dies nor queued for a write that rolled back.

use serde_json::{Value, json};
use store::{NewJob, Precondition, StoreError, StoreTx, StoredResource, Written};

use super::search::index_rows;

/// Queue of normalization jobs: one per written or deleted QuestionnaireResponse version, with payload
/// `{"resourceType", "id", "versionId"}`.
pub const NORMALIZE_QUEUE: &str = "normalize";

/// Writes a version of `resource` (its id set) and its index rows, and queues what the change triggers.
pub async fn put(tx: &mut StoreTx, resource: Value, precondition: Precondition) -> Result<Written, StoreError> {
    let rows = index_rows(&resource);
    let written = tx.put(resource, precondition).await?;
    let (resource_type, id) = (&written.resource.resource_type, &written.resource.id);
    if written.created {
        tx.insert_index(resource_type, id, &rows).await?;
    } else {
        tx.replace_index(resource_type, id, &rows).await?;
    }
    after_change(tx, &written.resource).await?;
    Ok(written)
}

/// Writes brand-new resources (fresh ids) in bulk; see [`StoreTx::create_all`].
pub async fn create_all(tx: &mut StoreTx, resources: Vec<Value>) -> Result<Vec<Written>, StoreError> {
    let rows: Vec<_> = resources.iter().map(index_rows).collect();
    let written = tx.create_all(resources).await?;
    for (w, rows) in written.iter().zip(rows) {
        tx.insert_index(&w.resource.resource_type, &w.resource.id, &rows).await?;
        after_change(tx, &w.resource).await?;
    }
    Ok(written)
}

/// Logically deletes a resource, drops its index rows and queues what the deletion triggers. `None` when there
/// was nothing live to delete.
pub async fn delete(
    tx: &mut StoreTx,
    resource_type: &str,
    id: &str,
    precondition: Precondition,
) -> Result<Option<StoredResource>, StoreError> {
    let deleted = tx.delete(resource_type, id, precondition).await?;
    if let Some(tombstone) = &deleted {
        tx.clear_index(resource_type, id).await?;
        after_change(tx, tombstone).await?;
    }
    Ok(deleted)
}

/// Queues the work a new version triggers. A QuestionnaireResponse is normalized into screening Observations and
/// health concerns whichever way it arrived (REST, Bundle, HL7 v2 conversion); a change to what a subscription
/// topic is about records that subscription's events ([`crate::subscriptions::after_change`]).
async fn after_change(tx: &mut StoreTx, version: &StoredResource) -> Result<(), StoreError> {
    if version.resource_type == "QuestionnaireResponse" {
        let payload = json!({
            "resourceType": version.resource_type,
            "id": version.id,
            "versionId": version.version_id,
        });
        tx.enqueue(&NewJob::new(NORMALIZE_QUEUE, payload.to_string())).await?;
    }
    crate::subscriptions::after_change(tx, version).await
}
