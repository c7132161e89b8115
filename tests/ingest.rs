//! Black-box tests of HL7 v2 ingest over MLLP: real sockets, the real binary, SQLite and PostgreSQL.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use gateway::synth::MessageFactory;
use support::mllp::{field, frame, read_frame, send};
use support::*;

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to MLLP");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Journal entries as the operator CLI lists them.
fn journal(dir: &std::path::Path, db_url: &str) -> Vec<serde_json::Value> {
    let (status, out, err) =
        run(dir, &["--database-url", db_url, "messages", "list", "--json", "--limit", "100000"], &[]);
    assert!(status.success(), "{err}");
    out.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

fn ingest_round_trip(db_url: &str) {
    let dir = temp_dir();
    // Ingest alone: with no conversion workers the entries stay `received` and their jobs queued (tests/convert.rs
    // covers conversion).
    let no_workers = [("SDOH_GATEWAY_WORKERS__COUNT", "0")];
    let mut gw = Gateway::start(dir.path(), &["--database-url", db_url, "--http-listen", "127.0.0.1:0"], &no_workers);
    let (http_addr, mllp_addr) = gw.wait_ready_both();

    // 4 connections x 10 messages, as 4 interfaces sending at once.
    let sent: Vec<(String, Vec<u8>)> = {
        let mut f = MessageFactory::new("rt", 7);
        (0..40).map(|_| f.next_message()).collect()
    };
    std::thread::scope(|scope| {
        for chunk in sent.chunks(10) {
            scope.spawn(move || {
                let mut stream = connect(mllp_addr);
                for (control_id, message) in chunk {
                    let ack = send(&mut stream, message).expect("an ACK");
                    assert_eq!(field(&ack, "MSA", 1).as_deref(), Some("AA"), "{}", String::from_utf8_lossy(&ack));
                    assert_eq!(field(&ack, "MSA", 2).as_deref(), Some(control_id.as_str()), "MSA-2 = MSH-10");
                    // Sender and receiver swapped.
                    assert_eq!(field(&ack, "MSH", 3), field(message, "MSH", 5));
                    assert_eq!(field(&ack, "MSH", 4), field(message, "MSH", 6));
                    assert_eq!(field(&ack, "MSH", 5), field(message, "MSH", 3));
                    assert_eq!(field(&ack, "MSH", 6), field(message, "MSH", 4));
                    let trigger = field(message, "MSH", 9).unwrap().split('^').nth(1).unwrap().to_owned();
                    assert_eq!(field(&ack, "MSH", 9), Some(format!("ACK^{trigger}^ACK")));
                }
            });
        }
    });

    let entries = journal(dir.path(), db_url);
    assert_eq!(entries.len(), 40);
    let ids: HashSet<&str> = entries.iter().map(|e| e["control_id"].as_str().unwrap()).collect();
    assert_eq!(ids, sent.iter().map(|(c, _)| c.as_str()).collect::<HashSet<_>>());
    assert!(entries.iter().all(|e| e["status"] == "received"));

    // A resend is acknowledged and not stored twice.
    let mut stream = connect(mllp_addr);
    let ack = send(&mut stream, &sent[3].1).unwrap();
    assert_eq!(field(&ack, "MSA", 1).as_deref(), Some("AA"));
    assert_eq!(journal(dir.path(), db_url).len(), 40);

    // Operators: the admin list filters by type and carries no bodies; the CLI shows and reprocesses.
    let (status, _, body) = http(http_addr, "GET", "/admin/messages?type=ORU%5ER01&limit=100", None);
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let oru = listed["entries"].as_array().unwrap();
    assert_eq!(oru.len(), sent.iter().filter(|(_, m)| field(m, "MSH", 9).unwrap().starts_with("ORU")).count());
    assert!(!body.contains("PID") && !body.contains("Main St"), "no message content in lists");
    let id = oru[0]["id"].as_i64().unwrap().to_string();
    let (status, out, _) = run(dir.path(), &["--database-url", db_url, "messages", "show", &id, "--body"], &[]);
    assert!(status.success());
    assert!(out.contains("OBX|1|CWE|88122-7"), "show --body prints the message");
    let (status, out, _) = run(dir.path(), &["--database-url", db_url, "messages", "reprocess", &id], &[]);
    assert!(status.success());
    assert!(out.contains("queued 1 of 1"), "{out}");
    let (status, _, _) = http(http_addr, "GET", "/admin/messages?status=bogus", None);
    assert_eq!(status, 400);

    let (_, _, metrics) = http(http_addr, "GET", "/metrics", None);
    for expected in [
        "hl7_messages_accepted_total{type=\"ADT\"}",
        "hl7_messages_duplicate_total 1",
        "hl7_ack_latency_seconds_bucket{code=\"AA\",le=",
        "mllp_connections_accepted_total",
        "hl7_journal_messages{status=\"received\"} 40",
        "jobs{queue=\"convert\",state=\"ready\"}",
    ] {
        assert!(metrics.contains(expected), "metrics lack {expected:?}:\n{metrics}");
    }
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn sqlite_messages_are_journaled_once_and_acknowledged() {
    let dir = temp_dir();
    let url = format!("sqlite:{}", dir.path().join("gw.db").display());
    ingest_round_trip(&url);
}

#[test]
fn postgres_messages_are_journaled_once_and_acknowledged() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(postgres_schema_url(&postgres_url()));
    ingest_round_trip(&url);
}

fn start_sqlite(extra_env: &[(&str, &str)]) -> (tempfile::TempDir, Gateway, SocketAddr) {
    let dir = temp_dir();
    let mut gw = Gateway::start(dir.path(), &["--http-listen", "127.0.0.1:0"], extra_env);
    let (_, mllp) = gw.wait_ready_both();
    (dir, gw, mllp)
}

#[test]
fn pipelined_frames_are_answered_in_order() {
    let (_dir, _gw, mllp) = start_sqlite(&[]);
    let mut f = MessageFactory::new("pipe", 3);
    let messages: Vec<(String, Vec<u8>)> = (0..30).map(|_| f.next_message()).collect();
    let mut stream = connect(mllp);
    let mut all = Vec::new();
    for (_, m) in &messages {
        all.extend(frame(m));
    }
    stream.write_all(&all).unwrap();
    for (control_id, _) in &messages {
        let ack = read_frame(&mut stream).expect("ack");
        assert_eq!(field(&ack, "MSA", 2).as_deref(), Some(control_id.as_str()));
        assert_eq!(field(&ack, "MSA", 1).as_deref(), Some("AA"));
    }
}

const ADT: &str = "MSH|^~\\&|EHR|CLINIC|GW|HUB|20261123120000||ADT^A01^ADT_A01|{id}|{pid}|2.5.1{ack}\rEVN|A01|20261123120000\rPID|1||12345^^^CLINIC^MR||Doe^Jane||19800101|F\r";

fn adt(control_id: &str, processing: &str, ack_types: &str) -> Vec<u8> {
    ADT.replace("{id}", control_id).replace("{pid}", processing).replace("{ack}", ack_types).into_bytes()
}

#[test]
fn policy_refusals_are_ar_with_the_hl7_error_code() {
    let (_dir, _gw, mllp) = start_sqlite(&[]);
    let mut stream = connect(mllp);
    let mfn = ADT
        .replace("ADT^A01^ADT_A01", "MFN^M02^MFN_M02")
        .replace("{id}", "m1")
        .replace("{pid}", "P")
        .replace("{ack}", "");
    let unknown_event =
        ADT.replace("ADT^A01^ADT_A01", "ADT^A99").replace("{id}", "m2").replace("{pid}", "P").replace("{ack}", "");
    for (message, code, location) in [
        (mfn.into_bytes(), "200", "MSH^1^9^1^1"),
        (unknown_event.into_bytes(), "201", "MSH^1^9^1^2"),
        (adt("m3", "X", ""), "202", "MSH^1^11"),
    ] {
        let ack = send(&mut stream, &message).expect("an answer");
        assert_eq!(field(&ack, "MSA", 1).as_deref(), Some("AR"), "{}", String::from_utf8_lossy(&ack));
        let err3 = field(&ack, "ERR", 3).unwrap();
        assert!(err3.starts_with(&format!("{code}^")), "ERR-3 {err3}");
        assert!(err3.ends_with("^HL70357"));
        assert!(field(&ack, "ERR", 2).unwrap().starts_with(location), "ERR-2 {:?}", field(&ack, "ERR", 2));
    }
}

#[test]
fn enhanced_mode_answers_ca_and_honours_never() {
    let (_dir, _gw, mllp) = start_sqlite(&[]);
    let mut stream = connect(mllp);
    let ack = send(&mut stream, &adt("e1", "P", "|||AL|NE")).unwrap();
    assert_eq!(field(&ack, "MSA", 1).as_deref(), Some("CA"));
    // MSH-15 NE: no commit ACK at all; the next message's ACK still comes, in order.
    stream.write_all(&frame(&adt("e2", "P", "|||NE|NE"))).unwrap();
    let ack = send(&mut stream, &adt("e3", "P", "|||AL|NE")).unwrap();
    assert_eq!(field(&ack, "MSA", 2).as_deref(), Some("e3"));
    // ER: only errors are acknowledged.
    let ack = send(&mut stream, &adt("e4", "X", "|||ER|NE")).unwrap();
    assert_eq!(field(&ack, "MSA", 1).as_deref(), Some("CR"));
}

#[test]
fn kill_9_mid_stream_loses_no_acknowledged_message() {
    let dir = temp_dir();
    let db = format!("sqlite:{}", dir.path().join("crash.db").display());
    let mut gw = Gateway::start(dir.path(), &["--database-url", &db, "--http-listen", "127.0.0.1:0"], &[]);
    let (_, mllp) = gw.wait_ready_both();

    let acked: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
    let mut senders = Vec::new();
    for t in 0..4 {
        let acked = acked.clone();
        senders.push(std::thread::spawn(move || {
            let mut f = MessageFactory::new(format!("crash{t}"), t + 1);
            let mut stream = connect(mllp);
            for _ in 0..100_000 {
                let (control_id, message) = f.next_message();
                match send(&mut stream, &message) {
                    Some(ack) if field(&ack, "MSA", 1).as_deref() == Some("AA") => {
                        let (list, cv) = &*acked;
                        list.lock().unwrap().push(control_id);
                        cv.notify_all();
                    }
                    _ => return,
                }
            }
        }));
    }
    {
        let (list, cv) = &*acked;
        let guard = cv.wait_while(list.lock().unwrap(), |l| l.len() < 400).unwrap();
        drop(guard);
    }
    gw.child.kill().expect("kill -9");
    gw.child.wait().unwrap();
    for s in senders {
        s.join().unwrap();
    }
    let acked = acked.0.lock().unwrap().clone();
    assert!(acked.len() >= 400);

    // After a restart (which recovers the WAL), every acknowledged message is there exactly once.
    let mut again = Gateway::start(dir.path(), &["--database-url", &db, "--http-listen", "127.0.0.1:0"], &[]);
    again.wait_ready();
    let entries = journal(dir.path(), &db);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for e in &entries {
        *counts.entry(e["control_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    for control_id in &acked {
        assert_eq!(counts.get(control_id), Some(&1), "acknowledged {control_id} must be journaled exactly once");
    }
}

/// A malformed-catalogue case: the bytes and what the gateway must answer.
struct Case {
    name: String,
    bytes: Vec<u8>,
    layer: String,
    answer: String,
    err_code: Option<u64>,
    generate_oversize: bool,
}

fn malformed_cases() -> Vec<Case> {
    let dir = workspace_root().join("conformance/hl7v2/malformed");
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".expected.json"))
        else {
            continue;
        };
        let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cases.push(Case {
            name: name.to_owned(),
            bytes: std::fs::read(dir.join(format!("{name}.bin"))).unwrap(),
            layer: expected["layer"].as_str().unwrap().to_owned(),
            answer: expected["answer"].as_str().unwrap().to_owned(),
            err_code: expected["err_code"].as_u64(),
            generate_oversize: expected["generate_oversize"].as_bool().unwrap_or(false),
        });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

/// The ERR segment carries the code: ERR-3.1 (v2.5+) or ERR-1's code component (v2.2-2.4).
fn ack_has_error_code(ack: &[u8], code: u64) -> bool {
    let text = String::from_utf8_lossy(ack);
    text.split(['\r', '\n']).filter(|s| s.starts_with("ERR")).any(|err| {
        let fields: Vec<&str> = err.split('|').collect();
        let v25 = fields.get(3).and_then(|f| f.split('^').next()) == Some(&code.to_string()[..]);
        let v24 = fields
            .get(1)
            .is_some_and(|f| f.split('^').nth(3).and_then(|c| c.split('&').next()) == Some(&code.to_string()[..]));
        v25 || v24
    })
}

#[test]
fn every_malformed_catalogue_case_gets_its_standard_answer_over_mllp() {
    const MAX_FRAME: usize = 64 * 1024;
    let (dir, gw, mllp_addr) =
        start_sqlite(&[("SDOH_GATEWAY_MLLP__READ_TIMEOUT_SECS", "1"), ("SDOH_GATEWAY_MLLP__MAX_FRAME_BYTES", "65536")]);
    let cases = malformed_cases();
    assert!(cases.len() >= 30, "the catalogue holds at least 30 cases ({})", cases.len());
    let mut stored_expected: HashSet<String> = HashSet::new();
    for case in &cases {
        let mut stream = connect(mllp_addr);
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if case.layer == "message" {
            if case.bytes.is_empty() {
                // A zero-length payload over MLLP is an empty frame: see frame_empty (no answer, like a keepalive).
                continue;
            }
            let ack = send(&mut stream, &case.bytes).unwrap_or_else(|| panic!("{}: no answer", case.name));
            assert_eq!(
                field(&ack, "MSA", 1).as_deref(),
                Some(case.answer.as_str()),
                "{}: {}",
                case.name,
                String::from_utf8_lossy(&ack)
            );
            if let Some(code) = case.err_code {
                assert!(
                    ack_has_error_code(&ack, code),
                    "{}: ERR {code} in {}",
                    case.name,
                    String::from_utf8_lossy(&ack)
                );
            }
            continue;
        }
        let bytes = if case.generate_oversize {
            let mut b = vec![0x0B];
            b.extend_from_slice(b"MSH|^~\\&|");
            b.resize(MAX_FRAME + 4096, b'A');
            b
        } else {
            case.bytes.clone()
        };
        stream.write_all(&bytes).unwrap();
        match case.answer.as_str() {
            "close" => {
                if case.name.contains("truncated") {
                    stream.shutdown(std::net::Shutdown::Write).unwrap();
                }
                assert_eq!(read_frame(&mut stream), None, "{}: closed without an answer", case.name);
            }
            "none" => {
                // Nothing answers the bad part: the first reply on the connection is the next message's.
                let ack = send(&mut stream, &adt(&format!("after-{}", case.name), "P", "")).expect("reply");
                assert_eq!(field(&ack, "MSA", 2), Some(format!("after-{}", case.name)), "{}", case.name);
                stored_expected.insert(format!("after-{}", case.name));
            }
            code => {
                let ack = read_frame(&mut stream).unwrap_or_else(|| panic!("{}: no answer", case.name));
                assert_eq!(
                    field(&ack, "MSA", 1).as_deref(),
                    Some(code),
                    "{}: {}",
                    case.name,
                    String::from_utf8_lossy(&ack)
                );
                if let Some(err) = case.err_code {
                    assert!(ack_has_error_code(&ack, err), "{}: ERR {err}", case.name);
                }
                if code == "AA" {
                    stored_expected.insert(field(&ack, "MSA", 2).unwrap_or_default());
                }
            }
        }
    }
    // Nothing refused was stored: the journal holds exactly the messages that were acknowledged AA.
    drop(gw);
    let url = format!("sqlite:{}", dir.path().join("data/gateway.db").display());
    let stored: HashSet<String> =
        journal(dir.path(), &url).iter().map(|e| e["control_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(stored, stored_expected);
}

#[test]
fn tls_and_mutual_tls_ingest() {
    let pki = pki::Pki::generate();
    let dir = temp_dir();
    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!(
            "[mllp.tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
            pki.server_cert, pki.server_key, pki.ca
        ),
    )
    .unwrap();
    let mut gw =
        Gateway::start(dir.path(), &["--config", config.to_str().unwrap(), "--http-listen", "127.0.0.1:0"], &[]);
    let (_, mllp_addr) = gw.wait_ready_both();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client_config = |cert: Option<(&std::path::Path, &std::path::Path)>| ::mllp::ClientConfig {
        tls: Some(::mllp::TlsClientConfig {
            ca_pem: pki.ca.clone(),
            client_cert_pem: cert.map(|c| c.0.to_owned()),
            client_key_pem: cert.map(|c| c.1.to_owned()),
            server_name: "localhost".into(),
        }),
        ..::mllp::ClientConfig::default()
    };
    rt.block_on(async {
        // With a client certificate the CA signed: accepted and journaled.
        let mut client = ::mllp::Client::connect(mllp_addr, client_config(Some((&pki.client_cert, &pki.client_key))))
            .await
            .expect("mutual TLS handshake");
        let ack = client.send(adt("tls-1", "P", "")).await.expect("ACK over TLS");
        assert_eq!(field(&ack, "MSA", 1).as_deref(), Some("AA"));
        // Without one, or with a foreign CA's: no answer.
        for cert in [None, Some((pki.rogue_cert.as_path(), pki.rogue_key.as_path()))] {
            let refused = async {
                let mut c = ::mllp::Client::connect(mllp_addr, client_config(cert)).await?;
                c.send(adt("tls-2", "P", "")).await
            }
            .await;
            assert!(refused.is_err(), "a client without a trusted certificate is refused");
        }
        // Plain TCP to a TLS listener gets no HL7 answer either.
        let plain = ::mllp::Client::connect(mllp_addr, ::mllp::ClientConfig::default()).await;
        if let Ok(mut plain) = plain {
            assert!(plain.send(adt("tls-3", "P", "")).await.is_err());
        }
    });
    let url = format!("sqlite:{}", dir.path().join("data/gateway.db").display());
    let entries = journal(dir.path(), &url);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["control_id"], "tls-1");
}
