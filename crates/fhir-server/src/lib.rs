//! FHIR R4 REST facade for sdoh-gateway. For now only the pure search groundwork lives here.
//!
//! Search is driven by data: the official R4 SearchParameter definitions vendored in `profiles/fhir/r4/` are loaded
//! into a [`search::SearchParamRegistry`], their FHIRPath expressions are evaluated by a small interpreter
//! ([`search::fhirpath`]) and every stored resource is turned into typed index entries ([`search::extract`]) that
//! a storage layer can persist and query. [`search::matching`] holds the reference semantics of each parameter
//! type, so a SQL translation can be checked against it in memory.

pub mod search;
