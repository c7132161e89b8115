//! `POST /fhir` with a `batch` or `transaction` Bundle (FHIR R4 http.html#transaction).
//!
//! A transaction is one store transaction: every entry commits or none does. Entries run in the order the
//! specification prescribes (DELETE, POST, PUT/PATCH, then GET), `urn:uuid:` and other `fullUrl` references to
//! created resources are rewritten to their new `Type/id` before anything is written, and two entries may not touch
//! the same resource. A batch runs each entry on its own and reports each outcome in its response entry.

use std::collections::{HashMap, HashSet};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};
use store::{Precondition, StoreTx, StoredResource};

use super::error::{FhirError, IssueType};
use super::handlers::{check_id, check_type, json_response, new_id};
use super::validate::validate_resource;
use super::{FhirState, media, patch, search};

/// More entries than this in one Bundle is refused: one request must not hold the writer for minutes.
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    // Declared in the order a transaction processes them.
    Delete,
    Post,
    Put,
    Patch,
    Get,
}

/// One Bundle entry, checked and resolved before anything is written.
#[derive(Debug, Clone)]
struct Planned {
    index: usize,
    method: Method,
    resource_type: String,
    /// Target id: server-assigned for POST, from the URL otherwise.
    id: String,
    /// Version for GET `_history/n` reads.
    version: Option<i64>,
    resource: Option<Value>,
    if_match: Option<i64>,
}

/// What happened to one entry, for its `response`.
#[derive(Debug)]
enum Outcome {
    Written { stored: StoredResource, created: bool },
    Deleted(Option<StoredResource>),
    Read(StoredResource),
    Failed(FhirError),
}

pub async fn process(State(state): State<FhirState>, headers: HeaderMap, body: Body) -> Result<Response, FhirError> {
    let bytes = media::read_body(body, state.max_body_bytes).await?;
    let bundle = media::parse_json(&bytes)?;
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(
            FhirError::bad_request(IssueType::Invalid, "the base endpoint accepts only a Bundle").at("resourceType")
        );
    }
    let kind = bundle.get("type").and_then(Value::as_str).unwrap_or_default();
    let entries = match bundle.get("entry") {
        None => Vec::new(),
        Some(Value::Array(entries)) => entries.clone(),
        Some(_) => {
            return Err(
                FhirError::bad_request(IssueType::Structure, "Bundle.entry must be an array").at("Bundle.entry")
            );
        }
    };
    if entries.len() > MAX_ENTRIES {
        return Err(FhirError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            IssueType::TooLong,
            format!("a Bundle may carry at most {MAX_ENTRIES} entries"),
        ));
    }
    let _ = headers;
    match kind {
        "transaction" => transaction(&state, &entries).await,
        "batch" => Ok(batch(&state, &entries).await),
        _ => Err(FhirError::bad_request(IssueType::Value, "Bundle.type must be transaction or batch to be processed")
            .at("Bundle.type")),
    }
}

async fn transaction(state: &FhirState, entries: &[Value]) -> Result<Response, FhirError> {
    let mut planned = Vec::with_capacity(entries.len());
    let mut references: HashMap<String, String> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let plan = plan_entry(index, entry).map_err(|e| e.at(format!("Bundle.entry[{index}]")))?;
        if let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str)
            && matches!(plan.method, Method::Post | Method::Put)
        {
            references.insert(full_url.to_owned(), format!("{}/{}", plan.resource_type, plan.id));
        }
        planned.push(plan);
    }
    let mut touched = HashSet::new();
    for plan in planned.iter().filter(|p| p.method != Method::Get) {
        if !touched.insert((plan.resource_type.clone(), plan.id.clone())) {
            return Err(FhirError::bad_request(
                IssueType::Invalid,
                format!(
                    "two entries change {}/{}; a transaction may touch each resource once",
                    plan.resource_type, plan.id
                ),
            )
            .at(format!("Bundle.entry[{}]", plan.index)));
        }
    }
    for plan in &mut planned {
        if let Some(resource) = plan.resource.as_mut() {
            rewrite_references(resource, &references);
        }
    }
    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_by_key(|&i| (planned[i].method, i));

    let mut tx = state.store.begin().await?;
    let mut outcomes: Vec<Option<Outcome>> = (0..planned.len()).map(|_| None).collect();
    for i in order {
        let plan = &planned[i];
        match execute(state, &mut tx, plan).await {
            Outcome::Failed(e) if plan.method != Method::Get => {
                // Dropping the transaction rolls back every entry written so far.
                return Err(e.at(format!("Bundle.entry[{}]", plan.index)));
            }
            outcome => outcomes[i] = Some(outcome),
        }
    }
    tx.commit().await?;
    tracing::info!(entries = planned.len(), "transaction committed");
    let entries: Vec<Value> = outcomes.into_iter().flatten().map(|o| response_entry(state, o)).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"resourceType": "Bundle", "type": "transaction-response", "entry": entries}),
    ))
}

async fn batch(state: &FhirState, entries: &[Value]) -> Response {
    let mut responses = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let outcome = match plan_entry(index, entry) {
            Err(e) => Outcome::Failed(e),
            Ok(plan) => match state.store.begin().await {
                Err(e) => Outcome::Failed(e.into()),
                Ok(mut tx) => match execute(state, &mut tx, &plan).await {
                    Outcome::Failed(e) => Outcome::Failed(e),
                    done => match tx.commit().await {
                        Ok(()) => done,
                        Err(e) => Outcome::Failed(e.into()),
                    },
                },
            },
        };
        responses.push(response_entry(state, outcome));
    }
    tracing::info!(entries = entries.len(), "batch processed");
    json_response(StatusCode::OK, &json!({"resourceType": "Bundle", "type": "batch-response", "entry": responses}))
}

/// Checks one entry's request and resource and decides what it will do.
fn plan_entry(index: usize, entry: &Value) -> Result<Planned, FhirError> {
    let request = entry
        .get("request")
        .and_then(Value::as_object)
        .ok_or_else(|| FhirError::bad_request(IssueType::Required, "entry.request is required").at("request"))?;
    let method = match request.get("method").and_then(Value::as_str) {
        Some("GET") | Some("HEAD") => Method::Get,
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some("PATCH") => Method::Patch,
        Some("DELETE") => Method::Delete,
        _ => {
            return Err(FhirError::bad_request(
                IssueType::Value,
                "request.method must be GET, POST, PUT, PATCH or DELETE",
            )
            .at("request.method"));
        }
    };
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| FhirError::bad_request(IssueType::Required, "request.url is required").at("request.url"))?;
    if url.contains('?') || request.contains_key("ifNoneExist") {
        return Err(FhirError::bad_request(
            IssueType::NotSupported,
            "conditional interactions in Bundles are not supported yet",
        )
        .at("request.url"));
    }
    let if_match = match request.get("ifMatch").and_then(Value::as_str) {
        Some(tag) => Some(media::parse_etag(tag).ok_or_else(|| {
            FhirError::bad_request(IssueType::Value, "request.ifMatch must be an ETag such as W/\"3\"")
                .at("request.ifMatch")
        })?),
        None => None,
    };
    let segments: Vec<&str> = url.trim_start_matches('/').split('/').collect();
    let resource_type = segments[0].to_owned();
    check_type(&resource_type)?;
    let (id, version) = match (method, segments.as_slice()) {
        (Method::Post, [_]) => (new_id(), None),
        (Method::Put | Method::Patch | Method::Delete | Method::Get, [_, id]) => {
            check_id(id)?;
            ((*id).to_owned(), None)
        }
        (Method::Get, [_, id, "_history", version]) => {
            check_id(id)?;
            let version = version.parse::<i64>().map_err(|_| {
                FhirError::bad_request(IssueType::Value, "the version in request.url must be a number")
                    .at("request.url")
            })?;
            ((*id).to_owned(), Some(version))
        }
        _ => {
            return Err(FhirError::bad_request(
                IssueType::NotSupported,
                "request.url must be Type (POST) or Type/id (PUT, PATCH, DELETE, GET)",
            )
            .at("request.url"));
        }
    };
    let resource = match method {
        Method::Post | Method::Put => {
            let mut resource = entry.get("resource").cloned().ok_or_else(|| {
                FhirError::bad_request(IssueType::Required, "entry.resource is required").at("resource")
            })?;
            validate_resource(&resource, &resource_type)?;
            match (method, resource.get("id").and_then(Value::as_str)) {
                (Method::Put, Some(body_id)) if body_id != id => {
                    return Err(FhirError::bad_request(IssueType::Invalid, "resource.id does not match request.url")
                        .at("resource.id"));
                }
                (Method::Put, None) => {
                    return Err(FhirError::bad_request(IssueType::Required, "resource.id is required for PUT")
                        .at("resource.id"));
                }
                _ => {}
            }
            if let Some(object) = resource.as_object_mut() {
                object.insert("id".into(), Value::String(id.clone()));
            }
            Some(resource)
        }
        // The patch document (a Binary or Parameters in FHIR; here the JSON Patch array itself, as in resource).
        Method::Patch => Some(patch_document(entry)?),
        Method::Delete | Method::Get => None,
    };
    Ok(Planned { index, method, resource_type, id, version, resource, if_match })
}

/// JSON Patch in a Bundle travels as a Binary whose `data` is the base64 patch, or as the array itself.
fn patch_document(entry: &Value) -> Result<Value, FhirError> {
    let missing = || FhirError::bad_request(IssueType::Required, "a PATCH entry needs its JSON Patch").at("resource");
    let resource = entry.get("resource").ok_or_else(missing)?;
    if resource.is_array() {
        return Ok(resource.clone());
    }
    if resource.get("resourceType").and_then(Value::as_str) == Some("Binary") {
        let data = resource.get("data").and_then(Value::as_str).ok_or_else(missing)?;
        let bytes = base64_decode(data)
            .ok_or_else(|| FhirError::bad_request(IssueType::Value, "Binary.data is not base64").at("resource.data"))?;
        return media::parse_json(&bytes);
    }
    Err(missing())
}

async fn execute(state: &FhirState, tx: &mut StoreTx, plan: &Planned) -> Outcome {
    let precondition = plan.if_match.map_or(Precondition::None, Precondition::Version);
    let result: Result<Outcome, FhirError> = async {
        match plan.method {
            Method::Post => {
                let resource = plan.resource.clone().unwrap_or_default();
                let rows = search::index_rows(&resource);
                let written = tx.put(resource, Precondition::MustNotExist).await?;
                tx.replace_index(&plan.resource_type, &plan.id, &rows).await?;
                Ok(Outcome::Written { stored: written.resource, created: true })
            }
            Method::Put => {
                let current = tx.read(&plan.resource_type, &plan.id).await?;
                if current.is_none() && !state.allow_update_create {
                    return Err(FhirError::method_not_allowed(
                        "this server does not create resources with client-assigned ids (update as create)",
                    ));
                }
                let resource = plan.resource.clone().unwrap_or_default();
                let rows = search::index_rows(&resource);
                let written = tx.put(resource, precondition).await.map_err(|e| version_error(e, plan.if_match))?;
                tx.replace_index(&plan.resource_type, &plan.id, &rows).await?;
                Ok(Outcome::Written { stored: written.resource, created: written.created })
            }
            Method::Patch => {
                let current = live(tx.read(&plan.resource_type, &plan.id).await?, plan)?;
                let document = plan.resource.clone().unwrap_or_default();
                let content: Value =
                    serde_json::from_str(current.content.as_deref().unwrap_or("{}")).map_err(|_| {
                        FhirError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            IssueType::Exception,
                            "stored resource is unreadable",
                        )
                    })?;
                let patched = patch::apply(&content, &document).map_err(|e| match e {
                    patch::PatchError::Malformed(_) => FhirError::bad_request(IssueType::Invalid, e.to_string()),
                    patch::PatchError::Failed(_) => FhirError::unprocessable(IssueType::Processing, e.to_string()),
                })?;
                validate_resource(&patched, &plan.resource_type)?;
                if patched.get("id").and_then(Value::as_str) != Some(plan.id.as_str()) {
                    return Err(FhirError::unprocessable(IssueType::Invalid, "a patch may not change the resource id"));
                }
                let expected = plan.if_match.unwrap_or(current.version_id);
                let written = tx
                    .put(patched, Precondition::Version(expected))
                    .await
                    .map_err(|e| version_error(e, plan.if_match))?;
                Ok(Outcome::Written { stored: written.resource, created: false })
            }
            Method::Delete => {
                let deleted = tx
                    .delete(&plan.resource_type, &plan.id, precondition)
                    .await
                    .map_err(|e| version_error(e, plan.if_match))?;
                Ok(Outcome::Deleted(deleted))
            }
            Method::Get => {
                let found = match plan.version {
                    Some(v) => tx.store().vread(&plan.resource_type, &plan.id, v).await?,
                    None => tx.read(&plan.resource_type, &plan.id).await?,
                };
                Ok(Outcome::Read(live(found, plan)?))
            }
        }
    }
    .await;
    result.unwrap_or_else(Outcome::Failed)
}

fn live(found: Option<StoredResource>, plan: &Planned) -> Result<StoredResource, FhirError> {
    match found {
        Some(stored) if !stored.deleted => Ok(stored),
        Some(_) => Err(FhirError::gone(format!("{}/{} is deleted", plan.resource_type, plan.id))),
        None => Err(FhirError::not_found(format!("{}/{} is not known", plan.resource_type, plan.id))),
    }
}

fn version_error(err: store::StoreError, if_match: Option<i64>) -> FhirError {
    match (&err, if_match) {
        (store::StoreError::VersionConflict { .. }, Some(_)) => {
            FhirError::precondition_failed("the resource has changed since the version named in ifMatch")
        }
        _ => err.into(),
    }
}

fn response_entry(state: &FhirState, outcome: Outcome) -> Value {
    let mut response = Map::new();
    let mut entry = Map::new();
    let base = state.base_url.trim_end_matches('/');
    let versioned = |stored: &StoredResource, response: &mut Map<String, Value>| {
        response.insert("etag".into(), json!(media::etag(stored.version_id)));
        response.insert("lastModified".into(), json!(store::format_instant(stored.last_updated)));
    };
    match outcome {
        Outcome::Written { stored, created } => {
            let location = format!("{}/{}/_history/{}", stored.resource_type, stored.id, stored.version_id);
            response.insert("status".into(), json!(if created { "201 Created" } else { "200 OK" }));
            response.insert("location".into(), json!(location));
            versioned(&stored, &mut response);
            entry.insert("fullUrl".into(), json!(format!("{base}/{}/{}", stored.resource_type, stored.id)));
            if let Some(resource) = stored.content.as_deref().and_then(|c| serde_json::from_str::<Value>(c).ok()) {
                entry.insert("resource".into(), resource);
            }
        }
        Outcome::Deleted(deleted) => {
            response.insert("status".into(), json!("204 No Content"));
            if let Some(stored) = deleted {
                versioned(&stored, &mut response);
            }
        }
        Outcome::Read(stored) => {
            response.insert("status".into(), json!("200 OK"));
            versioned(&stored, &mut response);
            entry.insert("fullUrl".into(), json!(format!("{base}/{}/{}", stored.resource_type, stored.id)));
            if let Some(resource) = stored.content.as_deref().and_then(|c| serde_json::from_str::<Value>(c).ok()) {
                entry.insert("resource".into(), resource);
            }
        }
        Outcome::Failed(error) => {
            let status = error.status;
            response.insert(
                "status".into(),
                json!(format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or_default())),
            );
            response.insert("outcome".into(), error.outcome());
        }
    }
    entry.insert("response".into(), Value::Object(response));
    Value::Object(entry)
}

/// Replaces every `reference` that names a `fullUrl` of this Bundle with the resource's `Type/id`.
fn rewrite_references(value: &mut Value, map: &HashMap<String, String>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object.iter_mut() {
                if key == "reference"
                    && let Value::String(target) = child
                    && let Some(resolved) = map.get(target.as_str())
                {
                    *target = resolved.clone();
                    continue;
                }
                rewrite_references(child, map);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| rewrite_references(item, map)),
        _ => {}
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for byte in text.bytes().filter(|b| !b.is_ascii_whitespace() && *b != b'=') {
        let value = ALPHABET.iter().position(|&c| c == byte)? as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_to_full_urls_are_rewritten_everywhere() {
        let map = HashMap::from([("urn:uuid:1".to_owned(), "Patient/abc".to_owned())]);
        let mut resource = json!({
            "resourceType": "Observation",
            "subject": {"reference": "urn:uuid:1"},
            "hasMember": [{"reference": "urn:uuid:1"}, {"reference": "Observation/keep"}],
            "note": [{"text": "urn:uuid:1"}]
        });
        rewrite_references(&mut resource, &map);
        assert_eq!(resource["subject"]["reference"], "Patient/abc");
        assert_eq!(resource["hasMember"][0]["reference"], "Patient/abc");
        assert_eq!(resource["hasMember"][1]["reference"], "Observation/keep");
        assert_eq!(resource["note"][0]["text"], "urn:uuid:1", "only references are rewritten");
    }

    #[test]
    fn methods_sort_in_transaction_order() {
        let mut methods = vec![Method::Get, Method::Put, Method::Post, Method::Delete, Method::Patch];
        methods.sort();
        assert_eq!(methods, vec![Method::Delete, Method::Post, Method::Put, Method::Patch, Method::Get]);
    }

    #[test]
    fn base64_decodes_and_rejects_garbage() {
        assert_eq!(base64_decode("W3sib3AiOiJ0ZXN0In1d").as_deref(), Some(&b"[{\"op\":\"test\"}]"[..]));
        assert_eq!(base64_decode("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(base64_decode("a$b"), None);
    }
}
