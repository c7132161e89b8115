//! The registry endpoints under the FHIR base: the records feed (`Group/{id}/$registry-records`) and Bulk Data
//! export (`Group/{id}/$export`, `$export`, `Patient/$export`, the status URL and the files).
//!
//! Registry loaders (role `registry`) and operators (`admin`) may pull any enabled registry; other roles get 403.
//! System and Patient exports carry stored resources as they are, so only `admin` may start them. An export's
//! status URL and files answer only the client that started it (404 for anyone else, as for an unknown id).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fhir_server::FhirError;
use fhir_server::auth::{Caller, Role};
use fhir_server::rest::{FHIR_JSON, IssueType};
use serde_json::{Value, json};
use store::{ExportStatus, MemberQuery, NewExport, NewJob, Store, Timestamp};

use super::RegistrySet;
use super::export::{EXPORT_QUEUE, ExportRequest, Level, OutputFile, export_dir};
use crate::config::ExportsConfig;

/// Records per feed page unless `_count` says otherwise, and the most it may say.
const DEFAULT_COUNT: u32 = 100;
const MAX_COUNT: u32 = 1000;
const NDJSON: &str = "application/fhir+ndjson";

/// What the registry endpoints need.
#[derive(Clone)]
pub struct RegistryApi {
    pub store: Store,
    pub registries: Arc<RegistrySet>,
    /// The FHIR base as clients reach it (status and file URLs).
    pub base_url: String,
    pub exports: ExportsConfig,
    /// Whether downloads need the bearer token (the manifest's `requiresAccessToken`).
    pub requires_access_token: bool,
    /// Wakes an export worker of this replica after a kick-off commits.
    pub export_wake: Arc<tokio::sync::Notify>,
}

/// The routes, relative to the FHIR base (merge them into the FHIR router).
pub fn routes(api: RegistryApi) -> Router {
    Router::new()
        .route("/Group/{id}/$registry-records", get(records_feed))
        .route("/Group/{id}/$export", get(group_export))
        .route("/$export", get(system_export))
        .route("/Patient/$export", get(patient_export))
        .route("/$export-poll/{id}", get(export_status).delete(cancel_export))
        .route("/$export-file/{id}/{file}", get(export_file))
        .with_state(api)
}

type Answer = Result<Response, FhirError>;

fn forbidden(why: &str) -> FhirError {
    FhirError::new(StatusCode::FORBIDDEN, IssueType::Forbidden, why)
}

/// Registry records and group exports: registry loaders and operators.
fn check_registry_reader(caller: &Caller) -> Result<(), FhirError> {
    match caller.role() {
        None | Some(Role::Admin | Role::Registry) => Ok(()),
        Some(_) => Err(forbidden("registry records and exports need the registry or admin role")),
    }
}

/// System and Patient exports hold identified data: operators only.
fn check_bulk_reader(caller: &Caller) -> Result<(), FhirError> {
    match caller.role() {
        None | Some(Role::Admin) => Ok(()),
        Some(Role::Registry) => Err(forbidden("registry clients export registry Groups (Group/registry-<id>/$export)")),
        Some(_) => Err(forbidden("system and Patient exports need the admin role")),
    }
}

fn client_id(caller: &Caller) -> String {
    caller.principal().map(|p| p.client_id.clone()).unwrap_or_default()
}

fn params(uri: &Uri) -> Result<Vec<(String, String)>, FhirError> {
    Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|_| FhirError::bad_request(IssueType::Invalid, "the query string is malformed"))
}

/// A FHIR `instant` (`_since`): full date and time with a time zone.
fn parse_instant(name: &str, value: &str) -> Result<Timestamp, FhirError> {
    let valid = fhir_server::rest::validate::is_valid(fhir_server::rest::validate::Primitive::Instant, value);
    chrono::DateTime::parse_from_rfc3339(value)
        .ok()
        .filter(|_| valid)
        .map(|t| Timestamp::from_datetime(t.with_timezone(&chrono::Utc)))
        .ok_or_else(|| {
            FhirError::bad_request(
                IssueType::Invalid,
                format!("{name} must be a FHIR instant (e.g. 2026-01-01T00:00:00Z)"),
            )
            .at(name)
        })
}

fn registry_for<'a>(api: &'a RegistryApi, group_id: &str) -> Result<&'a super::Registry, FhirError> {
    api.registries
        .by_group_id(group_id)
        .ok_or_else(|| FhirError::not_found(format!("Group/{group_id} is not a registry of this gateway")))
}

fn fhir_json(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, FHIR_JSON)], body.to_string()).into_response()
}

/// `GET /Group/{id}/$registry-records?_since=&_count=&_cursor=`: the members' records changed since an instant,
/// in change order, as a history Bundle (a removed member is a DELETE entry); `next` continues after the page's
/// last change and stays valid however many changes follow.
async fn records_feed(
    State(api): State<RegistryApi>,
    caller: Caller,
    Path(group_id): Path<String>,
    uri: Uri,
) -> Answer {
    check_registry_reader(&caller)?;
    let registry = registry_for(&api, &group_id)?;
    let mut since = None;
    let mut count = DEFAULT_COUNT;
    let mut cursor = 0i64;
    let mut since_text = None;
    for (name, value) in params(&uri)? {
        match name.as_str() {
            "_since" => {
                since = Some(parse_instant("_since", &value)?);
                since_text = Some(value);
            }
            "_count" => {
                count = value.parse::<u32>().map_err(|_| {
                    FhirError::bad_request(IssueType::Invalid, "_count must be a non-negative integer").at("_count")
                })?;
                count = count.clamp(1, MAX_COUNT);
            }
            "_cursor" => {
                cursor = value.parse::<i64>().ok().filter(|c| *c >= 0).ok_or_else(|| {
                    FhirError::bad_request(IssueType::Invalid, "_cursor is not a paging cursor from this server")
                        .at("_cursor")
                })?;
            }
            _ => {}
        }
    }
    let query = MemberQuery {
        registry_id: registry.id().into(),
        since,
        after_seq: Some(cursor),
        limit: count + 1,
        ..MemberQuery::default()
    };
    let mut rows = api.store.registry_members(&query).await?;
    let more = rows.len() > count as usize;
    rows.truncate(count as usize);
    // Records are stored as the JSON text of their Bundles, written by the membership worker: they are spliced into
    // the page as they are instead of being parsed and serialized again, which for a page of 1,000 records (about
    // 13 MB) would cost most of the request's time and several times the page's size in memory.
    let mut entries = String::with_capacity(rows.iter().map(|r| r.record.as_ref().map_or(0, String::len) + 256).sum());
    for row in &rows {
        let url = format!("Bundle/{}", row.pseudonym);
        let modified = store::format_instant(row.changed);
        if !entries.is_empty() {
            entries.push(',');
        }
        match row.record.as_deref().filter(|r| row.member && r.starts_with('{') && r.ends_with('}')) {
            Some(record) => {
                let around = json!({
                    "fullUrl": format!("{}/{url}", api.base_url),
                    "request": {"method": "PUT", "url": url},
                    "response": {"status": "200", "lastModified": modified},
                })
                .to_string();
                // `{"fullUrl":…,"request":…,"response":…}` with `"resource":<record>` put in front of the rest.
                entries.push_str("{\"resource\":");
                entries.push_str(record);
                entries.push(',');
                entries.push_str(&around[1..]);
            }
            None => entries.push_str(
                &json!({
                    "request": {"method": "DELETE", "url": url},
                    "response": {"status": "204", "lastModified": modified},
                })
                .to_string(),
            ),
        }
    }
    let link_to = |cursor: i64| {
        let mut link = format!("{}/Group/{group_id}/$registry-records?_count={count}&_cursor={cursor}", api.base_url);
        if let Some(since) = &since_text {
            link += &format!("&_since={}", since.replace('+', "%2B").replace(':', "%3A"));
        }
        link
    };
    let mut links = vec![json!({"relation": "self", "url": link_to(cursor)})];
    if more && let Some(last) = rows.last() {
        links.push(json!({"relation": "next", "url": link_to(last.seq)}));
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "history",
        "timestamp": store::format_instant(Timestamp::now()),
        "link": links,
    });
    drop(rows);
    let mut body = bundle.to_string();
    if !entries.is_empty() {
        body.pop();
        body.push_str(",\"entry\":[");
        body.push_str(&entries);
        body.push_str("]}");
    }
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, FHIR_JSON)], body).into_response())
}

async fn group_export(
    State(api): State<RegistryApi>,
    caller: Caller,
    Path(group_id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Answer {
    check_registry_reader(&caller)?;
    let registry = registry_for(&api, &group_id)?.id().to_owned();
    kick_off(&api, &caller, &headers, &uri, Level::Group, Some(registry)).await
}

async fn system_export(State(api): State<RegistryApi>, caller: Caller, headers: HeaderMap, uri: Uri) -> Answer {
    check_bulk_reader(&caller)?;
    kick_off(&api, &caller, &headers, &uri, Level::System, None).await
}

async fn patient_export(State(api): State<RegistryApi>, caller: Caller, headers: HeaderMap, uri: Uri) -> Answer {
    check_bulk_reader(&caller)?;
    kick_off(&api, &caller, &headers, &uri, Level::Patient, None).await
}

/// The kick-off request: checks it, records the export and queues its job in one transaction (refusing a client
/// over its concurrent-export limit), and answers 202 with the status URL.
async fn kick_off(
    api: &RegistryApi,
    caller: &Caller,
    headers: &HeaderMap,
    uri: &Uri,
    level: Level,
    registry: Option<String>,
) -> Answer {
    let respond_async = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"));
    if !respond_async {
        return Err(FhirError::bad_request(
            IssueType::Required,
            "a Bulk Data kick-off needs the header Prefer: respond-async",
        ));
    }
    let mut request = ExportRequest { level, registry, since: None, types: Vec::new() };
    for (name, value) in params(uri)? {
        match name.as_str() {
            "_outputFormat"
                if !matches!(value.as_str(), "application/fhir+ndjson" | "application/ndjson" | "ndjson") =>
            {
                return Err(FhirError::bad_request(
                    IssueType::NotSupported,
                    "_outputFormat: only application/fhir+ndjson is supported",
                )
                .at("_outputFormat"));
            }
            "_since" => request.since = Some(parse_instant("_since", &value)?.micros()),
            "_type" => {
                let exportable = ExportRequest::exportable(level);
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if !exportable.contains(&t) {
                        return Err(FhirError::bad_request(
                            IssueType::NotSupported,
                            format!("_type: {t} is not exported at this level (supported: {})", exportable.join(", ")),
                        )
                        .at("_type"));
                    }
                    if !request.types.iter().any(|x| x == t) {
                        request.types.push(t.to_owned());
                    }
                }
            }
            "_typeFilter" | "_elements" | "patient" | "includeAssociatedData" => {
                // Ignoring a narrowing parameter would export more than was asked for.
                return Err(
                    FhirError::bad_request(IssueType::NotSupported, format!("{name} is not supported")).at(name)
                );
            }
            _ => {}
        }
    }
    let id: String = {
        use rand::Rng;
        let bytes: [u8; 16] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    let request_url = format!("{}{}", api.base_url, uri.path_and_query().map_or("", |p| p.as_str()));
    let export = NewExport {
        id: id.clone(),
        client_id: client_id(caller),
        request: request_url,
        params: serde_json::to_string(&request).map_err(|_| {
            FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueType::Exception, "cannot record the export")
        })?,
        transaction_time: Timestamp::now(),
    };
    let mut tx = api.store.begin().await?;
    if !tx.insert_export(&export, api.exports.max_concurrent_per_client).await? {
        tx.rollback().await?;
        let mut response = FhirError::new(
            StatusCode::TOO_MANY_REQUESTS,
            IssueType::Transient,
            format!(
                "this client already has {} exports queued or running; wait for one to finish or cancel one",
                api.exports.max_concurrent_per_client
            ),
        )
        .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        return Ok(response);
    }
    tx.enqueue(&NewJob::new(EXPORT_QUEUE, json!({"export": id}).to_string())).await?;
    tx.commit().await?;
    api.export_wake.notify_one();
    tracing::info!(export_id = %id, level = ?level, "export queued");
    let status_url = format!("{}/$export-poll/{id}", api.base_url);
    let mut response = (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        information("the export is queued; poll the Content-Location URL").to_string(),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_LOCATION,
        HeaderValue::from_str(&status_url)
            .map_err(|_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueType::Exception, "bad base URL"))?,
    );
    Ok(response)
}

/// The caller's export, or 404 (another client's export is indistinguishable from none).
async fn own_export(api: &RegistryApi, caller: &Caller, id: &str) -> Result<store::Export, FhirError> {
    check_registry_reader(caller)?;
    api.store
        .export(id)
        .await?
        .filter(|e| e.client_id == client_id(caller))
        .ok_or_else(|| FhirError::not_found("no such export (it may have expired or been cancelled)"))
}

/// `GET $export-poll/{id}`: 202 with `X-Progress` while queued or running, 200 with the manifest when complete.
async fn export_status(State(api): State<RegistryApi>, caller: Caller, Path(id): Path<String>) -> Answer {
    let export = own_export(&api, &caller, &id).await?;
    match export.status {
        ExportStatus::Queued | ExportStatus::Running => {
            let progress = export.progress.unwrap_or_else(|| export.status.as_str().to_owned());
            let mut response = StatusCode::ACCEPTED.into_response();
            let headers = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&progress) {
                headers.insert("x-progress", v);
            }
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok(response)
        }
        ExportStatus::Completed => {
            let stored: Value =
                export.manifest.as_deref().and_then(|m| serde_json::from_str(m).ok()).unwrap_or(Value::Null);
            let files: Vec<OutputFile> = serde_json::from_value(stored["files"].clone()).unwrap_or_default();
            let output: Vec<Value> = files
                .iter()
                .map(|f| json!({"type": f.resource_type, "url": format!("{}/$export-file/{id}/{}", api.base_url, f.file), "count": f.count}))
                .collect();
            let manifest = json!({
                "transactionTime": stored["transactionTime"],
                "request": stored["request"],
                "requiresAccessToken": api.requires_access_token,
                "output": output,
                "error": [],
            });
            let mut response =
                (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], manifest.to_string()).into_response();
            if let Some(expires) = export.expires
                && let Ok(v) =
                    HeaderValue::from_str(&expires.to_datetime().format("%a, %d %b %Y %H:%M:%S GMT").to_string())
            {
                response.headers_mut().insert(header::EXPIRES, v);
            }
            Ok(response)
        }
        ExportStatus::Failed => Err(FhirError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            IssueType::Exception,
            format!("the export failed: {}", export.error.unwrap_or_else(|| "unknown error".into())),
        )),
        ExportStatus::Cancelled => Err(FhirError::not_found("the export was cancelled")),
    }
}

/// `DELETE $export-poll/{id}`: cancels the export and removes its files (202).
async fn cancel_export(State(api): State<RegistryApi>, caller: Caller, Path(id): Path<String>) -> Answer {
    let export = own_export(&api, &caller, &id).await?;
    if export.status == ExportStatus::Cancelled {
        return Err(FhirError::not_found("the export was cancelled"));
    }
    api.store.cancel_export(&id, Timestamp::now()).await?;
    // A running job removes what it wrote when it sees the cancellation; the sweeper forgets the export.
    let dir = export_dir(&api.exports.folder, &id);
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(export_id = %id, error = %e, "could not remove a cancelled export's files");
    }
    tracing::info!(export_id = %id, "export cancelled by its client");
    Ok(fhir_json(StatusCode::ACCEPTED, &information("the export is cancelled and its files removed")))
}

/// `GET $export-file/{id}/{Type}.ndjson`: one output file, streamed.
async fn export_file(
    State(api): State<RegistryApi>,
    caller: Caller,
    Path((id, file)): Path<(String, String)>,
) -> Answer {
    let export = own_export(&api, &caller, &id).await?;
    let well_formed =
        file.strip_suffix(".ndjson").is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphabetic()));
    if export.status != ExportStatus::Completed || !well_formed {
        return Err(FhirError::not_found("no such export file"));
    }
    let path = export_dir(&api.exports.folder, &id).join(&file);
    let handle = tokio::fs::File::open(&path).await.map_err(|_| FhirError::not_found("no such export file"))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(handle));
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, NDJSON)], body).into_response())
}

fn information(diagnostics: &str) -> Value {
    json!({"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational", "diagnostics": diagnostics}]})
}
