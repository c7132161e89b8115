//! Tidy tests: every Rust file says what it is for, and crate dependencies follow the architecture's table.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Which workspace crates each crate may depend on (ARCHITECTURE.md, "Code map").
const ALLOWED_EDGES: &[(&str, &[&str])] = &[
    ("hl7v2", &[]),
    ("mllp", &["hl7v2"]),
    ("v2fhir", &["hl7v2"]),
    ("sdoh", &[]),
    ("store", &[]),
    ("fhir-server", &["store", "sdoh"]),
    ("gateway", &["hl7v2", "mllp", "v2fhir", "sdoh", "store", "fhir-server"]),
];

/// Pure crates do no I/O: none of these may appear among their normal dependencies.
const PURE: &[&str] = &["hl7v2", "v2fhir", "sdoh"];
const IO_CRATES: &[&str] = &["tokio", "sqlx", "hyper", "axum", "reqwest", "mio", "tokio-rustls", "rustls"];

#[test]
fn every_rust_file_starts_with_a_module_doc_line() {
    let root = support::workspace_root();
    let mut missing = Vec::new();
    let mut checked = 0;
    for top in ["crates", "tests", "fuzz"] {
        walk(&root.join(top), &mut |path| {
            if path.extension().is_some_and(|e| e == "rs") {
                checked += 1;
                let text = std::fs::read_to_string(path).unwrap_or_default();
                if !text.lines().next().is_some_and(|l| l.starts_with("//!")) {
                    missing.push(path.strip_prefix(&root).unwrap_or(path).display().to_string());
                }
            }
        });
    }
    assert!(checked > 10, "walked the tree ({checked} files)");
    assert!(missing.is_empty(), "files without a leading //! line: {missing:?}");
}

fn walk(dir: &Path, visit: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != "corpus" && name != "artifacts" {
                walk(&path, visit);
            }
        } else {
            visit(&path);
        }
    }
}

#[test]
fn crate_dependencies_follow_the_architecture() {
    let root = support::workspace_root();
    let out = std::process::Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members: BTreeSet<String> =
        meta["packages"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED_EDGES.iter().copied().collect();
    let mut violations = Vec::new();
    for package in meta["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        let Some(permitted) = allowed.get(name) else {
            violations.push(format!("crate {name} is not in the architecture's code map"));
            continue;
        };
        for dep in package["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            let normal = dep["kind"].is_null();
            if members.contains(dep_name) && normal && !permitted.contains(&dep_name) {
                violations.push(format!("{name} -> {dep_name}"));
            }
            if PURE.contains(&name) && normal && IO_CRATES.contains(&dep_name) {
                violations.push(format!("pure crate {name} depends on {dep_name}"));
            }
        }
    }
    assert!(violations.is_empty(), "dependency edges outside the architecture: {violations:?}");
}
