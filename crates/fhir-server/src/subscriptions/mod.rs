//! Topic-based subscriptions (FHIR R4 Subscriptions Backport 1.1.0): topics as data, Subscription validation and
//! server-owned fields, events recorded in the write path, and the `$status` / `$events` operations.
//!
//! A change to a resource that some topic is about ([`after_change`], called by the one write path) is matched in
//! memory against every listening subscription's topic trigger and filters; each match is numbered and stored in
//! the same transaction, and the subscription's single delivery job is queued if it is not already. Delivery itself
//! (HTTP, handshakes, heartbeats, retries) is the gateway's `subscriptions` worker.

pub mod notification;
mod operations;
pub mod spec;
pub mod topics;

use serde_json::{Value, json};
use store::{NewJob, StoreError, StoreTx, StoredResource, SubscriptionSpec, Timestamp};

use crate::auth::{Caller, Role};
use crate::rest::write::NewVersion;
use crate::rest::{FhirError, IssueType};

pub use operations::events_operation;
pub(crate) use operations::operation;
pub use spec::{PayloadContent, SubscriptionConfig, parse_subscription};

/// The job queue of notification delivery: at most one job per subscription, payload `{"subscription": id}`.
pub const NOTIFY_QUEUE: &str = "subscription-notify";
pub const BACKPORT_PROFILE: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription";
/// Records who created a Subscription: sub-extensions `organization` (valueReference) and `role` (valueCode).
pub const CREATOR_EXTENSION: &str = "https://sdoh-gateway.org/fhir/StructureDefinition/subscription-creator";

/// The delivery job of a subscription.
pub fn delivery_job(subscription_id: &str) -> NewJob {
    // Failures are counted by the subscription itself (status error, then off); the job never dead-letters.
    NewJob::new(NOTIFY_QUEUE, json!({ "subscription": subscription_id }).to_string()).max_attempts(i32::MAX)
}

/// Prepares a client's Subscription for storage: validates it, refuses a CBO client's filter on another owner
/// (403), sets the server-owned `status` and records the creating organization. `current` is the stored version
/// an update replaces.
pub fn prepare(caller: &Caller, mut resource: Value, current: Option<&StoredResource>) -> Result<Value, FhirError> {
    let config = parse_subscription(&resource)?;
    if caller.role() == Some(Role::Cbo) {
        let organization = caller.organization().unwrap_or("");
        for filter in &config.filters {
            let names_other_owner = filter.text.split_once('?').into_iter().flat_map(|(_, q)| q.split('&')).any(|p| {
                let (name, value) = p.split_once('=').unwrap_or((p, ""));
                name.split(':').next() == Some("owner")
                    && value
                        .split(',')
                        .any(|v| !same_reference(&v.replace("%2F", "/").replace("%2f", "/"), organization))
            });
            if names_other_owner {
                return Err(FhirError::new(
                    axum::http::StatusCode::FORBIDDEN,
                    IssueType::Forbidden,
                    "a community organization may only subscribe to Tasks it owns: the owner filter names another organization",
                )
                .at("Subscription.criteria.extension('backport-filter-criteria')"));
            }
        }
    }
    let live = current
        .filter(|c| !c.deleted)
        .and_then(|c| c.content.as_deref())
        .and_then(|c| serde_json::from_str::<Value>(c).ok());
    let status = match &live {
        None => "requested".to_owned(),
        Some(_) if config.status.as_deref() == Some("off") => "off".to_owned(),
        Some(stored) => {
            let stored_status = stored.get("status").and_then(Value::as_str).unwrap_or("requested");
            let same_channel = stored.get("channel") == resource.get("channel")
                && stored.get("criteria") == resource.get("criteria")
                && stored.get("_criteria") == resource.get("_criteria");
            // Asking for `requested` again re-activates an erroring subscription with a fresh handshake.
            let reactivate =
                stored_status == "off" || (stored_status == "error" && config.status.as_deref() == Some("requested"));
            if reactivate || !same_channel { "requested".to_owned() } else { stored_status.to_owned() }
        }
    };
    let creator = match &live {
        Some(stored) => creator_extension(stored).cloned(),
        None => caller.principal().map(|p| {
            json!({"url": CREATOR_EXTENSION, "extension": [
                {"url": "organization", "valueReference": {"reference": p.organization}},
                {"url": "role", "valueCode": p.role.as_str()},
            ]})
        }),
    };
    let Some(object) = resource.as_object_mut() else {
        return Err(FhirError::bad_request(IssueType::Structure, "a Subscription must be a JSON object"));
    };
    // `error` is the server's account of failed notifications: kept while the stored status stands.
    object.remove("error");
    if let Some(stored) = &live
        && stored.get("status").and_then(Value::as_str) == Some(status.as_str())
        && let Some(error) = stored.get("error")
    {
        object.insert("error".into(), error.clone());
    }
    object.insert("status".into(), Value::String(status));
    let mut extensions: Vec<Value> = object
        .remove("extension")
        .and_then(|e| e.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.get("url").and_then(Value::as_str) != Some(CREATOR_EXTENSION))
        .collect();
    extensions.extend(creator);
    if !extensions.is_empty() {
        object.insert("extension".into(), Value::Array(extensions));
    }
    let meta = object.entry("meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        let profiles = meta.entry("profile").or_insert_with(|| json!([]));
        if let Some(list) = profiles.as_array_mut()
            && !list.iter().any(|p| p == BACKPORT_PROFILE)
        {
            list.push(Value::String(BACKPORT_PROFILE.into()));
        }
    }
    Ok(resource)
}

/// Adds the backport profile and the `$status` / `$events` operations to the CapabilityStatement's Subscription.
pub fn describe_capability(resource: &mut Value) {
    resource["supportedProfile"] = json!([BACKPORT_PROFILE]);
    resource["operation"] = json!([
        {"name": "status",
         "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status"},
        {"name": "events",
         "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events"},
    ]);
    resource["extension"] = json!(topics::all()
        .iter()
        .map(|t| json!({
            "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical",
            "valueCanonical": t.url,
        }))
        .collect::<Vec<_>>());
}

/// Subscriptions are written only through `POST [base]/Subscription`, `PUT` and `PATCH [base]/Subscription/{id}`,
/// where the caller is known and [`prepare`] applies; Bundle entries and conditional updates are refused.
pub fn refuse_indirect_write(resource_type: &str) -> Result<(), FhirError> {
    if resource_type == "Subscription" {
        return Err(FhirError::bad_request(
            IssueType::NotSupported,
            "Subscriptions are created with POST [base]/Subscription and changed with PUT or PATCH \
             [base]/Subscription/{id}, not in Bundles or by conditional update",
        ));
    }
    Ok(())
}

fn creator_extension(subscription: &Value) -> Option<&Value> {
    subscription
        .get("extension")
        .and_then(Value::as_array)?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(CREATOR_EXTENSION))
}

/// The organization whose events a subscription is limited to: the creator's, when a CBO client created it.
fn scoped_organization(subscription: &Value) -> Option<String> {
    let parts = creator_extension(subscription)?.get("extension")?.as_array()?;
    let part = |name: &str| parts.iter().find(|p| p.get("url").and_then(Value::as_str) == Some(name));
    let role = part("role")?.get("valueCode")?.as_str()?;
    if role != Role::Cbo.as_str() {
        return None;
    }
    Some(part("organization")?.get("valueReference")?.get("reference")?.as_str()?.to_owned())
}

/// Whether a reference (relative, or absolute ending in `Type/id`) names `target` (`Type/id`).
fn same_reference(reference: &str, target: &str) -> bool {
    let reference = reference.trim();
    !target.is_empty() && (reference == target || reference.ends_with(&format!("/{target}")))
}

/// Whether `organization` (`Organization/{id}`) may receive events about `focus`: exactly when it may read it, by
/// the same access grants as every read (a referral Task it owns or requested, what such a Task references, what
/// it created). The one place notification visibility is decided.
pub async fn focus_visible_to(tx: &mut StoreTx, organization: &str, focus: &Value) -> Result<bool, StoreError> {
    let (Some(resource_type), Some(id)) =
        (focus.get("resourceType").and_then(Value::as_str), focus.get("id").and_then(Value::as_str))
    else {
        return Ok(false);
    };
    tx.visible(&store::Scope::Organization(organization.to_owned()), resource_type, id).await
}

/// Called by the write path for every new version (a deletion is a version without content): keeps the delivery
/// state of a written Subscription, and records the events a change to a topic's focus type causes.
pub(crate) async fn after_change(tx: &mut StoreTx, change: &NewVersion<'_>) -> Result<(), StoreError> {
    let version = change.version;
    if version.resource_type == "Subscription" {
        return subscription_written(tx, version).await;
    }
    if !topics::is_focus_type(&version.resource_type) {
        return Ok(());
    }
    let listening = tx.listening_subscriptions(&version.resource_type).await?;
    if listening.is_empty() {
        return Ok(());
    }
    let current = change.current();
    let previous = change.previous(tx).await?;
    let (current, previous) = (current.as_deref(), previous.as_deref());
    let interaction = match (&previous, &current) {
        (None, Some(_)) => topics::Interaction::Create,
        (Some(_), Some(_)) => topics::Interaction::Update,
        (Some(_), None) => topics::Interaction::Delete,
        (None, None) => return Ok(()),
    };
    // Filters and visibility look at what the resource is (or, once deleted, was).
    let Some(focus) = current.or(previous) else { return Ok(()) };
    let now = Timestamp::now();
    for subscription in listening {
        let spec = &subscription.spec;
        let Some(topic) = topics::get(&spec.topic) else { continue };
        if !topic.triggered(interaction, previous, current) {
            continue;
        }
        let filters_pass = spec.filters.iter().all(|text| match spec::parse_filter(topic, text) {
            Ok(filter) => topics::matches(focus, &filter.clauses),
            Err(_) => false,
        });
        if !filters_pass {
            continue;
        }
        if let Some(organization) = &spec.organization
            && !focus_visible_to(tx, organization, focus).await?
        {
            continue;
        }
        let (number, queue) = tx.record_subscription_event(&spec.id, version, now).await?;
        if queue {
            tx.enqueue(&delivery_job(&spec.id)).await?;
        }
        tracing::debug!(
            subscription = %spec.id,
            event_number = number,
            resource_type = %version.resource_type,
            id = %version.id,
            "subscription event recorded"
        );
    }
    Ok(())
}

/// Mirrors a written Subscription version into the delivery state; a `requested` one gets its handshake queued.
async fn subscription_written(tx: &mut StoreTx, version: &StoredResource) -> Result<(), StoreError> {
    let Some(content) = version.content.as_deref() else {
        return tx.drop_subscription(&version.id).await;
    };
    let Ok(resource) = serde_json::from_str::<Value>(content) else {
        return Err(StoreError::Invalid("the Subscription is not valid JSON".into()));
    };
    let config = parse_subscription(&resource).map_err(|e| StoreError::Invalid(e.diagnostics))?;
    let status = resource.get("status").and_then(Value::as_str).unwrap_or("requested").to_owned();
    let spec = SubscriptionSpec {
        id: version.id.clone(),
        topic: config.topic.url.clone(),
        focus_type: config.topic.resource.clone(),
        filters: config.filters.iter().map(|f| f.text.clone()).collect(),
        organization: scoped_organization(&resource),
        status: status.clone(),
        heartbeat_secs: config.heartbeat_secs,
    };
    if tx.sync_subscription(&spec, status == "requested").await? {
        tx.enqueue(&delivery_job(&version.id)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Principal;

    fn cbo(org: &str) -> Caller {
        Caller::Client(Principal { client_id: "c".into(), role: Role::Cbo, organization: org.into() })
    }

    fn subscription(filter: &str) -> Value {
        json!({
            "resourceType": "Subscription", "status": "active", "reason": "r",
            "criteria": "https://sdoh-gateway.org/fhir/SubscriptionTopic/new-referral",
            "_criteria": {"extension": [{"url": spec::FILTER_CRITERIA, "valueString": filter}]},
            "extension": [{"url": CREATOR_EXTENSION, "valueString": "forged"}],
            "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"}
        })
    }

    #[test]
    fn the_server_owns_status_and_records_the_creator() {
        let prepared = prepare(&cbo("Organization/a"), subscription("Task?owner=Organization/a"), None).unwrap();
        assert_eq!(prepared["status"], "requested");
        assert_eq!(scoped_organization(&prepared).as_deref(), Some("Organization/a"));
        assert_eq!(prepared["extension"].as_array().unwrap().len(), 1, "the forged creator is gone");
        assert_eq!(prepared["meta"]["profile"][0], BACKPORT_PROFILE);
        let system = prepare(&Caller::System, subscription("Task?owner=Organization/a"), None).unwrap();
        assert!(scoped_organization(&system).is_none());
    }

    #[test]
    fn a_cbo_filter_on_another_owner_is_forbidden() {
        let e = prepare(&cbo("Organization/a"), subscription("Task?owner=Organization/b"), None).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::FORBIDDEN);
        let mine = prepare(&cbo("Organization/a"), subscription("Task?owner=http://x/fhir/Organization/a"), None);
        assert!(mine.is_ok());
    }

    #[test]
    fn updates_keep_the_status_unless_the_channel_changes_or_the_client_turns_it_off() {
        let first = prepare(&Caller::System, subscription("Task?owner=Organization/a"), None).unwrap();
        let mut stored_json = first.clone();
        stored_json["status"] = json!("active");
        let stored = StoredResource {
            resource_type: "Subscription".into(),
            id: "s".into(),
            version_id: 2,
            last_updated: Timestamp(0),
            deleted: false,
            content: Some(stored_json.to_string()),
        };
        let ehr =
            Caller::Client(Principal { client_id: "e".into(), role: Role::Ehr, organization: "Organization/z".into() });
        let same = prepare(&ehr, first.clone(), Some(&stored)).unwrap();
        assert_eq!(same["status"], "active");
        assert!(scoped_organization(&same).is_none(), "the creator is kept from the stored version");
        let mut moved = first.clone();
        moved["channel"]["endpoint"] = json!("http://127.0.0.1:10/hook");
        assert_eq!(prepare(&Caller::System, moved, Some(&stored)).unwrap()["status"], "requested");
        let mut off = first.clone();
        off["status"] = json!("off");
        assert_eq!(prepare(&Caller::System, off, Some(&stored)).unwrap()["status"], "off");
        let mut erroring = stored.clone();
        let mut erroring_json = stored_json.clone();
        erroring_json["status"] = json!("error");
        erroring.content = Some(erroring_json.to_string());
        let mut again = first;
        again["status"] = json!("active");
        assert_eq!(prepare(&Caller::System, again.clone(), Some(&erroring)).unwrap()["status"], "error");
        again["status"] = json!("requested");
        assert_eq!(prepare(&Caller::System, again, Some(&erroring)).unwrap()["status"], "requested");
    }
}
