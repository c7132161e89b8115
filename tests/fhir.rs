//! Black-box tests of the FHIR R4 API on the running binary: real HTTP, SQLite and PostgreSQL.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

fn fhir_round_trip(db_url: &str) {
    let dir = temp_dir();
    let mut gw = Gateway::start(dir.path(), &["--database-url", db_url, "--http-listen", "127.0.0.1:0"], &[]);
    let addr = gw.wait_ready();

    let (status, _, body) = http(addr, "GET", "/fhir/metadata", None);
    assert_eq!(status, 200, "{body}");
    let capability: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(capability["resourceType"], "CapabilityStatement");
    assert_eq!(capability["fhirVersion"], "4.0.1");

    let patient =
        json!({"resourceType": "Patient", "name": [{"family": "Rivera", "given": ["Ana"]}], "birthDate": "1980-04-02"});
    let (status, head, body) = http(addr, "POST", "/fhir/Patient", Some(&patient.to_string()));
    assert_eq!(status, 201, "{body}");
    let location = header_value(&head, "Location").expect("Location");
    assert!(location.starts_with(&format!("http://{addr}/fhir/Patient/")), "{location}");
    let created: Value = serde_json::from_str(&body).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(header_value(&head, "ETag").as_deref(), Some("W/\"1\""));

    let (status, head, body) = http(addr, "GET", &format!("/fhir/Patient/{id}"), None);
    assert_eq!(status, 200);
    assert!(header_value(&head, "Content-Type").unwrap().starts_with("application/fhir+json"));
    let read: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(read["name"][0]["family"], "Rivera");

    let mut changed = read.clone();
    changed["name"][0]["family"] = json!("Rivera-Lopez");
    let (status, _, body) =
        http_with(addr, "PUT", &format!("/fhir/Patient/{id}"), &[("If-Match", "W/\"1\"")], Some(&changed.to_string()));
    assert_eq!(status, 200, "{body}");
    let (status, _, body) =
        http_with(addr, "PUT", &format!("/fhir/Patient/{id}"), &[("If-Match", "W/\"1\"")], Some(&changed.to_string()));
    assert_eq!(status, 412, "a stale version is refused: {body}");
    assert!(body.contains("OperationOutcome"));

    let (status, _, body) = http(addr, "GET", &format!("/fhir/Patient/{id}/_history"), None);
    assert_eq!(status, 200);
    let history: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(history["type"], "history");
    assert_eq!(history["entry"].as_array().unwrap().len(), 2);

    assert_eq!(http(addr, "DELETE", &format!("/fhir/Patient/{id}"), None).0, 204);
    let (status, _, body) = http(addr, "GET", &format!("/fhir/Patient/{id}"), None);
    assert_eq!(status, 410, "{body}");
    let (status, _, body) = http(addr, "GET", "/fhir/Patient/never-was", None);
    assert_eq!(status, 404);
    assert!(body.contains("OperationOutcome"));
    let (status, _, body) = http(addr, "POST", "/fhir/Patient", Some("{not json"));
    assert_eq!(status, 400);
    assert!(body.contains("OperationOutcome") && !body.to_lowercase().contains("sqlx"), "{body}");
    assert_eq!(http(addr, "GET", "/fhir/NoSuchType/1", None).0, 404);

    let (_, _, metrics) = http(addr, "GET", "/metrics", None);
    assert!(metrics.contains("route=\"/fhir/{type}/{id}\""), "FHIR requests are counted by route template");
    assert!(!metrics.contains(&id), "metrics never carry resource ids");

    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn fhir_api_on_sqlite() {
    let dir = temp_dir();
    fhir_round_trip(&format!("sqlite:{}", dir.path().join("fhir.db").display()));
}

#[test]
fn fhir_api_on_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(postgres_schema_url(&postgres_url()));
    fhir_round_trip(&url);
}

/// A Python virtual environment with fhirpy, made once under the target folder (PyPI is one of the registries here).
fn fhirpy_python() -> std::path::PathBuf {
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fhirpy-venv");
    let python = venv.join("bin/python");
    let ready =
        || std::process::Command::new(&python).args(["-c", "import fhirpy"]).output().is_ok_and(|o| o.status.success());
    if !ready() {
        let made = std::process::Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3");
        assert!(made.success(), "python3 -m venv failed");
        let pip = std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "fhirpy==2.3.1"])
            .status()
            .expect("pip");
        assert!(pip.success(), "installing the fhirpy client from PyPI failed");
    }
    assert!(ready(), "fhirpy imports");
    python
}

#[test]
fn a_standard_fhir_client_works_unmodified() {
    let python = fhirpy_python();
    let dir = temp_dir();
    let mut gw = Gateway::start(dir.path(), &["--http-listen", "127.0.0.1:0"], &[]);
    let addr = gw.wait_ready();
    let script = workspace_root().join("tests/clients/fhirpy_smoke.py");
    let out = std::process::Command::new(python).arg(script).arg(format!("http://{addr}/fhir")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fhirpy run failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all interactions behaved"), "{stdout}");
}
