//! Subscription topics as data (`profiles/subscriptions/topics.json`) and the in-memory evaluation of their
//! triggers and of Subscription filters, with the search code's parameter definitions and matching rules.

use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

use crate::search::{ParamQuery, SearchParamRegistry, extract_param, resource_matches};

const TOPICS_JSON: &str = include_str!("../../../../profiles/subscriptions/topics.json");

/// The kind of change to the focus resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interaction {
    Create,
    Update,
    Delete,
}

impl Interaction {
    /// The `Bundle.entry.request.method` of a change of this kind.
    pub fn method(self) -> &'static str {
        match self {
            Interaction::Create => "POST",
            Interaction::Update => "PUT",
            Interaction::Delete => "DELETE",
        }
    }
}

/// How a missing version counts in a query test (R5 `SubscriptionTopic.resourceTrigger.queryCriteria`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MissingResult {
    TestPasses,
    #[default]
    TestFails,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryCriteria {
    #[serde(default)]
    pub previous: Option<String>,
    #[serde(default)]
    pub result_for_create: MissingResult,
    #[serde(default)]
    pub current: Option<String>,
    #[serde(default)]
    pub result_for_delete: MissingResult,
    #[serde(default)]
    pub require_both: bool,
}

/// One topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Topic {
    pub url: String,
    pub title: String,
    /// The focus resource type.
    pub resource: String,
    pub interactions: Vec<Interaction>,
    #[serde(default)]
    pub query_criteria: Option<QueryCriteria>,
    /// Search parameters whose values must differ between the previous and the current version.
    #[serde(default)]
    pub changed: Vec<String>,
    /// Search parameters a Subscription may filter on.
    pub can_filter_by: Vec<String>,
}

#[derive(Deserialize)]
struct TopicFile {
    topics: Vec<Topic>,
}

/// Every topic, loaded once from the embedded data. A malformed file is a build defect the tests catch.
pub fn all() -> &'static [Topic] {
    static TOPICS: OnceLock<Vec<Topic>> = OnceLock::new();
    TOPICS.get_or_init(|| match serde_json::from_str::<TopicFile>(TOPICS_JSON) {
        Ok(file) => file.topics,
        Err(e) => {
            tracing::error!(error = %e, "profiles/subscriptions/topics.json is unreadable; no topics are served");
            Vec::new()
        }
    })
}

/// The topic with this canonical URL.
pub fn get(url: &str) -> Option<&'static Topic> {
    all().iter().find(|t| t.url == url)
}

/// Whether some topic is about resources of this type: other writes skip subscription work entirely.
pub fn is_focus_type(resource_type: &str) -> bool {
    all().iter().any(|t| t.resource == resource_type)
}

/// One parsed `name[:modifier]=values` clause of a query.
#[derive(Debug, Clone)]
pub struct Clause {
    pub code: String,
    pub query: ParamQuery,
}

/// Why a query cannot be used. The text names parameters, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query could not be decoded")]
    Undecodable,
    #[error("'{0}' is not a search parameter of {1}")]
    UnknownParameter(String, String),
    #[error("the value of '{0}' is malformed: {1}")]
    BadValue(String, String),
}

/// Parses a query string (`a=1&b:not=2`, URL-encoded) into clauses for `resource_type`.
pub fn parse_query(resource_type: &str, text: &str) -> Result<Vec<Clause>, QueryError> {
    let registry = SearchParamRegistry::r4().map_err(|_| QueryError::Undecodable)?;
    let pairs = crate::rest::form_pairs(text).map_err(|_| QueryError::Undecodable)?;
    pairs
        .into_iter()
        .map(|(name, value)| {
            let (code, modifier) = match name.split_once(':') {
                Some((c, m)) => (c.to_owned(), Some(m.to_owned())),
                None => (name.clone(), None),
            };
            let param = registry
                .get(resource_type, &code)
                .filter(|p| p.is_indexed())
                .ok_or_else(|| QueryError::UnknownParameter(printable(&code), resource_type.to_owned()))?;
            let query = ParamQuery::parse(param, modifier.as_deref(), &value)
                .map_err(|e| QueryError::BadValue(printable(&code), e.to_string()))?;
            Ok(Clause { code, query })
        })
        .collect()
}

/// Parameter names come from clients; only plain ones are echoed.
fn printable(code: &str) -> String {
    if code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        code.to_owned()
    } else {
        "(invalid)".to_owned()
    }
}

/// Whether `resource` satisfies every clause (clauses AND, values within a clause OR).
pub fn matches(resource: &Value, clauses: &[Clause]) -> bool {
    let Ok(registry) = SearchParamRegistry::r4() else { return false };
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else { return false };
    clauses.iter().all(|clause| match registry.get(resource_type, &clause.code) {
        Some(param) => resource_matches(&extract_param(param, resource), &clause.query),
        None => false,
    })
}

/// Whether `resource` satisfies the query text (a malformed query matches nothing).
fn query_matches(resource: &Value, query: &str) -> bool {
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else { return false };
    match parse_query(resource_type, query) {
        Ok(clauses) => matches(resource, &clauses),
        Err(e) => {
            tracing::error!(error = %e, "a topic query in profiles/subscriptions/topics.json is unusable");
            false
        }
    }
}

impl Topic {
    /// Whether a change from `previous` to `current` (`None`: absent or deleted) triggers this topic.
    pub fn triggered(&self, interaction: Interaction, previous: Option<&Value>, current: Option<&Value>) -> bool {
        if !self.interactions.contains(&interaction) {
            return false;
        }
        if let Some(criteria) = &self.query_criteria {
            let test = |query: &Option<String>, version: Option<&Value>, missing: MissingResult| {
                query.as_ref().map(|q| match version {
                    Some(v) => query_matches(v, q),
                    None => missing == MissingResult::TestPasses,
                })
            };
            let before = test(&criteria.previous, previous, criteria.result_for_create);
            let after = test(&criteria.current, current, criteria.result_for_delete);
            let passed = match (before, after) {
                (None, None) => true,
                (Some(b), None) => b,
                (None, Some(a)) => a,
                (Some(b), Some(a)) if criteria.require_both => b && a,
                (Some(b), Some(a)) => b || a,
            };
            if !passed {
                return false;
            }
        }
        if !self.changed.is_empty() {
            let (Some(previous), Some(current)) = (previous, current) else { return false };
            let Ok(registry) = SearchParamRegistry::r4() else { return false };
            let differs = self.changed.iter().any(|code| match registry.get(&self.resource, code) {
                Some(param) => extract_param(param, previous) != extract_param(param, current),
                None => false,
            });
            if !differs {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn task(status: &str) -> Value {
        json!({"resourceType": "Task", "id": "t1", "status": status, "intent": "order",
               "owner": {"reference": "Organization/cbo-a"}, "requester": {"reference": "Organization/clinic"}})
    }

    #[test]
    fn the_topic_file_loads_and_every_query_and_filter_is_usable() {
        let topics = all();
        assert_eq!(topics.len(), 4, "four topics in profiles/subscriptions/topics.json");
        for topic in topics {
            for q in topic.query_criteria.iter().flat_map(|c| [&c.previous, &c.current]).flatten() {
                parse_query(&topic.resource, q).unwrap_or_else(|e| panic!("{}: {q}: {e}", topic.url));
            }
            let registry = SearchParamRegistry::r4().unwrap();
            for code in topic.can_filter_by.iter().chain(&topic.changed) {
                assert!(registry.get(&topic.resource, code).is_some(), "{}: {code}", topic.url);
            }
        }
        assert!(is_focus_type("Task") && is_focus_type("ServiceRequest") && !is_focus_type("Patient"));
    }

    #[test]
    fn the_ig_task_topic_skips_drafts_and_fires_on_deletes() {
        let topic = get("http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task").unwrap();
        assert!(topic.triggered(Interaction::Create, None, Some(&task("requested"))));
        assert!(!topic.triggered(Interaction::Create, None, Some(&task("draft"))));
        assert!(topic.triggered(Interaction::Update, Some(&task("requested")), Some(&task("accepted"))));
        assert!(topic.triggered(Interaction::Delete, Some(&task("accepted")), None));
        let sr = get("http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Servicerequest").unwrap();
        assert!(!sr.triggered(Interaction::Create, None, Some(&json!({"resourceType": "ServiceRequest"}))));
    }

    #[test]
    fn referral_status_needs_a_status_change() {
        let topic = get("https://sdoh-gateway.org/fhir/SubscriptionTopic/referral-status").unwrap();
        assert!(topic.triggered(Interaction::Update, Some(&task("requested")), Some(&task("accepted"))));
        let mut renamed = task("accepted");
        renamed["description"] = json!("a new note");
        assert!(!topic.triggered(Interaction::Update, Some(&task("accepted")), Some(&renamed)));
        assert!(!topic.triggered(Interaction::Create, None, Some(&task("accepted"))));
    }

    #[test]
    fn new_referral_fires_on_entering_requested_only() {
        let topic = get("https://sdoh-gateway.org/fhir/SubscriptionTopic/new-referral").unwrap();
        assert!(topic.triggered(Interaction::Create, None, Some(&task("requested"))));
        assert!(topic.triggered(Interaction::Update, Some(&task("draft")), Some(&task("requested"))));
        assert!(!topic.triggered(Interaction::Update, Some(&task("requested")), Some(&task("requested"))));
        assert!(!topic.triggered(Interaction::Update, Some(&task("requested")), Some(&task("accepted"))));
    }

    #[test]
    fn filters_use_the_search_matching_rules() {
        let owner = parse_query("Task", "owner=Organization/cbo-a&status=requested,accepted").unwrap();
        assert!(matches(&task("accepted"), &owner));
        assert!(!matches(&task("completed"), &owner));
        let other = parse_query("Task", "owner=Organization%2Fcbo-b").unwrap();
        assert!(!matches(&task("accepted"), &other));
        assert!(matches(&task("accepted"), &parse_query("Task", "_id=t1").unwrap()));
        assert_eq!(
            parse_query("Task", "colour=red").unwrap_err(),
            QueryError::UnknownParameter("colour".into(), "Task".into())
        );
        assert!(matches!(parse_query("Task", "_lastUpdated=gtnot-a-date"), Err(QueryError::BadValue(..))));
    }
}
