//! Data-driven conformance: every `conformance/v2fhir/<case>.hl7` converts to the snapshot in `<case>.json`.
//!
//! `UPDATE_SNAPSHOTS=1 cargo test -p v2fhir --test conformance` rewrites the snapshots; review the diff.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/v2fhir")
}

/// The snapshot form: resources and warnings, or the error with its location.
fn outcome(raw: &[u8]) -> Value {
    let msg = hl7v2::Message::parse(raw).expect("conformance messages must parse");
    match v2fhir::convert(&msg) {
        Ok(c) => json!({"resources": c.resources, "warnings": c.warnings}),
        Err(e) => json!({"error": {"message": e.to_string(), "location": e.location()}}),
    }
}

#[test]
fn conformance_cases_match_snapshots() {
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 15, "expected the full case set, found {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let raw = std::fs::read(case).unwrap();
        let got = outcome(&raw);
        let snap = case.with_extension("json");
        let pretty = serde_json::to_string_pretty(&got).unwrap() + "\n";
        if update {
            std::fs::write(&snap, pretty).unwrap();
            continue;
        }
        let want: Value = match std::fs::read_to_string(&snap) {
            Ok(s) => serde_json::from_str(&s).unwrap(),
            Err(_) => {
                failures.push(format!("{}: no snapshot (run with UPDATE_SNAPSHOTS=1)", case.display()));
                continue;
            }
        };
        if got != want {
            failures.push(format!("{}: output differs from snapshot; got:\n{pretty}", case.display()));
        }
        if let Some(resources) = got["resources"].as_array() {
            check_references(case, resources, &mut failures);
        }
        // Converting twice gives byte-identical output: ids and order are deterministic.
        assert_eq!(got, outcome(&raw), "{} is not deterministic", case.display());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every reference resolves to a resource of the same conversion that comes earlier, so the worker can upsert in
/// order; the only exception is the mutual link between merged patients.
fn check_references(case: &Path, resources: &[Value], failures: &mut Vec<String>) {
    fn walk<'v>(v: &'v Value, out: &mut Vec<(String, &'v str)>, path: &str) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "reference"
                        && let Some(r) = x.as_str()
                    {
                        out.push((path.to_owned(), r));
                    }
                    walk(x, out, k);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out, path)),
            _ => {}
        }
    }
    let keys: Vec<String> = resources
        .iter()
        .map(|r| format!("{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or("")))
        .collect();
    for (i, r) in resources.iter().enumerate() {
        let id = r["id"].as_str().unwrap_or("");
        if !(id.starts_with("v2-") && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')) {
            failures.push(format!("{}: bad id {id}", case.display()));
        }
        let mut refs = Vec::new();
        walk(r, &mut refs, "");
        for (field, target) in refs {
            match keys.iter().position(|k| k == target) {
                Some(j) if j < i || field == "other" => {}
                Some(_) => failures.push(format!("{}: {} references {target} before it", case.display(), keys[i])),
                None => failures.push(format!("{}: {} has dangling reference {target}", case.display(), keys[i])),
            }
        }
    }
}
