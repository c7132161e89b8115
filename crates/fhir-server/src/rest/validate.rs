//! Input checks for submitted resources: JSON shape, resourceType and id, and primitive values where the element name
//! alone tells the FHIR type (a first step before profile-driven validation).

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

use super::error::{FhirError, IssueType};

// The regular expressions published with the R4 primitive types (http://hl7.org/fhir/R4/datatypes.html), anchored.
const YEAR: &str = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)";
const TIME_ZONE: &str = r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))";
const CLOCK: &str = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?";

static ID: LazyLock<Regex> = LazyLock::new(|| compile(r"^[A-Za-z0-9\-\.]{1,64}$"));
static DATE: LazyLock<Regex> =
    LazyLock::new(|| compile(&format!(r"^{YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?$")));
static DATE_TIME: LazyLock<Regex> = LazyLock::new(|| {
    compile(&format!(r"^{YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T{CLOCK}{TIME_ZONE})?)?)?$"))
});
static INSTANT: LazyLock<Regex> =
    LazyLock::new(|| compile(&format!(r"^{YEAR}-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T{CLOCK}{TIME_ZONE}$")));
static DECIMAL: LazyLock<Regex> = LazyLock::new(|| compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$"));
static CODE: LazyLock<Regex> = LazyLock::new(|| compile(r"^[^\s]+(\s[^\s]+)*$"));

fn compile(pattern: &str) -> Regex {
    // The patterns are constants of this file; a typo is caught by the unit tests below on first use.
    Regex::new(pattern).unwrap_or_else(|e| unreachable!("built-in pattern {pattern}: {e}"))
}

/// FHIR primitive types this module can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primitive {
    Id,
    Date,
    DateTime,
    Instant,
    Decimal,
    Code,
}

impl Primitive {
    fn name(self) -> &'static str {
        match self {
            Primitive::Id => "id",
            Primitive::Date => "date",
            Primitive::DateTime => "dateTime",
            Primitive::Instant => "instant",
            Primitive::Decimal => "decimal",
            Primitive::Code => "code",
        }
    }
}

/// True when `text` is a valid lexical value of the primitive (and, for dates, a real calendar day).
pub fn is_valid(primitive: Primitive, text: &str) -> bool {
    let lexical = match primitive {
        Primitive::Id => ID.is_match(text),
        Primitive::Date => DATE.is_match(text),
        Primitive::DateTime => DATE_TIME.is_match(text),
        Primitive::Instant => INSTANT.is_match(text),
        Primitive::Decimal => DECIMAL.is_match(text),
        Primitive::Code => CODE.is_match(text),
    };
    lexical && calendar_day_exists(primitive, text)
}

/// The regexes accept 2023-02-31; a full date must also exist on the calendar.
fn calendar_day_exists(primitive: Primitive, text: &str) -> bool {
    match primitive {
        Primitive::Date | Primitive::DateTime | Primitive::Instant if text.len() >= 10 => {
            chrono::NaiveDate::parse_from_str(&text[..10], "%Y-%m-%d").is_ok()
        }
        _ => true,
    }
}

/// Checks a submitted resource: a JSON object whose `resourceType` is `expected_type`, whose elements are neither
/// null nor empty, and whose recognisable primitives are well formed. Errors name the element at fault.
pub fn validate_resource(resource: &Value, expected_type: &str) -> Result<(), FhirError> {
    let Value::Object(object) = resource else {
        return Err(FhirError::bad_request(IssueType::Structure, "the body must be a JSON object (a FHIR resource)"));
    };
    match object.get("resourceType") {
        None => Err(FhirError::bad_request(IssueType::Required, "resourceType is missing").at("resourceType")),
        Some(Value::String(t)) if t == expected_type => Ok(()),
        Some(Value::String(_)) => Err(FhirError::bad_request(
            IssueType::Invalid,
            format!("resourceType does not match the type in the URL ({expected_type})"),
        )
        .at("resourceType")),
        Some(_) => {
            Err(FhirError::bad_request(IssueType::Structure, "resourceType must be a string").at("resourceType"))
        }
    }?;
    check_resource(object, expected_type)
}

fn check_resource(object: &Map<String, Value>, path: &str) -> Result<(), FhirError> {
    if let Some(id) = object.get("id") {
        check_primitive(id, Primitive::Id, &format!("{path}.id"))?;
    }
    for (key, value) in object {
        if key == "resourceType" || key == "id" {
            continue;
        }
        check_element(key, value, "", &format!("{path}.{key}"))?;
    }
    Ok(())
}

fn check_element(key: &str, value: &Value, parent_key: &str, path: &str) -> Result<(), FhirError> {
    match value {
        Value::Null => Err(invalid(IssueType::Structure, path, "must not be null (omit the element instead)")),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(invalid(
                    IssueType::Structure,
                    path,
                    "must not be an empty array (omit the element instead)",
                ));
            }
            for (i, item) in items.iter().enumerate() {
                // Nulls keep primitive arrays aligned with their `_element` extension arrays, so they are allowed here.
                if !item.is_null() {
                    check_element(key, item, parent_key, &format!("{path}[{i}]"))?;
                }
            }
            Ok(())
        }
        Value::Object(object) => {
            if object.is_empty() {
                return Err(invalid(
                    IssueType::Structure,
                    path,
                    "must not be an empty object (omit the element instead)",
                ));
            }
            if key == "contained" || object.contains_key("resourceType") {
                return check_contained(object, path);
            }
            if let Some(primitive) = primitive_of(key, parent_key) {
                return Err(invalid(IssueType::Structure, path, &format!("must be a {} value", primitive.name())));
            }
            for (child_key, child) in object {
                check_element(child_key, child, key, &format!("{path}.{child_key}"))?;
            }
            Ok(())
        }
        Value::String(text) if text.is_empty() => {
            Err(invalid(IssueType::Value, path, "must not be an empty string (omit the element instead)"))
        }
        other => match primitive_of(key, parent_key) {
            Some(primitive) => check_primitive(other, primitive, path),
            None => Ok(()),
        },
    }
}

fn check_contained(object: &Map<String, Value>, path: &str) -> Result<(), FhirError> {
    match object.get("resourceType") {
        Some(Value::String(t)) if !t.is_empty() => check_resource(object, path),
        _ => Err(invalid(IssueType::Required, &format!("{path}.resourceType"), "is required for a contained resource")),
    }
}

/// The primitive type an element has in every R4 resource where it occurs with this name (and parent name).
fn primitive_of(key: &str, parent_key: &str) -> Option<Primitive> {
    // `_birthDate` and friends hold the primitive's id and extensions, not its value.
    if key.starts_with('_') {
        return None;
    }
    let quantity_parent = parent_key.ends_with("Quantity")
        || matches!(
            parent_key,
            "quantity" | "low" | "high" | "numerator" | "denominator" | "age" | "duration" | "dose" | "amount"
        );
    match key {
        "birthDate" | "valueDate" => Some(Primitive::Date),
        "lastUpdated" | "issued" | "recorded" | "valueInstant" => Some(Primitive::Instant),
        "valueDecimal" => Some(Primitive::Decimal),
        "value" if quantity_parent => Some(Primitive::Decimal),
        "authoredOn" | "authored" | "date" | "dateTime" | "lastModified" => Some(Primitive::DateTime),
        "start" | "end" if parent_key == "period" || parent_key.ends_with("Period") => Some(Primitive::DateTime),
        // Patient.communication.language is a CodeableConcept; `language` elsewhere is a code.
        "language" if parent_key == "communication" => None,
        "gender" | "status" | "intent" | "priority" | "language" => Some(Primitive::Code),
        // `*Date` elements are date or dateTime depending on the resource; dateTime's grammar accepts both.
        k if k.ends_with("DateTime") || k.ends_with("Date") => Some(Primitive::DateTime),
        _ => None,
    }
}

fn check_primitive(value: &Value, primitive: Primitive, path: &str) -> Result<(), FhirError> {
    let text = match (primitive, value) {
        (Primitive::Decimal, Value::Number(n)) => n.to_string(),
        (Primitive::Decimal, _) => return Err(invalid(IssueType::Value, path, "must be a JSON number (decimal)")),
        (_, Value::String(s)) => s.clone(),
        _ => return Err(invalid(IssueType::Value, path, &format!("must be a JSON string ({})", primitive.name()))),
    };
    if is_valid(primitive, &text) {
        Ok(())
    } else {
        Err(invalid(IssueType::Value, path, &format!("is not a valid FHIR {}", primitive.name())))
    }
}

fn invalid(code: IssueType, path: &str, what: &str) -> FhirError {
    FhirError::bad_request(code, format!("{path} {what}")).at(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn primitives_follow_the_spec_regexes() {
        assert!(is_valid(Primitive::Date, "2024"));
        assert!(is_valid(Primitive::Date, "2024-02"));
        assert!(is_valid(Primitive::Date, "2024-02-29"));
        assert!(!is_valid(Primitive::Date, "2023-02-29"));
        assert!(!is_valid(Primitive::Date, "2024-13-01"));
        assert!(!is_valid(Primitive::Date, "2024-01-01T00:00:00Z"));
        assert!(is_valid(Primitive::DateTime, "2024-01-01T10:00:00+05:30"));
        assert!(is_valid(Primitive::DateTime, "2024-01-01"));
        assert!(!is_valid(Primitive::DateTime, "2024-01-01T10:00:00"));
        assert!(!is_valid(Primitive::DateTime, "2024-01-01T10:00Z"));
        assert!(is_valid(Primitive::Instant, "2024-01-01T10:00:00.123Z"));
        assert!(!is_valid(Primitive::Instant, "2024-01-01"));
        assert!(is_valid(Primitive::Decimal, "-0.5"));
        assert!(is_valid(Primitive::Decimal, "1e10"));
        assert!(!is_valid(Primitive::Decimal, "01"));
        assert!(is_valid(Primitive::Code, "final"));
        assert!(is_valid(Primitive::Code, "a b"));
        assert!(!is_valid(Primitive::Code, " final"));
        assert!(!is_valid(Primitive::Code, "final "));
        assert!(is_valid(Primitive::Id, "a-B.9"));
        assert!(!is_valid(Primitive::Id, "a_b"));
    }

    #[test]
    fn a_patient_communication_language_is_a_codeable_concept() {
        let patient = json!({"resourceType": "Patient", "language": "en",
            "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "es"}]}, "preferred": true}]});
        validate_resource(&patient, "Patient").unwrap();
        let bad = json!({"resourceType": "Patient", "language": {"coding": [{"code": "en"}]}});
        assert!(validate_resource(&bad, "Patient").is_err());
    }

    fn error_of(resource: Value) -> FhirError {
        validate_resource(&resource, "Observation").expect_err("invalid resource")
    }

    #[test]
    fn errors_name_the_element() {
        let e = error_of(json!({"resourceType": "Observation", "status": " final", "code": {"text": "x"}}));
        assert_eq!(e.expression.as_deref(), Some("Observation.status"));
        let e = error_of(json!({"resourceType": "Observation", "valueQuantity": {"value": "5"}}));
        assert_eq!(e.expression.as_deref(), Some("Observation.valueQuantity.value"));
        let e = error_of(json!({"resourceType": "Observation", "effectiveDateTime": "yesterday"}));
        assert_eq!(e.expression.as_deref(), Some("Observation.effectiveDateTime"));
        let e = error_of(json!({"resourceType": "Observation", "meta": {"lastUpdated": "2024-01-01"}}));
        assert_eq!(e.expression.as_deref(), Some("Observation.meta.lastUpdated"));
        let e = error_of(json!({"resourceType": "Observation", "note": []}));
        assert_eq!(e.expression.as_deref(), Some("Observation.note"));
        let e = error_of(json!({"resourceType": "Patient"}));
        assert_eq!(e.expression.as_deref(), Some("resourceType"));
        let e = error_of(json!({"resourceType": "Observation", "id": "a_b"}));
        assert_eq!(e.expression.as_deref(), Some("Observation.id"));
        let e = error_of(json!({"resourceType": "Observation", "contained": [{"id": "x"}]}));
        assert_eq!(e.expression.as_deref(), Some("Observation.contained[0].resourceType"));
    }

    #[test]
    fn well_formed_resources_pass() {
        let ok = json!({
            "resourceType": "Observation",
            "id": "x1",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "88122-7"}]},
            "effectiveDateTime": "2024-05-01T10:00:00Z",
            "valueQuantity": {"value": 4.5, "unit": "kg"},
            "component": [{"code": {"text": "a"}, "valueDecimal": 3}],
            "extension": [{"url": "http://example.org/x", "valueDate": "2024-05"}],
            "_status": {"extension": [{"url": "http://example.org/y", "valueString": "s"}]},
        });
        validate_resource(&ok, "Observation").expect("valid");
    }
}
