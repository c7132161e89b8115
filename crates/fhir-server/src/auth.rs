//! Who is asking: the caller of a FHIR interaction (an authenticated API client, or the gateway itself) and its role.
//!
//! Authentication happens in front of the FHIR router (the gateway's bearer-credential layer today; SMART Backend
//! Services can plug in the same way) and leaves a [`Caller`] in the request's extensions. The FHIR handlers never
//! look at headers for identity: they pass the caller to the store, which scopes what it reads and writes.
//! A request without a `Caller` extension is [`Caller::System`]: the router mounted without authentication (the
//! gateway with `auth.required = false`, embedding tests) and the gateway's own workers.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

/// The role an API client is registered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Operators: everything, including the admin endpoints.
    Admin,
    /// A clinic's EHR or integration engine: writes clinical data and referrals, reads everything clinical.
    Ehr,
    /// A community-based organization or coordination platform: sees only the referral Tasks it owns (or made)
    /// and what they reference.
    Cbo,
    /// A registry loader: registry records and exports only.
    Registry,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Ehr, Role::Cbo, Role::Registry];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Ehr => "ehr",
            Role::Cbo => "cbo",
            Role::Registry => "registry",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// An authenticated API client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The client's public id (never its secret).
    pub client_id: String,
    pub role: Role,
    /// The Organization the client acts for, as a relative reference `Organization/{id}`.
    pub organization: String,
}

/// Who performs an interaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Caller {
    /// The gateway itself or an unauthenticated deployment: no scoping.
    #[default]
    System,
    Client(Principal),
}

impl Caller {
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Caller::System => None,
            Caller::Client(p) => Some(p),
        }
    }

    pub fn role(&self) -> Option<Role> {
        self.principal().map(|p| p.role)
    }

    /// The Organization the caller acts for (`Organization/{id}`), if any.
    pub fn organization(&self) -> Option<&str> {
        self.principal().map(|p| p.organization.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Caller>().cloned().unwrap_or_default())
    }
}
