//! The one write path for FHIR resources: a version, its search index rows and the work it triggers, together.
//!
//! Every writer (REST interactions, Bundles, group-committed creates, the gateway's conversion and normalization
//! workers) goes through these functions inside its own transaction, so a resource is never stored without its
//! index rows, and derived work (normalizing a QuestionnaireResponse) is queued in the same commit as its source:
//! it is neither lost when the process dies nor queued for a write that rolled back.

use serde_json::{Value, json};
use store::{Grant, NewJob, Precondition, Scope, StoreError, StoreTx, StoredResource, Written};

use super::access::{self, Change};
use super::referral;
/// The search index rows the write path stores for a resource: a worker that extracts them before it begins its
/// transaction holds SQLite's one writer only to write them (see [`create_all_indexed`]).
pub use super::search::index_rows;
use crate::auth::Caller;
use crate::measures::facts;

/// Queue of normalization jobs: one per written or deleted QuestionnaireResponse version, with payload
/// `{"resourceType", "id", "versionId"}`.
pub const NORMALIZE_QUEUE: &str = "normalize";

/// Writes a version of `resource` (its id set) on the gateway's own behalf; see [`put_as`].
pub async fn put(tx: &mut StoreTx, resource: Value, precondition: Precondition) -> Result<Written, StoreError> {
    put_as(tx, &Caller::System, resource, precondition).await
}

/// The live content of a resource as `caller` may see it inside `tx`: `None` when absent, deleted or outside the
/// caller's scope.
pub async fn read_live(
    tx: &mut StoreTx,
    caller: &Caller,
    resource_type: &str,
    id: &str,
) -> Result<Option<(StoredResource, Value)>, StoreError> {
    let Some(stored) = tx.read(resource_type, id).await?.filter(|s| !s.deleted) else { return Ok(None) };
    if !tx.visible(&access::scope(caller), resource_type, id).await? {
        return Ok(None);
    }
    let content = stored.content.as_deref().and_then(|c| serde_json::from_str(c).ok()).unwrap_or(Value::Null);
    Ok(Some((stored, content)))
}

/// Writes a version of `resource` for `caller`: the caller's role must allow the change, an existing resource
/// must be within its scope (else [`StoreError::NotFound`]), and a referral Task must move along the IG's state
/// machine by the side allowed to move it. Then the version, its index rows, and what the change triggers.
pub async fn put_as(
    tx: &mut StoreTx,
    caller: &Caller,
    resource: Value,
    precondition: Precondition,
) -> Result<Written, StoreError> {
    write_version(tx, caller, resource, precondition, false).await
}

/// Creates a resource under an id the server just assigned, for `caller`: as [`put_as`], but a scoped client may
/// create (it may not choose ids).
pub async fn create_as(tx: &mut StoreTx, caller: &Caller, resource: Value) -> Result<Written, StoreError> {
    write_version(tx, caller, resource, Precondition::MustNotExist, true).await
}

async fn write_version(
    tx: &mut StoreTx,
    caller: &Caller,
    resource: Value,
    precondition: Precondition,
    server_assigned_id: bool,
) -> Result<Written, StoreError> {
    let mut resource = resource;
    let resource_type = resource["resourceType"].as_str().unwrap_or_default().to_owned();
    let id = resource["id"].as_str().unwrap_or_default().to_owned();
    access::check_change(caller, &resource_type, Change::Write)?;
    drop_gateway_source(caller, &mut resource);
    let scope = access::scope(caller);
    let needs_before = caller.principal().is_some() || resource_type == "Task";
    let mut exists = false;
    let before = if needs_before {
        match tx.read(&resource_type, &id).await? {
            // Anything stored under this id, deleted or not, outside the caller's scope is not theirs to take over.
            Some(_) if !tx.visible(&scope, &resource_type, &id).await? => {
                return Err(StoreError::NotFound { resource_type, id });
            }
            // A scoped client never chooses ids: the same answer as for an id outside its scope, so a PUT can
            // neither probe for ids nor claim one the gateway will use later (converted HL7 v2 ids are derived).
            None if scope != Scope::All && !server_assigned_id => {
                return Err(StoreError::NotFound { resource_type, id });
            }
            Some(stored) => {
                exists = true;
                stored
                    .content
                    .as_deref()
                    .filter(|_| !stored.deleted)
                    .and_then(|c| serde_json::from_str::<Value>(c).ok())
            }
            None => None,
        }
    } else {
        None
    };
    // Changing what exists, deleted or not (a new id has nothing to check: the create's own rules follow).
    if scope != Scope::All && exists {
        check_scoped_change(tx, caller, &resource_type, &id, before.as_ref()).await?;
    }
    if resource_type == "Task" {
        referral::check_task_write(caller, before.as_ref(), &resource)?;
    }
    let rows = index_rows(&resource);
    let fact = early_fact(&resource);
    let triggers = matches!(resource_type.as_str(), "Task" | "ServiceRequest").then(|| resource.clone());
    let written = tx.put(resource, precondition).await?;
    let (resource_type, id) = (&written.resource.resource_type, &written.resource.id);
    if written.created {
        tx.insert_index(resource_type, id, &rows).await?;
    } else {
        tx.replace_index(resource_type, id, &rows).await?;
    }
    if let Some(payload) = fact_after_write(&written.resource, fact) {
        // A create has no row to remove: a resource that contributes nothing costs no statement.
        if payload.is_some() || !written.created {
            tx.set_fact(resource_type, id, payload.as_deref()).await?;
        }
    }
    if written.created {
        grant_to_author(tx, caller, &written.resource).await?;
    }
    if let Some(content) = &triggers {
        check_references_in_scope(tx, caller, content, written.created).await?;
    }
    // `before` was read for every Task and every client's write; otherwise the hooks find the previous version.
    let previous = needs_before.then_some(before.as_ref());
    after_change(tx, NewVersion { version: &written.resource, content: triggers.as_ref(), previous }).await?;
    Ok(written)
}

/// Writes brand-new resources (fresh ids) in bulk on the gateway's own behalf; see [`create_all_as`].
pub async fn create_all(tx: &mut StoreTx, resources: Vec<Value>) -> Result<Vec<Written>, StoreError> {
    create_all_as(tx, &Caller::System, resources).await
}

/// [`create_all`] for resources whose index rows the caller may have extracted already ([`index_rows`] of the
/// same content; `None`: extracted here).
pub async fn create_all_indexed(
    tx: &mut StoreTx,
    resources: Vec<(Value, Option<Vec<store::IndexRow>>)>,
) -> Result<Vec<Written>, StoreError> {
    create_indexed_as(tx, &Caller::System, resources).await
}

/// Writes brand-new resources (fresh ids) in bulk for `caller`; see [`StoreTx::create_all`]. Each must be a change
/// the caller's role may make; referral Tasks must start as the state machine allows.
pub async fn create_all_as(
    tx: &mut StoreTx,
    caller: &Caller,
    resources: Vec<Value>,
) -> Result<Vec<Written>, StoreError> {
    let mut resources = resources;
    for resource in &mut resources {
        drop_gateway_source(caller, resource);
    }
    create_indexed_as(tx, caller, resources.into_iter().map(|r| (r, None)).collect()).await
}

/// [`create_all_as`] after the caller's own `meta.source` is settled: given index rows are of the content as it
/// is written.
async fn create_indexed_as(
    tx: &mut StoreTx,
    caller: &Caller,
    resources: Vec<(Value, Option<Vec<store::IndexRow>>)>,
) -> Result<Vec<Written>, StoreError> {
    let (resources, extracted): (Vec<Value>, Vec<Option<Vec<store::IndexRow>>>) = resources.into_iter().unzip();
    for resource in &resources {
        let resource_type = resource["resourceType"].as_str().unwrap_or_default();
        access::check_change(caller, resource_type, Change::Write)?;
        if resource_type == "Task" {
            referral::check_task_write(caller, None, resource)?;
        }
    }
    let rows: Vec<_> =
        resources.iter().zip(extracted).map(|(r, given)| given.unwrap_or_else(|| index_rows(r))).collect();
    let facts: Vec<Option<Option<String>>> = resources.iter().map(early_fact).collect();
    let triggers: Vec<Option<Value>> = resources
        .iter()
        .map(|r| matches!(r["resourceType"].as_str(), Some("Task" | "ServiceRequest")).then(|| r.clone()))
        .collect();
    let written = tx.create_all(resources).await?;
    for (w, rows) in written.iter().zip(rows) {
        tx.insert_index(&w.resource.resource_type, &w.resource.id, &rows).await?;
        grant_to_author(tx, caller, &w.resource).await?;
    }
    let payloads: Vec<Option<String>> =
        written.iter().zip(facts).map(|(w, fact)| fact_after_write(&w.resource, fact).flatten()).collect();
    let fact_rows: Vec<(&str, &str, &str)> = written
        .iter()
        .zip(&payloads)
        .filter_map(|(w, p)| Some((w.resource.resource_type.as_str(), w.resource.id.as_str(), p.as_deref()?)))
        .collect();
    tx.put_facts(&fact_rows).await?;
    // Checked once everything created together is the caller's (a platform's ServiceRequest and the sub-Task that
    // focuses it), and before any Task grants what it references.
    for content in triggers.iter().flatten() {
        check_references_in_scope(tx, caller, content, true).await?;
    }
    for (w, content) in written.iter().zip(&triggers) {
        after_change(tx, NewVersion { version: &w.resource, content: content.as_ref(), previous: Some(None) }).await?;
    }
    Ok(written)
}

/// The measure-fact payload of a resource about to be written, reduced before the store takes it (no copy): outer
/// `None` for types that contribute nothing (no row, no statement) and for Tasks, whose completion day may come
/// from the `meta.lastUpdated` the store stamps, so they are reduced after the write by [`fact_after_write`].
fn early_fact(resource: &Value) -> Option<Option<String>> {
    let resource_type = resource["resourceType"].as_str().unwrap_or_default();
    (facts::is_fact_type(resource_type) && resource_type != "Task").then(|| facts::fact_payload(resource))
}

/// The fact row a written version must have (`Some(None)`: none), or `None` when its type has no fact rows. Every
/// writer calls this in the write's transaction, so `measure_facts` is current whenever the resource is.
fn fact_after_write(version: &StoredResource, early: Option<Option<String>>) -> Option<Option<String>> {
    if let Some(payload) = early {
        return Some(payload);
    }
    if version.resource_type != "Task" {
        return None;
    }
    let content = version.content.as_deref()?;
    // Only Tasks about a ServiceRequest contribute: the rest are never parsed again.
    if memchr::memmem::find(content.as_bytes(), b"ServiceRequest/").is_none() {
        return Some(None);
    }
    Some(serde_json::from_str::<Value>(content).ok().as_ref().and_then(facts::fact_payload))
}

/// What the write path knows of a change, for what the change triggers: the hooks use what the writer already read
/// and parsed instead of reading and parsing it again.
pub(crate) struct NewVersion<'a> {
    pub version: &'a StoredResource,
    /// The written resource, when the writer kept it (Tasks and ServiceRequests); `None` for a deletion.
    pub content: Option<&'a Value>,
    /// The live version before the write, when the writer read it (`Some(None)`: there was none).
    pub previous: Option<Option<&'a Value>>,
}

impl NewVersion<'_> {
    /// The written resource: as kept by the writer, or parsed from the stored version.
    pub fn current(&self) -> Option<std::borrow::Cow<'_, Value>> {
        match self.content {
            Some(content) => Some(std::borrow::Cow::Borrowed(content)),
            None => {
                self.version.content.as_deref().and_then(|c| serde_json::from_str(c).ok()).map(std::borrow::Cow::Owned)
            }
        }
    }

    /// The live version before the write: as read by the writer, or from history.
    pub async fn previous(&self, tx: &mut StoreTx) -> Result<Option<std::borrow::Cow<'_, Value>>, StoreError> {
        if let Some(previous) = self.previous {
            return Ok(previous.map(std::borrow::Cow::Borrowed));
        }
        let version = self.version;
        if version.version_id < 2 {
            return Ok(None);
        }
        let stored = tx.vread(&version.resource_type, &version.id, version.version_id - 1).await?;
        let parsed = stored.filter(|s| !s.deleted).and_then(|s| serde_json::from_str(s.content.as_deref()?).ok());
        Ok(parsed.map(std::borrow::Cow::Owned))
    }
}

/// Logically deletes a resource on the gateway's own behalf; see [`delete_as`].
pub async fn delete(
    tx: &mut StoreTx,
    resource_type: &str,
    id: &str,
    precondition: Precondition,
) -> Result<Option<StoredResource>, StoreError> {
    delete_as(tx, &Caller::System, resource_type, id, precondition).await
}

/// Logically deletes a resource for `caller`, drops its index rows and queues what the deletion triggers. `None`
/// when there was nothing live to delete (or nothing within the caller's scope).
pub async fn delete_as(
    tx: &mut StoreTx,
    caller: &Caller,
    resource_type: &str,
    id: &str,
    precondition: Precondition,
) -> Result<Option<StoredResource>, StoreError> {
    access::check_change(caller, resource_type, Change::Delete)?;
    let scope = access::scope(caller);
    if !tx.visible(&scope, resource_type, id).await? {
        return Ok(None);
    }
    if scope != Scope::All {
        check_scoped_change(tx, caller, resource_type, id, None).await?;
    }
    let deleted = tx.delete(resource_type, id, precondition).await?;
    if let Some(tombstone) = &deleted {
        tx.clear_index(resource_type, id).await?;
        if facts::is_fact_type(resource_type) {
            tx.set_fact(resource_type, id, None).await?;
        }
        match resource_type {
            // A deleted referral grants nothing any more; what its order referenced is granted afresh.
            "Task" => tx.set_task_grants(id, &[]).await?,
            "ServiceRequest" => referral::after_service_request_write(tx, id).await?,
            _ => {}
        }
        after_change(tx, NewVersion { version: tombstone, content: None, previous: None }).await?;
    }
    Ok(deleted)
}

/// The provenance the gateway writes on converted HL7 v2 resources (it routes referral status back to the EHR);
/// a client may not claim it, so a client-supplied one is dropped (a Task read and written back loses it, and the
/// status trigger then follows its focus ServiceRequest).
fn drop_gateway_source(caller: &Caller, resource: &mut Value) {
    if caller.principal().is_none() {
        return;
    }
    let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) else { return };
    if meta
        .get("source")
        .and_then(Value::as_str)
        .is_some_and(|s| s.starts_with(super::referral_status::V2_SOURCE_PREFIX))
    {
        meta.remove("source");
    }
}

/// What a scoped client may change besides creating: a referral Task it owns or requested (the state machine and
/// `check_task_write` decide the rest), and what it created itself. What it can merely read (the clinic's order,
/// documents a Task names) it cannot change or delete.
async fn check_scoped_change(
    tx: &mut StoreTx,
    caller: &Caller,
    resource_type: &str,
    id: &str,
    before: Option<&Value>,
) -> Result<(), StoreError> {
    let referral_task = resource_type == "Task" && before.is_some_and(referral::is_referral_task);
    if referral_task || tx.authored(&access::scope(caller), resource_type, id).await? {
        return Ok(());
    }
    Err(StoreError::Forbidden(format!("a cbo client may change only the {resource_type} resources it created")))
}

/// A referral Task or ServiceRequest grants its owner what it references, so a scoped client may make one refer
/// only to what it can already read: otherwise naming any id would grant it that resource. The refusal does not
/// say which reference, so it cannot be used to probe for ids either.
async fn check_references_in_scope(
    tx: &mut StoreTx,
    caller: &Caller,
    content: &Value,
    created: bool,
) -> Result<(), StoreError> {
    let scope = access::scope(caller);
    if scope == Scope::All {
        return Ok(());
    }
    let refused = || {
        StoreError::Forbidden(
            "a cbo client's Tasks and ServiceRequests may reference only resources it can read".into(),
        )
    };
    let mut references = referral::references_in(content);
    // A referral a scoped client makes (a coordination platform's sub-Task) is about an order of its own (IG:
    // the platform's `filler-order` ServiceRequest), never the clinic's: its status follows the sub-Task.
    if created
        && content["resourceType"] == "Task"
        && referral::is_referral_task(content)
        && let Some(sr_id) = referral::focus_service_request(content)
        && !tx.authored(&scope, "ServiceRequest", sr_id).await?
    {
        return Err(StoreError::Forbidden(
            "a cbo client's referral Task must focus a ServiceRequest the client created".into(),
        ));
    }
    // A Task also grants what its focus ServiceRequest references: those must be readable already too.
    if content["resourceType"] == "Task"
        && let Some(sr_id) = referral::focus_service_request(content)
        && let Some(sr) = tx.read("ServiceRequest", sr_id).await?.filter(|s| !s.deleted)
        && let Some(sr) = sr.content.as_deref().and_then(|c| serde_json::from_str::<Value>(c).ok())
    {
        references.extend(referral::references_in(&sr));
    }
    for (resource_type, id) in references {
        if !tx.visible(&scope, &resource_type, &id).await? {
            return Err(refused());
        }
    }
    Ok(())
}

/// A resource a scoped client creates is visible to its organization from then on.
async fn grant_to_author(tx: &mut StoreTx, caller: &Caller, version: &StoredResource) -> Result<(), StoreError> {
    let Scope::Organization(organization) = access::scope(caller) else { return Ok(()) };
    let grant = Grant { organization, resource_type: version.resource_type.clone(), id: version.id.clone() };
    tx.insert_grants("", &[grant]).await
}

/// Does what a new version triggers: referral bookkeeping (grants, the ServiceRequest following its Task), and
/// queued work. A QuestionnaireResponse is normalized into screening Observations and health concerns whichever
/// way it arrived (REST, Bundle, HL7 v2 conversion); a referral Task from an HL7 v2 REF reports its status changes
/// back to the referring EHR; a change to what a subscription topic is about records that subscription's
/// events ([`crate::subscriptions::after_change`]).
async fn after_change(tx: &mut StoreTx, change: NewVersion<'_>) -> Result<(), StoreError> {
    let version = change.version;
    match (version.resource_type.as_str(), change.content) {
        ("Task", Some(task)) => referral::after_task_write(tx, &version.id, task).await?,
        ("ServiceRequest", Some(_)) => referral::after_service_request_write(tx, &version.id).await?,
        _ => {}
    }
    if version.resource_type == "QuestionnaireResponse" {
        let payload = json!({
            "resourceType": version.resource_type,
            "id": version.id,
            "versionId": version.version_id,
        });
        tx.enqueue(&NewJob::new(NORMALIZE_QUEUE, payload.to_string())).await?;
    }
    super::referral_status::after_change(tx, &change).await?;
    super::membership::after_change(tx, version).await?;
    crate::subscriptions::after_change(tx, &change).await
}
