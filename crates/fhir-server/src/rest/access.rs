//! What each role may do through the FHIR API, and the store scope its reads run under.
//!
//! Reads are not filtered here: the caller's [`Scope`] goes to the store with every read, which compiles it into
//! the query. This module decides the coarse rules the store cannot know: which roles may use the FHIR API at all
//! and which resource types a role may write. Denials are 403 for what a role may never do, and 404 (from the
//! store) for resources outside the caller's scope, so a CBO cannot tell "not yours" from "not there". The service
//! directory (`store::DIRECTORY_TYPES`: Organization, HealthcareService, Location) is readable by every client.

use store::{Scope, StoreError};

use crate::auth::{Caller, Role};

/// What a CBO (or coordination platform) may create and change: referral Tasks and sub-Tasks (as requester), its
/// own ServiceRequests (a platform's `filler-order`), the Procedures it delivered, documents and its Subscriptions.
const CBO_WRITABLE: &[&str] = &["Task", "ServiceRequest", "Procedure", "DocumentReference", "Subscription"];

/// The store scope of a caller's reads.
pub fn scope(caller: &Caller) -> Scope {
    match caller.principal() {
        None => Scope::All,
        Some(p) => match p.role {
            Role::Admin | Role::Ehr => Scope::All,
            // A registry loader's organization holds no grants: through the FHIR API it sees nothing clinical.
            Role::Cbo | Role::Registry => Scope::Organization(p.organization.clone()),
        },
    }
}

/// Whether the caller may use the FHIR interactions on resources at all (`/metadata` is open to every client).
pub fn check_fhir_api(caller: &Caller) -> Result<(), StoreError> {
    match caller.role() {
        Some(Role::Registry) => Err(StoreError::Forbidden(
            "registry clients read registry records and exports, not the clinical FHIR API".into(),
        )),
        _ => Ok(()),
    }
}

/// The kind of change a write makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Write,
    Delete,
}

/// Whether the caller's role may make this kind of change to this resource type (visibility is checked by the
/// write path against the store).
pub fn check_change(caller: &Caller, resource_type: &str, change: Change) -> Result<(), StoreError> {
    check_fhir_api(caller)?;
    match caller.role() {
        None | Some(Role::Admin) | Some(Role::Ehr) => Ok(()),
        Some(Role::Cbo) => {
            let allowed = match change {
                Change::Write => CBO_WRITABLE.contains(&resource_type),
                // A referral ends by its status, never by deleting it.
                Change::Delete => CBO_WRITABLE.contains(&resource_type) && resource_type != "Task",
            };
            if allowed {
                Ok(())
            } else {
                let verb = if change == Change::Write { "create or update" } else { "delete" };
                Err(StoreError::Forbidden(format!("a cbo client may not {verb} {resource_type} resources")))
            }
        }
        Some(Role::Registry) => Err(StoreError::Forbidden("registry clients may not write".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Principal;

    fn client(role: Role) -> Caller {
        Caller::Client(Principal { client_id: "c".into(), role, organization: "Organization/o".into() })
    }

    #[test]
    fn only_cbo_and_registry_reads_are_scoped() {
        assert_eq!(scope(&Caller::System), Scope::All);
        assert_eq!(scope(&client(Role::Admin)), Scope::All);
        assert_eq!(scope(&client(Role::Ehr)), Scope::All);
        assert_eq!(scope(&client(Role::Cbo)), Scope::Organization("Organization/o".into()));
        assert_eq!(scope(&client(Role::Registry)), Scope::Organization("Organization/o".into()));
    }

    #[test]
    fn a_cbo_writes_only_referral_work_and_never_deletes_tasks() {
        let cbo = client(Role::Cbo);
        assert!(check_change(&cbo, "Task", Change::Write).is_ok());
        assert!(check_change(&cbo, "Procedure", Change::Write).is_ok());
        assert!(matches!(check_change(&cbo, "Patient", Change::Write), Err(StoreError::Forbidden(_))));
        assert!(matches!(check_change(&cbo, "Task", Change::Delete), Err(StoreError::Forbidden(_))));
        assert!(check_change(&cbo, "Procedure", Change::Delete).is_ok());
        assert!(matches!(check_change(&client(Role::Registry), "Task", Change::Write), Err(StoreError::Forbidden(_))));
        assert!(check_change(&client(Role::Ehr), "Patient", Change::Delete).is_ok());
    }
}
