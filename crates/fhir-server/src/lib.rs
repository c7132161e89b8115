//! FHIR R4 REST facade for sdoh-gateway: the REST core ([`rest`]) and the data-driven search groundwork ([`search`]).
//!
//! [`rest::router`] serves read, vread, create, update, patch, delete, history, search, batch and transaction
//! Bundles, conditional interactions and the CapabilityStatement over the store, rendering every failure as an
//! OperationOutcome ([`rest::FhirError`]).
//!
//! Search is driven by data: the official R4 SearchParameter definitions vendored in `profiles/fhir/r4/` are loaded
//! into a [`search::SearchParamRegistry`], their FHIRPath expressions are evaluated by a small interpreter
//! ([`search::fhirpath`]) and every stored resource is turned into typed index entries ([`search::extract`]) that
//! the store persists with each version and queries in SQL. [`search::matching`] holds the reference semantics of
//! each parameter type, against which the SQL translation is checked in memory.

pub mod auth;
pub mod measures;
pub mod rest;
pub mod search;
pub mod subscriptions;

pub use rest::{FhirError, FhirState, router};
