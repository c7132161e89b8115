//! Referral workflow rules on the write path: the SDOHCC referral Task state machine and who may move it, the
//! ServiceRequest status that follows its Task, and the access grants a referral gives its owner.
//!
//! A referral Task is an SDOHCC-TaskForReferralManagement (by profile) or any `fulfill` Task whose focus is a
//! ServiceRequest. Its owner (and an Organization requester: a coordination platform's sub-Tasks) is granted the
//! Task and everything it and its focus ServiceRequest reference (Patient, Consent, Conditions, Goals, ...), in the
//! transaction of the write, so a CBO sees exactly its referrals' context from the moment they exist.

use std::collections::BTreeSet;

use serde_json::Value;
use store::{Grant, Precondition, StoreError, StoreTx};

use crate::auth::{Caller, Role};
use sdoh::referral::{Role as TaskRole, TransitionError, check_transition};

const REFERRAL_TASK_PROFILE: &str =
    "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-TaskForReferralManagement";
const TASK_CODE_SYSTEM: &str = "http://hl7.org/fhir/CodeSystem/task-code";

/// Elements of a referral Task only its requester may change: what is referred, for whom, by whom, to whom.
const REQUESTER_ELEMENTS: &[&str] = &["focus", "for", "requester", "owner", "intent", "code", "basedOn", "partOf"];

/// Whether `task` is a referral Task.
pub fn is_referral_task(task: &Value) -> bool {
    let by_profile = task["meta"]["profile"].as_array().is_some_and(|profiles| {
        profiles.iter().any(|p| p.as_str().is_some_and(|p| p.starts_with(REFERRAL_TASK_PROFILE)))
    });
    let fulfils_service_request = task["code"]["coding"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["system"] == TASK_CODE_SYSTEM && c["code"] == "fulfill"))
        && focus_service_request(task).is_some();
    by_profile || fulfils_service_request
}

/// The id of a Task's focus ServiceRequest, if its focus is one.
pub fn focus_service_request(task: &Value) -> Option<&str> {
    task["focus"]["reference"].as_str()?.strip_prefix("ServiceRequest/").filter(|id| store::is_valid_id(id))
}

fn organization_of<'a>(task: &'a Value, element: &str) -> Option<&'a str> {
    task[element]["reference"].as_str().filter(|r| store::is_organization_reference(r))
}

fn status(resource: &Value) -> &str {
    resource["status"].as_str().unwrap_or("")
}

fn transition_error(e: TransitionError) -> StoreError {
    match e {
        TransitionError::WrongRole { .. } => StoreError::Forbidden(e.to_string()),
        _ => StoreError::BusinessRule(format!("referral Task: {e}")),
    }
}

/// The side of the referral the caller is on, from the Task as it was before the change.
fn task_role(caller: &Caller, task: &Value) -> Result<Option<TaskRole>, StoreError> {
    let Some(principal) = caller.principal() else { return Ok(None) };
    let org = principal.organization.as_str();
    if principal.role == Role::Admin {
        return Ok(None);
    }
    if organization_of(task, "owner") == Some(org) {
        return Ok(Some(TaskRole::Owner));
    }
    // An EHR is the referral source for the Tasks it did not receive; a CBO must be named as requester.
    if organization_of(task, "requester") == Some(org) || principal.role == Role::Ehr {
        return Ok(Some(TaskRole::Requester));
    }
    Err(StoreError::Forbidden("only the requester or the owner of a referral Task may change it".into()))
}

/// Checks a referral Task write: the status move is an edge of the IG's state machine, made by the side allowed
/// to make it; a CBO may create only Tasks it requests (new, as `draft` or `requested`), and only the requester
/// changes what is referred, for whom and to whom. The gateway itself (`Caller::System`, e.g. HL7 v2 updates from
/// an EHR) and admins may make any valid move.
pub fn check_task_write(caller: &Caller, before: Option<&Value>, after: &Value) -> Result<(), StoreError> {
    if !is_referral_task(after) && !before.is_some_and(is_referral_task) {
        return Ok(());
    }
    let privileged = caller.principal().is_none_or(|p| p.role == Role::Admin);
    if !privileged && before.is_some_and(is_referral_task) && !is_referral_task(after) {
        return Err(StoreError::Forbidden(
            "a referral Task stays one: keep its SDOHCC profile and its fulfill code".into(),
        ));
    }
    let new_status = status(after);
    let Some(before) = before else {
        if let Some(principal) = caller.principal().filter(|p| p.role != Role::Admin) {
            if principal.role == Role::Cbo
                && organization_of(after, "requester") != Some(principal.organization.as_str())
            {
                return Err(StoreError::Forbidden(
                    "a cbo client may create only referral Tasks whose requester is its own organization".into(),
                ));
            }
            if !matches!(new_status, "draft" | "requested") {
                return Err(StoreError::BusinessRule("a new referral Task starts as draft or requested".into()));
            }
        }
        return check_transition(new_status, new_status, TaskRole::Requester).map_err(transition_error);
    };
    let role = task_role(caller, before)?;
    if role == Some(TaskRole::Owner)
        && !caller.role().is_some_and(|r| r == Role::Ehr || r == Role::Admin)
        && let Some(element) = REQUESTER_ELEMENTS.iter().find(|e| before[**e] != after[**e])
    {
        return Err(StoreError::Forbidden(format!("only the requester may change Task.{element} of a referral Task")));
    }
    let old_status = status(before);
    match role {
        Some(role) => check_transition(old_status, new_status, role),
        None => check_transition(old_status, new_status, TaskRole::Owner)
            .or_else(|_| check_transition(old_status, new_status, TaskRole::Requester)),
    }
    .map_err(transition_error)
}

/// The ServiceRequest status that mirrors a referral Task's status.
pub fn service_request_status(task_status: &str) -> Option<&'static str> {
    Some(match task_status {
        "draft" => "draft",
        "requested" | "accepted" | "in-progress" => "active",
        "on-hold" => "on-hold",
        "completed" => "completed",
        // The referral ended without the service: the order is withdrawn (a new referral makes it active again).
        "rejected" | "cancelled" | "failed" => "revoked",
        "entered-in-error" => "entered-in-error",
        _ => return None,
    })
}

/// Every literal relative reference (`Type/id`) anywhere in a resource, contained resources excepted.
pub fn references_in(resource: &Value) -> BTreeSet<(String, String)> {
    fn walk(value: &Value, out: &mut BTreeSet<(String, String)>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    if key == "contained" {
                        continue;
                    }
                    if key == "reference" {
                        if let Some((t, id)) = v.as_str().and_then(|r| r.split_once('/')) {
                            let is_type = t.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
                                && t.bytes().all(|b| b.is_ascii_alphanumeric());
                            if is_type && store::is_valid_id(id) {
                                out.insert((t.to_owned(), id.to_owned()));
                            }
                        }
                    } else {
                        walk(v, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(resource, &mut out);
    out
}

fn content(stored: Option<store::StoredResource>) -> Option<Value> {
    stored.filter(|s| !s.deleted).and_then(|s| serde_json::from_str(s.content.as_deref()?).ok())
}

/// Recomputes what a referral Task grants: its owner and Organization requester see the Task, what it references,
/// and what its focus ServiceRequest references.
pub async fn refresh_task_grants(tx: &mut StoreTx, task_id: &str, task: &Value) -> Result<(), StoreError> {
    let organizations: BTreeSet<&str> =
        ["owner", "requester"].iter().filter_map(|e| organization_of(task, e)).collect();
    let mut targets = references_in(task);
    targets.insert(("Task".to_owned(), task_id.to_owned()));
    if let Some(sr_id) = focus_service_request(task)
        && let Some(sr) = content(tx.read("ServiceRequest", sr_id).await?)
    {
        targets.extend(references_in(&sr));
    }
    let grants: Vec<Grant> = organizations
        .iter()
        .flat_map(|org| {
            targets.iter().map(move |(t, id)| Grant {
                organization: (*org).to_owned(),
                resource_type: t.clone(),
                id: id.clone(),
            })
        })
        .collect();
    tx.set_task_grants(task_id, &grants).await
}

/// After a referral Task version is written: its grants, and its focus ServiceRequest's status. The ServiceRequest
/// is written by the gateway on the Task's behalf (a CBO may not write the clinic's order itself).
pub async fn after_task_write(tx: &mut StoreTx, task_id: &str, task: &Value) -> Result<(), StoreError> {
    if !is_referral_task(task) {
        return Ok(());
    }
    refresh_task_grants(tx, task_id, task).await?;
    let (Some(sr_id), Some(wanted)) = (focus_service_request(task), service_request_status(status(task))) else {
        return Ok(());
    };
    let Some(stored) = tx.read("ServiceRequest", sr_id).await?.filter(|s| !s.deleted) else {
        return Ok(());
    };
    let Some(mut sr) = content(Some(stored.clone())) else { return Ok(()) };
    if sr["status"] == wanted {
        return Ok(());
    }
    sr["status"] = Value::from(wanted);
    Box::pin(super::write::put(tx, sr, Precondition::Version(stored.version_id))).await?;
    Ok(())
}

/// After a ServiceRequest is written: the Tasks that grant it re-grant what it now references.
pub async fn after_service_request_write(tx: &mut StoreTx, sr_id: &str) -> Result<(), StoreError> {
    let tasks: BTreeSet<String> =
        tx.task_grants_on("ServiceRequest", sr_id).await?.into_iter().map(|(_, task)| task).collect();
    for task_id in tasks {
        if let Some(task) = content(tx.read("Task", &task_id).await?) {
            refresh_task_grants(tx, &task_id, &task).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Principal;
    use serde_json::json;

    fn task(status: &str) -> Value {
        json!({
            "resourceType": "Task", "id": "t", "status": status, "intent": "order",
            "meta": {"profile": [REFERRAL_TASK_PROFILE]},
            "focus": {"reference": "ServiceRequest/sr"}, "for": {"reference": "Patient/p"},
            "requester": {"reference": "Organization/clinic"}, "owner": {"reference": "Organization/cbo-a"}
        })
    }

    fn client(role: Role, org: &str) -> Caller {
        Caller::Client(Principal { client_id: "c".into(), role, organization: format!("Organization/{org}") })
    }

    #[test]
    fn a_plain_fulfil_task_on_a_service_request_is_a_referral() {
        let t = json!({"resourceType": "Task", "code": {"coding": [{"system": TASK_CODE_SYSTEM, "code": "fulfill"}]},
            "focus": {"reference": "ServiceRequest/x"}});
        assert!(is_referral_task(&t));
        assert!(!is_referral_task(&json!({"resourceType": "Task", "focus": {"reference": "ServiceRequest/x"}})));
    }

    #[test]
    fn the_owner_accepts_and_the_requester_cancels() {
        let cbo = client(Role::Cbo, "cbo-a");
        let ehr = client(Role::Ehr, "clinic");
        assert!(check_task_write(&cbo, Some(&task("requested")), &task("accepted")).is_ok());
        assert!(matches!(
            check_task_write(&ehr, Some(&task("requested")), &task("accepted")),
            Err(StoreError::Forbidden(_))
        ));
        assert!(check_task_write(&ehr, Some(&task("accepted")), &task("cancelled")).is_ok());
        assert!(matches!(
            check_task_write(&cbo, Some(&task("accepted")), &task("cancelled")),
            Err(StoreError::Forbidden(_))
        ));
        assert!(matches!(
            check_task_write(&cbo, Some(&task("requested")), &task("completed")),
            Err(StoreError::BusinessRule(_))
        ));
    }

    #[test]
    fn another_cbo_may_not_touch_the_task_and_the_owner_may_not_redirect_it() {
        let other = client(Role::Cbo, "cbo-b");
        assert!(matches!(
            check_task_write(&other, Some(&task("requested")), &task("accepted")),
            Err(StoreError::Forbidden(_))
        ));
        let mut redirected = task("accepted");
        redirected["owner"] = json!({"reference": "Organization/cbo-b"});
        let owner = client(Role::Cbo, "cbo-a");
        assert!(matches!(
            check_task_write(&owner, Some(&task("requested")), &redirected),
            Err(StoreError::Forbidden(_))
        ));
    }

    #[test]
    fn clients_create_referrals_as_draft_or_requested_and_a_cbo_only_as_requester() {
        let ehr = client(Role::Ehr, "clinic");
        assert!(check_task_write(&ehr, None, &task("requested")).is_ok());
        assert!(matches!(check_task_write(&ehr, None, &task("accepted")), Err(StoreError::BusinessRule(_))));
        assert!(matches!(check_task_write(&ehr, None, &task("received")), Err(StoreError::BusinessRule(_))));
        let platform = client(Role::Cbo, "cbo-a");
        assert!(matches!(check_task_write(&platform, None, &task("requested")), Err(StoreError::Forbidden(_))));
        let mut sub = task("requested");
        sub["requester"] = json!({"reference": "Organization/cbo-a"});
        sub["owner"] = json!({"reference": "Organization/cbo-b"});
        assert!(check_task_write(&platform, None, &sub).is_ok());
        assert!(check_task_write(&Caller::System, None, &task("accepted")).is_ok());
    }

    #[test]
    fn references_are_found_everywhere_but_in_contained_resources() {
        let r = json!({"subject": {"reference": "Patient/p"}, "reasonReference": [{"reference": "Condition/c"}],
            "contained": [{"subject": {"reference": "Patient/hidden"}}], "x": {"reference": "#local"},
            "y": {"reference": "http://elsewhere/fhir/Patient/1"}});
        let refs: Vec<_> = references_in(&r).into_iter().collect();
        assert_eq!(refs, vec![("Condition".into(), "c".into()), ("Patient".into(), "p".into())]);
    }

    #[test]
    fn service_request_status_follows_the_task() {
        assert_eq!(service_request_status("accepted"), Some("active"));
        assert_eq!(service_request_status("completed"), Some("completed"));
        assert_eq!(service_request_status("rejected"), Some("revoked"));
        assert_eq!(service_request_status("bogus"), None);
    }
}
