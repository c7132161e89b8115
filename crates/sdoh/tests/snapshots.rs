//! Data-driven snapshot test over `conformance/sdoh/<case>.input.json` -> `<case>.expected.json`.

use std::path::PathBuf;

use sdoh::{Context, normalize};
use serde_json::{Value, json};

const CTX: Context<'static> = Context { recorded: "2026-01-01T00:00:00Z", agent: "Device/sdoh-gateway" };

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../conformance/sdoh")
}

fn run(input: &Value) -> Value {
    match normalize(input, &CTX).expect("case normalizes") {
        None => json!({ "none": true }),
        Some(d) => json!({ "instrument": d.instrument, "resources": d.resources, "retractions": d.retractions }),
    }
}

#[test]
fn conformance_cases_match_snapshots() {
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("conformance/sdoh exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".input.json"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 34, "expected the 34 documented cases, found {}", cases.len());
    let mut failures = Vec::new();
    for input_path in &cases {
        let name = input_path.file_name().unwrap().to_string_lossy().trim_end_matches(".input.json").to_owned();
        let input: Value = serde_json::from_str(&std::fs::read_to_string(input_path).unwrap()).unwrap();
        let actual = run(&input);
        let expected_path = dir().join(format!("{name}.expected.json"));
        if update {
            std::fs::write(&expected_path, serde_json::to_string_pretty(&actual).unwrap() + "\n").unwrap();
            continue;
        }
        let expected: Value = match std::fs::read_to_string(&expected_path) {
            Ok(s) => serde_json::from_str(&s).unwrap(),
            Err(_) => {
                failures.push(format!("{name}: missing expected file (run with UPDATE_SNAPSHOTS=1)"));
                continue;
            }
        };
        if actual != expected {
            failures.push(format!(
                "{name}: output differs from snapshot; actual:\n{}",
                serde_json::to_string_pretty(&actual).unwrap()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
