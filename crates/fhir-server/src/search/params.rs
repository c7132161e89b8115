//! The SearchParameter registry: the vendored R4 definitions, with each parameter's expression narrowed to the
//! branches that apply to one resource type and parsed once at load time.
//!
//! Definitions are data (`profiles/fhir/r4/search-parameters.json`, produced by
//! `scripts/vendor-fhir-definitions.sh`), so adding a parameter or a resource type needs no code per type.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use super::fhirpath::{self, Expr};

/// The vendored definitions, embedded so that a built server never depends on files next to the binary.
const R4_SEARCH_PARAMETERS: &str = include_str!("../../../../profiles/fhir/r4/search-parameters.json");

/// The resource types the gateway stores. Parameters based on `Resource` / `DomainResource` apply to all of them.
pub const GATEWAY_RESOURCE_TYPES: &[&str] = &[
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "HealthcareService",
    "Encounter",
    "Observation",
    "Condition",
    "Questionnaire",
    "QuestionnaireResponse",
    "ServiceRequest",
    "Task",
    "Goal",
    "Procedure",
    "Consent",
    "Group",
    "Coverage",
    "RelatedPerson",
    "Provenance",
    "AuditEvent",
    "DocumentReference",
    "Subscription",
    "DiagnosticReport",
];

/// Common parameters whose definitions carry no expression: they are answered by the server itself (full-text
/// `_text` / `_content`, named `_query`), never by index entries.
pub const NOT_INDEXED_CODES: &[&str] = &["_text", "_content", "_query"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl SearchType {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchType::Number => "number",
            SearchType::Date => "date",
            SearchType::String => "string",
            SearchType::Token => "token",
            SearchType::Reference => "reference",
            SearchType::Composite => "composite",
            SearchType::Quantity => "quantity",
            SearchType::Uri => "uri",
            SearchType::Special => "special",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentDef {
    pub definition: String,
    pub expression: String,
}

/// One SearchParameter as vendored (the fields search needs, nothing else).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchParamDef {
    pub url: String,
    pub code: String,
    pub base: Vec<String>,
    #[serde(rename = "type")]
    pub search_type: SearchType,
    #[serde(default)]
    pub expression: Option<String>,
    #[serde(default)]
    pub xpath_usage: Option<String>,
    #[serde(default)]
    pub target: Vec<String>,
    #[serde(default)]
    pub multiple_or: Option<bool>,
    #[serde(default)]
    pub multiple_and: Option<bool>,
    #[serde(default)]
    pub modifier: Vec<String>,
    #[serde(default)]
    pub comparator: Vec<String>,
    #[serde(default)]
    pub component: Vec<ComponentDef>,
}

/// A composite's component with the referenced definition's type resolved and its relative expression parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedComponent {
    pub definition: String,
    pub search_type: SearchType,
    pub expression: Expr,
}

/// A parameter as it applies to one resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceSearchParam {
    pub resource_type: String,
    pub def: Arc<SearchParamDef>,
    /// The union branches that apply to `resource_type`; `None` for the [`NOT_INDEXED_CODES`].
    pub expression: Option<Expr>,
    pub components: Vec<ResolvedComponent>,
    /// Where this parameter's index rows live: its own, or those of the parameters it is made of.
    pub stored_as: StoredAs,
}

/// Some R4 parameters index exactly what other parameters of the same type index: `Patient.phonetic` has the
/// expression of `Patient.name`, and `Observation.combo-code` is `code | component-code`. Their values are not
/// indexed a second time (an Observation wrote 16 index rows, 6 of them such copies); a search on them reads the
/// rows of the parameters they are made of.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoredAs {
    #[default]
    Own,
    /// The same type, expression and components as this parameter.
    SameAs(String),
    /// The expression is the union of these parameters' expressions (same type and components).
    UnionOf(Vec<String>),
}

impl ResourceSearchParam {
    pub fn code(&self) -> &str {
        &self.def.code
    }

    pub fn search_type(&self) -> SearchType {
        self.def.search_type
    }

    pub fn is_indexed(&self) -> bool {
        self.expression.is_some()
    }

    /// Whether the write path stores index rows under this parameter's own code.
    pub fn has_own_rows(&self) -> bool {
        self.is_indexed() && self.stored_as == StoredAs::Own
    }

    /// The parameter codes whose index rows hold this parameter's values (any of them matching is a match).
    pub fn index_codes(&self) -> Vec<&str> {
        match &self.stored_as {
            StoredAs::Own => vec![self.code()],
            StoredAs::SameAs(code) => vec![code.as_str()],
            StoredAs::UnionOf(codes) => codes.iter().map(String::as_str).collect(),
        }
    }

    /// What makes two parameters index the same values: type, expression and components.
    fn index_signature(&self, expression: &Expr) -> String {
        let mut signature = format!("{}|{expression}", self.search_type().as_str());
        for c in &self.components {
            signature.push_str(&format!("|{}:{}", c.search_type.as_str(), c.expression));
        }
        signature
    }

    /// The per-type expression in FHIRPath syntax, for diagnostics and for a SQL layer that wants to show it.
    pub fn expression_text(&self) -> Option<String> {
        self.expression.as_ref().map(ToString::to_string)
    }
}

/// A definition that applies to one of our types but could not be loaded, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnsupportedParam {
    pub url: String,
    pub code: String,
    pub resource_types: Vec<String>,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("search parameter bundle is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("search parameter bundle has no `entry` array")]
    NotABundle,
}

#[derive(Debug, Deserialize)]
struct Bundle {
    entry: Option<Vec<BundleEntry>>,
}

#[derive(Debug, Deserialize)]
struct BundleEntry {
    resource: serde_json::Value,
}

#[derive(Debug, Default)]
pub struct SearchParamRegistry {
    by_type: BTreeMap<String, BTreeMap<String, ResourceSearchParam>>,
    by_url: HashMap<String, Arc<SearchParamDef>>,
    unsupported: Vec<UnsupportedParam>,
}

impl SearchParamRegistry {
    /// The registry built from the embedded R4 definitions for [`GATEWAY_RESOURCE_TYPES`], built once per process.
    pub fn r4() -> Result<&'static SearchParamRegistry, &'static LoadError> {
        static REGISTRY: OnceLock<Result<SearchParamRegistry, LoadError>> = OnceLock::new();
        REGISTRY.get_or_init(|| Self::from_bundle_json(R4_SEARCH_PARAMETERS, GATEWAY_RESOURCE_TYPES)).as_ref()
    }

    /// Builds a registry from a Bundle of SearchParameter resources for the given resource types. Definitions whose
    /// expressions fall outside the supported FHIRPath subset are listed by [`Self::unsupported`], not fatal.
    pub fn from_bundle_json(json: &str, resource_types: &[&str]) -> Result<Self, LoadError> {
        let bundle: Bundle = serde_json::from_str(json)?;
        let entries = bundle.entry.ok_or(LoadError::NotABundle)?;
        let mut defs = Vec::new();
        let mut registry = SearchParamRegistry::default();
        for entry in entries {
            if entry.resource.get("resourceType").and_then(|v| v.as_str()) != Some("SearchParameter") {
                continue;
            }
            match serde_json::from_value::<SearchParamDef>(entry.resource.clone()) {
                Ok(def) => {
                    let def = Arc::new(def);
                    registry.by_url.insert(def.url.clone(), def.clone());
                    defs.push(def);
                }
                Err(e) => registry.unsupported.push(UnsupportedParam {
                    url: entry.resource.get("url").and_then(|v| v.as_str()).unwrap_or_default().to_owned(),
                    code: entry.resource.get("code").and_then(|v| v.as_str()).unwrap_or_default().to_owned(),
                    resource_types: Vec::new(),
                    reason: format!("malformed definition: {e}"),
                }),
            }
        }
        for def in defs {
            registry.add(def, resource_types);
        }
        registry.share_index_rows();
        Ok(registry)
    }

    /// Finds the parameters whose index rows other parameters already hold (see [`StoredAs`]).
    fn share_index_rows(&mut self) {
        for params in self.by_type.values_mut() {
            let mut own: BTreeMap<String, String> = BTreeMap::new();
            let mut stored_as = Vec::new();
            // Codes in order, so the first of identical parameters keeps the rows and the choice is stable.
            for (code, p) in params.iter() {
                let Some(expression) = &p.expression else { continue };
                let signature = p.index_signature(expression);
                match own.get(&signature) {
                    Some(first) => stored_as.push((code.clone(), StoredAs::SameAs(first.clone()))),
                    None => {
                        own.insert(signature, code.clone());
                    }
                }
            }
            for (code, p) in params.iter() {
                let Some(expression) = &p.expression else { continue };
                let branches = expression.union_branches();
                // References are followed by chains, includes and `_has` one parameter at a time: they keep
                // their own rows unless they are an exact copy.
                if branches.len() < 2
                    || p.search_type() == SearchType::Reference
                    || stored_as.iter().any(|(c, _)| c == code)
                {
                    continue;
                }
                let parts: Option<Vec<String>> =
                    branches.iter().map(|b| own.get(&p.index_signature(b)).filter(|c| *c != code).cloned()).collect();
                if let Some(parts) = parts {
                    stored_as.push((code.clone(), StoredAs::UnionOf(parts)));
                }
            }
            for (code, shared) in stored_as {
                if let Some(p) = params.get_mut(&code) {
                    p.stored_as = shared;
                }
            }
        }
    }

    fn add(&mut self, def: Arc<SearchParamDef>, resource_types: &[&str]) {
        let common = def.base.iter().any(|b| b == "Resource" || b == "DomainResource");
        let types: Vec<&str> =
            resource_types.iter().copied().filter(|t| common || def.base.iter().any(|b| b == t)).collect();
        if types.is_empty() {
            return;
        }
        let mut unsupported = |reason: String, types: Vec<String>| {
            self.unsupported.push(UnsupportedParam {
                url: def.url.clone(),
                code: def.code.clone(),
                resource_types: types,
                reason,
            })
        };
        let all_types = || types.iter().map(|t| t.to_string()).collect::<Vec<_>>();

        let parsed = match def.expression.as_deref() {
            None => None,
            Some(src) => match fhirpath::parse(src) {
                Ok(e) => Some(e),
                Err(e) => return unsupported(format!("expression `{src}`: {e}"), all_types()),
            },
        };
        let mut components = Vec::new();
        for c in &def.component {
            let Some(component_def) = self.by_url.get(&c.definition) else {
                return unsupported(format!("component definition {} is not vendored", c.definition), all_types());
            };
            match fhirpath::parse(&c.expression) {
                Ok(expression) => components.push(ResolvedComponent {
                    definition: c.definition.clone(),
                    search_type: component_def.search_type,
                    expression,
                }),
                Err(e) => {
                    return unsupported(format!("component expression `{}`: {e}", c.expression), all_types());
                }
            }
        }
        if def.search_type == SearchType::Composite && components.is_empty() {
            return unsupported("composite without components".into(), all_types());
        }

        let mut without_branch = Vec::new();
        for ty in types {
            let expression = match &parsed {
                None => None,
                Some(expr) => {
                    let branches: Vec<Expr> = expr
                        .union_branches()
                        .into_iter()
                        .filter(
                            |b| matches!(b.root_type(), Some(r) if r == ty || r == "Resource" || r == "DomainResource"),
                        )
                        .cloned()
                        .collect();
                    match Expr::union_of(branches) {
                        Some(e) => Some(e),
                        None => {
                            without_branch.push(ty.to_owned());
                            continue;
                        }
                    }
                }
            };
            let per_type = self.by_type.entry(ty.to_owned()).or_default();
            // First definition wins: the vendored file is sorted by URL, so the choice is stable.
            per_type.entry(def.code.clone()).or_insert_with(|| ResourceSearchParam {
                resource_type: ty.to_owned(),
                def: def.clone(),
                expression,
                components: components.clone(),
                stored_as: StoredAs::Own,
            });
        }
        if !without_branch.is_empty() {
            self.unsupported.push(UnsupportedParam {
                url: def.url.clone(),
                code: def.code.clone(),
                resource_types: without_branch,
                reason: "no branch of the expression starts at this resource type".into(),
            });
        }
    }

    /// The parameter `code` of `resource_type` (including the common `_id`, `_lastUpdated`, ...).
    pub fn get(&self, resource_type: &str, code: &str) -> Option<&ResourceSearchParam> {
        self.by_type.get(resource_type)?.get(code)
    }

    /// All parameters of a resource type, ordered by code.
    pub fn params_for(&self, resource_type: &str) -> impl Iterator<Item = &ResourceSearchParam> {
        self.by_type.get(resource_type).into_iter().flat_map(|m| m.values())
    }

    pub fn resource_types(&self) -> impl Iterator<Item = &str> {
        self.by_type.keys().map(String::as_str)
    }

    pub fn definition(&self, url: &str) -> Option<&SearchParamDef> {
        self.by_url.get(url).map(Arc::as_ref)
    }

    /// Definitions for our types that could not be loaded; the registry test keeps this list explicit.
    pub fn unsupported(&self) -> &[UnsupportedParam] {
        &self.unsupported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r4() -> &'static SearchParamRegistry {
        SearchParamRegistry::r4().expect("embedded definitions load")
    }

    #[test]
    fn per_type_expressions_keep_only_their_branches() {
        let reg = r4();
        let birthdate = reg.get("Patient", "birthdate").unwrap();
        assert_eq!(birthdate.expression_text().as_deref(), Some("Patient.birthDate"));
        assert_eq!(
            reg.get("RelatedPerson", "birthdate").unwrap().expression_text().unwrap(),
            "RelatedPerson.birthDate"
        );
        let patient = reg.get("Observation", "patient").unwrap();
        assert_eq!(patient.expression_text().unwrap(), "Observation.subject.where(resolve() is Patient)");
        let vq = reg.get("Observation", "combo-value-quantity").unwrap();
        assert_eq!(vq.expression.as_ref().unwrap().union_branches().len(), 4);
        assert_eq!(reg.get("Condition", "code").unwrap().expression_text().unwrap(), "Condition.code");
        assert_eq!(reg.get("Task", "_id").unwrap().expression_text().unwrap(), "Resource.id");
        assert!(!reg.get("Goal", "_text").unwrap().is_indexed());
    }

    #[test]
    fn parameters_that_index_what_others_index_share_their_rows() {
        let reg = r4();
        let codes = |ty: &str, code: &str| reg.get(ty, code).unwrap().index_codes();
        assert_eq!(reg.get("Patient", "phonetic").unwrap().stored_as, StoredAs::SameAs("name".into()));
        assert_eq!(codes("Patient", "name"), vec!["name"]);
        assert_eq!(codes("Observation", "combo-code"), vec!["code", "component-code"]);
        assert_eq!(codes("Observation", "combo-value-concept"), vec!["value-concept", "component-value-concept"]);
        assert_eq!(
            codes("Observation", "combo-code-value-concept"),
            vec!["code-value-concept", "component-code-value-concept"]
        );
        // Same base and component codes but different component types: distinct values, own rows.
        assert!(reg.get("Observation", "code-value-quantity").unwrap().has_own_rows());
        assert!(reg.get("Observation", "code-value-concept").unwrap().has_own_rows());
        // A restriction of another parameter (`subject` of type Patient) is not a copy of it.
        assert!(reg.get("Observation", "patient").unwrap().has_own_rows());
        assert!(reg.get("Observation", "code").unwrap().has_own_rows());
    }

    /// Index rows name their parameter by `store::param_key`; two parameters with one key would share rows.
    #[test]
    fn every_official_parameter_has_its_own_index_key() {
        let registry = r4();
        let mut seen = std::collections::HashMap::new();
        for resource_type in registry.resource_types() {
            for param in registry.params_for(resource_type) {
                let key = store::param_key(resource_type, param.code());
                let name = format!("{resource_type}.{}", param.code());
                if let Some(other) = seen.insert(key, name.clone()) {
                    panic!("{name} and {other} share the index key {key}");
                }
            }
        }
        assert!(seen.len() > 500, "only {} parameters checked", seen.len());
    }

    #[test]
    fn composites_resolve_component_types() {
        let reg = r4();
        let cvq = reg.get("Observation", "code-value-quantity").unwrap();
        let types: Vec<SearchType> = cvq.components.iter().map(|c| c.search_type).collect();
        assert_eq!(types, vec![SearchType::Token, SearchType::Quantity]);
    }

    #[test]
    fn bad_expressions_are_reported_not_fatal() {
        let json = r#"{"resourceType":"Bundle","entry":[
            {"resource":{"resourceType":"SearchParameter","url":"u1","code":"a","base":["Patient"],"type":"string","expression":"Patient.name.select(given)"}},
            {"resource":{"resourceType":"SearchParameter","url":"u2","code":"b","base":["Patient"],"type":"string","expression":"Patient.name"}},
            {"resource":{"resourceType":"SearchParameter","url":"u3","code":"c","base":["Patient"],"type":"bogus"}}]}"#;
        let reg = SearchParamRegistry::from_bundle_json(json, &["Patient"]).unwrap();
        assert!(reg.get("Patient", "b").is_some());
        assert!(reg.get("Patient", "a").is_none());
        assert_eq!(reg.unsupported().len(), 2);
        assert!(SearchParamRegistry::from_bundle_json("{", &["Patient"]).is_err());
    }
}
