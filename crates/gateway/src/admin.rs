//! Operators' JSON endpoints for the message journal: list by status/type/time, one entry, reprocess.
//! Lists show control ids, types and statuses, never message bodies (patient data).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use store::{JournalQuery, JournalStatus, Timestamp};

use crate::http::AppState;

/// Queue the conversion worker consumes; reprocessing puts entries back on it.
pub const CONVERT_QUEUE: &str = "convert";

#[derive(Debug, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    #[serde(rename = "type")]
    message_type: Option<String>,
    since: Option<String>,
    until: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
}

fn bad_request(reason: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": reason}))).into_response()
}

fn unavailable(e: store::StoreError) -> Response {
    tracing::warn!(error = %e, "admin request failed");
    let status = if e.is_transient() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::INTERNAL_SERVER_ERROR };
    (status, Json(json!({"error": "the message journal could not be read"}))).into_response()
}

/// Parses an RFC 3339 time or a date (`2026-11-23`, midnight UTC).
pub fn parse_time(text: &str) -> Result<Timestamp, String> {
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Timestamp::from_datetime(dt.with_timezone(&chrono::Utc)));
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(Timestamp::from_datetime(date.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()));
    }
    Err(format!("{text:?} is not an RFC 3339 time or a YYYY-MM-DD date"))
}

pub fn journal_query(
    status: Option<&str>,
    message_type: Option<&str>,
    since: Option<&str>,
    until: Option<&str>,
    before: Option<i64>,
    limit: Option<u32>,
) -> Result<JournalQuery, String> {
    let status = match status {
        Some(s) => {
            Some(JournalStatus::parse(s).ok_or_else(|| format!("unknown status {s:?} (received, converted, failed)"))?)
        }
        None => None,
    };
    Ok(JournalQuery {
        status,
        message_type: message_type.map(str::to_owned),
        since: since.map(parse_time).transpose()?,
        until: until.map(parse_time).transpose()?,
        before_id: before,
        limit: limit.unwrap_or(100).clamp(1, 1000),
    })
}

pub async fn list_messages(State(state): State<AppState>, Query(params): Query<ListParams>) -> Response {
    let query = match journal_query(
        params.status.as_deref(),
        params.message_type.as_deref(),
        params.since.as_deref(),
        params.until.as_deref(),
        params.before,
        params.limit,
    ) {
        Ok(q) => q,
        Err(reason) => return bad_request(reason),
    };
    match state.store.journal_list(&query).await {
        Ok(entries) => {
            let next = (entries.len() as u32 == query.limit).then(|| entries.last().map(|e| e.id)).flatten();
            Json(json!({"entries": entries, "next_before": next})).into_response()
        }
        Err(e) => unavailable(e),
    }
}

pub async fn show_message(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    match state.store.journal_entry(id).await {
        Ok(Some(entry)) => Json(entry).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Json(json!({"error": format!("no journal entry {id}")}))).into_response(),
        Err(e) => unavailable(e),
    }
}

pub async fn reprocess_message(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    match state.store.journal_reprocess(&[id], CONVERT_QUEUE, state.max_attempts).await {
        Ok(1) => (StatusCode::ACCEPTED, Json(json!({"queued": [id]}))).into_response(),
        Ok(_) => (StatusCode::NOT_FOUND, Json(json!({"error": format!("no journal entry {id}")}))).into_response(),
        Err(e) => unavailable(e),
    }
}
