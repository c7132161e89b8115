//! Equity measures: definitions as data, per-patient facts, the evaluator, and the statistics and suppression rules
//! every output (FHIR MeasureReport, CSV, dashboard) shares.
//!
//! The caller extracts one [`PatientFacts`] per patient from the store, picks [`Period`]s and stratifiers, and calls
//! [`evaluate`] with the [`MeasureSet::builtin`] definitions (`profiles/measures/*.json`). Each [`Cell`] is either
//! suppressed (with the reason, and no counts) or shown with its numerator, denominator, rate, 95% Wilson interval
//! and rate ratio against the stratifier's reference group. [`stats::p_chart`] and [`stats::run_chart`] turn a
//! series of shown cells into control-chart and run-chart figures.

pub mod definitions;
mod evaluate;
mod facts;
pub mod periods;
pub mod stats;
pub mod suppression;

pub use definitions::{
    Criterion, HrsnDomain, MeasureDefinition, MeasureDefinitionError, MeasureSet, Require, Scoring, Subject,
};
pub use evaluate::{
    Cell, CellValue, Comparison, Figures, Group, Stratifier, StratifierSpec, UNKNOWN_STRATUM, evaluate,
};
pub use facts::{PatientFacts, Referral, Screening, age_on};
pub use periods::{Period, PeriodError, PeriodKind, parse_iso_date};
pub use suppression::Suppression;
