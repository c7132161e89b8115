//! Operators' JSON endpoints for the outbound message log: `GET /admin/outbound` (newest first, filters state and
//! destination) and `GET /admin/outbound/{id}`. Rows carry destinations, types, control ids, attempts and ACK codes,
//! never message bodies.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use store::{OutboundQuery, OutboundState};

use crate::http::AppState;

#[derive(Debug, Deserialize)]
pub struct ListParams {
    state: Option<String>,
    destination: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
}

/// The store query for a list request; an unknown state is refused, naming the states there are.
pub fn outbound_query(
    state: Option<&str>,
    destination: Option<&str>,
    before: Option<i64>,
    limit: Option<u32>,
) -> Result<OutboundQuery, String> {
    let state = match state {
        Some(s) => Some(OutboundState::parse(s).ok_or_else(|| {
            let known: Vec<&str> = OutboundState::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown state {s:?} ({})", known.join(", "))
        })?),
        None => None,
    };
    Ok(OutboundQuery {
        state,
        destination: destination.map(str::to_owned),
        before_id: before,
        limit: limit.unwrap_or(100).clamp(1, 1000),
    })
}

fn unavailable(e: store::StoreError) -> Response {
    tracing::warn!(error = %e, "admin request failed");
    let status = if e.is_transient() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::INTERNAL_SERVER_ERROR };
    (status, Json(json!({"error": "the outbound message log could not be read"}))).into_response()
}

pub async fn list_outbound(State(state): State<AppState>, Query(params): Query<ListParams>) -> Response {
    let query =
        match outbound_query(params.state.as_deref(), params.destination.as_deref(), params.before, params.limit) {
            Ok(q) => q,
            Err(reason) => return (StatusCode::BAD_REQUEST, Json(json!({"error": reason}))).into_response(),
        };
    match state.store.outbound_list(&query).await {
        Ok(messages) => {
            let next = (messages.len() as u32 == query.limit).then(|| messages.last().map(|m| m.id)).flatten();
            Json(json!({"messages": messages, "next_before": next})).into_response()
        }
        Err(e) => unavailable(e),
    }
}

pub async fn show_outbound(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    match state.store.outbound_record(id).await {
        Ok(Some(record)) => Json(record).into_response(),
        Ok(None) => {
            (StatusCode::NOT_FOUND, Json(json!({"error": format!("no outbound message {id}")}))).into_response()
        }
        Err(e) => unavailable(e),
    }
}
