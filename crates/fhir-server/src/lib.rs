//! FHIR R4 REST facade for sdoh-gateway: the REST core ([`rest`]) and the data-driven search groundwork ([`search`]).
//!
//! [`rest::router`] serves read, vread, create, update, patch, delete, history, search by `_id` and the
//! CapabilityStatement over the store, rendering every failure as an OperationOutcome ([`rest::FhirError`]).
//!
//! Search is driven by data: the official R4 SearchParameter definitions vendored in `profiles/fhir/r4/` are loaded
//! into a [`search::SearchParamRegistry`], their FHIRPath expressions are evaluated by a small interpreter
//! ([`search::fhirpath`]) and every stored resource is turned into typed index entries ([`search::extract`]) that
//! a storage layer can persist and query. [`search::matching`] holds the reference semantics of each parameter
//! type, so a SQL translation can be checked against it in memory. It is not wired into the REST routes yet
//! (they answer `_id` only).

pub mod rest;
pub mod search;

pub use rest::{FhirError, FhirState, router};
