//! `_summary=true`: the top-level elements the R4 StructureDefinitions mark `isSummary`, vendored in
//! `profiles/fhir/r4/summary-elements.json` by `scripts/vendor-fhir-definitions.sh`.

use std::collections::HashMap;
use std::sync::OnceLock;

static SUMMARY: OnceLock<HashMap<String, Vec<String>>> = OnceLock::new();

fn table() -> &'static HashMap<String, Vec<String>> {
    SUMMARY.get_or_init(|| {
        serde_json::from_str(include_str!("../../../../profiles/fhir/r4/summary-elements.json")).unwrap_or_default()
    })
}

/// Whether `key` (a top-level JSON property of a `resource_type`) belongs in a summary. Choice elements match by
/// prefix (`value[x]` keeps `valueQuantity`), and a primitive's `_name` extension sibling follows its element.
pub fn keeps(resource_type: &str, key: &str) -> bool {
    let key = key.strip_prefix('_').unwrap_or(key);
    if matches!(key, "resourceType" | "id" | "meta" | "implicitRules") {
        return true;
    }
    table().get(resource_type).is_some_and(|names| {
        names.iter().any(|name| match name.strip_suffix("[x]") {
            Some(stem) => key.strip_prefix(stem).is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())),
            None => name == key,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_elements_come_from_the_definitions() {
        assert!(keeps("Patient", "name"));
        assert!(keeps("Patient", "birthDate"));
        assert!(keeps("Patient", "_birthDate"));
        assert!(keeps("Patient", "deceasedBoolean"), "choice element by prefix");
        assert!(!keeps("Patient", "photo"));
        assert!(!keeps("Patient", "contact"));
        assert!(keeps("Observation", "valueCodeableConcept"));
        assert!(!keeps("Observation", "valueless"), "a choice stem needs a type suffix");
        assert!(!keeps("Observation", "note"));
        assert!(keeps("Unknown", "id"));
    }
}
