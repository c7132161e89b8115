//! Data-driven request/response cases from `conformance/fhir/cases/`, each on a fresh SQLite and PostgreSQL store.

mod common;

use std::path::PathBuf;

use common::{TestApp, TestDb};
use serde_json::Value;

fn cases() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../conformance/fhir/cases");
    let mut cases: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .expect("conformance/fhir/cases")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            let case =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, case)
        })
        .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(cases.len() >= 25, "the case folder holds at least 25 cases");
    cases
}

async fn send(app: &TestApp, request: &Value) -> common::Reply {
    let method = request["method"].as_str().expect("method");
    let path = request["path"].as_str().expect("path");
    let mut headers: Vec<(String, String)> = request["headers"]
        .as_object()
        .map(|h| h.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
        .unwrap_or_default();
    let body = match (&request["body"], &request["body_text"]) {
        (Value::Null, Value::String(text)) => Some(text.clone().into_bytes()),
        (Value::Null, _) => None,
        (json, _) => Some(json.to_string().into_bytes()),
    };
    if body.is_some() && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        headers.push(("content-type".into(), "application/fhir+json".into()));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    app.send(method, path, &headers, body).await
}

/// Every key of `expected` is in `actual` with a matching value (arrays element-wise, recursively).
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e.iter().all(|(k, v)| a.get(k).is_some_and(|av| contains(av, v))),
        (Value::Array(a), Value::Array(e)) => e.len() <= a.len() && e.iter().zip(a).all(|(ev, av)| contains(av, ev)),
        _ => actual == expected,
    }
}

async fn run_all(db: TestDb) {
    for (name, case) in cases() {
        // A fresh store per case, so cases cannot lean on each other.
        let fresh = if db.url.starts_with("postgres") { TestDb::postgres().await } else { TestDb::sqlite().await };
        let app = fresh.app().await;
        for step in case["setup"].as_array().into_iter().flatten() {
            let reply = send(&app, step).await;
            assert!(reply.status.is_success(), "{name}: setup {step} answered {}: {}", reply.status, reply.json);
        }
        let reply = send(&app, &case["request"]).await;
        let expect = &case["expect"];
        assert_eq!(reply.status.as_u16() as u64, expect["status"].as_u64().unwrap(), "{name}: {}", reply.json);
        for (header, prefix) in expect["headers"].as_object().into_iter().flatten() {
            let value = reply.header(header).unwrap_or_else(|| panic!("{name}: no {header} header"));
            assert!(value.starts_with(prefix.as_str().unwrap()), "{name}: {header} is {value}");
        }
        if !expect["body"].is_null() {
            assert!(contains(&reply.json, &expect["body"]), "{name}: body {} lacks {}", reply.json, expect["body"]);
        }
        if let Some(code) = expect["outcome"].as_str() {
            reply.outcome(expect["status"].as_u64().unwrap() as u16, code);
        }
        if expect["empty_body"].as_bool() == Some(true) {
            assert!(reply.bytes.is_empty(), "{name}: expected no body, got {}", String::from_utf8_lossy(&reply.bytes));
        }
    }
}

for_each_backend!(run_all);
