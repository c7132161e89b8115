//! Closed-loop referrals over HL7 v2, black-box on the running binary: a REF^I12 in over MLLP becomes a referral
//! Task; each status change a CBO makes through the FHIR API goes back to the referring EHR as an RRI^I12 over
//! outbound MLLP, in order, retried until acknowledged, and every one is recorded with its ACK in the outbound log
//! (`/admin/outbound`, `sdoh-gateway outbound`, `/metrics`). The EHR's own update (REF^I14) is not echoed back, and a
//! Task whose EHR has no outbound destination is counted, not lost silently. SQLite and PostgreSQL; a mutual-TLS
//! destination.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use support::mllp::field;
use support::*;

const DEADLINE: Duration = WAIT_DEADLINE;

/// The journal entry of `control_id` once converted.
fn wait_converted(addr: SocketAddr, control_id: &str) {
    wait_for(&format!("{control_id} converted"), || {
        let listed = get_json(addr, "/admin/messages?limit=1000");
        let entry = listed["entries"].as_array()?.iter().find(|e| e["control_id"] == control_id)?.clone();
        assert_ne!(entry["status"], "failed", "{entry}");
        (entry["status"] == "converted").then_some(())
    })
}

/// The referral Task converted from the REF with this control id (found by its `meta.source`).
fn task_from(addr: SocketAddr, control_id: &str) -> Value {
    let bundle = get_json(addr, "/fhir/Task?_count=100");
    let tasks: Vec<Value> = bundle["entry"].as_array().unwrap().iter().map(|e| e["resource"].clone()).collect();
    let suffix = format!("#{control_id}");
    tasks
        .into_iter()
        .find(|t| t["meta"]["source"].as_str().is_some_and(|s| s.ends_with(&suffix)))
        .unwrap_or_else(|| panic!("no Task from {control_id}"))
}

fn put_task(addr: SocketAddr, task: &Value) -> Value {
    let id = task["id"].as_str().unwrap();
    let (status, _, body) = http(addr, "PUT", &format!("/fhir/Task/{id}"), Some(&task.to_string()));
    assert_eq!(status, 200, "PUT Task: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The value of a metric series (first line whose name and labels contain every `part`), 0 when absent.
fn metric(addr: SocketAddr, parts: &[&str]) -> f64 {
    let (_, _, text) = http(addr, "GET", "/metrics", None);
    text.lines()
        .filter(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A test EHR: records every frame on a channel and answers AE to the first delivery of the first RRI, AA otherwise.
fn ehr_receiver() -> (SocketAddr, mpsc::Receiver<(Vec<u8>, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (sender, received) = mpsc::channel();
    std::thread::spawn(move || {
        let mut refused_once = false;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            while let Some(message) = support::mllp::read_frame(&mut stream) {
                let control_id = field(&message, "MSH", 10).unwrap_or_default();
                let code = if refused_once { "AA" } else { "AE" };
                refused_once = true;
                let ack = format!(
                    "MSH|^~\\&|EPIC|CLINIC-1|SDOH-GATEWAY|SDOH-HUB|20261123090000||ACK^I12^ACK|A{control_id}|P|2.5.1\r\
                     MSA|{code}|{control_id}|{}\r{}",
                    if code == "AE" { "busy" } else { "" },
                    if code == "AE" { "ERR||RF1^1|207^Application internal error^HL70357|E\r" } else { "" }
                );
                if sender.send((message, code.to_owned())).is_err() {
                    return;
                }
                use std::io::Write;
                if stream.write_all(&support::mllp::frame(ack.as_bytes())).is_err() {
                    break;
                }
            }
        }
    });
    (addr, received)
}

/// A component of a field (`RF1-1.4`) of a received message.
fn component(message: &[u8], segment: &str, n: usize, c: usize) -> String {
    field(message, segment, n).unwrap_or_default().split('^').nth(c - 1).unwrap_or_default().to_owned()
}

fn referral_status_round_trip(db_url: &str) {
    let (ehr, received) = ehr_receiver();
    let dir = temp_dir();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[workers]\npoll_interval_ms = 100\n\n[outbound]\nbackoff_base_ms = 50\nbackoff_max_secs = 1\n\
             poll_interval_ms = 100\n\n[[outbound.destinations]]\nname = \"clinic\"\naddress = \"{ehr}\"\n\
             receiving_application = \"EPIC\"\nreceiving_facility = \"CLINIC-1\"\nack_timeout_secs = 5\n"
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let mut gw = Gateway::start(
        dir.path(),
        &["--config", &config, "--database-url", db_url, "--http-listen", "127.0.0.1:0"],
        &[],
    );
    let (http_addr, mllp_addr) = gw.wait_ready_both();

    // REF^I12 in -> SDOHCC ServiceRequest + referral Task, which remembers the REF in meta.source.
    send_acked(mllp_addr, &conformance_message("ref_i12.hl7", "RS-REF-1", &[]));
    wait_converted(http_addr, "RS-REF-1");
    let task = task_from(http_addr, "RS-REF-1");
    assert_eq!(task["status"], "requested");
    assert!(task["meta"]["source"].as_str().unwrap().starts_with("https://sdoh-gateway.org/hl7v2/EPIC/CLINIC-1"));
    let id = task["id"].as_str().unwrap().to_owned();

    // The CBO accepts (round-tripping the Task as read), starts work (dropping meta, as some clients do: the
    // ServiceRequest still names the REF) and completes with an output and a reason.
    let mut accepted = task.clone();
    accepted["status"] = json!("accepted");
    let accepted = put_task(http_addr, &accepted);
    let mut in_progress = accepted.clone();
    in_progress["status"] = json!("in-progress");
    in_progress.as_object_mut().unwrap().remove("meta");
    let in_progress = put_task(http_addr, &in_progress);
    let procedure = json!({"resourceType": "Procedure", "status": "completed",
        "subject": task["for"].clone(), "code": {"text": "Food pantry enrollment"}});
    let (status, _, body) = http(http_addr, "POST", "/fhir/Procedure", Some(&procedure.to_string()));
    assert_eq!(status, 201, "{body}");
    let procedure_id = serde_json::from_str::<Value>(&body).unwrap()["id"].as_str().unwrap().to_owned();
    let mut completed = in_progress.clone();
    completed["status"] = json!("completed");
    completed["statusReason"] = json!({"text": "Enrolled in weekly food box"});
    completed["output"] = json!([{
        "type": {"coding": [{"system": "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes", "code": "resulting-activity"}]},
        "valueReference": {"reference": format!("Procedure/{procedure_id}")}
    }]);
    let completed = put_task(http_addr, &completed);
    assert_eq!(completed["meta"]["versionId"], "4");
    // A write that does not change the status reports nothing.
    let mut same = completed.clone();
    same["note"] = json!([{"text": "called the client"}]);
    put_task(http_addr, &same);

    // Three RRI^I12 in order; the first was refused once (AE) and sent again.
    let mut frames = Vec::new();
    for _ in 0..4 {
        frames.push(received.recv_timeout(DEADLINE).expect("an RRI^I12 reaches the EHR"));
    }
    let answers: Vec<&str> = frames.iter().map(|(_, code)| code.as_str()).collect();
    assert_eq!(answers, ["AE", "AA", "AA", "AA"]);
    assert_eq!(frames[0].0, frames[1].0, "the retry sends the same message");
    let rris: Vec<&Vec<u8>> = frames[1..].iter().map(|(m, _)| m).collect();
    let statuses: Vec<(String, String)> =
        rris.iter().map(|m| (component(m, "RF1", 1, 1), component(m, "RF1", 1, 4))).collect();
    assert_eq!(
        statuses,
        [("A".into(), "accepted".into()), ("A".into(), "in-progress".into()), ("A".into(), "completed".into())]
    );
    for m in &rris {
        assert_eq!(field(m, "MSH", 9).as_deref(), Some("RRI^I12^RRI_I12"));
        assert_eq!(component(m, "MSH", 5, 1), "EPIC");
        assert_eq!(component(m, "MSH", 6, 1), "CLINIC-1");
        assert_eq!(field(m, "MSA", 1).as_deref(), Some("AA"));
        assert_eq!(field(m, "MSA", 2).as_deref(), Some("RS-REF-1"), "answers the REF");
        assert_eq!(component(m, "RF1", 6, 1), "REF00000001");
        assert_eq!(component(m, "PID", 3, 1), "MRN00000002");
        assert_eq!(field(m, "PID", 5).unwrap_or_default(), "", "no patient name");
        assert_eq!(component(m, "PRD", 2, 1), "Community Food Bank");
    }
    assert_eq!(field(rris[2], "NTE", 3).as_deref(), Some("Enrolled in weekly food box"));
    let control_ids: Vec<String> = rris.iter().map(|m| field(m, "MSH", 10).unwrap()).collect();

    // Every RRI is recorded with its ACK, newest first; the first one took two attempts.
    let log = wait_for("three acknowledged RRIs in the outbound log", || {
        let listed = get_json(http_addr, "/admin/outbound?destination=clinic&state=acknowledged");
        let messages = listed["messages"].as_array().unwrap().clone();
        (messages.len() == 3).then_some(messages)
    });
    let logged_ids: Vec<&str> = log.iter().rev().map(|m| m["control_id"].as_str().unwrap()).collect();
    assert_eq!(logged_ids, control_ids.iter().map(String::as_str).collect::<Vec<_>>());
    let attempts: Vec<i64> = log.iter().rev().map(|m| m["attempts"].as_i64().unwrap()).collect();
    assert_eq!(attempts, [2, 1, 1]);
    for m in &log {
        assert_eq!(m["message_type"], "RRI^I12^RRI_I12");
        assert_eq!(m["ack_code"], "AA");
        assert!(m["acknowledged"].is_string() && m["sent"].is_string() && m["queued"].is_string(), "{m}");
        assert!(m.get("message").is_none() && m.get("ack_text").is_none(), "no bodies or receiver texts in lists");
    }
    let first_id = log[2]["id"].as_i64().unwrap();
    let first = get_json(http_addr, &format!("/admin/outbound/{first_id}"));
    assert_eq!(first["state"], "acknowledged");
    assert!(first["last_error"].as_str().unwrap().contains("AE"), "{first}");
    let (status, _, _) = http(http_addr, "GET", "/admin/outbound/999999", None);
    assert_eq!(status, 404);
    let (status, _, body) = http(http_addr, "GET", "/admin/outbound?state=lost", None);
    assert_eq!(status, 400, "{body}");
    assert_eq!(get_json(http_addr, "/admin/outbound?state=dead")["messages"].as_array().unwrap().len(), 0);

    // The EHR's own update (REF^I14 cancelling a referral still open) changes the Task but is not echoed back to
    // it. (The completed referral above is final: the referral state machine allows no move out of completed.)
    let second = conformance_message("ref_i12.hl7", "RS-REF-4", &[("REF00000001", "REF00000088")]);
    send_acked(mllp_addr, &second);
    wait_converted(http_addr, "RS-REF-4");
    let second_id = task_from(http_addr, "RS-REF-4")["id"].as_str().unwrap().to_owned();
    let i14 = conformance_message(
        "ref_i14.hl7",
        "RS-REF-2",
        &[("RF1|A^Accepted^HL70283", "RF1|E^Expired^HL70283"), ("REF00000001", "REF00000088")],
    );
    send_acked(mllp_addr, &i14);
    wait_converted(http_addr, "RS-REF-2");
    let cancelled = get_json(http_addr, &format!("/fhir/Task/{second_id}"));
    assert_eq!(cancelled["status"], "cancelled");
    // An I14 that would move the completed referral breaks the referral state machine: the entry fails with the
    // reason, the Task stays completed.
    let late = conformance_message("ref_i14.hl7", "RS-REF-5", &[("RF1|A^Accepted^HL70283", "RF1|E^Expired^HL70283")]);
    send_acked(mllp_addr, &late);
    let failed = wait_for("RS-REF-5 failed", || {
        let listed = get_json(http_addr, "/admin/messages?status=failed&limit=100");
        listed["entries"].as_array()?.iter().find(|e| e["control_id"] == "RS-REF-5").cloned()
    });
    let detail = get_json(http_addr, &format!("/admin/messages/{}", failed["id"]));
    assert!(detail.to_string().contains("no transition from completed to cancelled"), "{detail}");
    assert_eq!(get_json(http_addr, &format!("/fhir/Task/{id}"))["status"], "completed");
    // Its job, had one been queued, was queued with the conversion: once the rri queue is empty, none was.
    wait_for("the rri queue to drain", || (metric(http_addr, &["jobs{", "queue=\"rri\""]) == 0.0).then_some(()));
    assert_eq!(get_json(http_addr, "/admin/outbound?destination=clinic")["messages"].as_array().unwrap().len(), 3);

    // A referral from an EHR with no outbound destination: its status change is counted, nothing is sent.
    let other =
        conformance_message("ref_i12.hl7", "RS-REF-3", &[("|EPIC|", "|OTHER-EHR|"), ("REF00000001", "REF00000077")]);
    send_acked(mllp_addr, &other);
    wait_converted(http_addr, "RS-REF-3");
    let mut other_task = task_from(http_addr, "RS-REF-3");
    other_task["status"] = json!("rejected");
    other_task["statusReason"] = json!({"text": "outside service area"});
    put_task(http_addr, &other_task);
    wait_for("rri_total{outcome=\"no_destination\"}", || {
        (metric(http_addr, &["rri_total{", "outcome=\"no_destination\""]) == 1.0).then_some(())
    });
    assert_eq!(metric(http_addr, &["rri_total{", "outcome=\"queued\""]), 3.0);
    assert_eq!(metric(http_addr, &["outbound_messages{", "state=\"acknowledged\""]), 3.0);
    assert_eq!(metric(http_addr, &["outbound_messages{", "state=\"dead\""]), 0.0);

    // Operators see the same from the command line.
    let (status, out, err) = run(dir.path(), &["--database-url", db_url, "outbound", "list", "--json"], &[]);
    assert!(status.success(), "{err}");
    let listed: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|m| m["state"] == "acknowledged" && m["destination"] == "clinic"));
    let (status, out, err) =
        run(dir.path(), &["--database-url", db_url, "outbound", "show", &first_id.to_string()], &[]);
    assert!(status.success(), "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["attempts"], 2);
    let (status, _, err) = run(dir.path(), &["--database-url", db_url, "outbound", "list", "--state", "lost"], &[]);
    assert!(!status.success() && err.contains("unknown state"), "{err}");

    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());
    let logs = gw.seen.join("\n");
    for phi in ["MRN00000002", "Sample", "Robin", "Enrolled in weekly food box", "outside service area"] {
        assert!(!logs.contains(phi), "logs carry no patient data or free text ({phi})");
    }
}

#[test]
fn sqlite_referral_status_goes_back_to_the_ehr_as_rri() {
    let dir = temp_dir();
    let url = format!("sqlite:{}", dir.path().join("rri.db").display());
    referral_status_round_trip(&url);
}

#[test]
fn postgres_referral_status_goes_back_to_the_ehr_as_rri() {
    let url = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(postgres_schema_url(&postgres_url()));
    referral_status_round_trip(&url);
}

/// The destination of an RRI may require mutual TLS: the EHR verifies the gateway's client certificate, the gateway
/// verifies the EHR's server certificate.
#[test]
fn referral_status_goes_to_a_mutual_tls_destination() {
    let pki = support::pki::Pki::generate();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let tls = ::mllp::TlsServerConfig {
        cert_chain_pem: pki.server_cert.clone(),
        key_pem: pki.server_key.clone(),
        client_ca_pem: Some(pki.ca.clone()),
    };
    let server = runtime
        .block_on(::mllp::Server::bind(
            "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
            ::mllp::ListenerConfig { tls: Some(tls), ..Default::default() },
        ))
        .expect("bind the test EHR");
    let ehr = server.local_addr().unwrap();
    let (sender, received) = mpsc::channel();
    let handler = ::mllp::handler_fn(move |conn: ::mllp::ConnectionInfo, frame: bytes::Bytes| {
        let sender = sender.clone();
        async move {
            let message = hl7v2::Message::parse(&frame).expect("the gateway sends valid HL7");
            let ack = hl7v2::Ack::accept(&message.header(), "20261123", "TLS-ACK").build();
            let _ = sender.send((frame.to_vec(), conn.tls_client_subject.clone()));
            ::mllp::Reply::Send(bytes::Bytes::from(ack))
        }
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    runtime.spawn(async move { server.run(std::sync::Arc::new(handler), stopped.cancelled_owned()).await });

    let dir = temp_dir();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[outbound]\nbackoff_base_ms = 50\npoll_interval_ms = 100\n\n[[outbound.destinations]]\nname = \"clinic-tls\"\n\
             address = \"{ehr}\"\nreceiving_application = \"EPIC\"\nack_timeout_secs = 5\n\n\
             [outbound.destinations.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nserver_name = \"localhost\"\n",
            pki.ca.display(),
            pki.client_cert.display(),
            pki.client_key.display()
        ),
    )
    .unwrap();
    let url = format!("sqlite:{}", dir.path().join("tls.db").display());
    let config = config.display().to_string();
    let mut gw =
        Gateway::start(dir.path(), &["--config", &config, "--database-url", &url, "--http-listen", "127.0.0.1:0"], &[]);
    let (http_addr, mllp_addr) = gw.wait_ready_both();
    send_acked(mllp_addr, &conformance_message("ref_i12.hl7", "RS-TLS-1", &[]));
    wait_converted(http_addr, "RS-TLS-1");
    let mut task = task_from(http_addr, "RS-TLS-1");
    task["status"] = json!("rejected");
    put_task(http_addr, &task);

    let (rri, subject) = received.recv_timeout(DEADLINE).expect("an RRI^I12 over TLS");
    assert_eq!(subject.as_deref(), Some(support::pki::CLIENT_SUBJECT));
    assert_eq!(field(&rri, "MSH", 9).as_deref(), Some("RRI^I12^RRI_I12"));
    assert_eq!((component(&rri, "RF1", 1, 1), component(&rri, "RF1", 1, 4)), ("R".into(), "rejected".into()));
    let log = wait_for("the RRI acknowledged in the outbound log", || {
        let listed = get_json(http_addr, "/admin/outbound?destination=clinic-tls&state=acknowledged");
        listed["messages"].as_array().filter(|m| m.len() == 1).cloned()
    });
    assert_eq!(log[0]["control_id"].as_str(), field(&rri, "MSH", 10).as_deref());
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());
    stop.cancel();
}
