//! The instance and type interactions: read, vread, create, update, patch, delete, and the conditional create
//! (`If-None-Exist`), update (`PUT /{type}?…`) and delete (`DELETE /{type}?…`) of R4 http.html.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use store::{Precondition, StoreError, StoreTx, StoredResource, Written, format_instant, is_valid_id};

use super::error::{FhirError, IssueType, information_outcome};
use super::media::{self, ReturnPreference};
use super::validate::validate_resource;
use super::{Acting, FHIR_JSON, FhirState, SUPPORTED_TYPES, patch, search, write};

/// A response with a FHIR JSON body.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    body_response(status, body.to_string())
}

fn body_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// 404 for types this server does not store (including ones FHIR does not define).
pub fn check_type(resource_type: &str) -> Result<(), FhirError> {
    if SUPPORTED_TYPES.contains(&resource_type) {
        Ok(())
    } else {
        Err(FhirError::not_found(format!("resource type '{}' is not supported", printable(resource_type))))
    }
}

pub fn check_id(id: &str) -> Result<(), FhirError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(FhirError::bad_request(
            IssueType::Invalid,
            "the id in the URL is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)",
        ))
    }
}

/// Type names come from the URL; only plain names are echoed, so the diagnostics cannot carry arbitrary text.
fn printable(text: &str) -> &str {
    if text.len() <= 64 && text.bytes().all(|b| b.is_ascii_alphanumeric()) { text } else { "(invalid)" }
}

pub fn path_error(rejection: PathRejection) -> FhirError {
    tracing::debug!(error = %rejection, "unusable path");
    FhirError::bad_request(IssueType::Invalid, "the request path could not be decoded")
}

/// Adds `ETag` and `Last-Modified` for a stored version.
fn version_headers(response: &mut Response, stored: &StoredResource) {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&media::etag(stored.version_id)) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&media::http_date(stored.last_updated)) {
        headers.insert(header::LAST_MODIFIED, v);
    }
}

fn resource_response(status: StatusCode, stored: &StoredResource) -> Response {
    let mut response = body_response(status, stored.content.clone().unwrap_or_default());
    version_headers(&mut response, stored);
    response
}

fn gone(stored: &StoredResource) -> Response {
    let mut response =
        FhirError::gone(format!("{}/{} has been deleted", stored.resource_type, stored.id)).into_response();
    version_headers(&mut response, stored);
    response
}

fn not_found(resource_type: &str, id: &str) -> FhirError {
    FhirError::not_found(format!("{resource_type}/{id} is not known"))
}

/// `GET /{type}/{id}`: the current version; 410 once deleted; 304 when the client's copy is current.
pub async fn read(
    Acting(state): Acting,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let Path((resource_type, id)) = path.map_err(path_error)?;
    check_type(&resource_type)?;
    check_id(&id)?;
    let stored = state
        .store
        .read_as(&state.scope(), &resource_type, &id)
        .await?
        .ok_or_else(|| not_found(&resource_type, &id))?;
    if stored.deleted {
        return Ok(gone(&stored));
    }
    if not_modified(&headers, &stored) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        version_headers(&mut response, &stored);
        return Ok(response);
    }
    tracing::debug!(resource_type = %resource_type, id = %id, version = stored.version_id, "read");
    Ok(resource_response(StatusCode::OK, &stored))
}

/// If-None-Match wins over If-Modified-Since when both are present (RFC 9110 13.2.2).
fn not_modified(headers: &HeaderMap, stored: &StoredResource) -> bool {
    if let Some(value) = headers.get(header::IF_NONE_MATCH) {
        let text = value.to_str().unwrap_or("");
        return text.split(',').any(|tag| tag.trim() == "*" || media::parse_etag(tag) == Some(stored.version_id));
    }
    if let Some(since) = headers.get(header::IF_MODIFIED_SINCE).and_then(|v| v.to_str().ok())
        && let Some(since) = media::parse_http_date(since)
    {
        // HTTP dates have whole seconds; the stored time has microseconds.
        return stored.last_updated.to_datetime().timestamp() <= since.timestamp();
    }
    false
}

/// `GET /{type}/{id}/_history/{vid}`.
pub async fn vread(
    Acting(state): Acting,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, FhirError> {
    let Path((resource_type, id, vid)) = path.map_err(path_error)?;
    check_type(&resource_type)?;
    check_id(&id)?;
    let version = vid.parse::<i64>().ok().filter(|v| *v > 0);
    let Some(version) = version else {
        return Err(FhirError::not_found(format!("{resource_type}/{id} has no version with that id")));
    };
    let stored = state
        .store
        .vread_as(&state.scope(), &resource_type, &id, version)
        .await?
        .ok_or_else(|| FhirError::not_found(format!("{resource_type}/{id} has no version {version}")))?;
    if stored.deleted {
        return Ok(gone(&stored));
    }
    Ok(resource_response(StatusCode::OK, &stored))
}

/// Parses and validates a submitted resource body against the URL's type.
async fn resource_body(state: &FhirState, resource_type: &str, body: Body) -> Result<Value, FhirError> {
    let bytes = media::read_body(body, state.max_body_bytes).await?;
    let resource = media::parse_json(&bytes)?;
    validate_resource(&resource, resource_type)?;
    Ok(resource)
}

/// A lowercase UUID, as the server-assigned id of a created resource.
pub(crate) fn new_id() -> String {
    // UUID version 7 (RFC 9562): a millisecond timestamp first, then randomness. Ids created together sort
    // together, so the database appends to the ends of its id indexes instead of dirtying a random page per create.
    let mut b: [u8; 16] = rand::random();
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    b[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// The answer to a successful write, shaped by `Prefer: return=…`.
fn write_response(state: &FhirState, headers: &HeaderMap, written: &Written, status: StatusCode) -> Response {
    let stored = &written.resource;
    let mut response = match media::return_preference(headers) {
        ReturnPreference::Representation => resource_response(status, stored),
        ReturnPreference::Minimal => {
            let mut r = status.into_response();
            version_headers(&mut r, stored);
            r
        }
        ReturnPreference::OperationOutcome => {
            let what = if written.created { "created" } else { "updated" };
            let mut r = json_response(
                status,
                &information_outcome(&format!(
                    "{}/{} {what} as version {}",
                    stored.resource_type, stored.id, stored.version_id
                )),
            );
            version_headers(&mut r, stored);
            r
        }
    };
    let location = format!("{}/{}/{}/_history/{}", state.base(), stored.resource_type, stored.id, stored.version_id);
    if let Ok(v) = HeaderValue::from_str(&location) {
        let name = if status == StatusCode::CREATED { header::LOCATION } else { header::CONTENT_LOCATION };
        response.headers_mut().insert(name, v);
    }
    response
}

/// `POST /{type}`: stores a new resource under a server-assigned id (a submitted id is ignored, as R4 requires).
pub async fn create(
    Acting(state): Acting,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, FhirError> {
    let Path(resource_type) = path.map_err(path_error)?;
    check_type(&resource_type)?;
    let condition = match headers.get("if-none-exist") {
        None => None,
        Some(value) => Some(value.to_str().ok().map(str::trim).filter(|v| !v.is_empty()).ok_or_else(|| {
            FhirError::bad_request(IssueType::Invalid, "If-None-Exist must carry search parameters").at("If-None-Exist")
        })?),
    };
    let mut resource = resource_body(&state, &resource_type, body).await?;
    if resource_type == "Subscription" {
        resource = crate::subscriptions::prepare(&state.caller, resource, None)?;
    }
    let mut tx = None;
    if let Some(query) = condition {
        let (begun, matches) =
            begin_conditional(&state, &resource_type, query).await.map_err(|e| e.at("If-None-Exist"))?;
        tx = begun;
        match matches {
            search::Matches::None => {}
            search::Matches::One(existing) => {
                tracing::info!(resource_type = %resource_type, id = %existing.id, "conditional create matched");
                return Ok(existing_response(&state, &headers, &existing));
            }
            search::Matches::Several => return Err(search::several_matches(&resource_type).at("If-None-Exist")),
        }
    }
    let id = new_id();
    if let Some(object) = resource.as_object_mut() {
        object.insert("id".into(), Value::String(id.clone()));
    }
    let written = match tx {
        Some(mut tx) => {
            let written = write::create_as(&mut tx, &state.caller, resource).await?;
            tx.commit().await?;
            written
        }
        None => state.creates.create(&state.caller, resource).await?,
    };
    tracing::info!(resource_type = %resource_type, id = %id, version = written.resource.version_id, "created");
    Ok(write_response(&state, &headers, &written, StatusCode::CREATED))
}

/// Begins the write transaction of a conditional interaction, serialized with every other conditional write
/// ([`search::begin_conditional_tx`]), then runs its search, so the check and the write are atomic.
async fn begin_conditional(
    state: &FhirState,
    resource_type: &str,
    query: &str,
) -> Result<(Option<StoreTx>, search::Matches), FhirError> {
    let mut tx = search::begin_conditional_tx(state).await?;
    let matches = search::conditional_matches(state, &mut tx, resource_type, query).await?;
    Ok((Some(tx), matches))
}

/// 200 with the resource a conditional create found: nothing was written (R4 http.html#ccreate).
fn existing_response(state: &FhirState, headers: &HeaderMap, existing: &StoredResource) -> Response {
    let mut response = match media::return_preference(headers) {
        ReturnPreference::Representation => resource_response(StatusCode::OK, existing),
        ReturnPreference::Minimal => {
            let mut r = StatusCode::OK.into_response();
            version_headers(&mut r, existing);
            r
        }
        ReturnPreference::OperationOutcome => {
            let mut r = json_response(
                StatusCode::OK,
                &information_outcome(&format!(
                    "{}/{} already matches the If-None-Exist criteria; nothing was created",
                    existing.resource_type, existing.id
                )),
            );
            version_headers(&mut r, existing);
            r
        }
    };
    let location =
        format!("{}/{}/{}/_history/{}", state.base(), existing.resource_type, existing.id, existing.version_id);
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// A version conflict is 412 when the client named the version (If-Match) and 409 when another writer won a race.
fn conflict_status(err: StoreError, expected: Option<i64>) -> FhirError {
    match (err, expected) {
        (StoreError::VersionConflict { resource_type, id, .. }, Some(v)) => {
            FhirError::precondition_failed(format!("{resource_type}/{id} is not at version {v} (If-Match)"))
        }
        (err, _) => err.into(),
    }
}

/// `PUT /{type}/{id}`: a new version; creates the resource when it never existed and update-as-create is allowed.
pub async fn update(
    Acting(state): Acting,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, FhirError> {
    let Path((resource_type, id)) = path.map_err(path_error)?;
    check_type(&resource_type)?;
    check_id(&id)?;
    let expected = media::if_match(&headers)?;
    let mut resource = resource_body(&state, &resource_type, body).await?;
    match resource.get("id") {
        None => {
            return Err(FhirError::bad_request(IssueType::Required, "the resource must carry the id of the URL")
                .at(format!("{resource_type}.id")));
        }
        Some(Value::String(body_id)) if *body_id == id => {}
        Some(_) => {
            return Err(FhirError::bad_request(IssueType::Invalid, "the resource id does not match the id in the URL")
                .at(format!("{resource_type}.id")));
        }
    }
    let mut tx = state.store.begin().await?;
    let current = state.read_in(&mut tx, &resource_type, &id).await?;
    if current.is_none() && !state.allow_update_create {
        return Err(FhirError::method_not_allowed(format!(
            "{resource_type}/{id} does not exist and this server does not allow update-as-create (use POST)"
        )));
    }
    let precondition = match (expected, &current) {
        (Some(v), _) => Precondition::Version(v),
        (None, Some(c)) => Precondition::Version(c.version_id),
        (None, None) => Precondition::MustNotExist,
    };
    if resource_type == "Subscription" {
        resource = crate::subscriptions::prepare(&state.caller, resource, current.as_ref())?;
    }
    let written = write::put_as(&mut tx, &state.caller, resource, precondition)
        .await
        .map_err(|e| conflict_status(e, expected))?;
    tx.commit().await?;
    tracing::info!(resource_type = %resource_type, id = %id, version = written.resource.version_id, "updated");
    let status = if written.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(write_response(&state, &headers, &written, status))
}

/// `PATCH /{type}/{id}` with a JSON Patch document.
pub async fn patch(
    Acting(state): Acting,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, FhirError> {
    let Path((resource_type, id)) = path.map_err(path_error)?;
    check_type(&resource_type)?;
    check_id(&id)?;
    let expected = media::if_match(&headers)?;
    let bytes = media::read_body(body, state.max_body_bytes).await?;
    let operations = media::parse_json(&bytes)?;
    let mut tx = state.store.begin().await?;
    let current = state.read_in(&mut tx, &resource_type, &id).await?.ok_or_else(|| not_found(&resource_type, &id))?;
    if current.deleted {
        return Err(FhirError::gone(format!("{resource_type}/{id} has been deleted")));
    }
    if let Some(v) = expected.filter(|v| *v != current.version_id) {
        return Err(FhirError::precondition_failed(format!("{resource_type}/{id} is not at version {v} (If-Match)")));
    }
    let document: Value = current.content.as_deref().and_then(|c| serde_json::from_str(c).ok()).ok_or_else(|| {
        FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueType::Exception, "stored resource is unreadable")
    })?;
    let patched = patch::apply(&document, &operations).map_err(|e| match e {
        patch::PatchError::Malformed(_) => FhirError::bad_request(IssueType::Invalid, e.to_string()),
        patch::PatchError::Failed(_) => FhirError::unprocessable(IssueType::Processing, e.to_string()),
    })?;
    if patched.get("id").and_then(Value::as_str) != Some(id.as_str()) {
        return Err(FhirError::unprocessable(IssueType::Processing, "a patch must not change or remove the id")
            .at(format!("{resource_type}.id")));
    }
    validate_resource(&patched, &resource_type).map_err(|mut e| {
        e.status = StatusCode::UNPROCESSABLE_ENTITY;
        e.diagnostics = format!("the patched resource is not valid: {}", e.diagnostics);
        e
    })?;
    let patched = match resource_type.as_str() {
        "Subscription" => crate::subscriptions::prepare(&state.caller, patched, Some(&current))?,
        _ => patched,
    };
    let written = write::put_as(&mut tx, &state.caller, patched, Precondition::Version(current.version_id))
        .await
        .map_err(|e| conflict_status(e, expected))?;
    tx.commit().await?;
    tracing::info!(resource_type = %resource_type, id = %id, version = written.resource.version_id, "patched");
    Ok(write_response(&state, &headers, &written, StatusCode::OK))
}

/// `DELETE /{type}/{id}`: logical delete. Deleting what is absent or already deleted succeeds too (R4).
pub async fn delete(
    Acting(state): Acting,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let Path((resource_type, id)) = path.map_err(path_error)?;
    check_type(&resource_type)?;
    check_id(&id)?;
    let expected = media::if_match(&headers)?;
    let precondition = expected.map_or(Precondition::None, Precondition::Version);
    let mut tx = state.store.begin().await?;
    let deleted = write::delete_as(&mut tx, &state.caller, &resource_type, &id, precondition)
        .await
        .map_err(|e| conflict_status(e, expected))?;
    tx.commit().await?;
    tracing::info!(resource_type = %resource_type, id = %id, deleted = deleted.is_some(), "delete");
    let text = match &deleted {
        Some(d) => format!("{resource_type}/{id} deleted as version {}", d.version_id),
        None => format!("{resource_type}/{id} was not present; nothing to delete"),
    };
    Ok(delete_response(&headers, deleted.as_ref(), &text))
}

fn delete_response(headers: &HeaderMap, deleted: Option<&StoredResource>, text: &str) -> Response {
    let mut response = match media::return_preference(headers) {
        ReturnPreference::OperationOutcome => json_response(StatusCode::OK, &information_outcome(text)),
        _ => StatusCode::NO_CONTENT.into_response(),
    };
    if let Some(d) = deleted
        && let Ok(v) = HeaderValue::from_str(&media::etag(d.version_id))
    {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// `PUT /{type}?criteria` (R4 http.html#cond-update): no match creates (under the body's id, as update-as-create,
/// or a server id), one match is updated, several are 412.
async fn conditional_update(
    state: &FhirState,
    resource_type: &str,
    query: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, FhirError> {
    check_type(resource_type)?;
    crate::subscriptions::refuse_indirect_write(resource_type)?;
    let expected = media::if_match(headers)?;
    let mut resource = resource_body(state, resource_type, body).await?;
    let body_id = match resource.get("id") {
        None => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => {
            return Err(FhirError::bad_request(IssueType::Invalid, "the resource id must be a string")
                .at(format!("{resource_type}.id")));
        }
    };
    let (tx, matches) = begin_conditional(state, resource_type, query).await?;
    let mut tx = match tx {
        Some(tx) => tx,
        None => state.store.begin().await?,
    };
    let body_had_id = body_id.is_some();
    let (id, precondition) = match matches {
        search::Matches::Several => return Err(search::several_matches(resource_type)),
        search::Matches::One(existing) => {
            if body_id.as_ref().is_some_and(|b| *b != existing.id) {
                return Err(FhirError::bad_request(
                    IssueType::Invalid,
                    "the resource id differs from the id of the resource the criteria match",
                )
                .at(format!("{resource_type}.id")));
            }
            // Naming the matched version makes a write that raced this one fail instead of being overwritten.
            (existing.id, Precondition::Version(expected.unwrap_or(existing.version_id)))
        }
        search::Matches::None if expected.is_some() => {
            return Err(FhirError::precondition_failed("If-Match names a version but the criteria match no resource"));
        }
        search::Matches::None => match body_id {
            None => (new_id(), Precondition::MustNotExist),
            Some(id) => match state.read_in(&mut tx, resource_type, &id).await? {
                // Updating it would change a resource the client's criteria say is not the one meant.
                Some(current) if !current.deleted => {
                    return Err(FhirError::new(
                        StatusCode::CONFLICT,
                        IssueType::Conflict,
                        format!(
                            "{resource_type}/{id} exists but does not match the criteria; \
                             leave out the id or correct the criteria"
                        ),
                    ));
                }
                Some(current) => (id, Precondition::Version(current.version_id)),
                None if !state.allow_update_create => {
                    return Err(FhirError::method_not_allowed(format!(
                        "{resource_type}/{id} does not exist and this server does not allow update-as-create \
                         (leave out the id to have one assigned)"
                    )));
                }
                None => (id, Precondition::MustNotExist),
            },
        },
    };
    // No match and no id in the body: the server assigned the id, and any client may create.
    let server_assigned = !body_had_id && precondition == Precondition::MustNotExist;
    if let Some(object) = resource.as_object_mut() {
        object.insert("id".into(), Value::String(id.clone()));
    }
    let written = if server_assigned {
        write::create_as(&mut tx, &state.caller, resource).await
    } else {
        write::put_as(&mut tx, &state.caller, resource, precondition).await
    }
    .map_err(|e| conflict_status(e, expected))?;
    tx.commit().await?;
    tracing::info!(resource_type = %resource_type, id = %id, version = written.resource.version_id, "conditionally updated");
    let status = if written.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(write_response(state, headers, &written, status))
}

/// `DELETE /{type}?criteria` (R4 http.html#cdelete), single-delete semantics: no match succeeds like deleting an
/// absent resource, one match is deleted, several are 412 (the CapabilityStatement says `conditionalDelete: single`).
async fn conditional_delete(
    state: &FhirState,
    resource_type: &str,
    query: &str,
    headers: &HeaderMap,
) -> Result<Response, FhirError> {
    check_type(resource_type)?;
    let expected = media::if_match(headers)?;
    let (tx, matches) = begin_conditional(state, resource_type, query).await?;
    let existing = match matches {
        search::Matches::Several => return Err(search::several_matches(resource_type)),
        search::Matches::None => {
            tracing::info!(resource_type = %resource_type, "conditional delete matched nothing");
            return Ok(delete_response(headers, None, "the criteria match no resource; nothing to delete"));
        }
        search::Matches::One(existing) => existing,
    };
    let mut tx = match tx {
        Some(tx) => tx,
        None => state.store.begin().await?,
    };
    let precondition = Precondition::Version(expected.unwrap_or(existing.version_id));
    let id = existing.id;
    let deleted = write::delete_as(&mut tx, &state.caller, resource_type, &id, precondition)
        .await
        .map_err(|e| conflict_status(e, expected))?;
    tx.commit().await?;
    tracing::info!(resource_type = %resource_type, id = %id, deleted = deleted.is_some(), "conditional delete");
    let text = match &deleted {
        Some(d) => format!("{resource_type}/{id} deleted as version {}", d.version_id),
        None => format!("{resource_type}/{id} was not present; nothing to delete"),
    };
    Ok(delete_response(headers, deleted.as_ref(), &text))
}

pub async fn unknown_route() -> FhirError {
    FhirError::not_found("no FHIR interaction is defined at this path")
}

/// The method fallback of every route. `PUT` and `DELETE` on the type endpoint with a query are the conditional
/// update and delete; they arrive here because the router (`rest/mod.rs`) routes the type endpoint for GET and POST
/// only. Everything else is 405.
pub async fn method_not_allowed(
    Acting(state): Acting,
    method: Method,
    uri: Uri,
    path: Result<Path<HashMap<String, String>>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, FhirError> {
    let refused = || FhirError::method_not_allowed("this interaction is not supported at this path");
    let Ok(Path(params)) = path else { return Err(refused()) };
    let query = uri.query().filter(|q| !q.is_empty());
    let resource_type = params.get("type").filter(|t| params.len() == 1 && uri.path().trim_matches('/') == t.as_str());
    match (method, resource_type, query) {
        (Method::PUT, Some(t), Some(q)) => conditional_update(&state, t, q, &headers, body).await,
        (Method::DELETE, Some(t), Some(q)) => conditional_delete(&state, t, q, &headers).await,
        _ => Err(refused()),
    }
}

/// `meta.lastUpdated` text of a stored version (for history entries).
pub fn last_modified(stored: &StoredResource) -> String {
    format_instant(stored.last_updated)
}
