//! Registries over the real binary with real credentials, on SQLite and PostgreSQL: membership following the data
//! (a new Condition adds a member to the registry's Group, entered-in-error removes it), the pseudonymized records
//! feed with `_since` and paging, Bulk Data export with a standard client flow (kick-off, poll, download, every
//! NDJSON line validated as FHIR R4, no raw identifiers or names), bad input, the concurrent-export limit, cancel,
//! expiry, the roles, and the `export` command.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// At least 32 bytes, as the gateway requires.
const DIABETES_KEY: &str = "test-key-for-the-diabetes-registry-0123456789";
const CKD_KEY: &str = "test-key-for-the-ckd-registry-0123456789abcdef";

/// What must never leave in a registry record: names, identifiers, addresses, raw ids.
const SECRETS: &[&str] =
    &["Rivera", "Okafor", "MRN-4471", "MRN-5502", "12 Elm", "Springfield", "pat-rivera", "pat-okafor", "cond-dm"];

struct Client {
    token: String,
}

fn client(dir: &Path, db_url: &str, role: &str) -> Client {
    let v = add_client(dir, db_url, role, role, &format!("Organization/{role}-org"));
    Client { token: v["token"].as_str().unwrap().to_owned() }
}

struct Api {
    addr: SocketAddr,
}

impl Api {
    fn send(
        &self,
        who: &Client,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (u16, String, String) {
        let body = body.map(Value::to_string);
        http_as(self.addr, &who.token, method, path, headers, body.as_deref())
    }

    fn get(&self, who: &Client, path: &str) -> (u16, Value) {
        let (status, _, text) = self.send(who, "GET", path, &[], None);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn put(&self, who: &Client, resource: &Value) {
        let path = format!("/fhir/{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
        let (status, _, body) = self.send(who, "PUT", &path, &[], Some(resource));
        assert!(status == 200 || status == 201, "{path}: {status} {body}");
    }

    fn kick_off(&self, who: &Client, path: &str) -> (u16, String, Value) {
        let (status, head, body) =
            self.send(who, "GET", path, &[("Prefer", "respond-async"), ("Accept", "application/fhir+json")], None);
        (status, head, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

/// A URL the gateway gave out, as a path on its listener.
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest[rest.find('/').unwrap()..].to_owned()
}

fn diabetes_condition(id: &str, patient: &str, verification: &str) -> Value {
    json!({"resourceType": "Condition", "id": id, "subject": {"reference": format!("Patient/{patient}")},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}],
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E11.9"}], "text": "T2DM, Rivera's chart"},
        "onsetDateTime": "2019-03-04", "note": [{"text": "Rivera lives at 12 Elm"}]})
}

fn patient(id: &str, family: &str, mrn: &str, birth: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": family, "given": ["Ana"]}], "gender": "female",
        "birthDate": birth, "identifier": [{"system": "urn:oid:1.2.3", "value": mrn}],
        "address": [{"line": ["12 Elm St"], "city": "Springfield", "district": "Adams County", "postalCode": "62701"}],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "es"}]}, "preferred": true}],
        "extension": [{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race", "extension": [
            {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2054-5", "display": "Black or African American"}},
            {"url": "text", "valueString": "Black"}]}]})
}

/// The clinic's data for Ana Rivera: diabetes, a food-insecurity screening, a referral, an encounter, coverage.
fn seed_rivera(api: &Api, ehr: &Client) {
    api.put(ehr, &patient("pat-rivera", "Rivera", "MRN-4471", "1961-07-15"));
    api.put(
        ehr,
        &json!({"resourceType": "Coverage", "id": "cov-rivera", "status": "active",
        "type": {"coding": [{"system": "https://nahdo.org/sopt", "code": "2", "display": "MEDICAID"}]},
        "beneficiary": {"reference": "Patient/pat-rivera"}, "payor": [{"reference": "Organization/payer"}]}),
    );
    api.put(ehr, &json!({"resourceType": "Observation", "id": "obs-hunger", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "social-history"}]},
                     {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "88124-3"}]}, "subject": {"reference": "Patient/pat-rivera"},
        "effectiveDateTime": "2026-01-10T09:00:00Z",
        "valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "LA19952-3", "display": "At risk"}]}}));
    api.put(
        ehr,
        &json!({"resourceType": "Encounter", "id": "enc-rivera", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/pat-rivera"}, "period": {"start": "2026-01-10T09:00:00Z"},
        "participant": [{"individual": {"reference": "Practitioner/dr-who", "display": "Dr Who"}}]}),
    );
    api.put(
        ehr,
        &json!({"resourceType": "ServiceRequest", "id": "sr-food", "status": "active", "intent": "order",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "467771000124109"}]},
        "subject": {"reference": "Patient/pat-rivera"}, "requester": {"reference": "Organization/clinic"}}),
    );
    api.put(
        ehr,
        &json!({"resourceType": "Task", "id": "task-food", "status": "requested", "intent": "order",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "focus": {"reference": "ServiceRequest/sr-food"}, "for": {"reference": "Patient/pat-rivera"},
        "authoredOn": "2026-01-10T10:00:00Z", "requester": {"reference": "Organization/clinic"},
        "owner": {"reference": "Organization/cbo-a"}}),
    );
    // The Condition last: membership is decided with everything else already there.
    api.put(ehr, &diabetes_condition("cond-dm", "pat-rivera", "confirmed"));
}

fn group_members(api: &Api, admin: &Client) -> Vec<(String, Value)> {
    let (status, group) = api.get(admin, "/fhir/Group/registry-diabetes");
    if status != 200 {
        return Vec::new();
    }
    group["member"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| (m["entity"]["reference"].as_str().unwrap().to_owned(), m.clone()))
        .collect()
}

fn feed(api: &Api, who: &Client, query: &str) -> Value {
    let (status, bundle) = api.get(who, &format!("/fhir/Group/registry-diabetes/$registry-records{query}"));
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["type"], "history");
    bundle
}

fn entries(bundle: &Value) -> Vec<Value> {
    bundle["entry"].as_array().cloned().unwrap_or_default()
}

fn assert_no_secrets(text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret:?} leaked into registry output: {text}");
    }
}

fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"].as_array()?.iter().find(|l| l["relation"] == "next").map(|l| path_of(l["url"].as_str().unwrap()))
}

/// Kick-off, poll, download: the manifest and every line of every file (validated as FHIR R4).
fn bulk_export(api: &Api, who: &Client, kick_off: &str) -> (Value, Vec<(String, Vec<Value>)>) {
    let (status, head, body) = api.kick_off(who, kick_off);
    assert_eq!(status, 202, "{body}");
    let status_url = path_of(&header_value(&head, "Content-Location").expect("Content-Location"));
    let manifest = wait_within("the export", Duration::from_secs(60), || {
        let (status, head, body) = api.send(who, "GET", &status_url, &[], None);
        match status {
            202 => {
                assert!(header_value(&head, "X-Progress").is_some(), "202 without X-Progress");
                None
            }
            200 => Some(serde_json::from_str::<Value>(&body).expect("manifest JSON")),
            other => panic!("status URL answered {other}: {body}"),
        }
    });
    assert!(manifest["transactionTime"].as_str().is_some());
    assert!(manifest["request"].as_str().unwrap().contains("$export"));
    assert_eq!(manifest["requiresAccessToken"], true);
    assert_eq!(manifest["error"], json!([]));
    let mut files = Vec::new();
    for output in manifest["output"].as_array().unwrap() {
        let (status, head, body) = api.send(who, "GET", &path_of(output["url"].as_str().unwrap()), &[], None);
        assert_eq!(status, 200, "{body}");
        assert!(header_value(&head, "Content-Type").unwrap().starts_with("application/fhir+ndjson"));
        let resource_type = output["type"].as_str().unwrap().to_owned();
        let lines: Vec<Value> = body
            .lines()
            .map(|line| {
                let resource: Value = serde_json::from_str(line).expect("each NDJSON line is one JSON resource");
                fhir_server::rest::validate::validate_resource(&resource, &resource_type)
                    .unwrap_or_else(|e| panic!("invalid {resource_type} line: {e}: {line}"));
                resource
            })
            .collect();
        assert_eq!(output["count"], lines.len(), "{resource_type}: manifest count");
        files.push((resource_type, lines));
    }
    (manifest, files)
}

fn start(dir: &Path, db_url: &str, extra: &[(&str, &str)]) -> (Gateway, Api) {
    let exports = dir.join("exports");
    let exports = exports.to_str().unwrap();
    let mut env = vec![
        ("SDOH_GATEWAY_AUTH__REQUIRED", "true"),
        ("SDOH_GATEWAY_AUTH__CACHE_SECS", "0"),
        ("SDOH_GATEWAY_REGISTRIES__ENABLED", "[diabetes,ckd]"),
        ("SDOH_GATEWAY_REGISTRIES__KEYS__DIABETES", DIABETES_KEY),
        ("SDOH_GATEWAY_REGISTRIES__KEYS__CKD", CKD_KEY),
        ("SDOH_GATEWAY_EXPORTS__FOLDER", exports),
        ("SDOH_GATEWAY_EXPORTS__MAX_CONCURRENT_PER_CLIENT", "1"),
        ("SDOH_GATEWAY_WORKERS__POLL_INTERVAL_MS", "50"),
    ];
    env.extend_from_slice(extra);
    let mut gw = Gateway::start(dir, &["--database-url", db_url, "--http-listen", "127.0.0.1:0"], &env);
    let addr = gw.wait_ready();
    (gw, Api { addr })
}

fn registries_end_to_end(db_url: &str) {
    let dir = temp_dir();
    let admin = client(dir.path(), db_url, "admin");
    let ehr = client(dir.path(), db_url, "ehr");
    let registry = client(dir.path(), db_url, "registry");
    let (mut gw, api) = start(dir.path(), db_url, &[]);

    // Roles: registry clients get the registry endpoints, not the clinical API; clinics get no registry records.
    let (status, _) = api.get(&registry, "/fhir/Patient/pat-rivera");
    assert_eq!(status, 403);
    let (status, _) = api.get(&ehr, "/fhir/Group/registry-diabetes/$registry-records");
    assert_eq!(status, 403);
    let (status, _, _) = api.kick_off(&registry, "/fhir/$export");
    assert_eq!(status, 403, "system exports carry identified data: admin only");

    // A new Condition adds a member; a minor with the same Condition is not one (minimum age 18).
    seed_rivera(&api, &ehr);
    api.put(&ehr, &patient("pat-young", "Young", "MRN-9", "2015-01-01"));
    api.put(&ehr, &diabetes_condition("cond-young", "pat-young", "confirmed"));
    let members = wait_within("Rivera joining the diabetes Group", Duration::from_secs(30), || {
        let m = group_members(&api, &admin);
        m.iter().any(|(r, _)| r == "Patient/pat-rivera").then_some(m)
    });
    assert_eq!(members.len(), 1, "{members:?}");
    let (_, member) = &members[0];
    assert_eq!(member["period"]["start"], "2019-03-04");
    assert_eq!(member["inactive"], false);
    let (_, group) = api.get(&admin, "/fhir/Group/registry-diabetes");
    assert_eq!((group["type"].as_str(), group["actual"].as_bool()), (Some("person"), Some(true)));

    // The feed: one pseudonymized record with everything the registry asks for, nothing identifying.
    let first = feed(&api, &registry, "");
    let records = entries(&first);
    assert_eq!(records.len(), 1, "{first}");
    assert_eq!(records[0]["request"]["method"], "PUT");
    let record = &records[0]["resource"];
    assert_no_secrets(&record.to_string());
    let pseudonym = record["id"].as_str().unwrap().to_owned();
    assert_eq!(pseudonym.len(), 32);
    let types: Vec<&str> =
        record["entry"].as_array().unwrap().iter().map(|e| e["resource"]["resourceType"].as_str().unwrap()).collect();
    for t in ["Patient", "Condition", "Observation", "ServiceRequest", "Task", "Encounter"] {
        assert!(types.contains(&t), "record lacks {t}: {types:?}");
    }
    let pseudo_patient = &record["entry"][0]["resource"];
    assert_eq!(pseudo_patient["id"], pseudonym);
    assert_eq!(pseudo_patient["birthDate"], "1961");
    assert_eq!(pseudo_patient["address"], json!([{"district": "Adams County"}]));
    assert!(pseudo_patient.get("name").is_none() && pseudo_patient.get("identifier").is_none());
    assert!(pseudo_patient.to_string().contains("MEDICAID"), "payer type from Coverage: {pseudo_patient}");
    for e in record["entry"].as_array().unwrap() {
        let r = &e["resource"];
        fhir_server::rest::validate::validate_resource(r, r["resourceType"].as_str().unwrap()).unwrap();
        for reference in r.to_string().match_indices("\"reference\":\"") {
            let tail = &r.to_string()[reference.0 + 13..];
            let target = &tail[..tail.find('"').unwrap()];
            assert!(types.iter().any(|t| target.starts_with(&format!("{t}/"))), "reference {target} leaves the record");
        }
    }
    // Bad input on the feed.
    let (status, outcome) = api.get(&registry, "/fhir/Group/registry-diabetes/$registry-records?_since=yesterday");
    assert_eq!((status, outcome["resourceType"].as_str()), (400, Some("OperationOutcome")));
    let (status, _) = api.get(&registry, "/fhir/Group/registry-nope/$registry-records");
    assert_eq!(status, 404);

    // A second member; paging one record at a time; `_since` sees only what changed after.
    let between = store::format_instant(store::Timestamp::now());
    api.put(&ehr, &patient("pat-okafor", "Okafor", "MRN-5502", "1950-02-02"));
    api.put(&ehr, &diabetes_condition("cond-dm-2", "pat-okafor", "confirmed"));
    wait_within("Okafor joining", Duration::from_secs(30), || {
        (entries(&feed(&api, &registry, "")).len() == 2).then_some(())
    });
    let page1 = feed(&api, &registry, "?_count=1");
    assert_eq!(entries(&page1).len(), 1);
    assert_eq!(entries(&page1)[0]["resource"]["id"], pseudonym, "change order: Rivera first");
    let next = next_link(&page1).expect("a next link");
    let (status, page2) = api.get(&registry, &next);
    assert_eq!(status, 200, "{page2}");
    assert_eq!(entries(&page2).len(), 1);
    assert_ne!(entries(&page2)[0]["resource"]["id"], pseudonym);
    assert!(next_link(&page2).is_none());
    let since = feed(&api, &registry, &format!("?_since={}", between.replace(':', "%3A")));
    assert_eq!(entries(&since).len(), 1, "only Okafor changed since {between}");
    assert_no_secrets(&since.to_string());

    // Bulk export with a standard client flow, as the registry.
    let (_, files) = bulk_export(&api, &registry, "/fhir/Group/registry-diabetes/$export");
    let patients = files.iter().find(|(t, _)| t == "Patient").map(|(_, l)| l.len());
    assert_eq!(patients, Some(2));
    assert!(files.iter().any(|(t, _)| t == "Task"));
    assert_no_secrets(&serde_json::to_string(&files.iter().map(|(_, l)| l).collect::<Vec<_>>()).unwrap());
    let (_, only) = bulk_export(
        &api,
        &registry,
        "/fhir/Group/registry-diabetes/$export?_type=Patient,Condition&_outputFormat=application/fhir%2Bndjson",
    );
    let mut kinds: Vec<&str> = only.iter().map(|(t, _)| t.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["Condition", "Patient"]);
    let (_, changed) = bulk_export(
        &api,
        &registry,
        &format!("/fhir/Group/registry-diabetes/$export?_type=Patient&_since={}", between.replace(':', "%3A")),
    );
    assert_eq!(changed[0].1.len(), 1, "only Okafor's record changed since {between}");
    // The admin's system and Patient exports hold stored resources as they are.
    let (_, raw) = bulk_export(&api, &admin, "/fhir/$export?_type=Patient");
    assert_eq!(raw[0].1.len(), 3, "three stored Patients");
    let (_, compartment) = bulk_export(&api, &admin, "/fhir/Patient/$export?_type=Condition");
    assert_eq!(compartment[0].1.len(), 3, "three stored Conditions");
    // The registry routes sit beside the FHIR ones without hiding them.
    let (status, history) = api.get(&admin, "/fhir/Group/registry-diabetes/_history");
    assert_eq!((status, history["type"].as_str()), (200, Some("history")), "{history}");
    let (status, _) = api.get(&ehr, "/fhir/Patient/pat-rivera");
    assert_eq!(status, 200);

    // Bad kick-offs.
    for (path, expected) in [
        ("/fhir/Group/registry-nope/$export", 404),
        ("/fhir/Group/registry-copd-asthma/$export", 404),
        ("/fhir/Group/registry-diabetes/$export?_since=2026-13-01", 400),
        ("/fhir/Group/registry-diabetes/$export?_type=Patient,Medication", 400),
        ("/fhir/Group/registry-diabetes/$export?_outputFormat=text/csv", 400),
    ] {
        let (status, _, outcome) = api.kick_off(&registry, path);
        assert_eq!(status, expected, "{path}: {outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{path}");
    }
    let (status, _, _) = api.send(&registry, "GET", "/fhir/Group/registry-diabetes/$export", &[], None);
    assert_eq!(status, 400, "a kick-off without Prefer: respond-async");

    // Entered-in-error removes the member from the Group, and the feed says so.
    api.put(&ehr, &diabetes_condition("cond-dm", "pat-rivera", "entered-in-error"));
    wait_within("Rivera leaving the Group", Duration::from_secs(30), || {
        let m = group_members(&api, &admin);
        (m.len() == 1 && m[0].0 == "Patient/pat-okafor").then_some(())
    });
    let removal = wait_within("the removal in the feed", Duration::from_secs(10), || {
        entries(&feed(&api, &registry, "")).into_iter().find(|e| e["request"]["method"] == "DELETE")
    });
    assert_eq!(removal["request"]["url"], format!("Bundle/{pseudonym}"));

    // Cancelling a finished export removes its files.
    let (status, head, _) = api.kick_off(&registry, "/fhir/Group/registry-diabetes/$export");
    assert_eq!(status, 202);
    let status_url = path_of(&header_value(&head, "Content-Location").unwrap());
    let manifest: Value = wait_within("the export", Duration::from_secs(60), || {
        let (status, _, body) = api.send(&registry, "GET", &status_url, &[], None);
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    });
    let file_url = path_of(manifest["output"][0]["url"].as_str().unwrap());
    let (status, _, _) = api.send(&admin, "GET", &file_url, &[], None);
    assert_eq!(status, 404, "another client's export files are not found");
    let (status, _, _) = api.send(&registry, "DELETE", &status_url, &[], None);
    assert_eq!(status, 202);
    let (status, _, _) = api.send(&registry, "GET", &file_url, &[], None);
    assert_eq!(status, 404);
    let export_id = status_url.rsplit('/').next().unwrap().to_owned();
    wait_within("the cancelled export's folder removed", Duration::from_secs(10), || {
        (!dir.path().join("exports").join(&export_id).exists()).then_some(())
    });
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());

    // Without workers exports stay queued: the per-client limit answers 429; a cancel frees the slot.
    let (mut gw, api) = start(dir.path(), db_url, &[("SDOH_GATEWAY_WORKERS__COUNT", "0")]);
    let (status, head, _) = api.kick_off(&registry, "/fhir/Group/registry-diabetes/$export");
    assert_eq!(status, 202);
    let queued = path_of(&header_value(&head, "Content-Location").unwrap());
    let (status, head, _) = api.send(&registry, "GET", &queued, &[], None);
    assert_eq!(status, 202);
    assert!(header_value(&head, "X-Progress").is_some());
    let (status, _, outcome) = api.kick_off(&registry, "/fhir/Group/registry-diabetes/$export");
    assert_eq!((status, outcome["resourceType"].as_str()), (429, Some("OperationOutcome")), "{outcome}");
    let (status, _, _) = api.kick_off(&admin, "/fhir/Group/registry-diabetes/$export");
    assert_eq!(status, 202, "the limit is per client");
    let (status, _, _) = api.send(&registry, "DELETE", &queued, &[], None);
    assert_eq!(status, 202);
    let (status, _, _) = api.send(&registry, "GET", &queued, &[], None);
    assert_eq!(status, 404, "a cancelled export is gone");
    let (status, _, _) = api.kick_off(&registry, "/fhir/Group/registry-diabetes/$export");
    assert_eq!(status, 202);
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());

    // Completed exports expire: files and status URL go.
    let (mut gw, api) = start(
        dir.path(),
        db_url,
        &[("SDOH_GATEWAY_EXPORTS__EXPIRY_SECS", "1"), ("SDOH_GATEWAY_EXPORTS__MAX_CONCURRENT_PER_CLIENT", "5")],
    );
    let (status, head, _) = api.kick_off(&admin, "/fhir/Group/registry-diabetes/$export?_type=Patient");
    assert_eq!(status, 202);
    let status_url = path_of(&header_value(&head, "Content-Location").unwrap());
    wait_within("the export to complete and then expire", Duration::from_secs(60), || {
        let (status, _, _) = api.send(&admin, "GET", &status_url, &[], None);
        (status == 404).then_some(())
    });
    let id = status_url.rsplit('/').next().unwrap();
    assert!(!dir.path().join("exports").join(id).exists());
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());

    // The export command: the same files, straight from the database.
    let out = dir.path().join("cli-export");
    let (status, stdout, stderr) = run(
        dir.path(),
        &["--database-url", db_url, "export", "--registry", "diabetes", "--out", out.to_str().unwrap()],
        &[],
    );
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("exported"), "progress lines when not a terminal: {stderr}");
    assert!(stdout.contains("Patient\t1\t"), "{stdout}");
    let patients = std::fs::read_to_string(out.join("Patient.ndjson")).unwrap();
    for line in patients.lines() {
        let resource: Value = serde_json::from_str(line).unwrap();
        fhir_server::rest::validate::validate_resource(&resource, "Patient").unwrap();
    }
    assert_no_secrets(&patients);
    let (status, _, stderr) = run(
        dir.path(),
        &["--database-url", db_url, "export", "--registry", "nope", "--out", out.to_str().unwrap()],
        &[],
    );
    assert!(!status.success() && stderr.contains("not a known registry"), "{stderr}");
}

#[test]
fn registries_end_to_end_on_sqlite() {
    let dir = temp_dir();
    registries_end_to_end(&format!("sqlite:{}", dir.path().join("registries.db").display()));
}

#[test]
fn registries_end_to_end_on_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(postgres_schema_url(&postgres_url()));
    registries_end_to_end(&url);
}

#[test]
fn an_enabled_registry_without_its_key_is_refused_at_start_up() {
    let dir = temp_dir();
    let (status, _, stderr) =
        run(dir.path(), &["check-config"], &[("SDOH_GATEWAY_REGISTRIES__ENABLED", "[copd-asthma]")]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("registries.keys.copd-asthma") && stderr.contains("SDOH_GATEWAY_REGISTRIES__KEYS__COPD_ASTHMA"),
        "{stderr}"
    );
    let (status, stdout, stderr) = run(
        dir.path(),
        &["check-config"],
        &[
            ("SDOH_GATEWAY_REGISTRIES__ENABLED", "[copd-asthma]"),
            ("SDOH_GATEWAY_REGISTRIES__KEYS__COPD_ASTHMA", DIABETES_KEY),
        ],
    );
    assert!(status.success(), "{stderr}");
    assert!(!stdout.contains(DIABETES_KEY), "keys are redacted: {stdout}");
    let (status, _, stderr) = run(
        dir.path(),
        &["check-config"],
        &[("SDOH_GATEWAY_REGISTRIES__ENABLED", "[diabetes]"), ("SDOH_GATEWAY_REGISTRIES__KEYS__DIABETES", "short")],
    );
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("at least 32 bytes"), "{stderr}");
}

#[test]
fn a_registry_enabled_later_evaluates_the_data_already_stored() {
    let dir = temp_dir();
    let db_url = format!("sqlite:{}", dir.path().join("later.db").display());
    let args = ["--database-url", db_url.as_str(), "--http-listen", "127.0.0.1:0"];
    let mut gw = Gateway::start(dir.path(), &args, &[]);
    let addr = gw.wait_ready();
    for resource in [
        patient("pat-rivera", "Rivera", "MRN-4471", "1961-07-15"),
        diabetes_condition("cond-dm", "pat-rivera", "confirmed"),
    ] {
        let path = format!("/fhir/{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
        let (status, _, body) = http(addr, "PUT", &path, Some(&resource.to_string()));
        assert_eq!(status, 201, "{body}");
    }
    let (status, _, _) = http(addr, "GET", "/fhir/Group/registry-diabetes", None);
    assert_eq!(status, 404, "no registries enabled: no Group");
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());

    let env =
        [("SDOH_GATEWAY_REGISTRIES__ENABLED", "[diabetes]"), ("SDOH_GATEWAY_REGISTRIES__KEYS__DIABETES", DIABETES_KEY)];
    let mut gw = Gateway::start(dir.path(), &args, &env);
    let addr = gw.wait_ready();
    wait_within("the stored patient joining the Group", Duration::from_secs(30), || {
        let (status, _, body) = http(addr, "GET", "/fhir/Group/registry-diabetes", None);
        (status == 200 && body.contains("Patient/pat-rivera")).then_some(())
    });
    let (status, _, feed) = http(addr, "GET", "/fhir/Group/registry-diabetes/$registry-records", None);
    assert_eq!(status, 200);
    assert_no_secrets(&feed);
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn a_condition_moved_to_another_patient_moves_the_membership() {
    let dir = temp_dir();
    let db_url = format!("sqlite:{}", dir.path().join("moved.db").display());
    let env =
        [("SDOH_GATEWAY_REGISTRIES__ENABLED", "[diabetes]"), ("SDOH_GATEWAY_REGISTRIES__KEYS__DIABETES", DIABETES_KEY)];
    let mut gw = Gateway::start(dir.path(), &["--database-url", &db_url, "--http-listen", "127.0.0.1:0"], &env);
    let addr = gw.wait_ready();
    let put = |resource: Value| {
        let path = format!("/fhir/{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
        let (status, _, body) = http(addr, "PUT", &path, Some(&resource.to_string()));
        assert!(status == 200 || status == 201, "{body}");
    };
    put(patient("pat-rivera", "Rivera", "MRN-4471", "1961-07-15"));
    put(patient("pat-okafor", "Okafor", "MRN-5502", "1950-02-02"));
    let members = || {
        let (status, _, body) = http(addr, "GET", "/fhir/Group/registry-diabetes", None);
        let group: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let mut m: Vec<String> = group["member"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| m["entity"]["reference"].as_str().unwrap().to_owned())
            .collect();
        m.sort();
        (status == 200).then_some(m)
    };
    put(diabetes_condition("cond-dm", "pat-rivera", "confirmed"));
    wait_within("Rivera joining", Duration::from_secs(30), || (members()? == ["Patient/pat-rivera"]).then_some(()));
    // The coding clerk fixes the chart: the Condition was Okafor's.
    put(diabetes_condition("cond-dm", "pat-okafor", "confirmed"));
    wait_within("the membership moving to Okafor", Duration::from_secs(30), || {
        (members()? == ["Patient/pat-okafor"]).then_some(())
    });
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());
}
