//! Black-box tests of the background workers on the running binary: HL7 v2 over MLLP is journaled, converted to
//! FHIR and screening QuestionnaireResponses normalized into SDOHCC Observations and Conditions; SQLite and
//! PostgreSQL. Waits poll the admin and FHIR APIs for a condition under a deadline, never sleep to synchronize.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::mllp::{field, send};
use support::*;

const DEADLINE: Duration = WAIT_DEADLINE;

/// The resources of a search result Bundle.
fn search(addr: SocketAddr, path: &str) -> Vec<Value> {
    let bundle = get_json(addr, &format!("/fhir/{path}"));
    bundle["entry"].as_array().map(|e| e.iter().map(|x| x["resource"].clone()).collect()).unwrap_or_default()
}

fn version(resource: &Value) -> String {
    resource["meta"]["versionId"].as_str().expect("versionId").to_owned()
}

fn message(name: &str, control_id: &str) -> Vec<u8> {
    conformance_message(name, control_id, &[])
}

/// The journal entry of a control id, from the admin API.
fn entry(addr: SocketAddr, control_id: &str) -> Option<Value> {
    let listed = get_json(addr, "/admin/messages?limit=1000");
    listed["entries"].as_array().unwrap().iter().find(|e| e["control_id"] == control_id).cloned()
}

/// Waits until the entry of `control_id` reaches `status` and returns it as `/admin/messages/{id}` shows it.
fn wait_status(addr: SocketAddr, control_id: &str, status: &str) -> Value {
    let id = wait_for(&format!("journal entry {control_id}"), || entry(addr, control_id))["id"].as_i64().unwrap();
    wait_for(&format!("{control_id} {status}"), || {
        let e = get_json(addr, &format!("/admin/messages/{id}"));
        (e["status"] == status).then_some(e)
    })
}

fn journal_len(addr: SocketAddr) -> usize {
    get_json(addr, "/admin/messages?limit=1000")["entries"].as_array().unwrap().len()
}

fn reprocess(addr: SocketAddr, id: i64) {
    let (status, _, body) = http(addr, "POST", &format!("/admin/messages/{id}/reprocess"), None);
    assert_eq!(status, 202, "{body}");
}

fn cli(dir: &Path, db_url: &str, args: &[&str]) -> String {
    let mut all = vec!["--database-url", db_url, "messages"];
    all.extend_from_slice(args);
    let (status, out, err) = run(dir, &all, &[]);
    assert!(status.success(), "{err}");
    out
}

fn conversion_and_normalization(db_url: &str) {
    let dir = temp_dir();
    let mut gw = Gateway::start(dir.path(), &["--database-url", db_url, "--http-listen", "127.0.0.1:0"], &[]);
    let (http_addr, mllp_addr) = gw.wait_ready_both();

    // ADT^A04 -> Patient, findable by its identifier.
    let a04 = message("adt_a04.hl7", "CV-A04-1");
    send_acked(mllp_addr, &a04);
    let converted = wait_status(http_addr, "CV-A04-1", "converted");
    let a04_id = converted["id"].as_i64().unwrap();
    let patients = search(http_addr, "Patient?identifier=MRN00000002");
    assert_eq!(patients.len(), 1, "{patients:?}");
    let patient_id = patients[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(version(&patients[0]), "1");
    assert_eq!(patients[0]["address"][0]["line"][0], "1 Oak Ave");

    // A resend is a duplicate (not journaled again); reprocessing a converted entry makes no new versions.
    let before = journal_len(http_addr);
    send_acked(mllp_addr, &a04);
    assert_eq!(journal_len(http_addr), before);
    reprocess(http_addr, a04_id);
    wait_status(http_addr, "CV-A04-1", "converted");
    let patient = get_json(http_addr, &format!("/fhir/Patient/{patient_id}"));
    assert_eq!(version(&patient), "1", "reprocessing an identical message writes no new version");

    // ORU^R01 Hunger Vital Sign -> QuestionnaireResponse -> SDOHCC Observations and a food-insecurity Condition.
    let oru = message("oru_r01_hvs.hl7", "CV-HVS-1");
    send_acked(mllp_addr, &oru);
    wait_status(http_addr, "CV-HVS-1", "converted");
    let subject = format!("Patient/{patient_id}");
    let qrs = search(http_addr, &format!("QuestionnaireResponse?subject={subject}"));
    assert_eq!(qrs.len(), 1, "{qrs:?}");
    let patient = get_json(http_addr, &format!("/fhir/Patient/{patient_id}"));
    assert_eq!(version(&patient), "1", "a result's short PID does not overwrite the ADT's Patient");
    assert_eq!(patient["address"][0]["line"][0], "1 Oak Ave");
    let conditions = wait_for("the food-insecurity Condition", || {
        let found = search(http_addr, &format!("Condition?subject={subject}"));
        (!found.is_empty()).then_some(found)
    });
    assert_eq!(conditions.len(), 1, "{conditions:?}");
    let condition = &conditions[0];
    assert!(condition["code"].to_string().contains("733423003") || condition.to_string().contains("food-insecurity"));
    let evidence = condition["evidence"][0]["detail"][0]["reference"].as_str().expect("evidence");
    assert!(evidence.starts_with("Observation/"), "{evidence}");
    let observations = search(http_addr, &format!("Observation?category=survey&subject={subject}"));
    assert!(observations.len() >= 3, "answers, risk and panel: {observations:?}");
    assert!(observations.iter().all(|o| o["status"] == "final"));
    let evidence_id = evidence.trim_start_matches("Observation/");
    assert!(observations.iter().any(|o| o["id"] == evidence_id), "the evidence is one of the screening Observations");

    // Resending the ORU: duplicate, no new versions anywhere.
    send_acked(mllp_addr, &oru);
    let qr = get_json(http_addr, &format!("/fhir/QuestionnaireResponse/{}", qrs[0]["id"].as_str().unwrap()));
    assert_eq!(version(&qr), "1");

    // Reprocessing the converted ORU rewrites nothing, so nothing is normalized again either.
    let oru_id = entry(http_addr, "CV-HVS-1").unwrap()["id"].as_i64().unwrap();
    reprocess(http_addr, oru_id);
    wait_status(http_addr, "CV-HVS-1", "converted");
    let qr = get_json(http_addr, &format!("/fhir/QuestionnaireResponse/{}", qrs[0]["id"].as_str().unwrap()));
    assert_eq!(version(&qr), "1");
    let condition_now = get_json(http_addr, &format!("/fhir/Condition/{}", condition["id"].as_str().unwrap()));
    assert_eq!(version(&condition_now), "1");

    // ADT^A08 updates the same Patient: version 2.
    let a08 = String::from_utf8(message("adt_a04.hl7", "CV-A08-1"))
        .unwrap()
        .replace("ADT^A04^ADT_A01", "ADT^A08^ADT_A01")
        .replace("EVN|A04", "EVN|A08")
        .replace("1 Oak Ave", "2 Elm St");
    send_acked(mllp_addr, a08.as_bytes());
    wait_status(http_addr, "CV-A08-1", "converted");
    let patient = get_json(http_addr, &format!("/fhir/Patient/{patient_id}"));
    assert_eq!(version(&patient), "2");
    assert_eq!(patient["address"][0]["line"][0], "2 Elm St");

    // A message the mapping cannot convert: failed, with an OperationOutcome naming the location; reprocessing
    // runs it again (same outcome until the mapping is fixed).
    send_acked(mllp_addr, &message("err_missing_pid3.hl7", "CV-ERR-1"));
    let failed = wait_status(http_addr, "CV-ERR-1", "failed");
    let failed_id = failed["id"].as_i64().unwrap();
    let outcome: Value = serde_json::from_str(failed["status_detail"].as_str().expect("status_detail")).unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["severity"], "error");
    assert_eq!(outcome["issue"][0]["expression"][0], "PID-3");
    assert!(!failed["status_detail"].as_str().unwrap().contains("Sample"), "no PHI in the outcome");
    let listed = cli(dir.path(), db_url, &["list", "--status", "failed", "--json"]);
    assert!(listed.lines().any(|l| l.contains("CV-ERR-1") && l.contains("PID-3")), "{listed}");
    let table = cli(dir.path(), db_url, &["list", "--status", "failed"]);
    assert!(table.contains("error: required field PID-3 is missing"), "{table}");
    let shown = cli(dir.path(), db_url, &["show", &failed_id.to_string()]);
    assert!(shown.contains("\"failed\"") && shown.contains("OperationOutcome"), "{shown}");
    reprocess(http_addr, failed_id);
    let again = wait_status(http_addr, "CV-ERR-1", "failed");
    assert_eq!(again["status_detail"], failed["status_detail"]);

    // REST: the IG's Hunger Vital Sign example, for a Patient that exists, is normalized; entered-in-error retracts.
    let (status, _, body) = http(http_addr, "POST", "/fhir/Patient", Some(r#"{"resourceType":"Patient"}"#));
    assert_eq!(status, 201, "{body}");
    let rest_patient = serde_json::from_str::<Value>(&body).unwrap()["id"].as_str().unwrap().to_owned();
    let mut example: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("conformance/sdoh/ig-hvs-example.input.json")).unwrap(),
    )
    .unwrap();
    example["subject"] = json!({"reference": format!("Patient/{rest_patient}")});
    example["source"] = json!({"reference": format!("Patient/{rest_patient}")});
    example.as_object_mut().unwrap().remove("id");
    let (status, _, body) = http(http_addr, "POST", "/fhir/QuestionnaireResponse", Some(&example.to_string()));
    assert_eq!(status, 201, "{body}");
    let mut qr: Value = serde_json::from_str(&body).unwrap();
    let qr_id = qr["id"].as_str().unwrap().to_owned();
    let rest_subject = format!("Patient/{rest_patient}");
    let condition = wait_for("the REST QR's Condition", || {
        search(http_addr, &format!("Condition?subject={rest_subject}")).into_iter().next()
    });
    assert_eq!(condition["verificationStatus"]["coding"][0]["code"], "unconfirmed");
    let observations = search(http_addr, &format!("Observation?subject={rest_subject}"));
    assert!(observations.len() >= 3, "{observations:?}");

    qr["status"] = json!("entered-in-error");
    let (status, _, body) =
        http(http_addr, "PUT", &format!("/fhir/QuestionnaireResponse/{qr_id}"), Some(&qr.to_string()));
    assert_eq!(status, 200, "{body}");
    let condition_id = condition["id"].as_str().unwrap().to_owned();
    wait_for("the Condition to be entered-in-error", || {
        let c = get_json(http_addr, &format!("/fhir/Condition/{condition_id}"));
        (c["verificationStatus"]["coding"][0]["code"] == "entered-in-error").then_some(())
    });
    for o in &observations {
        let o = get_json(http_addr, &format!("/fhir/Observation/{}", o["id"].as_str().unwrap()));
        assert_eq!(o["status"], "entered-in-error", "{o}");
    }

    // Deleting the converted screening retracts what it derived, as entered-in-error.
    let hvs_condition = condition_now["id"].as_str().unwrap().to_owned();
    let qr_path = format!("/fhir/QuestionnaireResponse/{}", qrs[0]["id"].as_str().unwrap());
    assert_eq!(http(http_addr, "DELETE", &qr_path, None).0, 204);
    wait_for("the deleted screening's Condition to be entered-in-error", || {
        let c = get_json(http_addr, &format!("/fhir/Condition/{hvs_condition}"));
        (c["verificationStatus"]["coding"][0]["code"] == "entered-in-error").then_some(())
    });

    // A questionnaire of no supported instrument is stored as sent, derives nothing, and is counted for operators.
    let unknown = json!({
        "resourceType": "QuestionnaireResponse", "status": "completed",
        "questionnaire": "http://example.org/Questionnaire/local-intake",
        "subject": {"reference": rest_subject},
        "item": [{"linkId": "1", "answer": [{"valueString": "free text"}]}]
    });
    let (status, _, body) = http(http_addr, "POST", "/fhir/QuestionnaireResponse", Some(&unknown.to_string()));
    assert_eq!(status, 201, "{body}");
    let unknown_id = serde_json::from_str::<Value>(&body).unwrap()["id"].as_str().unwrap().to_owned();
    wait_for("the unknown instrument to be reported", || {
        let (_, _, metrics) = http(http_addr, "GET", "/metrics", None);
        metrics
            .lines()
            .any(|l| l.starts_with("normalization_total{") && l.contains("unsupported_instrument"))
            .then_some(())
    });
    let derived = search(http_addr, &format!("Observation?derived-from=QuestionnaireResponse/{unknown_id}"));
    assert!(derived.is_empty(), "{derived:?}");
    assert_eq!(get_json(http_addr, &format!("/fhir/QuestionnaireResponse/{unknown_id}"))["item"], unknown["item"]);

    let (_, _, metrics) = http(http_addr, "GET", "/metrics", None);
    for expected in ["conversion_total{", "outcome=\"failed\"", "normalization_total{", "conversion_duration_seconds"] {
        assert!(metrics.contains(expected), "metrics lack {expected:?}");
    }
    let started = Instant::now();
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());
    assert!(started.elapsed() < Duration::from_secs(10), "workers stop promptly");
    assert!(!gw.seen.iter().any(|l| l.contains("MRN00000002") || l.contains("Sample")), "no identifiers in logs");
}

#[test]
fn sqlite_messages_are_converted_and_screenings_normalized() {
    let dir = temp_dir();
    let url = format!("sqlite:{}", dir.path().join("gw.db").display());
    conversion_and_normalization(&url);
}

#[test]
fn postgres_messages_are_converted_and_screenings_normalized() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(postgres_schema_url(&postgres_url()));
    conversion_and_normalization(&url);
}

/// A conformance message asking for enhanced-mode acknowledgments: accept ACK always, application ACK per `mode`.
fn enhanced(name: &str, control_id: &str, application_ack: &str) -> Vec<u8> {
    let raw = String::from_utf8(message(name, control_id)).unwrap();
    let mut segments: Vec<String> = raw.split('\r').map(str::to_owned).collect();
    let mut msh: Vec<String> = segments[0].split('|').map(str::to_owned).collect();
    msh.resize(msh.len().max(16), String::new());
    msh[14] = "AL".into();
    msh[15] = application_ack.into();
    segments[0] = msh.join("|");
    segments.join("\r").into_bytes()
}

/// An EHR's MLLP listener: records every message it receives and acknowledges it with AA.
fn ehr_receiver() -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (sender, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let sender = sender.clone();
            std::thread::spawn(move || {
                while let Some(message) = support::mllp::read_frame(&mut stream) {
                    let control_id = field(&message, "MSH", 10).unwrap_or_default();
                    let ack = format!(
                        "MSH|^~\\&|EHR|CLINIC-1|SDOH-GATEWAY|SDOH-HUB|20261123090000||ACK|R{control_id}|P|2.5.1\rMSA|AA|{control_id}"
                    );
                    if sender.send(message).is_err() {
                        return;
                    }
                    use std::io::Write;
                    if stream.write_all(&support::mllp::frame(ack.as_bytes())).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, received)
}

/// Enhanced-mode senders get the outcome of conversion back as an application acknowledgment over outbound MLLP:
/// AA when converted, AE with the field at fault when not, none when they asked for none (MSH-16 NE), in order.
#[test]
fn application_acknowledgments_report_the_conversion_outcome() {
    let (ehr, received) = ehr_receiver();
    let dir = temp_dir();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[outbound]\nbackoff_base_ms = 50\npoll_interval_ms = 100\n\n[[outbound.destinations]]\nname = \"clinic\"\n\
             address = \"{ehr}\"\nreceiving_application = \"EPIC\"\nreceiving_facility = \"CLINIC-1\"\nack_timeout_secs = 5\n"
        ),
    )
    .unwrap();
    let url = format!("sqlite:{}", dir.path().join("gw.db").display());
    let config = config.display().to_string();
    let mut gw =
        Gateway::start(dir.path(), &["--config", &config, "--database-url", &url, "--http-listen", "127.0.0.1:0"], &[]);
    let (_, mllp_addr) = gw.wait_ready_both();
    let mut stream = TcpStream::connect(mllp_addr).expect("connect to MLLP");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    for (name, control_id, mode) in [
        ("adt_a04.hl7", "APPACK-1", "AL"),
        ("adt_a08.hl7", "APPACK-2", "NE"),
        ("err_missing_pid3.hl7", "APPACK-3", "ER"),
        ("adt_a08.hl7", "APPACK-4", "ER"),
        ("adt_a01.hl7", "APPACK-5", "SU"),
    ] {
        let accept = send(&mut stream, &enhanced(name, control_id, mode)).expect("an accept ACK");
        assert_eq!(field(&accept, "MSA", 1).as_deref(), Some("CA"), "{}", String::from_utf8_lossy(&accept));
    }
    let mut acks = Vec::new();
    for _ in 0..3 {
        let ack = received.recv_timeout(DEADLINE).expect("an application ACK reaches the EHR");
        acks.push(ack);
    }
    // Delivery is in order per destination, so APPACK-2 (NE) and APPACK-4 (ER, converted) would have arrived
    // between these had they been sent.
    let summary: Vec<(String, String)> =
        acks.iter().map(|a| (field(a, "MSA", 1).unwrap_or_default(), field(a, "MSA", 2).unwrap_or_default())).collect();
    assert_eq!(
        summary,
        [("AA".into(), "APPACK-1".into()), ("AE".into(), "APPACK-3".into()), ("AA".into(), "APPACK-5".into())]
    );
    let error = &acks[1];
    assert_eq!(field(error, "MSH", 9).as_deref(), Some("ACK^A04^ACK"));
    assert_eq!(field(error, "MSH", 5).as_deref(), Some("EPIC"));
    let err = field(error, "ERR", 2).expect("ERR-2 error location (2.5.1)");
    assert!(err.starts_with("PID^1^3"), "{err}");
    assert!(field(error, "ERR", 3).is_some_and(|c| c.starts_with("101")), "required field missing");
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());
}
