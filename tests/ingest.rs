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
    let (status, out, err) = run(dir, &["--database-url", db_url, "messages", "list", "--json", "--limit", "100000"], &[]);
    assert!(status.success(), "{err}");
    out.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

fn ingest_round_trip(db_url: &str) {
    let dir = temp_dir();
    let mut gw = Gateway::start(dir.path(), &["--database-url", db_url, "--http-listen", "127.0.0.1:0"], &[]);
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
    let mfn = ADT.replace("ADT^A01^ADT_A01", "MFN^M02^MFN_M02").replace("{id}", "m1").replace("{pid}", "P").replace("{ack}", "");
    let unknown_event = ADT.replace("ADT^A01^ADT_A01", "ADT^A99").replace("{id}", "m2").replace("{pid}", "P").replace("{ack}", "");
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
