//! The CapabilityStatement, generated from what this module really implements and how it is configured.

use axum::extract::State;
use axum::response::Response;
use serde_json::{Value, json};

use super::handlers::json_response;
use super::{FhirState, SUPPORTED_TYPES, search};

/// Instance and type interactions every supported type offers.
const INTERACTIONS: &[&str] =
    &["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"];

/// How CBO platforms find their work without subscriptions (SDOH Clinical Care IG, polling).
const TASK_POLLING: &str = "Referral Tasks follow the SDOHCC referral state machine, enforced by the server (the \
    owner accepts/rejects and works the Task, the requester cancels); a ServiceRequest's status follows its Task. \
    Poll with Task?owner=Organization/{id}&status=requested&_lastUpdated=gt{instant} or _history?_since={instant} \
    (both indexed).";

/// Profiles the referral workflow's resources are checked against where they differ from base FHIR.
fn supported_profiles(resource_type: &str) -> Option<Value> {
    let profile = match resource_type {
        "Task" => "SDOHCC-TaskForReferralManagement",
        "ServiceRequest" => "SDOHCC-ServiceRequest",
        _ => return None,
    };
    Some(json!([format!("http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/{profile}")]))
}

pub async fn metadata(State(state): State<FhirState>) -> Response {
    json_response(axum::http::StatusCode::OK, &capability_statement(&state))
}

pub fn capability_statement(state: &FhirState) -> Value {
    let resources: Vec<Value> = SUPPORTED_TYPES
        .iter()
        .map(|t| {
            let (includes, revincludes) = search::capability_includes(t);
            let mut resource = json!({
                "type": t,
                "interaction": INTERACTIONS.iter().map(|code| json!({ "code": code })).collect::<Vec<_>>(),
                "versioning": "versioned",
                "readHistory": true,
                "updateCreate": state.allow_update_create,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                // One match at most: criteria matching several resources are refused with 412.
                "conditionalDelete": "single",
                "searchInclude": includes,
                "searchRevInclude": revincludes,
                "searchParam": search::capability_params(t),
            });
            if let Some(profiles) = supported_profiles(t) {
                resource["supportedProfile"] = profiles;
            }
            if *t == "Task" {
                resource["documentation"] = json!(TASK_POLLING);
            }
            if *t == "Subscription" {
                crate::subscriptions::describe_capability(&mut resource);
            }
            resource
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
        "kind": "instance",
        "software": { "name": "sdoh-gateway", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "sdoh-gateway FHIR R4 endpoint", "url": state.base() },
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": false,
                "description": "Bearer tokens issued per API client (sdoh-gateway clients add), each bound to one \
                    Organization and a role: ehr and admin clients see everything; a cbo client sees only the referral \
                    Tasks it owns or requested and what they reference, and writes only its referral work; registry \
                    clients use registry exports. Resources outside a client's scope answer 404.",
            },
            "resource": resources,
            "interaction": [{ "code": "history-system" }],
            "searchParam": [
                { "name": "_count", "type": "number" },
                { "name": "_sort", "type": "string" },
                { "name": "_total", "type": "token" },
                { "name": "_summary", "type": "token" },
                { "name": "_elements", "type": "string" },
            ],
        }],
    })
}
