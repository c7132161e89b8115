//! Turns a resource into the index entries of each of its search parameters, normalised by search type.
//!
//! The registry says which FHIRPath expression feeds which parameter; this module says how each FHIR data type
//! becomes comparable values (a CodeableConcept becomes one token per coding plus its text, a Period a date range,
//! and so on). Element types are not tracked through paths (that would need the StructureDefinitions), so the data
//! type of a node is taken from a choice suffix when there was one and otherwise inferred from the JSON shape.
//! Values that cannot be read (an unparseable date, say) are skipped: indexing must never reject a write.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::date::{DateRange, parse_date_range};
use super::fhirpath::{self, Item};
use super::params::{ResourceSearchParam, SearchParamRegistry, SearchType};
use super::text::normalize;

/// A composite parameter yields at most this many tuples per node, so a pathological resource cannot blow up.
const MAX_COMPOSITE_TUPLES: usize = 256;

/// The codes of ContactPoint.system; an Identifier's system is a URI, so these tell the two shapes apart.
const CONTACT_POINT_SYSTEMS: &[&str] = &["phone", "fax", "email", "pager", "url", "sms", "other"];

/// A token: `system|code` plus the normalised display/text for `:text` and the Identifier type for `:of-type`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenEntry {
    pub system: Option<String>,
    pub code: Option<String>,
    pub text: Option<String>,
    pub type_system: Option<String>,
    pub type_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StringEntry {
    /// As written, for `:exact`.
    pub raw: String,
    /// Lower case, accents folded: what the default (starts-with) and `:contains` searches compare.
    pub normalized: String,
}

/// A reference target. Literal references give type and id (absolute ones also keep `url`); canonical and
/// `urn:` references keep only `url` (and a canonical's `|version`); a logical reference keeps its identifier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReferenceEntry {
    pub resource_type: Option<String>,
    pub id: Option<String>,
    pub url: Option<String>,
    pub version: Option<String>,
    pub identifier_system: Option<String>,
    pub identifier_value: Option<String>,
}

/// A numeric range; a plain value has `low == high`, `None` is unbounded (a Range missing one end, or a
/// Quantity with a `<` / `>` comparator).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NumberRange {
    pub low: Option<f64>,
    pub high: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantityEntry {
    pub value: NumberRange,
    pub system: Option<String>,
    pub code: Option<String>,
    pub unit: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub latitude: f64,
    pub longitude: f64,
}

/// One index value of one parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum IndexValue {
    Token(TokenEntry),
    String(StringEntry),
    Reference(ReferenceEntry),
    Date(DateRange),
    Number(NumberRange),
    Quantity(QuantityEntry),
    Uri(String),
    /// One value per component, in component order.
    Composite(Vec<IndexValue>),
    /// `Location.position`, for the `near` special parameter.
    Position(Position),
}

/// The entries of one parameter for one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamEntries {
    pub code: String,
    pub search_type: SearchType,
    pub values: Vec<IndexValue>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExtractError {
    #[error("resource is not a JSON object with a string resourceType")]
    NotAResource,
    #[error("no search parameters are registered for resource type {0}")]
    UnknownType(String),
}

/// Index entries for every parameter of the resource's type that stores rows of its own (see
/// [`super::params::StoredAs`]); parameters with no value are omitted.
pub fn extract(registry: &SearchParamRegistry, resource: &Value) -> Result<Vec<ParamEntries>, ExtractError> {
    let ty = resource.get("resourceType").and_then(Value::as_str).ok_or(ExtractError::NotAResource)?;
    let mut params = registry.params_for(ty).peekable();
    if params.peek().is_none() {
        return Err(ExtractError::UnknownType(ty.to_owned()));
    }
    Ok(params
        .filter(|p| p.has_own_rows())
        .filter_map(|p| {
            let values = extract_param(p, resource);
            (!values.is_empty()).then(|| ParamEntries {
                code: p.code().to_owned(),
                search_type: p.search_type(),
                values,
            })
        })
        .collect())
}

/// Index entries of one parameter (empty when the resource has no value for it or the parameter is not indexed).
pub fn extract_param(param: &ResourceSearchParam, resource: &Value) -> Vec<IndexValue> {
    let Some(expr) = &param.expression else { return Vec::new() };
    let items = fhirpath::evaluate(expr, resource);
    let mut out = Vec::new();
    if param.search_type() == SearchType::Composite {
        for item in &items {
            for tuple in composite_tuples(param, resource, item) {
                push_unique(&mut out, tuple);
            }
        }
    } else {
        for item in &items {
            for v in values_of(param.search_type(), item) {
                push_unique(&mut out, v);
            }
        }
    }
    out
}

fn push_unique(out: &mut Vec<IndexValue>, v: IndexValue) {
    if !out.contains(&v) {
        out.push(v);
    }
}

fn composite_tuples<'a>(param: &ResourceSearchParam, resource: &'a Value, item: &Item<'a>) -> Vec<IndexValue> {
    let mut tuples: Vec<Vec<IndexValue>> = vec![Vec::new()];
    for component in &param.components {
        let items = fhirpath::evaluate_on(&component.expression, resource, std::slice::from_ref(item));
        let values: Vec<IndexValue> = items.iter().flat_map(|i| values_of(component.search_type, i)).collect();
        let mut next = Vec::new();
        for t in &tuples {
            for v in &values {
                if next.len() == MAX_COMPOSITE_TUPLES {
                    break;
                }
                let mut t = t.clone();
                t.push(v.clone());
                next.push(t);
            }
        }
        tuples = next;
        if tuples.is_empty() {
            break;
        }
    }
    tuples.into_iter().map(IndexValue::Composite).collect()
}

/// The index values one FHIRPath result item yields for a parameter of type `ty`.
pub fn values_of(ty: SearchType, item: &Item<'_>) -> Vec<IndexValue> {
    match ty {
        SearchType::Token => tokens(item).into_iter().map(IndexValue::Token).collect(),
        SearchType::String => strings(item).into_iter().map(IndexValue::String).collect(),
        SearchType::Reference => reference(item).into_iter().map(IndexValue::Reference).collect(),
        SearchType::Date => date(item).into_iter().map(IndexValue::Date).collect(),
        SearchType::Number => number(item).into_iter().map(IndexValue::Number).collect(),
        SearchType::Quantity => quantity(item).into_iter().map(IndexValue::Quantity).collect(),
        SearchType::Uri => uri(item).into_iter().map(IndexValue::Uri).collect(),
        SearchType::Special => position(item).into_iter().map(IndexValue::Position).collect(),
        // Composites are assembled from their components, never from a single item.
        SearchType::Composite => Vec::new(),
    }
}

fn str_field(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

// ----- token -------------------------------------------------------------------------------------------------

fn tokens(item: &Item<'_>) -> Vec<TokenEntry> {
    let code_only = |code: String| vec![TokenEntry { code: Some(code), ..TokenEntry::default() }];
    let value = match item {
        Item::Boolean(b) => return code_only(b.to_string()),
        Item::String(s) => return code_only(s.clone()),
        Item::Number(n) => return code_only(n.to_string()),
        Item::Resolved { .. } => return Vec::new(),
        Item::Node { value, .. } => *value,
    };
    let Value::Object(obj) = value else { return scalar_text(value).map(code_only).unwrap_or_default() };
    let hint = item.type_name().unwrap_or_default();
    if hint == "CodeableConcept" || obj.contains_key("coding") {
        return codeable_concept(obj);
    }
    if hint == "Coding" || obj.contains_key("code") {
        return coding(obj).into_iter().collect();
    }
    if obj.contains_key("value") {
        let system = obj.get("system").and_then(Value::as_str).unwrap_or_default();
        let contact_point = hint == "ContactPoint"
            || obj.contains_key("rank")
            || (CONTACT_POINT_SYSTEMS.contains(&system) && hint != "Identifier");
        return if contact_point { contact_point_token(obj) } else { identifier(obj) };
    }
    // A CodeableConcept with only text.
    codeable_concept(obj)
}

fn coding(obj: &Map<String, Value>) -> Option<TokenEntry> {
    let entry = TokenEntry {
        system: str_field(obj, "system"),
        code: str_field(obj, "code"),
        text: str_field(obj, "display").map(|d| normalize(&d)),
        ..TokenEntry::default()
    };
    (entry.system.is_some() || entry.code.is_some() || entry.text.is_some()).then_some(entry)
}

fn codeable_concept(obj: &Map<String, Value>) -> Vec<TokenEntry> {
    let mut out: Vec<TokenEntry> = obj
        .get("coding")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .filter_map(coding)
        .collect();
    if let Some(text) = str_field(obj, "text") {
        out.push(TokenEntry { text: Some(normalize(&text)), ..TokenEntry::default() });
    }
    out
}

fn identifier(obj: &Map<String, Value>) -> Vec<TokenEntry> {
    let base = TokenEntry {
        system: str_field(obj, "system"),
        code: obj.get("value").and_then(scalar_text),
        text: obj.get("type").and_then(|t| t.get("text")).and_then(Value::as_str).map(normalize),
        ..TokenEntry::default()
    };
    if base.system.is_none() && base.code.is_none() {
        return Vec::new();
    }
    // One row per type coding keeps the entry flat (SQL-friendly) while still answering `:of-type`.
    let type_codings: Vec<&Map<String, Value>> = obj
        .get("type")
        .and_then(|t| t.get("coding"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .collect();
    if type_codings.is_empty() {
        return vec![base];
    }
    type_codings
        .into_iter()
        .map(|c| TokenEntry { type_system: str_field(c, "system"), type_code: str_field(c, "code"), ..base.clone() })
        .collect()
}

/// ContactPoint indexes as `system|value` with its own system code (`phone|555-1234`), so `phone=555-1234`
/// and `telecom=phone|555-1234` both work.
fn contact_point_token(obj: &Map<String, Value>) -> Vec<TokenEntry> {
    match str_field(obj, "value") {
        Some(value) => {
            vec![TokenEntry { system: str_field(obj, "system"), code: Some(value), ..TokenEntry::default() }]
        }
        None => Vec::new(),
    }
}

// ----- string ------------------------------------------------------------------------------------------------

const NAME_PARTS: &[&str] = &["family", "given", "prefix", "suffix", "text"];
const ADDRESS_PARTS: &[&str] = &["line", "city", "district", "state", "postalCode", "country", "text"];

fn strings(item: &Item<'_>) -> Vec<StringEntry> {
    let entry = |raw: &str| StringEntry { raw: raw.to_owned(), normalized: normalize(raw) };
    let value = match item {
        Item::String(s) => return vec![entry(s)],
        Item::Node { value, .. } => *value,
        _ => return Vec::new(),
    };
    match value {
        Value::String(s) if !s.is_empty() => vec![entry(s)],
        Value::Object(obj) => {
            let hint = item.type_name().unwrap_or_default();
            let parts = if hint == "HumanName" || obj.contains_key("family") || obj.contains_key("given") {
                NAME_PARTS
            } else if hint == "Address" || ADDRESS_PARTS.iter().any(|p| *p != "text" && obj.contains_key(*p)) {
                ADDRESS_PARTS
            } else {
                &["text"][..]
            };
            let mut out = Vec::new();
            for part in parts {
                let values = match obj.get(*part) {
                    Some(Value::Array(a)) => a.iter().collect(),
                    Some(v) => vec![v],
                    None => Vec::new(),
                };
                for s in values.into_iter().filter_map(Value::as_str).filter(|s| !s.is_empty()) {
                    let e = entry(s);
                    if !out.contains(&e) {
                        out.push(e);
                    }
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

// ----- reference ---------------------------------------------------------------------------------------------

fn reference(item: &Item<'_>) -> Option<ReferenceEntry> {
    match item.json()? {
        Value::String(s) => canonical(s),
        Value::Object(obj) => {
            let mut entry = ReferenceEntry::default();
            if let Some(literal) = obj.get("reference").and_then(Value::as_str) {
                if !literal.starts_with('#') {
                    match fhirpath::reference_type_and_id(literal) {
                        Some((ty, id)) => {
                            entry.resource_type = Some(ty.to_owned());
                            entry.id = Some(id.to_owned());
                            if literal.contains("://") {
                                entry.url = Some(literal.to_owned());
                            }
                        }
                        None => entry.url = Some(literal.to_owned()),
                    }
                }
            } else if obj.get("identifier").is_none() {
                return None;
            }
            if entry.resource_type.is_none()
                && (entry.id.is_some() || entry.url.is_some() || obj.contains_key("identifier"))
            {
                entry.resource_type = str_field(obj, "type");
            }
            if let Some(ident) = obj.get("identifier").and_then(Value::as_object) {
                entry.identifier_system = str_field(ident, "system");
                entry.identifier_value = ident.get("value").and_then(scalar_text);
            }
            let empty = entry.id.is_none() && entry.url.is_none() && entry.identifier_value.is_none();
            (!empty).then_some(entry)
        }
        _ => None,
    }
}

/// A canonical (`http://x/Questionnaire/phq|2.0`) or other URI used as a reference.
fn canonical(s: &str) -> Option<ReferenceEntry> {
    if s.is_empty() || s.starts_with('#') {
        return None;
    }
    let (url, version) = match s.split_once('|') {
        Some((u, v)) => (u, Some(v.to_owned()).filter(|v| !v.is_empty())),
        None => (s, None),
    };
    let mut entry = ReferenceEntry { url: Some(url.to_owned()), version, ..ReferenceEntry::default() };
    if !url.contains(':')
        && let Some((ty, id)) = fhirpath::reference_type_and_id(url)
    {
        entry = ReferenceEntry { resource_type: Some(ty.to_owned()), id: Some(id.to_owned()), ..entry };
        entry.url = None;
    }
    Some(entry)
}

// ----- date --------------------------------------------------------------------------------------------------

fn date(item: &Item<'_>) -> Option<DateRange> {
    match item.json()? {
        Value::String(s) => parse_date_range(s).ok(),
        Value::Object(obj)
            if item.type_name() == Some("Timing") || obj.contains_key("event") || obj.contains_key("repeat") =>
        {
            timing(obj)
        }
        Value::Object(obj) => period(obj),
        _ => None,
    }
}

fn period(obj: &Map<String, Value>) -> Option<DateRange> {
    let start = obj.get("start").and_then(Value::as_str).and_then(|s| parse_date_range(s).ok());
    let end = obj.get("end").and_then(Value::as_str).and_then(|s| parse_date_range(s).ok());
    if start.is_none() && end.is_none() {
        return None;
    }
    Some(DateRange { low: start.map_or(i64::MIN, |r| r.low), high: end.map_or(i64::MAX, |r| r.high) })
}

/// Only the outer limits of a Timing matter for search: the span from its first event to its last, widened by
/// `repeat.boundsPeriod` when present.
fn timing(obj: &Map<String, Value>) -> Option<DateRange> {
    let events = obj
        .get("event")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|s| parse_date_range(s).ok());
    let bounds = obj.get("repeat").and_then(|r| r.get("boundsPeriod")).and_then(Value::as_object).and_then(period);
    events.chain(bounds).reduce(|a, b| a.union(&b))
}

// ----- number, quantity, uri, special ------------------------------------------------------------------------

fn number(item: &Item<'_>) -> Option<NumberRange> {
    let n = match item {
        Item::Number(n) => *n,
        _ => item.json()?.as_f64()?,
    };
    Some(NumberRange { low: Some(n), high: Some(n) })
}

fn quantity(item: &Item<'_>) -> Option<QuantityEntry> {
    let obj = item.json()?.as_object()?;
    if let Some(v) = obj.get("value").and_then(Value::as_f64) {
        let value = match obj.get("comparator").and_then(Value::as_str) {
            Some("<") | Some("<=") => NumberRange { low: None, high: Some(v) },
            Some(">") | Some(">=") => NumberRange { low: Some(v), high: None },
            _ => NumberRange { low: Some(v), high: Some(v) },
        };
        // Money has a currency instead of a UCUM code.
        let (system, code) = match str_field(obj, "currency") {
            Some(currency) => (Some("urn:iso:std:iso:4217".to_owned()), Some(currency)),
            None => (str_field(obj, "system"), str_field(obj, "code")),
        };
        return Some(QuantityEntry { value, system, code, unit: str_field(obj, "unit") });
    }
    // A Range: its ends share a unit in practice, so the unit of whichever end exists describes both.
    let low = obj.get("low").and_then(Value::as_object);
    let high = obj.get("high").and_then(Value::as_object);
    if low.is_none() && high.is_none() {
        return None;
    }
    let end_value = |end: Option<&Map<String, Value>>| end.and_then(|e| e.get("value")).and_then(Value::as_f64);
    let value = NumberRange { low: end_value(low), high: end_value(high) };
    if value.low.is_none() && value.high.is_none() {
        return None;
    }
    let unit_of = low.or(high)?;
    Some(QuantityEntry {
        value,
        system: str_field(unit_of, "system"),
        code: str_field(unit_of, "code"),
        unit: str_field(unit_of, "unit"),
    })
}

fn uri(item: &Item<'_>) -> Option<String> {
    match item {
        Item::String(s) => Some(s.clone()),
        _ => item.json()?.as_str().filter(|s| !s.is_empty()).map(str::to_owned),
    }
}

fn position(item: &Item<'_>) -> Option<Position> {
    let obj = item.json()?.as_object()?;
    Some(Position { latitude: obj.get("latitude")?.as_f64()?, longitude: obj.get("longitude")?.as_f64()? })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(v: &Value) -> Item<'_> {
        Item::Node { value: v, type_name: None }
    }

    #[test]
    fn identifier_with_type_yields_of_type_rows() {
        let v = json!({"system": "urn:mrn", "value": "42", "type": {"text": "Medical Record",
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}});
        let t = tokens(&node(&v));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].code.as_deref(), Some("42"));
        assert_eq!(t[0].type_code.as_deref(), Some("MR"));
        assert_eq!(t[0].text.as_deref(), Some("medical record"));
    }

    #[test]
    fn contact_point_vs_identifier() {
        let cp = json!({"system": "email", "value": "A@B.org", "use": "home"});
        assert_eq!(tokens(&node(&cp))[0].system.as_deref(), Some("email"));
        let id = json!({"system": "http://hospital/ids", "value": "7"});
        assert_eq!(tokens(&node(&id))[0].system.as_deref(), Some("http://hospital/ids"));
    }

    #[test]
    fn references_of_every_shape() {
        let r = |v: Value| reference(&Item::Node { value: Box::leak(Box::new(v)), type_name: None });
        let rel = r(json!({"reference": "Patient/1"})).unwrap();
        assert_eq!(
            (rel.resource_type.as_deref(), rel.id.as_deref(), rel.url.as_deref()),
            (Some("Patient"), Some("1"), None)
        );
        let abs = r(json!({"reference": "https://other.example/fhir/Patient/9"})).unwrap();
        assert_eq!(abs.id.as_deref(), Some("9"));
        assert!(abs.url.is_some());
        assert!(r(json!({"reference": "#c1"})).is_none());
        let logical = r(json!({"type": "Organization", "identifier": {"system": "urn:npi", "value": "123"}})).unwrap();
        assert_eq!(logical.identifier_value.as_deref(), Some("123"));
        assert_eq!(logical.resource_type.as_deref(), Some("Organization"));
        let urn = r(json!({"reference": "urn:uuid:abc"})).unwrap();
        assert_eq!(urn.url.as_deref(), Some("urn:uuid:abc"));
        let canon = r(json!("http://example.org/Questionnaire/ahc-hrsn|2.0")).unwrap();
        assert_eq!(
            (canon.url.as_deref(), canon.version.as_deref()),
            (Some("http://example.org/Questionnaire/ahc-hrsn"), Some("2.0"))
        );
    }

    #[test]
    fn quantities_ranges_and_comparators() {
        let q =
            json!({"value": 5.5, "comparator": "<", "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"});
        let e = quantity(&node(&q)).unwrap();
        assert_eq!(e.value, NumberRange { low: None, high: Some(5.5) });
        let range = json!({"low": {"value": 10, "unit": "a", "code": "a"}, "high": {"value": 20}});
        assert_eq!(quantity(&node(&range)).unwrap().value, NumberRange { low: Some(10.0), high: Some(20.0) });
        assert!(quantity(&node(&json!({"origin": {"value": 1}, "data": "1 2"}))).is_none());
    }

    #[test]
    fn periods_and_timings() {
        let open = json!({"start": "2026-01"});
        let r = date(&node(&open)).unwrap();
        assert_eq!(r.high, i64::MAX);
        let t = json!({"event": ["2026-01-05", "2026-01-01T10:00:00Z"]});
        let r = date(&node(&t)).unwrap();
        assert_eq!(r.low, parse_date_range("2026-01-01T10:00:00Z").unwrap().low);
        assert_eq!(r.high, parse_date_range("2026-01-05").unwrap().high);
        assert!(date(&node(&json!("not a date"))).is_none());
    }
}
