//! Reading and validating a Subscription against the R4 Subscriptions Backport profile: topic, filters, rest-hook
//! channel, payload content, heartbeat, timeout and max-count. Errors are 400 OperationOutcomes naming the element.

use axum::http::Uri;
use serde_json::Value;

use super::topics::{self, Clause, Topic};
use crate::rest::{FhirError, IssueType};

/// Base of the backport extension URLs.
pub const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
pub const FILTER_CRITERIA: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";
pub const PAYLOAD_CONTENT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
pub const HEARTBEAT_PERIOD: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period";
pub const TIMEOUT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-timeout";
pub const MAX_COUNT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-max-count";
pub const CHANNEL_TYPE: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-channel-type";

/// How much of the focus a notification carries (`backport-payload-content`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadContent {
    Empty,
    IdOnly,
    FullResource,
}

impl PayloadContent {
    pub fn parse(code: &str) -> Option<PayloadContent> {
        match code {
            "empty" => Some(PayloadContent::Empty),
            "id-only" => Some(PayloadContent::IdOnly),
            "full-resource" => Some(PayloadContent::FullResource),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PayloadContent::Empty => "empty",
            PayloadContent::IdOnly => "id-only",
            PayloadContent::FullResource => "full-resource",
        }
    }
}

/// One `backport-filter-criteria` value, parsed against its topic.
#[derive(Debug, Clone)]
pub struct Filter {
    pub text: String,
    pub clauses: Vec<Clause>,
}

/// What a valid Subscription asks for.
#[derive(Debug, Clone)]
pub struct SubscriptionConfig {
    pub topic: &'static Topic,
    pub filters: Vec<Filter>,
    pub status: Option<String>,
    pub endpoint: String,
    /// `channel.header` as name and value.
    pub headers: Vec<(String, String)>,
    pub content: PayloadContent,
    pub heartbeat_secs: Option<i64>,
    pub timeout_secs: Option<u64>,
    pub max_count: Option<u32>,
}

fn bad(code: IssueType, diagnostics: impl Into<String>, expression: &str) -> FhirError {
    FhirError::bad_request(code, diagnostics).at(expression)
}

/// Extensions with `url` in an element's `extension` array.
fn extensions<'a>(element: Option<&'a Value>, url: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    element
        .and_then(|e| e.get("extension"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |e| e.get("url").and_then(Value::as_str) == Some(url))
}

/// A positive integer extension (`valueUnsignedInt` / `valuePositiveInt` / `valueInteger`), if present.
fn positive_extension(element: Option<&Value>, url: &str, expression: &str) -> Result<Option<u64>, FhirError> {
    let Some(ext) = extensions(element, url).next() else { return Ok(None) };
    let value = ["valueUnsignedInt", "valuePositiveInt", "valueInteger"].iter().find_map(|k| ext.get(*k));
    match value.and_then(Value::as_u64) {
        Some(n) if n > 0 => Ok(Some(n)),
        _ => Err(bad(IssueType::Value, "must carry a positive integer value", expression)),
    }
}

/// Reads and validates a Subscription. Status is returned as submitted (the server decides what is stored).
pub fn parse_subscription(resource: &Value) -> Result<SubscriptionConfig, FhirError> {
    let criteria = resource.get("criteria").and_then(Value::as_str).filter(|c| !c.is_empty()).ok_or_else(|| {
        bad(IssueType::Required, "criteria (the topic canonical URL) is required", "Subscription.criteria")
    })?;
    let topic = topics::get(criteria).ok_or_else(|| {
        let known: Vec<&str> = topics::all().iter().map(|t| t.url.as_str()).collect();
        bad(
            IssueType::NotSupported,
            format!("criteria names no topic this server supports; known topics: {}", known.join(", ")),
            "Subscription.criteria",
        )
    })?;
    if resource.get("reason").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(bad(IssueType::Required, "reason is required", "Subscription.reason"));
    }

    let mut filters = Vec::new();
    for ext in extensions(resource.get("_criteria"), FILTER_CRITERIA) {
        let expression = "Subscription.criteria.extension('backport-filter-criteria')";
        let text = ext
            .get("valueString")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(IssueType::Required, "backport-filter-criteria must carry valueString", expression))?;
        filters.push(parse_filter(topic, text).map_err(|why| bad(IssueType::Invalid, why, expression))?);
    }

    let channel = resource
        .get("channel")
        .filter(|c| c.is_object())
        .ok_or_else(|| bad(IssueType::Required, "channel is required", "Subscription.channel"))?;
    let channel_type = channel.get("type").and_then(Value::as_str).unwrap_or("");
    let custom_type = extensions(channel.get("_type"), CHANNEL_TYPE)
        .next()
        .and_then(|e| e.get("valueCoding"))
        .and_then(|c| c.get("code"))
        .and_then(Value::as_str);
    if channel_type != "rest-hook" || custom_type.is_some_and(|t| t != "rest-hook") {
        let named = custom_type.unwrap_or(channel_type);
        return Err(bad(
            IssueType::NotSupported,
            format!(
                "channel type '{}' is not supported; this server delivers rest-hook notifications only",
                if named.len() <= 32 && named.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    named
                } else {
                    "(invalid)"
                }
            ),
            "Subscription.channel.type",
        ));
    }
    let endpoint = channel.get("endpoint").and_then(Value::as_str).ok_or_else(|| {
        bad(IssueType::Required, "a rest-hook channel needs an endpoint", "Subscription.channel.endpoint")
    })?;
    check_endpoint(endpoint)?;
    if let Some(payload) = channel.get("payload").and_then(Value::as_str) {
        let essence = payload.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if essence != "application/fhir+json" && essence != "application/json" {
            return Err(bad(
                IssueType::NotSupported,
                "channel.payload must be application/fhir+json (notifications are sent as FHIR JSON)",
                "Subscription.channel.payload",
            ));
        }
    }
    let content = match extensions(channel.get("_payload"), PAYLOAD_CONTENT).next() {
        None => PayloadContent::IdOnly,
        Some(ext) => ext.get("valueCode").and_then(Value::as_str).and_then(PayloadContent::parse).ok_or_else(|| {
            bad(
                IssueType::Value,
                "backport-payload-content must be empty, id-only or full-resource",
                "Subscription.channel.payload.extension('backport-payload-content')",
            )
        })?,
    };
    let mut headers = Vec::new();
    for (i, header) in channel.get("header").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let expression = format!("Subscription.channel.header[{i}]");
        let parsed = header.as_str().and_then(|h| h.split_once(':')).and_then(|(name, value)| {
            let (name, value) = (name.trim(), value.trim());
            let name_ok = axum::http::HeaderName::from_bytes(name.as_bytes()).is_ok();
            let value_ok = axum::http::HeaderValue::from_str(value).is_ok();
            (name_ok && value_ok).then(|| (name.to_owned(), value.to_owned()))
        });
        headers.push(parsed.ok_or_else(|| {
            FhirError::bad_request(IssueType::Value, "a channel header must read 'Name: value'").at(expression)
        })?);
    }
    let channel_ext = Some(channel);
    let heartbeat_secs = positive_extension(
        channel_ext,
        HEARTBEAT_PERIOD,
        "Subscription.channel.extension('backport-heartbeat-period')",
    )?
    .map(|n| n.min(i64::MAX as u64) as i64);
    let timeout_secs = positive_extension(channel_ext, TIMEOUT, "Subscription.channel.extension('backport-timeout')")?;
    let max_count = positive_extension(channel_ext, MAX_COUNT, "Subscription.channel.extension('backport-max-count')")?
        .map(|n| n.min(u64::from(u32::MAX)) as u32);
    Ok(SubscriptionConfig {
        topic,
        filters,
        status: resource.get("status").and_then(Value::as_str).map(str::to_owned),
        endpoint: endpoint.to_owned(),
        headers,
        content,
        heartbeat_secs,
        timeout_secs,
        max_count,
    })
}

/// Parses `Type?query` against a topic: the type must be the topic's, every parameter one the topic allows.
pub fn parse_filter(topic: &Topic, text: &str) -> Result<Filter, String> {
    let (resource_type, query) = text.split_once('?').ok_or_else(|| {
        format!("a filter reads '{}?parameter=value' (the topic's resource type, then a query)", topic.resource)
    })?;
    if resource_type != topic.resource {
        return Err(format!("the filter must be about {}, the resource type of the topic", topic.resource));
    }
    if query.is_empty() {
        return Err("the filter has no parameters".into());
    }
    let clauses = topics::parse_query(resource_type, query).map_err(|e| match e {
        topics::QueryError::UnknownParameter(code, _) => {
            format!("'{code}' is not a filter of this topic (allowed: {})", topic.can_filter_by.join(", "))
        }
        other => other.to_string(),
    })?;
    for clause in &clauses {
        if !topic.can_filter_by.contains(&clause.code) {
            return Err(format!(
                "'{}' is not a filter of this topic (allowed: {})",
                clause.code,
                topic.can_filter_by.join(", ")
            ));
        }
    }
    Ok(Filter { text: text.to_owned(), clauses })
}

/// An endpoint must be an absolute http(s) URL with a host.
fn check_endpoint(endpoint: &str) -> Result<(), FhirError> {
    let uri: Option<Uri> = endpoint.parse().ok();
    let ok = uri
        .as_ref()
        .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty()));
    if ok {
        Ok(())
    } else {
        Err(bad(
            IssueType::Value,
            "channel.endpoint must be an absolute http:// or https:// URL",
            "Subscription.channel.endpoint",
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    pub fn subscription(topic: &str, filter: Option<&str>, endpoint: &str) -> Value {
        let mut s = json!({
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "referral updates",
            "criteria": topic,
            "channel": {
                "type": "rest-hook",
                "endpoint": endpoint,
                "payload": "application/fhir+json",
                "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": "full-resource"}]},
                "header": ["Authorization: Bearer abc"],
                "extension": [{"url": HEARTBEAT_PERIOD, "valueUnsignedInt": 60}, {"url": MAX_COUNT, "valuePositiveInt": 5}]
            }
        });
        if let Some(f) = filter {
            s["_criteria"] = json!({"extension": [{"url": FILTER_CRITERIA, "valueString": f}]});
        }
        s
    }

    const TASK: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task";

    #[test]
    fn a_valid_backport_subscription_is_read_completely() {
        let config =
            parse_subscription(&subscription(TASK, Some("Task?owner=Organization/1"), "https://cbo.example/hook"))
                .unwrap();
        assert_eq!(config.topic.url, TASK);
        assert_eq!(config.filters.len(), 1);
        assert_eq!(config.content, PayloadContent::FullResource);
        assert_eq!(config.headers, vec![("Authorization".to_owned(), "Bearer abc".to_owned())]);
        assert_eq!((config.heartbeat_secs, config.max_count, config.timeout_secs), (Some(60), Some(5), None));
    }

    #[test]
    fn bad_subscriptions_name_the_element_at_fault() {
        let cases = [
            (subscription("http://example.org/unknown", None, "http://h/x"), "Subscription.criteria"),
            (subscription(TASK, Some("Task?owner"), "http://h/x"), "backport-filter-criteria"),
            (subscription(TASK, Some("Patient?name=x"), "http://h/x"), "backport-filter-criteria"),
            (subscription(TASK, Some("Task?focus=ServiceRequest/1"), "http://h/x"), "backport-filter-criteria"),
            (subscription(TASK, Some("Task?_lastUpdated=gtyesterday"), "http://h/x"), "backport-filter-criteria"),
            (subscription(TASK, None, "mailto:someone@example.org"), "Subscription.channel.endpoint"),
            (subscription(TASK, None, "/relative/hook"), "Subscription.channel.endpoint"),
            (subscription(TASK, None, "ftp://h/x"), "Subscription.channel.endpoint"),
        ];
        for (resource, expression) in cases {
            let e = parse_subscription(&resource).expect_err(expression);
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            assert!(e.expression.as_deref().unwrap_or("").contains(expression), "{e:?} for {expression}");
        }
        let mut email = subscription(TASK, None, "http://h/x");
        email["channel"]["type"] = json!("email");
        let e = parse_subscription(&email).unwrap_err();
        assert!(e.diagnostics.contains("not supported"), "{}", e.diagnostics);
        let focus = parse_subscription(&subscription(TASK, Some("Task?focus=ServiceRequest/1"), "http://h/x"));
        assert!(focus.unwrap_err().diagnostics.contains("'focus' is not a filter of this topic"));
    }
}
