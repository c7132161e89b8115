//! Outbound HL7 v2 delivery over real sockets: messages queued in a store transaction reach a test MLLP receiver in
//! order and exactly once, are retried while it is down or answers AE, dead-lettered after their last attempt, and
//! sent over mutual TLS; SQLite and PostgreSQL.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gateway::config::{OutboundConfig, OutboundDestination, OutboundTlsConfig};
use gateway::outbound::{self, AppOutcome, OutboundError, OutboundMessage, Routes};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(30);

/// What the test receiver got: the connection it came on, the TLS client subject, and MSH-10 / MSA-2 of the frame.
#[derive(Debug, Clone)]
struct Received {
    connection: u64,
    subject: Option<String>,
    control_id: String,
    acknowledges: Option<String>,
}

/// An MLLP listener that records every frame and answers it by `answer(control id)` ("AA", "AE", ...).
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    count: watch::Receiver<usize>,
    stop: CancellationToken,
}

impl Receiver {
    async fn start(addr: SocketAddr, tls: Option<mllp::TlsServerConfig>, answer: fn(&str) -> &'static str) -> Receiver {
        let config = mllp::ListenerConfig { tls, ..mllp::ListenerConfig::default() };
        let server = mllp::Server::bind(addr, config).await.expect("bind the test receiver");
        let addr = server.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let (tell, count) = watch::channel(0usize);
        let tell = Arc::new(tell);
        let record = got.clone();
        let handler = mllp::handler_fn(move |conn: mllp::ConnectionInfo, frame: Bytes| {
            let record = record.clone();
            let tell = tell.clone();
            async move {
                let message = hl7v2::Message::parse(&frame).expect("the gateway sends valid HL7");
                let header = message.header();
                let code = hl7v2::AckCode::from_code(answer(&header.control_id)).unwrap();
                let ack = hl7v2::Ack::new(&header, code, "20240101", &format!("R-{}", header.control_id));
                let ack = if code == hl7v2::AckCode::AA {
                    ack
                } else {
                    ack.error(hl7v2::AckError {
                        code: hl7v2::ErrorCode::ApplicationInternalError,
                        location: None,
                        severity: hl7v2::Severity::Error,
                        message: "try again later".into(),
                    })
                };
                let n = {
                    let mut got = record.lock().unwrap();
                    got.push(Received {
                        connection: conn.connection_id,
                        subject: conn.tls_client_subject.clone(),
                        control_id: header.control_id.clone(),
                        acknowledges: message.text("MSA-2").map(|s| s.into_owned()),
                    });
                    got.len()
                };
                tell.send_replace(n);
                mllp::Reply::Send(Bytes::from(ack.build()))
            }
        });
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move { server.run(Arc::new(handler), stopped.cancelled_owned()).await });
        Receiver { addr, got, count, stop }
    }

    /// Waits (up to the deadline) until at least `n` frames arrived.
    async fn wait_for(&mut self, n: usize) -> Vec<Received> {
        let reached = tokio::time::timeout(DEADLINE, self.count.wait_for(|c| *c >= n)).await;
        let got = self.got.lock().unwrap().clone();
        assert!(matches!(reached, Ok(Ok(_))), "expected {n} frames within {DEADLINE:?}, got {}", got.len());
        got
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn accept_all(_: &str) -> &'static str {
    "AA"
}

fn destination(name: &str, addr: SocketAddr, application: &str, max_attempts: i32) -> OutboundDestination {
    OutboundDestination {
        name: name.into(),
        address: addr.to_string(),
        receiving_application: application.into(),
        receiving_facility: String::new(),
        connect_timeout_secs: 5,
        ack_timeout_secs: 5,
        max_attempts,
        tls: None,
    }
}

/// Short backoff and polling, so retries happen within a test.
fn config(destinations: Vec<OutboundDestination>) -> OutboundConfig {
    OutboundConfig {
        backoff_base_ms: 50,
        backoff_max_secs: 1,
        poll_interval_ms: 50,
        destinations,
        ..OutboundConfig::default()
    }
}

async fn sqlite_store(dir: &tempfile::TempDir) -> store::Store {
    let url = format!("sqlite:{}", dir.path().join("outbound.db").display());
    let store = store::Store::connect(&store::StoreOptions::new(url)).await.unwrap();
    store.migrate().await.unwrap();
    store
}

async fn postgres_store() -> store::Store {
    let url = support::postgres_schema_url(&support::postgres_url()).await;
    let store = store::Store::connect(&store::StoreOptions::new(url)).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// A message from an EHR that asks for application acknowledgments (enhanced mode, MSH-16 = AL).
fn original(sender: &str, control_id: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|{sender}|CLINIC|SDOH-GW|HUB|20240101120000||REF^I12^REF_I12|{control_id}|P|2.5.1|||AL|AL\rPID|1||123"
    )
    .into_bytes()
}

/// A plain outbound message addressed to `application` with control id `control_id`.
fn message(application: &str, control_id: &str) -> OutboundMessage {
    let raw = format!(
        "MSH|^~\\&|SDOH-GW|HUB|{application}|CLINIC|20240101120000||RRI^I12^RRI_I12|{control_id}|P|2.5.1\rMSA|AA|X"
    );
    OutboundMessage::parse(raw.into_bytes()).unwrap()
}

/// Jobs of a queue per state.
async fn job_states(store: &store::Store, queue: &str) -> Vec<(store::JobState, i64)> {
    store.job_counts().await.unwrap().into_iter().filter(|c| c.queue == queue).map(|c| (c.state, c.count)).collect()
}

/// Waits (polling, up to the deadline) until `queue` holds exactly `expected` jobs per state.
async fn wait_for_jobs(store: &store::Store, queue: &str, expected: &[(store::JobState, i64)]) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let states = job_states(store, queue).await;
        if states == expected {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{queue}: jobs {states:?}, expected {expected:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of `outbound_messages_total{destination, outcome}` in the process's metrics registry.
fn delivered_metric(destination: &str, outcome: &str) -> u64 {
    let text = gateway::telemetry::metrics_handle().render();
    text.lines()
        .filter(|l| l.starts_with("outbound_messages_total{"))
        .filter(|l| {
            l.contains(&format!("destination=\"{destination}\"")) && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn wait_for_metric(destination: &str, outcome: &str, at_least: u64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while delivered_metric(destination, outcome) < at_least {
        assert!(tokio::time::Instant::now() < deadline, "{destination}: fewer than {at_least} {outcome}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop(shutdown: CancellationToken, worker: tokio::task::JoinHandle<()>) {
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, worker).await.expect("the worker stops when cancelled").unwrap();
}

/// Twenty application ACKs queued in one transaction arrive in order, each once, on one connection; the jobs are
/// completed; a rolled-back transaction sends nothing; a message no destination takes is refused at queue time.
async fn twenty_application_acks_in_order(store: store::Store, name: &str) {
    gateway::telemetry::metrics_handle();
    let mut receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), None, accept_all).await;
    let application = format!("EHR-{name}");
    let config = config(vec![destination(name, receiver.addr, &application, 5)]);
    let routes = Routes::new(&config);
    let queue = outbound::queue_name(name);

    let mut tx = store.begin().await.unwrap();
    let ack = outbound::application_ack(
        &hl7v2::Message::parse(&original(&application, "ROLLED-BACK")).unwrap(),
        AppOutcome::Accepted,
    )
    .unwrap();
    outbound::queue(&mut tx, &routes, OutboundMessage::parse(ack).unwrap()).await.unwrap();
    tx.rollback().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    for i in 0..20 {
        let raw = original(&application, &format!("M{i:02}"));
        let ack = outbound::application_ack(&hl7v2::Message::parse(&raw).unwrap(), AppOutcome::Accepted)
            .expect("MSH-16 AL asks for an application ACK");
        let queued = outbound::queue(&mut tx, &routes, OutboundMessage::parse(ack).unwrap()).await.unwrap();
        assert_eq!(queued.destination, name);
        assert_eq!(queued.queue, queue);
    }
    let unroutable = outbound::queue(&mut tx, &routes, message("NOBODY", "U1")).await;
    assert!(matches!(unroutable, Err(OutboundError::NoDestination { .. })), "{unroutable:?}");
    tx.commit().await.unwrap();
    assert_eq!(job_states(&store, &queue).await, vec![(store::JobState::Ready, 20)]);

    let shutdown = CancellationToken::new();
    let worker = outbound::spawn(store.clone(), &config, shutdown.clone()).unwrap();
    let got = receiver.wait_for(20).await;
    wait_for_jobs(&store, &queue, &[]).await;
    let acknowledged: Vec<String> = got.iter().map(|r| r.acknowledges.clone().unwrap()).collect();
    let expected: Vec<String> = (0..20).map(|i| format!("M{i:02}")).collect();
    assert_eq!(acknowledged, expected, "in queue order, each exactly once");
    let ids: std::collections::HashSet<&str> = got.iter().map(|r| r.control_id.as_str()).collect();
    assert_eq!(ids.len(), 20, "every ACK has its own control id");
    assert!(got.iter().all(|r| r.connection == got[0].connection), "one connection reused for every message");
    wait_for_metric(name, "acknowledged", 20).await;
    assert_eq!(delivered_metric(name, "acknowledged"), 20);

    // A message committed while the worker idles is picked up too (local wakeup), on the same connection.
    let mut tx = store.begin().await.unwrap();
    outbound::queue(&mut tx, &routes, message(&application, "LATE-1")).await.unwrap();
    tx.commit().await.unwrap();
    let got = receiver.wait_for(21).await;
    assert_eq!(got[20].control_id, "LATE-1");
    assert_eq!(got[20].connection, got[0].connection);
    stop(shutdown, worker).await;
    assert_eq!(receiver.received().len(), 21, "nothing sent twice, the rolled-back message never");

    // The outbound log has every message once, acknowledged, newest first; the rolled-back one is not there.
    let query = store::OutboundQuery { destination: Some(name.into()), limit: 100, ..Default::default() };
    let log = store.outbound_list(&query).await.unwrap();
    let logged: Vec<&str> = log.iter().rev().map(|m| m.control_id.as_str()).collect();
    let sent: Vec<String> = receiver.received().into_iter().map(|r| r.control_id).collect();
    assert_eq!(logged, sent.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(log.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    for m in &log {
        assert_eq!((m.state.as_str(), m.attempts, m.ack_code.as_deref()), ("acknowledged", 1, Some("AA")), "{m:?}");
        assert!(m.sent.is_some() && m.acknowledged.is_some() && m.ack_control_id.is_some(), "{m:?}");
    }
    assert_eq!(log[1].message_type, "ACK^I12^ACK");
    assert_eq!(store.outbound_counts().await.unwrap(), vec![("acknowledged".to_owned(), 21)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_twenty_application_acks_arrive_in_order_exactly_once() {
    let dir = support::temp_dir();
    twenty_application_acks_in_order(sqlite_store(&dir).await, "sqlite-order").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_twenty_application_acks_arrive_in_order_exactly_once() {
    twenty_application_acks_in_order(postgres_store().await, "pg-order").await;
}

/// While the receiver's port is closed, the first message is retried with backoff and nothing overtakes it; once
/// the receiver listens, everything arrives in order.
async fn delivered_after_the_receiver_comes_up(store: store::Store, name: &str) {
    gateway::telemetry::metrics_handle();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = config(vec![destination(name, port, "EHR", 50)]);
    let routes = Routes::new(&config);
    let mut tx = store.begin().await.unwrap();
    for i in 0..5 {
        outbound::queue(&mut tx, &routes, message("EHR", &format!("D{i}"))).await.unwrap();
    }
    tx.commit().await.unwrap();

    let shutdown = CancellationToken::new();
    let worker = outbound::spawn(store.clone(), &config, shutdown.clone()).unwrap();
    // Connection refused, retried, at least three times.
    wait_for_metric(name, "retried", 3).await;
    let queue = outbound::queue_name(name);
    assert_eq!(delivered_metric(name, "acknowledged"), 0);
    let mut receiver = Receiver::start(port, None, accept_all).await;
    let got = receiver.wait_for(5).await;
    wait_for_jobs(&store, &queue, &[]).await;
    let order: Vec<&str> = got.iter().map(|r| r.control_id.as_str()).collect();
    assert_eq!(order, ["D0", "D1", "D2", "D3", "D4"]);
    stop(shutdown, worker).await;
    assert_eq!(receiver.received().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_messages_are_retried_until_the_receiver_listens() {
    let dir = support::temp_dir();
    delivered_after_the_receiver_comes_up(sqlite_store(&dir).await, "sqlite-down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_messages_are_retried_until_the_receiver_listens() {
    delivered_after_the_receiver_comes_up(postgres_store().await, "pg-down").await;
}

fn refuse_bad(control_id: &str) -> &'static str {
    if control_id == "BAD" { "AE" } else { "AA" }
}

/// A message answered AE is retried up to max_attempts, then dead-lettered; the next one waits for it and then goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_ae_is_retried_then_dead_lettered() {
    gateway::telemetry::metrics_handle();
    let dir = support::temp_dir();
    let store = sqlite_store(&dir).await;
    let name = "sqlite-ae";
    let mut receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), None, refuse_bad).await;
    let config = config(vec![destination(name, receiver.addr, "EHR", 3)]);
    let routes = Routes::new(&config);
    let mut tx = store.begin().await.unwrap();
    for id in ["OK-1", "BAD", "OK-2"] {
        outbound::queue(&mut tx, &routes, message("EHR", id)).await.unwrap();
    }
    tx.commit().await.unwrap();

    let shutdown = CancellationToken::new();
    let worker = outbound::spawn(store.clone(), &config, shutdown.clone()).unwrap();
    let got = receiver.wait_for(5).await;
    let queue = outbound::queue_name(name);
    wait_for_jobs(&store, &queue, &[(store::JobState::Dead, 1)]).await;
    let order: Vec<&str> = got.iter().map(|r| r.control_id.as_str()).collect();
    assert_eq!(order, ["OK-1", "BAD", "BAD", "BAD", "OK-2"], "three attempts, and OK-2 only after them");
    let dead = store.dead_jobs(&queue, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].1.contains("\"control_id\":\"BAD\""));
    let error = dead[0].2.clone().unwrap();
    assert!(error.contains("AE") && error.contains("207"), "{error}");
    assert!(!error.contains("try again later"), "the receiver's text is not recorded");
    wait_for_metric(name, "dead_lettered", 1).await;
    wait_for_metric(name, "acknowledged", 2).await;
    assert_eq!(delivered_metric(name, "dead_lettered"), 1);
    assert_eq!(delivered_metric(name, "retried"), 2);
    assert_eq!(delivered_metric(name, "acknowledged"), 2);
    stop(shutdown, worker).await;
    assert_eq!(receiver.received().len(), 5);

    // The log records the attempts and the negative ACK (code and error code, not as the last error's text).
    let in_state = |state| store::OutboundQuery { state: Some(state), limit: 10, ..Default::default() };
    let bad = store.outbound_list(&in_state(store::OutboundState::Dead)).await.unwrap();
    assert_eq!(bad.len(), 1);
    assert_eq!((bad[0].control_id.as_str(), bad[0].attempts), ("BAD", 3));
    assert_eq!((bad[0].ack_code.as_deref(), bad[0].ack_error_code.as_deref()), (Some("AE"), Some("207")));
    assert!(bad[0].acknowledged.is_none());
    assert!(bad[0].ack_text.is_none(), "lists leave the receiver's text out");
    let shown = store.outbound_record(bad[0].id).await.unwrap().unwrap();
    assert!(!shown.last_error.clone().unwrap().contains("try again later"), "{shown:?}");
    let acked = store.outbound_list(&in_state(store::OutboundState::Acknowledged)).await.unwrap();
    let acked: Vec<String> = acked.into_iter().map(|m| m.control_id).collect();
    assert_eq!(acked, ["OK-2", "OK-1"]);
}

/// Delivery over mutual TLS: the receiver verifies our client certificate, we verify its server certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_over_mutual_tls() {
    let pki = support::pki::Pki::generate();
    let dir = support::temp_dir();
    let store = sqlite_store(&dir).await;
    let tls = mllp::TlsServerConfig {
        cert_chain_pem: pki.server_cert.clone(),
        key_pem: pki.server_key.clone(),
        client_ca_pem: Some(pki.ca.clone()),
    };
    let mut receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), Some(tls), accept_all).await;
    let mut dest = destination("tls", receiver.addr, "EHR", 3);
    dest.tls = Some(OutboundTlsConfig {
        ca_file: pki.ca.clone(),
        cert_file: Some(pki.client_cert.clone()),
        key_file: Some(pki.client_key.clone()),
        server_name: "localhost".into(),
    });
    let config = config(vec![dest]);
    let routes = Routes::new(&config);
    let mut tx = store.begin().await.unwrap();
    for i in 0..3 {
        outbound::queue(&mut tx, &routes, message("EHR", &format!("T{i}"))).await.unwrap();
    }
    tx.commit().await.unwrap();
    let shutdown = CancellationToken::new();
    let worker = outbound::spawn(store.clone(), &config, shutdown.clone()).unwrap();
    let got = receiver.wait_for(3).await;
    wait_for_jobs(&store, &outbound::queue_name("tls"), &[]).await;
    assert_eq!(got.iter().map(|r| r.control_id.as_str()).collect::<Vec<_>>(), ["T0", "T1", "T2"]);
    assert!(got.iter().all(|r| r.subject.as_deref() == Some(support::pki::CLIENT_SUBJECT)));
    stop(shutdown, worker).await;

    // Unusable TLS files fail start-up, naming the destination.
    let mut broken = config.clone();
    if let Some(tls) = broken.destinations[0].tls.as_mut() {
        tls.ca_file = dir.path().join("missing-ca.pem");
    }
    let err = outbound::spawn(store.clone(), &broken, CancellationToken::new()).unwrap_err();
    assert!(matches!(err, OutboundError::Destination { ref destination, .. } if destination == "tls"), "{err}");
}

/// EHR engines often close connections between messages: a reused connection found closed is replaced at once,
/// within the same attempt (no retry, no backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_by_the_receiver_is_replaced_without_a_retry() {
    gateway::telemetry::metrics_handle();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tell, mut count) = watch::channel(Vec::<String>::new());
    // One message per connection: read a frame, answer AA, close.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let Some(frame) = support::mllp::read_frame(&mut stream) else { continue };
            let message = hl7v2::Message::parse(&frame).unwrap();
            let ack = hl7v2::Ack::accept(&message.header(), "20240101", "R").build();
            let _ = std::io::Write::write_all(&mut stream, &support::mllp::frame(&ack));
            tell.send_modify(|got| got.push(message.header().control_id));
        }
    });
    let dir = support::temp_dir();
    let store = sqlite_store(&dir).await;
    let name = "sqlite-reconnect";
    let config = config(vec![destination(name, addr, "EHR", 5)]);
    let routes = Routes::new(&config);
    let shutdown = CancellationToken::new();
    let worker = outbound::spawn(store.clone(), &config, shutdown.clone()).unwrap();
    for (n, id) in ["C1", "C2", "C3"].into_iter().enumerate() {
        let mut tx = store.begin().await.unwrap();
        outbound::queue(&mut tx, &routes, message("EHR", id)).await.unwrap();
        tx.commit().await.unwrap();
        tokio::time::timeout(DEADLINE, count.wait_for(|got| got.len() > n)).await.unwrap().unwrap();
    }
    wait_for_metric(name, "acknowledged", 3).await;
    assert_eq!(*count.borrow(), ["C1", "C2", "C3"]);
    assert_eq!(delivered_metric(name, "retried"), 0, "a closed idle connection costs no attempt");
    wait_for_jobs(&store, &outbound::queue_name(name), &[]).await;
    stop(shutdown, worker).await;
}
