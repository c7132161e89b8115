//! `POST /fhir` with a `batch` or `transaction` Bundle (FHIR R4 http.html#transaction).
//!
//! A transaction is one store transaction: every entry commits or none does. Entries run in the order the
//! specification prescribes (DELETE, POST, PUT/PATCH, then GET), `urn:uuid:` and other `fullUrl` references to
//! created resources are rewritten to their new `Type/id` before anything is written, and two entries may not touch
//! the same resource. A batch runs each entry on its own and reports each outcome in its response entry.
//!
//! Conditional entries (R4 http.html#trules): `request.ifNoneExist` on POST, `Type?criteria` URLs on PUT and DELETE,
//! and conditional references (`"reference": "Patient?identifier=…"`) are searched before anything is written and
//! resolved to the `Type/id` they match; a conditional create that finds its resource writes nothing, and its
//! `fullUrl` then stands for the resource found. The searches read committed data only: they do not see what earlier
//! entries of the same transaction write, which is why two conditional creates with the same criteria are refused and
//! a conditional reference spelling a conditional create's criteria points at that entry directly.

use std::collections::{HashMap, HashSet};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};
use store::{Precondition, StoreTx, StoredResource};

use super::error::{FhirError, IssueType};
use super::handlers::{check_id, check_type, json_response, new_id};
use super::validate::validate_resource;
use super::{Acting, FhirState, media, patch, search, write};

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
    /// Search criteria: `ifNoneExist` of a POST, or the query of a conditional PUT/DELETE URL.
    condition: Option<String>,
    /// What the criteria resolved to, once [`resolve_condition`] ran.
    resolved: Resolved,
}

impl Planned {
    /// Whether resolving this entry searches: conditional criteria, or conditional references in its resource.
    fn is_conditional(&self) -> bool {
        self.condition.is_some() || self.resource.as_ref().is_some_and(|r| !conditional_references(r).is_empty())
    }
}

/// The effect of an entry's conditional criteria on what it does.
#[derive(Debug, Clone, Default)]
enum Resolved {
    /// Not conditional, or a conditional create that found nothing: the entry runs as written.
    #[default]
    Plain,
    /// A conditional create that found this resource: nothing is written, the entry answers with it.
    Existing(StoredResource),
    /// A conditional update or delete that found one resource at this version: written only if still there.
    Matched(i64),
    /// A conditional update that found nothing and creates under a server-assigned id.
    CreateNew,
    /// A conditional update that found nothing and creates under the resource's own id (update-as-create).
    CreateWithId,
    /// A conditional delete that found nothing: succeeds without writing.
    Nothing,
}

impl Planned {
    /// Whether executing the entry writes anything.
    fn writes(&self) -> bool {
        self.method != Method::Get && !matches!(self.resolved, Resolved::Existing(_) | Resolved::Nothing)
    }
}

/// What happened to one entry, for its `response`.
#[derive(Debug)]
enum Outcome {
    Written {
        stored: StoredResource,
        created: bool,
    },
    /// A conditional create matched this resource; nothing was written.
    Existing(StoredResource),
    Deleted(Option<StoredResource>),
    Read(StoredResource),
    Failed(FhirError),
}

pub async fn process(Acting(state): Acting, headers: HeaderMap, body: Body) -> Result<Response, FhirError> {
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
    for (index, entry) in entries.iter().enumerate() {
        let plan = plan_entry(index, entry).map_err(|e| e.at(format!("Bundle.entry[{index}]")))?;
        planned.push(plan);
    }
    // With conditional content, the transaction begins (serialized with every conditional write) before the
    // searches, so nothing can commit between a search and the writes that depend on it.
    let mut early_tx = if planned.iter().any(Planned::is_conditional) {
        Some(search::begin_conditional_tx(state).await?)
    } else {
        None
    };
    let mut conditional_creates: HashMap<String, String> = HashMap::new();
    for plan in &mut planned {
        let index = plan.index;
        resolve_condition(state, early_tx.as_mut(), plan).await.map_err(|e| e.at(format!("Bundle.entry[{index}]")))?;
        if plan.method == Method::Post
            && let Some(query) = &plan.condition
        {
            // The searches read committed data only, so two creates with the same criteria would both find
            // nothing and both create: the very duplicate the client meant to avoid.
            let key = criteria_key(&plan.resource_type, query);
            let target = format!("{}/{}", plan.resource_type, plan.id);
            if conditional_creates.insert(key, target).is_some() && matches!(plan.resolved, Resolved::Plain) {
                return Err(FhirError::bad_request(
                    IssueType::Invalid,
                    "two entries conditionally create with the same criteria",
                )
                .at(format!("Bundle.entry[{index}]")));
            }
        }
    }
    let mut references: HashMap<String, String> = HashMap::new();
    for (plan, entry) in planned.iter().zip(entries) {
        if let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str)
            && matches!(plan.method, Method::Post | Method::Put)
        {
            references.insert(full_url.to_owned(), format!("{}/{}", plan.resource_type, plan.id));
        }
    }
    for plan in &planned {
        let Some(resource) = plan.resource.as_ref() else { continue };
        for reference in conditional_references(resource) {
            if references.contains_key(&reference) {
                continue;
            }
            // A conditional reference naming exactly the criteria of a conditional create in this Bundle points at
            // that entry's resource, which the committed-data search cannot see yet.
            let target = match conditional_creates.get(&reference) {
                Some(target) => target.clone(),
                None => resolve_reference(state, conditional_tx(early_tx.as_mut())?, &reference)
                    .await
                    .map_err(|e| e.at(format!("Bundle.entry[{}]", plan.index)))?,
            };
            references.insert(reference, target);
        }
    }
    let mut touched = HashSet::new();
    for plan in planned.iter().filter(|p| p.writes()) {
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

    let mut tx = match early_tx.take() {
        Some(tx) => tx,
        None => state.store.begin().await?,
    };
    let mut outcomes: Vec<Option<Outcome>> = (0..planned.len()).map(|_| None).collect();
    let mut creates_done = false;
    for i in order {
        let plan = &planned[i];
        if plan.method == Method::Post && !creates_done {
            creates_done = true;
            create_together(state, &mut tx, &planned, &mut outcomes).await?;
        }
        if outcomes[i].is_some() {
            continue;
        }
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

/// Writes every create of a transaction (the POST entries that did not match an existing resource) in one
/// multi-row insert: their ids are fresh, so nothing needs reading first. The spec's order is kept: all POSTs run
/// after the DELETEs and before the PUTs, and nothing in between can observe their relative order.
async fn create_together(
    state: &FhirState,
    tx: &mut StoreTx,
    planned: &[Planned],
    outcomes: &mut [Option<Outcome>],
) -> Result<(), FhirError> {
    let creates: Vec<&Planned> =
        planned.iter().filter(|p| p.method == Method::Post && !matches!(p.resolved, Resolved::Existing(_))).collect();
    if creates.is_empty() {
        return Ok(());
    }
    let resources: Vec<Value> = creates.iter().map(|p| p.resource.clone().unwrap_or_default()).collect();
    let written = write::create_all_as(tx, &state.caller, resources)
        .await
        .map_err(|e| FhirError::from(e).at(format!("Bundle.entry[{}]", creates.first().map_or(0, |p| p.index))))?;
    for (plan, written) in creates.iter().zip(written) {
        outcomes[plan.index] = Some(Outcome::Written { stored: written.resource, created: true });
    }
    Ok(())
}

async fn batch(state: &FhirState, entries: &[Value]) -> Response {
    let mut responses = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let outcome = match batch_entry(state, index, entry).await {
            Ok(done) => done,
            Err(e) => Outcome::Failed(e),
        };
        responses.push(response_entry(state, outcome));
    }
    tracing::info!(entries = entries.len(), "batch processed");
    json_response(StatusCode::OK, &json!({"resourceType": "Bundle", "type": "batch-response", "entry": responses}))
}

/// One batch entry in its own transaction: conditional criteria and conditional references resolved, then run.
async fn batch_entry(state: &FhirState, index: usize, entry: &Value) -> Result<Outcome, FhirError> {
    let mut plan = plan_entry(index, entry)?;
    let mut early_tx = if plan.is_conditional() { Some(search::begin_conditional_tx(state).await?) } else { None };
    resolve_condition(state, early_tx.as_mut(), &mut plan).await?;
    if let Some(resource) = plan.resource.as_mut() {
        let mut references = HashMap::new();
        for reference in conditional_references(resource) {
            let target = resolve_reference(state, conditional_tx(early_tx.as_mut())?, &reference).await?;
            references.insert(reference, target);
        }
        rewrite_references(resource, &references);
    }
    let mut tx = match early_tx {
        Some(tx) => tx,
        None => state.store.begin().await?,
    };
    match execute(state, &mut tx, &plan).await {
        Outcome::Failed(e) => Err(e),
        done => {
            tx.commit().await?;
            Ok(done)
        }
    }
}

/// The transaction a conditional search runs in; entries with conditional content always begin one first.
fn conditional_tx(tx: Option<&mut StoreTx>) -> Result<&mut StoreTx, FhirError> {
    tx.ok_or_else(|| {
        FhirError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            IssueType::Exception,
            "a conditional entry was resolved outside its transaction",
        )
    })
}

/// Runs an entry's conditional search and fixes its target id and what executing it will do (R4 http.html#trules).
async fn resolve_condition(state: &FhirState, tx: Option<&mut StoreTx>, plan: &mut Planned) -> Result<(), FhirError> {
    let Some(query) = plan.condition.clone() else { return Ok(()) };
    let matches = search::conditional_matches(state, conditional_tx(tx)?, &plan.resource_type, &query).await?;
    let body_id = plan.resource.as_ref().and_then(|r| r.get("id")).and_then(Value::as_str).map(str::to_owned);
    plan.resolved = match (plan.method, matches) {
        (_, search::Matches::Several) => return Err(search::several_matches(&plan.resource_type)),
        (Method::Post, search::Matches::One(existing)) => {
            plan.id = existing.id.clone();
            Resolved::Existing(existing)
        }
        (Method::Put, search::Matches::One(existing)) => {
            if body_id.as_ref().is_some_and(|b| *b != existing.id) {
                return Err(FhirError::bad_request(
                    IssueType::Invalid,
                    "resource.id differs from the id of the resource the criteria match",
                )
                .at("resource.id"));
            }
            plan.id = existing.id;
            Resolved::Matched(existing.version_id)
        }
        (Method::Put, search::Matches::None) => match body_id {
            Some(id) => {
                check_id(&id).map_err(|e| e.at("resource.id"))?;
                plan.id = id;
                Resolved::CreateWithId
            }
            None => {
                plan.id = new_id();
                Resolved::CreateNew
            }
        },
        (Method::Delete, search::Matches::One(existing)) => {
            plan.id = existing.id;
            Resolved::Matched(existing.version_id)
        }
        (Method::Delete, search::Matches::None) => Resolved::Nothing,
        _ => Resolved::Plain,
    };
    if plan.method == Method::Put
        && let Some(object) = plan.resource.as_mut().and_then(Value::as_object_mut)
    {
        object.insert("id".into(), Value::String(plan.id.clone()));
    }
    Ok(())
}

/// `Type?criteria` as a conditional reference to the same criteria would spell it.
fn criteria_key(resource_type: &str, query: &str) -> String {
    let criteria = query
        .strip_prefix(resource_type)
        .and_then(|rest| rest.strip_prefix('?'))
        .or_else(|| query.strip_prefix('?'))
        .unwrap_or(query);
    format!("{resource_type}?{criteria}")
}

/// Whether a reference is a conditional reference (`Type?criteria`) rather than a literal or absolute one.
fn is_conditional_reference(reference: &str) -> bool {
    reference.split_once('?').is_some_and(|(ty, _)| !ty.is_empty() && ty.bytes().all(|b| b.is_ascii_alphabetic()))
}

/// Every distinct conditional reference in a resource, in document order.
fn conditional_references(resource: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(object) => {
                for (key, child) in object {
                    if key == "reference"
                        && let Value::String(target) = child
                    {
                        if is_conditional_reference(target) && !out.contains(target) {
                            out.push(target.clone());
                        }
                    } else {
                        walk(child, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(resource, &mut out);
    out
}

/// Resolves a conditional reference to `Type/id`; it must match exactly one resource. Diagnostics name the type
/// only: the criteria often carry identifiers.
async fn resolve_reference(state: &FhirState, tx: &mut StoreTx, reference: &str) -> Result<String, FhirError> {
    let (resource_type, query) = reference.split_once('?').unwrap_or((reference, ""));
    check_type(resource_type)?;
    match search::conditional_matches(state, tx, resource_type, query).await? {
        search::Matches::One(found) => Ok(format!("{}/{}", found.resource_type, found.id)),
        search::Matches::None => Err(FhirError::precondition_failed(format!(
            "a conditional reference to {resource_type} matches no resource; it must match exactly one"
        ))),
        search::Matches::Several => Err(FhirError::precondition_failed(format!(
            "a conditional reference to {resource_type} matches more than one resource; it must match exactly one"
        ))),
    }
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
    let (url, url_query) = match url.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (url, None),
    };
    let condition = match (method, url_query, request.get("ifNoneExist")) {
        (_, Some(_), Some(_)) => {
            return Err(FhirError::bad_request(IssueType::Invalid, "ifNoneExist goes with a plain POST to a type")
                .at("request.ifNoneExist"));
        }
        (Method::Post, None, Some(Value::String(query))) if !query.trim().is_empty() => Some(query.trim().to_owned()),
        (Method::Post, None, Some(_)) => {
            return Err(FhirError::bad_request(IssueType::Value, "request.ifNoneExist must be search parameters")
                .at("request.ifNoneExist"));
        }
        (_, None, Some(_)) => {
            return Err(FhirError::bad_request(IssueType::Invalid, "request.ifNoneExist applies to POST only")
                .at("request.ifNoneExist"));
        }
        (Method::Put | Method::Delete, Some(query), None) if !query.is_empty() => Some(query.to_owned()),
        (_, Some(_), None) => {
            return Err(FhirError::bad_request(
                IssueType::NotSupported,
                "only PUT and DELETE entries may have search criteria in request.url (searches are not supported in Bundles)",
            )
            .at("request.url"));
        }
        (_, None, None) => None,
    };
    let if_match = match request.get("ifMatch").and_then(Value::as_str) {
        Some(tag) => Some(media::parse_etag(tag).ok_or_else(|| {
            FhirError::bad_request(IssueType::Value, "request.ifMatch must be an ETag such as W/\"3\"")
                .at("request.ifMatch")
        })?),
        None => None,
    };
    let segments: Vec<&str> = url.trim_start_matches('/').split('/').collect();
    if condition.is_some() && segments.len() != 1 {
        return Err(FhirError::bad_request(
            IssueType::Invalid,
            "conditional entries must have request.url Type?criteria",
        )
        .at("request.url"));
    }
    let resource_type = segments[0].to_owned();
    check_type(&resource_type)?;
    let (id, version) = match (method, segments.as_slice()) {
        (Method::Post, [_]) => (new_id(), None),
        // The target is known once the criteria have been searched.
        (Method::Put | Method::Delete, [_]) if condition.is_some() => (String::new(), None),
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
            crate::subscriptions::refuse_indirect_write(&resource_type)?;
            match (method, resource.get("id").and_then(Value::as_str)) {
                // A conditional PUT's id is checked against what the criteria match.
                (Method::Put, _) if condition.is_some() => {}
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
            // A conditional PUT gets its id once the criteria have been searched.
            if !(method == Method::Put && condition.is_some())
                && let Some(object) = resource.as_object_mut()
            {
                object.insert("id".into(), Value::String(id.clone()));
            }
            Some(resource)
        }
        // The patch document (a Binary or Parameters in FHIR; here the JSON Patch array itself, as in resource).
        Method::Patch => Some(patch_document(entry)?),
        Method::Delete | Method::Get => None,
    };
    Ok(Planned { index, method, resource_type, id, version, resource, if_match, condition, resolved: Resolved::Plain })
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
    let matched = match &plan.resolved {
        Resolved::Existing(existing) => return Outcome::Existing(existing.clone()),
        Resolved::Nothing => return Outcome::Deleted(None),
        Resolved::Matched(version) => Some(*version),
        _ => None,
    };
    // A conditional match is written only if it is still the version the search saw.
    let precondition = plan.if_match.or(matched).map_or(Precondition::None, Precondition::Version);
    let result: Result<Outcome, FhirError> = async {
        match plan.method {
            Method::Post => {
                let resource = plan.resource.clone().unwrap_or_default();
                let written = write::create_as(tx, &state.caller, resource).await?;
                Ok(Outcome::Written { stored: written.resource, created: true })
            }
            Method::Put => {
                let current = state.read_in(tx, &plan.resource_type, &plan.id).await?;
                let precondition = match (&plan.resolved, &current) {
                    (Resolved::CreateNew, _) => Precondition::MustNotExist,
                    (Resolved::CreateWithId, Some(c)) if !c.deleted => {
                        return Err(FhirError::new(
                            StatusCode::CONFLICT,
                            IssueType::Conflict,
                            format!(
                                "{}/{} exists but does not match the criteria; leave out the id or correct the criteria",
                                plan.resource_type, plan.id
                            ),
                        ));
                    }
                    (Resolved::CreateWithId, Some(c)) => Precondition::Version(c.version_id),
                    _ => precondition,
                };
                if current.is_none() && !state.allow_update_create && !matches!(plan.resolved, Resolved::CreateNew) {
                    return Err(FhirError::method_not_allowed(
                        "this server does not create resources with client-assigned ids (update as create)",
                    ));
                }
                let resource = plan.resource.clone().unwrap_or_default();
                let written = write::put_as(tx, &state.caller, resource, precondition).await.map_err(|e| version_error(e, plan.if_match))?;
                Ok(Outcome::Written { stored: written.resource, created: written.created })
            }
            Method::Patch => {
                let current = live(state.read_in(tx, &plan.resource_type, &plan.id).await?, plan)?;
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
                crate::subscriptions::refuse_indirect_write(&plan.resource_type)?;
                if patched.get("id").and_then(Value::as_str) != Some(plan.id.as_str()) {
                    return Err(FhirError::unprocessable(IssueType::Invalid, "a patch may not change the resource id"));
                }
                let expected = plan.if_match.unwrap_or(current.version_id);
                let written = write::put_as(tx, &state.caller, patched, Precondition::Version(expected))
                    .await
                    .map_err(|e| version_error(e, plan.if_match))?;
                Ok(Outcome::Written { stored: written.resource, created: false })
            }
            Method::Delete => {
                let deleted = write::delete_as(tx, &state.caller, &plan.resource_type, &plan.id, precondition)
                    .await
                    .map_err(|e| version_error(e, plan.if_match))?;
                Ok(Outcome::Deleted(deleted))
            }
            Method::Get => {
                let found = match plan.version {
                    Some(v) => tx.store().vread_as(&state.scope(), &plan.resource_type, &plan.id, v).await?,
                    None => state.read_in(tx, &plan.resource_type, &plan.id).await?,
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
        Outcome::Existing(stored) => {
            let location = format!("{}/{}/_history/{}", stored.resource_type, stored.id, stored.version_id);
            response.insert("status".into(), json!("200 OK"));
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
    fn conditional_references_are_told_from_literal_ones() {
        assert!(is_conditional_reference("Patient?identifier=http://x|1"));
        assert!(!is_conditional_reference("Patient/1"));
        assert!(!is_conditional_reference("urn:uuid:1"));
        assert!(!is_conditional_reference("http://other/fhir/Patient?x=1"));
        assert!(!is_conditional_reference("?x=1"));
        let resource = json!({
            "subject": {"reference": "Patient?identifier=a|1"},
            "performer": [{"reference": "Patient?identifier=a|1"}, {"reference": "Practitioner?name=x"}],
            "note": [{"text": "Patient?identifier=a|2"}]
        });
        assert_eq!(conditional_references(&resource), vec!["Patient?identifier=a|1", "Practitioner?name=x"]);
    }

    #[test]
    fn criteria_keys_ignore_the_optional_type_prefix() {
        assert_eq!(criteria_key("Patient", "identifier=a|1"), "Patient?identifier=a|1");
        assert_eq!(criteria_key("Patient", "Patient?identifier=a|1"), "Patient?identifier=a|1");
        assert_eq!(criteria_key("Patient", "?identifier=a|1"), "Patient?identifier=a|1");
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
