//! Content negotiation and HTTP metadata: `_format`/`Accept`, request Content-Type, body limits, ETags, HTTP dates
//! and `Prefer`.

use std::future::poll_fn;
use std::pin::Pin;

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use store::Timestamp;

use super::FhirState;
use super::error::{FhirError, IssueType};

/// Media types a FHIR JSON client may name; `application/json+fhir` is the pre-R4 spelling some clients still send.
const JSON_TYPES: &[&str] = &["application/fhir+json", "application/json", "application/json+fhir"];
pub const JSON_PATCH: &str = "application/json-patch+json";

/// Rejects requests this server cannot answer in JSON (406), request bodies that are not JSON (415) and declared
/// bodies over the limit (413), before any handler runs.
pub async fn negotiate(State(state): State<FhirState>, request: Request, next: Next) -> Response {
    if let Err(e) = check_request(&state, &request) {
        return e.into_response();
    }
    next.run(request).await
}

fn check_request(state: &FhirState, request: &Request) -> Result<(), FhirError> {
    let format = request.uri().query().and_then(|q| {
        q.split('&').find_map(|pair| pair.strip_prefix("_format=")).map(|v| v.replace("%2B", "+").replace("%2b", "+"))
    });
    match format {
        // `_format` overrides Accept (FHIR http.html#mime-type).
        Some(f) => {
            let f = f.replace(' ', "+");
            let essence = f.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            if essence != "json" && !JSON_TYPES.contains(&essence.as_str()) {
                return Err(FhirError::not_acceptable(
                    "only JSON is supported (_format=json or application/fhir+json)",
                )
                .at("_format"));
            }
        }
        None => {
            if let Some(accept) = request.headers().get(header::ACCEPT) {
                let accept = accept.to_str().unwrap_or("");
                if !accepts_json(accept) {
                    return Err(FhirError::not_acceptable(
                        "only application/fhir+json (or application/json) responses are available",
                    ));
                }
            }
        }
    }
    if matches!(*request.method(), Method::POST | Method::PUT | Method::PATCH) {
        let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let essence = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        let ok = match (request.method(), essence.as_deref()) {
            (&Method::PATCH, Some(t)) => t == JSON_PATCH,
            (_, Some(t)) => JSON_TYPES.contains(&t),
            (_, None) => false,
        };
        if !ok {
            let wanted = if request.method() == Method::PATCH { JSON_PATCH } else { "application/fhir+json" };
            return Err(FhirError::unsupported_media_type(format!("the request body must be {wanted}")));
        }
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > state.max_body_bytes as u64) {
            return Err(FhirError::too_large(state.max_body_bytes));
        }
    }
    Ok(())
}

/// True when an Accept header admits a JSON representation (ignoring ranges with q=0).
fn accepts_json(accept: &str) -> bool {
    if accept.trim().is_empty() {
        return true;
    }
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=").is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
        });
        !refused && (essence == "*/*" || essence == "application/*" || JSON_TYPES.contains(&essence.as_str()))
    })
}

/// Reads the whole body, refusing it once it grows past `limit` (chunked bodies carry no Content-Length).
pub async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, FhirError> {
    let mut body = body;
    let mut bytes = Vec::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame =
            frame.map_err(|_| FhirError::bad_request(IssueType::Structure, "the request body could not be read"))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                return Err(FhirError::too_large(limit));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// Parses a JSON body, telling malformed JSON apart from a body that is not there.
pub fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, FhirError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(FhirError::bad_request(IssueType::Required, "the request body is empty"));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's message names a line and column, never the offending text.
        FhirError::bad_request(IssueType::Structure, format!("the request body is not valid JSON: {e}"))
    })
}

/// Weak ETag for a version: `W/"3"`.
pub fn etag(version_id: i64) -> String {
    format!("W/\"{version_id}\"")
}

/// The version an ETag names: `W/"3"` or `"3"`. `None` for anything else.
pub fn parse_etag(value: &str) -> Option<i64> {
    let value = value.trim();
    let value = value.strip_prefix("W/").unwrap_or(value);
    value.strip_prefix('"')?.strip_suffix('"')?.parse().ok().filter(|v| *v > 0)
}

/// The version an `If-Match` header requires, if any; `*` asks for no particular version.
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, FhirError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    parse_etag(text).map(Some).ok_or_else(|| {
        FhirError::bad_request(IssueType::Invalid, "If-Match must be a version ETag such as W/\"1\"").at("If-Match")
    })
}

/// `Last-Modified` text (IMF-fixdate, RFC 9110).
pub fn http_date(ts: Timestamp) -> String {
    ts.to_datetime().format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// An HTTP date, or `None` when it does not parse (a conditional request then behaves as unconditional).
pub fn parse_http_date(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(text.trim()).ok().map(|d| d.with_timezone(&Utc))
}

/// What the client asked to get back from a write (`Prefer: return=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnPreference {
    Minimal,
    Representation,
    OperationOutcome,
}

pub fn return_preference(headers: &HeaderMap) -> ReturnPreference {
    for value in headers.get_all(header::HeaderName::from_static("prefer")) {
        for token in value.to_str().unwrap_or("").split([',', ';']) {
            match token.trim().strip_prefix("return=").map(|v| v.trim_matches('"')) {
                Some("minimal") => return ReturnPreference::Minimal,
                Some("representation") => return ReturnPreference::Representation,
                Some(v) if v.eq_ignore_ascii_case("OperationOutcome") => return ReturnPreference::OperationOutcome,
                _ => {}
            }
        }
    }
    ReturnPreference::Representation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers() {
        assert!(accepts_json("application/fhir+json"));
        assert!(accepts_json("application/fhir+xml;q=0.9, application/json;q=0.5"));
        assert!(accepts_json("*/*"));
        assert!(accepts_json("text/html, */*;q=0.8"));
        assert!(!accepts_json("application/fhir+xml"));
        assert!(!accepts_json("text/turtle"));
        assert!(!accepts_json("application/json;q=0"));
    }

    #[test]
    fn etags_and_dates() {
        assert_eq!(parse_etag("W/\"12\""), Some(12));
        assert_eq!(parse_etag("\"3\""), Some(3));
        assert_eq!(parse_etag("3"), None);
        assert_eq!(parse_etag("W/\"x\""), None);
        let ts = Timestamp(1_700_000_000_123_456);
        let text = http_date(ts);
        assert_eq!(text, "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(parse_http_date(&text).map(|d| d.timestamp()), Some(1_700_000_000));
    }
}
