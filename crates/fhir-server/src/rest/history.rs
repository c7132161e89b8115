//! History interactions (instance, type, system) as Bundles of type `history`, paged by the store's `seq` cursor.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde_json::{Value, json};
use store::{HistoryEntry, HistoryQuery, Timestamp};

use super::error::{FhirError, IssueType};
use super::handlers::{check_id, check_type, json_response, last_modified, path_error};
use super::media::etag;
use super::validate::{Primitive, is_valid};
use super::{Acting, FhirState};

const DEFAULT_COUNT: u32 = 50;
const MAX_COUNT: u32 = 500;

type Params = Result<Query<Vec<(String, String)>>, QueryRejection>;

pub async fn system_history(Acting(state): Acting, params: Params) -> Result<Response, FhirError> {
    history(&state, None, None, params).await
}

pub async fn type_history(
    Acting(state): Acting,
    path: Result<Path<String>, PathRejection>,
    params: Params,
) -> Result<Response, FhirError> {
    let Path(resource_type) = path.map_err(path_error)?;
    check_type(&resource_type)?;
    history(&state, Some(resource_type), None, params).await
}

pub async fn instance_history(
    Acting(state): Acting,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Params,
) -> Result<Response, FhirError> {
    let Path((resource_type, id)) = path.map_err(path_error)?;
    check_type(&resource_type)?;
    check_id(&id)?;
    if state.store.read_as(&state.scope(), &resource_type, &id).await?.is_none() {
        return Err(FhirError::not_found(format!("{resource_type}/{id} is not known")));
    }
    history(&state, Some(resource_type), Some(id), params).await
}

/// The half-open time period `[start, end)` a date, dateTime or instant value covers, in microseconds.
fn period(text: &str) -> Option<(i64, i64)> {
    if !is_valid(Primitive::DateTime, text) {
        return None;
    }
    if text.len() > 10 {
        let instant = DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc).timestamp_micros();
        // A dateTime with seconds names that second, but fractional digits name an exact point.
        let width = if text.contains('.') { 1 } else { 1_000_000 };
        let start = if text.contains('.') { instant } else { instant - instant.rem_euclid(1_000_000) };
        return Some((start, start + width));
    }
    let (start, end) = match text.len() {
        4 => {
            let y: i32 = text.parse().ok()?;
            (NaiveDate::from_ymd_opt(y, 1, 1)?, NaiveDate::from_ymd_opt(y + 1, 1, 1)?)
        }
        7 => {
            let y: i32 = text[..4].parse().ok()?;
            let m: u32 = text[5..7].parse().ok()?;
            let next =
                if m == 12 { NaiveDate::from_ymd_opt(y + 1, 1, 1) } else { NaiveDate::from_ymd_opt(y, m + 1, 1) };
            (NaiveDate::from_ymd_opt(y, m, 1)?, next?)
        }
        _ => {
            let d = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
            (d, d.succ_opt()?)
        }
    };
    let micros = |d: NaiveDate| Utc.from_utc_datetime(&NaiveDateTime::from(d)).timestamp_micros();
    Some((micros(start), micros(end)))
}

struct Options {
    count: u32,
    since: Option<Timestamp>,
    at: Option<(i64, i64)>,
    cursor: Option<i64>,
    /// The parameters to repeat in paging links, as given.
    echo: Vec<(String, String)>,
}

fn options(params: Params) -> Result<Options, FhirError> {
    let Query(pairs) =
        params.map_err(|_| FhirError::bad_request(IssueType::Invalid, "the query string could not be decoded"))?;
    let mut o = Options { count: DEFAULT_COUNT, since: None, at: None, cursor: None, echo: Vec::new() };
    for (name, value) in pairs {
        match name.as_str() {
            "_count" => {
                let n: u32 = value.parse().map_err(|_| {
                    FhirError::bad_request(IssueType::Invalid, "_count must be a non-negative integer").at("_count")
                })?;
                o.count = n.clamp(1, MAX_COUNT);
            }
            "_since" => {
                let (start, _) = period(&value).ok_or_else(|| {
                    FhirError::bad_request(IssueType::Invalid, "_since must be a FHIR instant").at("_since")
                })?;
                o.since = Some(Timestamp(start));
            }
            "_at" => {
                o.at = Some(period(&value).ok_or_else(|| {
                    FhirError::bad_request(IssueType::Invalid, "_at must be a FHIR date or dateTime").at("_at")
                })?);
            }
            "_cursor" => {
                o.cursor = Some(value.parse().map_err(|_| {
                    FhirError::bad_request(IssueType::Invalid, "_cursor is not a paging cursor from this server")
                        .at("_cursor")
                })?);
                continue;
            }
            // Other parameters (e.g. _format) do not change the result; they are not echoed into links.
            _ => continue,
        }
        o.echo.push((name, value));
    }
    Ok(o)
}

fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn history(
    state: &FhirState,
    resource_type: Option<String>,
    id: Option<String>,
    params: Params,
) -> Result<Response, FhirError> {
    let o = options(params)?;
    let mut entries: Vec<HistoryEntry> = Vec::new();
    let mut cursor = o.cursor;
    let mut more = false;
    // With `_at`, versions superseded before the period are dropped after reading, so keep reading pages until this
    // one is full; without it the first read is the page.
    loop {
        let query = HistoryQuery {
            resource_type: resource_type.clone(),
            id: id.clone(),
            since: o.since,
            until: o.at.map(|(_, end)| Timestamp(end - 1)),
            before_seq: cursor,
            scope: state.scope(),
            limit: o.count + 1,
        };
        let page = state.store.history(&query).await?;
        let full = page.len() > o.count as usize;
        for entry in page.into_iter().take(o.count as usize) {
            cursor = Some(entry.seq);
            if entries.len() >= o.count as usize {
                break;
            }
            if let Some((start, _)) = o.at
                && superseded_before(state, &entry, start).await?
            {
                continue;
            }
            entries.push(entry);
        }
        if entries.len() >= o.count as usize {
            more = full || cursor.is_some_and(|c| entries.last().is_some_and(|e| e.seq != c));
            break;
        }
        if !full {
            break;
        }
    }
    let scope = match (&resource_type, &id) {
        (Some(t), Some(i)) => format!("{}/{t}/{i}/_history", state.base()),
        (Some(t), None) => format!("{}/{t}/_history", state.base()),
        _ => format!("{}/_history", state.base()),
    };
    let query_text = |extra: Option<i64>| {
        let mut pairs: Vec<String> = o.echo.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
        if !o.echo.iter().any(|(k, _)| k == "_count") {
            pairs.push(format!("_count={}", o.count));
        }
        if let Some(c) = extra {
            pairs.push(format!("_cursor={c}"));
        }
        pairs.join("&")
    };
    let mut links = vec![json!({ "relation": "self", "url": format!("{scope}?{}", query_text(o.cursor)) })];
    if more && let Some(last) = entries.last() {
        links.push(json!({ "relation": "next", "url": format!("{scope}?{}", query_text(Some(last.seq))) }));
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "history",
        "link": links,
        "entry": entries.iter().map(|e| entry_json(state, e)).collect::<Vec<_>>(),
    });
    tracing::debug!(entries = entries.len(), "history");
    let mut bundle = bundle;
    if entries.is_empty()
        && let Some(map) = bundle.as_object_mut()
    {
        // FHIR forbids empty arrays.
        map.remove("entry");
    }
    Ok(json_response(StatusCode::OK, &bundle))
}

/// True when the next version of the entry's resource was written before `start` (so it was not current then).
async fn superseded_before(state: &FhirState, entry: &HistoryEntry, start: i64) -> Result<bool, FhirError> {
    let r = &entry.resource;
    let next = state.store.vread_as(&state.scope(), &r.resource_type, &r.id, r.version_id + 1).await?;
    Ok(next.is_some_and(|n| n.last_updated.micros() <= start))
}

fn entry_json(state: &FhirState, entry: &HistoryEntry) -> Value {
    let r = &entry.resource;
    let (method, url, status) = if r.deleted {
        ("DELETE", format!("{}/{}", r.resource_type, r.id), "204 No Content")
    } else if r.version_id == 1 {
        ("POST", r.resource_type.clone(), "201 Created")
    } else {
        ("PUT", format!("{}/{}", r.resource_type, r.id), "200 OK")
    };
    let mut e = json!({
        "fullUrl": format!("{}/{}/{}", state.base(), r.resource_type, r.id),
        "request": { "method": method, "url": url },
        "response": { "status": status, "etag": etag(r.version_id), "lastModified": last_modified(r) },
    });
    if let Some(resource) = r.content.as_deref().and_then(|c| serde_json::from_str::<Value>(c).ok()) {
        e["resource"] = resource;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        let (s, e) = period("2024").expect("year");
        assert_eq!(e - s, 366 * 86_400 * 1_000_000);
        let (s, e) = period("2024-02").expect("month");
        assert_eq!(e - s, 29 * 86_400 * 1_000_000);
        let (s, e) = period("2024-02-03T04:05:06Z").expect("second");
        assert_eq!(e - s, 1_000_000);
        let (s, e) = period("2024-02-03T04:05:06.5+01:00").expect("instant");
        assert_eq!(e - s, 1);
        assert_eq!(s % 1_000_000, 500_000);
        assert!(period("2024-02-03T04:05").is_none());
        assert!(period("yesterday").is_none());
    }
}
