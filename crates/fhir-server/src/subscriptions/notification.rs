//! The notification Bundle of the R4 backport: a `history` Bundle whose first entry is the
//! `backport-subscription-status-r4` Parameters, followed by the focus resources (full-resource), their URLs
//! (id-only) or nothing (empty). `$status` and `$events` answer with the same Parameters.

use serde_json::{Value, json};
use store::{StoredResource, SubscriptionEvent, format_instant};

use super::spec::PayloadContent;

pub const STATUS_PROFILE: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";

/// `type` of a status Parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationType {
    Handshake,
    Heartbeat,
    EventNotification,
    QueryStatus,
    QueryEvent,
}

impl NotificationType {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationType::Handshake => "handshake",
            NotificationType::Heartbeat => "heartbeat",
            NotificationType::EventNotification => "event-notification",
            NotificationType::QueryStatus => "query-status",
            NotificationType::QueryEvent => "query-event",
        }
    }
}

/// The subscription facts a status Parameters reports.
#[derive(Debug, Clone)]
pub struct StatusFacts<'a> {
    /// The FHIR base, without a trailing slash.
    pub base: &'a str,
    pub subscription_id: &'a str,
    pub topic: &'a str,
    pub status: &'a str,
    pub events_since_start: i64,
}

/// One event with, when available, the focus version it is about.
#[derive(Debug, Clone)]
pub struct EventWithFocus {
    pub event: SubscriptionEvent,
    /// The focus version, read unless the content is `empty` (a deletion is a version without content).
    pub focus: Option<StoredResource>,
}

fn focus_url(base: &str, event: &SubscriptionEvent) -> String {
    format!("{base}/{}/{}/_history/{}", event.focus_type, event.focus_id, event.focus_version)
}

/// The `backport-subscription-status-r4` Parameters.
pub fn status_parameters(
    facts: &StatusFacts<'_>,
    kind: NotificationType,
    events: &[EventWithFocus],
    content: PayloadContent,
) -> Value {
    let mut parameter = vec![
        json!({"name": "subscription", "valueReference": {
            "reference": format!("{}/Subscription/{}", facts.base, facts.subscription_id)
        }}),
        json!({"name": "topic", "valueCanonical": facts.topic}),
        json!({"name": "status", "valueCode": facts.status}),
        json!({"name": "type", "valueCode": kind.as_str()}),
        // R4 has no integer64: the backport carries the counter as a string.
        json!({"name": "events-since-subscription-start", "valueString": facts.events_since_start.to_string()}),
    ];
    for e in events {
        let mut part = vec![
            json!({"name": "event-number", "valueString": e.event.number.to_string()}),
            json!({"name": "timestamp", "valueInstant": format_instant(e.event.occurred)}),
        ];
        if content != PayloadContent::Empty {
            part.push(json!({"name": "focus", "valueReference": {"reference": focus_url(facts.base, &e.event)}}));
        }
        parameter.push(json!({"name": "notification-event", "part": part}));
    }
    json!({
        "resourceType": "Parameters",
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": parameter,
    })
}

/// A notification Bundle (`history`) for delivery or for `$events`.
pub fn notification_bundle(
    facts: &StatusFacts<'_>,
    kind: NotificationType,
    events: &[EventWithFocus],
    content: PayloadContent,
) -> Value {
    let status = status_parameters(facts, kind, events, content);
    let mut entries = vec![json!({
        "fullUrl": format!("urn:uuid:{}", crate::rest::new_id()),
        "resource": status,
        "request": {"method": "GET", "url": format!("Subscription/{}/$status", facts.subscription_id)},
        "response": {"status": "200"},
    })];
    if content != PayloadContent::Empty {
        for e in events {
            let ev = &e.event;
            let deleted = e.focus.as_ref().is_some_and(|f| f.deleted);
            let (method, status) = match (deleted, ev.focus_version) {
                (true, _) => ("DELETE", "204"),
                (false, 1) => ("POST", "201"),
                (false, _) => ("PUT", "200"),
            };
            let mut entry = json!({
                "fullUrl": format!("{}/{}/{}", facts.base, ev.focus_type, ev.focus_id),
                "request": {"method": method, "url": format!("{}/{}", ev.focus_type, ev.focus_id)},
                "response": {"status": status, "etag": format!("W/\"{}\"", ev.focus_version)},
            });
            if content == PayloadContent::FullResource
                && let Some(resource) = e
                    .focus
                    .as_ref()
                    .and_then(|f| f.content.as_deref())
                    .and_then(|c| serde_json::from_str::<Value>(c).ok())
            {
                entry["resource"] = resource;
            }
            entries.push(entry);
        }
    }
    json!({
        "resourceType": "Bundle",
        "id": crate::rest::new_id(),
        "type": "history",
        "timestamp": format_instant(store::Timestamp::now()),
        "entry": entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: i64) -> EventWithFocus {
        let content =
            format!(r#"{{"resourceType":"Task","id":"t1","status":"accepted","meta":{{"versionId":"{n}"}}}}"#);
        EventWithFocus {
            event: SubscriptionEvent {
                number: n,
                focus_type: "Task".into(),
                focus_id: "t1".into(),
                focus_version: n,
                occurred: store::Timestamp(1_700_000_000_000_000),
            },
            focus: Some(StoredResource {
                resource_type: "Task".into(),
                id: "t1".into(),
                version_id: n,
                last_updated: store::Timestamp(1_700_000_000_000_000),
                deleted: false,
                content: Some(content),
            }),
        }
    }

    fn facts() -> StatusFacts<'static> {
        StatusFacts {
            base: "http://gw/fhir",
            subscription_id: "s1",
            topic: "urn:topic",
            status: "active",
            events_since_start: 7,
        }
    }

    #[test]
    fn payload_content_decides_what_follows_the_status() {
        let events = [event(1), event(2)];
        let full =
            notification_bundle(&facts(), NotificationType::EventNotification, &events, PayloadContent::FullResource);
        assert_eq!(full["type"], "history");
        let entries = full["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        let params = &entries[0]["resource"]["parameter"];
        assert_eq!(params[3]["valueCode"], "event-notification");
        assert_eq!(params[4]["valueString"], "7");
        assert_eq!(params[5]["part"][0]["valueString"], "1");
        assert_eq!(params[6]["part"][2]["valueReference"]["reference"], "http://gw/fhir/Task/t1/_history/2");
        assert_eq!(entries[1]["resource"]["resourceType"], "Task");
        assert_eq!(entries[1]["request"]["method"], "POST");
        assert_eq!(entries[2]["request"]["method"], "PUT");

        let ids = notification_bundle(&facts(), NotificationType::EventNotification, &events, PayloadContent::IdOnly);
        let entries = ids["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        assert!(entries[1].get("resource").is_none());
        assert_eq!(entries[1]["fullUrl"], "http://gw/fhir/Task/t1");

        let empty = notification_bundle(&facts(), NotificationType::EventNotification, &events, PayloadContent::Empty);
        let entries = empty["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        let event_part = &entries[0]["resource"]["parameter"][5]["part"];
        assert_eq!(event_part.as_array().unwrap().len(), 2, "no focus for empty content");
    }
}
