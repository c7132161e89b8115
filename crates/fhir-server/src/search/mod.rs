//! Data-driven FHIR R4 search: definitions, FHIRPath evaluation, index extraction, value parsing and matching.
//!
//! The flow a storage layer follows: on write, [`extract::extract`] the resource against the
//! [`SearchParamRegistry`] and persist the [`IndexValue`]s per parameter code; on read, look the parameter up with
//! [`SearchParamRegistry::get`], parse the query with [`ParamQuery::parse`], and translate the semantics of
//! [`matching`] to SQL (or apply them in memory with [`resource_matches`]).

pub mod date;
pub mod extract;
pub mod fhirpath;
pub mod matching;
pub mod params;
pub mod text;
pub mod value;

pub use date::{DateRange, parse_date_range};
pub use extract::{
    ExtractError, IndexValue, NumberRange, ParamEntries, Position, QuantityEntry, ReferenceEntry, StringEntry,
    TokenEntry, extract, extract_param,
};
pub use matching::{matches, matches_at, resource_matches, resource_matches_at};
pub use params::{
    GATEWAY_RESOURCE_TYPES, LoadError, NOT_INDEXED_CODES, ResourceSearchParam, SearchParamDef, SearchParamRegistry,
    SearchType, StoredAs, UnsupportedParam,
};
pub use text::normalize;
pub use value::{Modifier, ParamQuery, Prefix, SearchValue, ValueError, parse_value};
