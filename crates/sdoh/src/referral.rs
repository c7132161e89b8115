//! Referral Task (SDOHCC-TaskForReferralManagement) status transitions and who may make them.
//!
//! Edges (IG 2.2.0 referral workflow; `ready` and `received` are excluded by the Referral Task Status value set):
//! - requester: `draft -> requested`; `requested | accepted | in-progress | on-hold -> cancelled`;
//!   any status other than `entered-in-error` `-> entered-in-error` (the source withdraws a Task it made in error).
//! - owner (the performing CBO/CP): `requested -> accepted | rejected`; `accepted -> in-progress | on-hold |
//!   completed | failed`; `in-progress <-> on-hold`; `in-progress | on-hold -> completed | failed`.
//!
//! Cancelling is the requester's: an owner that can no longer do the work rejects (before acceptance) or fails it.
//! An unchanged status is not a transition and is always allowed for a referral status.

/// Who asks for the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The referral source (Task.requester).
    Requester,
    /// The performer (Task.owner).
    Owner,
}

/// Why a status change is refused. Carries only status codes from the fixed TaskStatus set, never input text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("status is not a FHIR TaskStatus code")]
    UnknownStatus,
    #[error("status {status} is not used for referral Tasks")]
    NotAReferralStatus { status: &'static str },
    #[error("no transition from {from} to {to}")]
    Forbidden { from: &'static str, to: &'static str },
    #[error("only the {allowed:?} may move a referral Task from {from} to {to}")]
    WrongRole { from: &'static str, to: &'static str, allowed: Role },
}

/// FHIR R4 TaskStatus codes.
pub const TASK_STATUSES: [&str; 12] = [
    "draft",
    "requested",
    "received",
    "accepted",
    "rejected",
    "ready",
    "cancelled",
    "in-progress",
    "on-hold",
    "failed",
    "completed",
    "entered-in-error",
];

/// Statuses of the IG's Referral Task Status value set (TaskStatus minus `ready` and `received`).
pub const REFERRAL_STATUSES: [&str; 10] = [
    "draft",
    "requested",
    "accepted",
    "rejected",
    "cancelled",
    "in-progress",
    "on-hold",
    "failed",
    "completed",
    "entered-in-error",
];

const OWNER_EDGES: &[(&str, &str)] = &[
    ("requested", "accepted"),
    ("requested", "rejected"),
    ("accepted", "in-progress"),
    ("accepted", "on-hold"),
    ("accepted", "completed"),
    ("accepted", "failed"),
    ("in-progress", "on-hold"),
    ("on-hold", "in-progress"),
    ("in-progress", "completed"),
    ("in-progress", "failed"),
    ("on-hold", "completed"),
    ("on-hold", "failed"),
];

const REQUESTER_EDGES: &[(&str, &str)] = &[
    ("draft", "requested"),
    ("requested", "cancelled"),
    ("accepted", "cancelled"),
    ("in-progress", "cancelled"),
    ("on-hold", "cancelled"),
];

fn intern(status: &str) -> Result<&'static str, TransitionError> {
    let s = TASK_STATUSES.iter().find(|s| **s == status).ok_or(TransitionError::UnknownStatus)?;
    if REFERRAL_STATUSES.contains(s) { Ok(s) } else { Err(TransitionError::NotAReferralStatus { status: s }) }
}

/// The role that may make `from -> to`, or `None` when nobody may.
fn allowed_role(from: &'static str, to: &'static str) -> Option<Role> {
    if OWNER_EDGES.contains(&(from, to)) {
        Some(Role::Owner)
    } else if REQUESTER_EDGES.contains(&(from, to)) || (to == "entered-in-error" && from != "entered-in-error") {
        Some(Role::Requester)
    } else {
        None
    }
}

/// Checks that `by` may move a referral Task from status `from` to status `to`.
pub fn check_transition(from: &str, to: &str, by: Role) -> Result<(), TransitionError> {
    let from = intern(from)?;
    let to = intern(to)?;
    if from == to {
        return Ok(());
    }
    match allowed_role(from, to) {
        None => Err(TransitionError::Forbidden { from, to }),
        Some(role) if role == by => Ok(()),
        Some(allowed) => Err(TransitionError::WrongRole { from, to, allowed }),
    }
}
