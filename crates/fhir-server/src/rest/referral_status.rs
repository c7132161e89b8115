//! Referral status back to the referring EHR: a status change of a referral Task that came from an HL7 v2 REF queues
//! an `rri` job in the transaction of the change; the gateway's RRI worker turns it into an RRI^I12.
//!
//! A Task came from a REF when its `meta.source` (or, if a client dropped that on update, its focus ServiceRequest's)
//! names a converted HL7 v2 message (`https://sdoh-gateway.org/hl7v2/{MSH-3}/{MSH-4}#{MSH-10}`, written by
//! `v2fhir`). A version written by the conversion of a newer message from that same sender (a REF^I14 cancelling
//! the referral) carries a new source and is not echoed back to the EHR that sent it. Any other status change is:
//! a CBO's update through the FHIR API keeps (or drops) the source it read, never makes a new one.

use serde_json::{Value, json};
use store::{NewJob, StoreError, StoreTx};

use super::write::NewVersion;

/// Queue of referral status updates: payload `{"resourceType": "Task", "id", "versionId"}`, the version whose
/// status is to be reported.
pub const RRI_QUEUE: &str = "rri";

/// Prefix of the `meta.source` of resources converted from HL7 v2 messages (kept in step with `v2fhir`).
pub const V2_SOURCE_PREFIX: &str = "https://sdoh-gateway.org/hl7v2/";

/// Queues the RRI job for `version` when it is a status change of a referral Task from an HL7 v2 REF.
pub(super) async fn after_change(tx: &mut StoreTx, change: &NewVersion<'_>) -> Result<(), StoreError> {
    let version = change.version;
    if version.resource_type != "Task" || version.deleted || version.version_id < 2 {
        return Ok(());
    }
    let Some(task) = change.current() else { return Ok(()) };
    let Some(previous) = change.previous(tx).await? else { return Ok(()) };
    if task.get("status") == previous.get("status") {
        return Ok(());
    }
    let own = v2_source(&task);
    let origin = match own {
        Some(source) => Some(source.to_owned()),
        None => focus_source(tx, &task).await?,
    };
    let Some(origin) = origin else { return Ok(()) };
    if let Some(own) = own
        && sender(own) == sender(&origin)
        && Some(own) != v2_source(&previous)
    {
        // Written by the conversion of a newer message from the referring EHR itself.
        return Ok(());
    }
    let payload = json!({"resourceType": "Task", "id": version.id, "versionId": version.version_id});
    tx.enqueue(&NewJob::new(RRI_QUEUE, payload.to_string())).await
}

fn parse(content: Option<&str>) -> Option<Value> {
    serde_json::from_str(content?).ok()
}

/// `meta.source`, when it names a converted HL7 v2 message.
pub fn v2_source(resource: &Value) -> Option<&str> {
    resource.get("meta")?.get("source")?.as_str().filter(|s| s.starts_with(V2_SOURCE_PREFIX))
}

/// The sending application and facility part of a v2 source (everything before the message's control id).
fn sender(source: &str) -> &str {
    source.split_once('#').map_or(source, |(sender, _)| sender)
}

/// The v2 source of the Task's focus ServiceRequest.
async fn focus_source(tx: &mut StoreTx, task: &Value) -> Result<Option<String>, StoreError> {
    let reference = task.get("focus").and_then(|f| f.get("reference")).and_then(Value::as_str);
    let Some(id) = reference.and_then(|r| r.strip_prefix("ServiceRequest/")) else { return Ok(None) };
    let Some(sr) = tx.read("ServiceRequest", id).await? else { return Ok(None) };
    Ok(parse(sr.content.as_deref()).as_ref().and_then(v2_source).map(str::to_owned))
}
