//! `$status` and `$events` on a Subscription (R4 backport): its current status, and the events it stored.
//!
//! Both take their parameters from the query string or, for POST, from a Parameters body.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use store::SubscriptionRow;

use super::notification::{EventWithFocus, NotificationType, StatusFacts, notification_bundle, status_parameters};
use super::spec::PayloadContent;
use crate::rest::{Acting, FhirError, FhirState, IssueType};

/// Most events one `$events` answer carries.
const MAX_EVENTS: u32 = 1000;

/// `GET|POST /{type}/{id}/{operation}`: the instance operations (`$status`, `$events` on Subscription).
pub(crate) async fn operation(
    Acting(state): Acting,
    method: Method,
    path: Result<Path<(String, String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, FhirError> {
    let Path((resource_type, id, operation)) = path.map_err(crate::rest::path_error)?;
    let known = resource_type == "Subscription" && matches!(operation.as_str(), "$status" | "$events");
    if !known {
        return Err(FhirError::not_found("no such operation on this resource type"));
    }
    if method != Method::GET && method != Method::POST {
        return Err(FhirError::method_not_allowed("operations take GET or POST"));
    }
    crate::rest::check_id(&id)?;
    let mut params = match &query {
        Some(q) => crate::rest::form_pairs(q)?,
        None => Vec::new(),
    };
    if method == Method::POST {
        params.extend(body_parameters(&state, body).await?);
    }
    if operation == "$status" {
        status_operation(&state, &id).await
    } else {
        events_operation(&state, &id, &params).await
    }
}

/// Parameters of a POSTed `Parameters` body as name/value text pairs (an empty body has none).
async fn body_parameters(state: &FhirState, body: Body) -> Result<Vec<(String, String)>, FhirError> {
    let bytes = crate::rest::read_body(body, state.max_body_bytes).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let parameters = crate::rest::parse_json(&bytes)?;
    if parameters.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(FhirError::bad_request(
            IssueType::Invalid,
            "the body of an operation must be a Parameters resource",
        ));
    }
    Ok(parameters
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let name = p.get("name")?.as_str()?;
            let value = p.as_object()?.iter().find(|(k, _)| k.starts_with("value"))?.1;
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some((name.to_owned(), text))
        })
        .collect())
}

async fn subscription_state(state: &FhirState, id: &str) -> Result<(SubscriptionRow, Value), FhirError> {
    // A client sees the status and events of the Subscriptions within its scope only (those it created).
    let stored = state.store.read_as(&state.scope(), "Subscription", id).await?;
    let resource = stored
        .filter(|s| !s.deleted)
        .and_then(|s| s.content)
        .and_then(|c| serde_json::from_str::<Value>(&c).ok())
        .ok_or_else(|| FhirError::not_found(format!("Subscription/{id} is not known")))?;
    let row = state
        .store
        .subscription(id)
        .await?
        .ok_or_else(|| FhirError::not_found(format!("Subscription/{id} is not known")))?;
    Ok((row, resource))
}

fn facts<'a>(state: &'a FhirState, row: &'a SubscriptionRow, resource: &'a Value) -> StatusFacts<'a> {
    StatusFacts {
        base: state.base(),
        subscription_id: &row.spec.id,
        topic: &row.spec.topic,
        status: resource.get("status").and_then(Value::as_str).unwrap_or(&row.spec.status),
        events_since_start: row.events_since_start,
    }
}

/// `$status`: a `searchset` Bundle with the subscription's status Parameters (type `query-status`).
pub async fn status_operation(state: &FhirState, id: &str) -> Result<Response, FhirError> {
    let (row, resource) = subscription_state(state, id).await?;
    let mut parameters =
        status_parameters(&facts(state, &row, &resource), NotificationType::QueryStatus, &[], PayloadContent::Empty);
    if row.consecutive_failures > 0
        && let Some(list) = parameters["parameter"].as_array_mut()
    {
        list.push(json!({"name": "error", "valueCodeableConcept": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscription-error", "code": "no-response"}],
            "text": format!("the last {} notification attempts failed", row.consecutive_failures),
        }}));
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "entry": [{
            "fullUrl": format!("urn:uuid:{}", crate::rest::new_id()),
            "resource": parameters,
            "search": {"mode": "match"},
        }],
    });
    Ok(crate::rest::json_response(StatusCode::OK, &bundle))
}

/// `$events?eventsSinceNumber=&eventsUntilNumber=&content=`: a `history` Bundle (type `query-event`) with the stored
/// events in the range and their focus versions per the content asked for (the subscription's by default).
pub async fn events_operation(state: &FhirState, id: &str, params: &[(String, String)]) -> Result<Response, FhirError> {
    let (row, resource) = subscription_state(state, id).await?;
    let number = |name: &str| -> Result<Option<i64>, FhirError> {
        match params.iter().find(|(n, _)| n == name) {
            None => Ok(None),
            Some((_, v)) => v.trim().parse::<i64>().ok().filter(|n| *n >= 0).map(Some).ok_or_else(|| {
                FhirError::bad_request(IssueType::Value, format!("{name} must be a non-negative integer")).at(name)
            }),
        }
    };
    let since = number("eventsSinceNumber")?.unwrap_or(1).max(1);
    let until = number("eventsUntilNumber")?.unwrap_or(row.events_since_start);
    let content = match params.iter().find(|(n, _)| n == "content") {
        None => parse_content_of(&resource),
        Some((_, v)) => PayloadContent::parse(v.trim()).ok_or_else(|| {
            FhirError::bad_request(IssueType::Value, "content must be empty, id-only or full-resource").at("content")
        })?,
    };
    let events = state.store.subscription_events(id, since, until, MAX_EVENTS).await?;
    let mut with_focus = Vec::with_capacity(events.len());
    for event in events {
        let focus = if content != PayloadContent::Empty {
            state.store.vread(&event.focus_type, &event.focus_id, event.focus_version).await?
        } else {
            None
        };
        with_focus.push(EventWithFocus { event, focus });
    }
    let bundle =
        notification_bundle(&facts(state, &row, &resource), NotificationType::QueryEvent, &with_focus, content);
    Ok(crate::rest::json_response(StatusCode::OK, &bundle))
}

fn parse_content_of(resource: &Value) -> PayloadContent {
    super::parse_subscription(resource).map(|c| c.content).unwrap_or(PayloadContent::IdOnly)
}
