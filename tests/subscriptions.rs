//! Topic-based subscriptions end to end: the real binary, real HTTP receivers started by the test, SQLite and
//! PostgreSQL. Handshakes activate, Task changes arrive numbered and in order with the payload asked for, a receiver
//! that goes away and comes back on the same port gets every event exactly once, failures turn a subscription to
//! `error` and then `off`, `$status` and `$events` report it, and bad Subscriptions get clear OperationOutcomes.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use support::*;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);
const TASK_TOPIC: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task";
const STATUS_TOPIC: &str = "https://sdoh-gateway.org/fhir/SubscriptionTopic/referral-status";
const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

/// One notification as the receiver got it.
#[derive(Debug, Clone)]
struct Notification {
    path: String,
    kind: String,
    events: Vec<i64>,
    authorization: Option<String>,
    content_type: Option<String>,
    bundle: Value,
}

#[derive(Clone)]
struct Shared {
    got: Arc<Mutex<Vec<Notification>>>,
    answer: Arc<AtomicU16>,
}

/// An HTTP (or HTTPS) receiver on its own runtime, which the test can stop and start again on the same port.
struct Receiver {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    shared: Shared,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    stop: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

/// A TLS listener for axum: handshakes that fail are dropped and the next connection accepted.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

async fn record(State(shared): State<Shared>, uri: axum::http::Uri, headers: HeaderMap, body: String) -> StatusCode {
    let bundle: Value = serde_json::from_str(&body).expect("a notification is JSON");
    let status = &bundle["entry"][0]["resource"];
    let parameter = |name: &str| -> Vec<Value> {
        status["parameter"].as_array().into_iter().flatten().filter(|p| p["name"] == name).cloned().collect()
    };
    let kind = parameter("type").first().and_then(|p| p["valueCode"].as_str().map(str::to_owned)).unwrap_or_default();
    let events = parameter("notification-event")
        .iter()
        .filter_map(|e| e["part"][0]["valueString"].as_str().and_then(|n| n.parse().ok()))
        .collect();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let answer = StatusCode::from_u16(shared.answer.load(Ordering::SeqCst)).unwrap();
    shared.got.lock().unwrap().push(Notification {
        path: uri.path().to_owned(),
        kind,
        events,
        authorization: header("authorization"),
        content_type: header("content-type"),
        bundle,
    });
    answer
}

impl Receiver {
    fn start() -> Receiver {
        Receiver::start_with(None)
    }

    fn start_with(tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let shared = Shared { got: Arc::new(Mutex::new(Vec::new())), answer: Arc::new(AtomicU16::new(200)) };
        let mut receiver = Receiver { runtime, addr, shared, tls, stop: None };
        receiver.listen();
        receiver
    }

    fn listen(&mut self) {
        let shared = self.shared.clone();
        let addr = self.addr;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let listener = self.runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => return l,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(e) => panic!("cannot listen on {addr} again: {e}"),
                }
            }
        });
        let app = axum::Router::new().route("/{*path}", axum::routing::post(record)).with_state(shared);
        let task = match self.tls.clone() {
            None => self.runtime.spawn(async move {
                axum::serve(listener, app).with_graceful_shutdown(stopped.cancelled_owned()).await.unwrap();
            }),
            Some(config) => self.runtime.spawn(async move {
                let listener = TlsListener { tcp: listener, acceptor: tokio_rustls::TlsAcceptor::from(config) };
                axum::serve(listener, app).with_graceful_shutdown(stopped.cancelled_owned()).await.unwrap();
            }),
        };
        self.stop = Some((stop, task));
    }

    /// Stops listening; requests in flight are answered first, so nothing is recorded without being answered.
    fn stop(&mut self) {
        if let Some((stop, task)) = self.stop.take() {
            stop.cancel();
            self.runtime.block_on(task).unwrap();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    fn received(&self, path: &str) -> Vec<Notification> {
        self.shared.got.lock().unwrap().iter().filter(|n| n.path == format!("/{path}")).cloned().collect()
    }

    /// The event numbers that reached `path`, in arrival order.
    fn events(&self, path: &str) -> Vec<i64> {
        self.received(path).iter().filter(|n| n.kind == "event-notification").flat_map(|n| n.events.clone()).collect()
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut(&Receiver) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done(self) {
            assert!(Instant::now() < deadline, "{what} within {DEADLINE:?}; got {:#?}", self.summary());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn summary(&self) -> Vec<(String, String, Vec<i64>)> {
        self.shared.got.lock().unwrap().iter().map(|n| (n.path.clone(), n.kind.clone(), n.events.clone())).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start_gateway(dir: &std::path::Path, db_url: &str, extra: &[(&str, &str)]) -> (Gateway, SocketAddr) {
    let mut env = vec![
        ("SDOH_GATEWAY_WORKERS__POLL_INTERVAL_MS", "50"),
        ("SDOH_GATEWAY_SUBSCRIPTIONS__BACKOFF_BASE_MS", "50"),
        ("SDOH_GATEWAY_SUBSCRIPTIONS__BACKOFF_MAX_SECS", "1"),
        ("SDOH_GATEWAY_SUBSCRIPTIONS__ERROR_AFTER_FAILURES", "2"),
        ("SDOH_GATEWAY_SUBSCRIPTIONS__HEARTBEAT_CHECK_MS", "100"),
        ("SDOH_GATEWAY_SUBSCRIPTIONS__DEFAULT_TIMEOUT_SECS", "2"),
    ];
    env.extend_from_slice(extra);
    let mut gw = Gateway::start(dir, &["--database-url", db_url, "--http-listen", "127.0.0.1:0"], &env);
    let addr = gw.wait_ready();
    (gw, addr)
}

fn subscription(topic: &str, filter: Option<&str>, endpoint: &str, content: &str) -> Value {
    let mut s = json!({
        "resourceType": "Subscription",
        "status": "active",
        "reason": "referral status for the CBO platform",
        "criteria": topic,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": format!("{BACKPORT}backport-payload-content"), "valueCode": content}]},
            "header": ["Authorization: Bearer test-token"]
        }
    });
    if let Some(f) = filter {
        s["_criteria"] =
            json!({"extension": [{"url": format!("{BACKPORT}backport-filter-criteria"), "valueString": f}]});
    }
    s
}

fn create(addr: SocketAddr, resource: &Value) -> Value {
    let path = format!("/fhir/{}", resource["resourceType"].as_str().unwrap());
    let (status, _, body) = http(addr, "POST", &path, Some(&resource.to_string()));
    assert_eq!(status, 201, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn put(addr: SocketAddr, resource: &Value) -> Value {
    let path = format!("/fhir/{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
    let (status, _, body) = http(addr, "PUT", &path, Some(&resource.to_string()));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn get(addr: SocketAddr, path: &str) -> Value {
    let (status, _, body) = http(addr, "GET", path, None);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn task(owner: &str, status: &str) -> Value {
    json!({
        "resourceType": "Task",
        "status": status,
        "intent": "order",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "focus": {"reference": "ServiceRequest/sr-1"},
        "for": {"reference": "Patient/p-1"},
        "authoredOn": "2026-01-05T10:00:00Z",
        "requester": {"reference": "Organization/clinic"},
        "owner": {"reference": owner}
    })
}

/// The status parameter `name` of a `$status` answer.
fn status_param(addr: SocketAddr, id: &str, name: &str) -> Option<Value> {
    let bundle = get(addr, &format!("/fhir/Subscription/{id}/$status"));
    assert_eq!(bundle["type"], "searchset");
    let params = &bundle["entry"][0]["resource"];
    assert_eq!(params["parameter"][3]["valueCode"], "query-status");
    params["parameter"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned()
}

fn wait_for_status(addr: SocketAddr, id: &str, wanted: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = get(addr, &format!("/fhir/Subscription/{id}"))["status"].as_str().unwrap_or("").to_owned();
        if status == wanted {
            return;
        }
        assert!(Instant::now() < deadline, "Subscription/{id} is {status}, not {wanted}, after {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn numbered(n: i64) -> Vec<i64> {
    (1..=n).collect()
}

/// Handshakes activate; Task changes arrive numbered 1..n, in order, with the payload each subscription asked for
/// and its channel header; the referral-status topic sees only status changes; `$status` and `$events` report it.
fn handshake_events_and_payloads(db_url: &str) {
    let receiver = Receiver::start();
    let dir = temp_dir();
    let (_gw, addr) = start_gateway(dir.path(), db_url, &[]);

    let owner = "Task?owner=Organization/cbo-a";
    let full = create(addr, &subscription(TASK_TOPIC, Some(owner), &receiver.url("full"), "full-resource"));
    let ids = create(addr, &subscription(TASK_TOPIC, Some(owner), &receiver.url("ids"), "id-only"));
    let empty = create(addr, &subscription(TASK_TOPIC, Some(owner), &receiver.url("empty"), "empty"));
    let status_changes = create(addr, &subscription(STATUS_TOPIC, None, &receiver.url("status"), "full-resource"));
    assert_eq!(full["status"], "requested", "the server owns the status: created as requested");
    for (s, path) in [(&full, "full"), (&ids, "ids"), (&empty, "empty"), (&status_changes, "status")] {
        let id = s["id"].as_str().unwrap();
        wait_for_status(addr, id, "active");
        let handshakes: Vec<_> = receiver.received(path).into_iter().filter(|n| n.kind == "handshake").collect();
        assert_eq!(handshakes.len(), 1, "{path}");
        assert_eq!(handshakes[0].authorization.as_deref(), Some("Bearer test-token"));
        assert!(handshakes[0].content_type.as_deref().unwrap_or("").starts_with("application/fhir+json"));
        assert_eq!(handshakes[0].bundle["type"], "history");
    }

    let mut referral = create(addr, &task("Organization/cbo-a", "requested"));
    create(addr, &task("Organization/cbo-b", "requested"));
    for status in ["accepted", "in-progress"] {
        referral["status"] = json!(status);
        referral = put(addr, &referral);
    }
    referral["description"] = json!("a note, no status change");
    referral = put(addr, &referral);
    referral["status"] = json!("completed");
    referral = put(addr, &referral);
    let task_id = referral["id"].as_str().unwrap().to_owned();

    for path in ["full", "ids", "empty"] {
        receiver.wait_until(&format!("five events at {path}"), |r| r.events(path).len() >= 5);
        assert_eq!(receiver.events(path), numbered(5), "{path}: in order, each once, cbo-b's Task filtered out");
    }
    receiver.wait_until("three status changes", |r| r.events("status").len() >= 3);
    assert_eq!(receiver.events("status"), numbered(3), "only the status changes");

    let last =
        |path: &str| receiver.received(path).into_iter().rfind(|n| n.kind == "event-notification").unwrap().bundle;
    let full_bundle = last("full");
    let entries = full_bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1]["resource"]["resourceType"], "Task");
    assert_eq!(entries[1]["resource"]["status"], "completed");
    let params = entries[0]["resource"]["parameter"].as_array().unwrap();
    let param = |name: &str| params.iter().find(|p| p["name"] == name).unwrap().clone();
    assert_eq!(param("events-since-subscription-start")["valueString"], "5");
    assert_eq!(param("topic")["valueCanonical"], TASK_TOPIC);
    assert_eq!(param("status")["valueCode"], "active");
    let focus = param("notification-event")["part"][2]["valueReference"]["reference"].as_str().unwrap().to_owned();
    assert!(focus.ends_with(&format!("/Task/{task_id}/_history/5")), "{focus}");
    let id_entries = last("ids")["entry"].as_array().unwrap().clone();
    assert_eq!(id_entries.len(), 2);
    assert!(id_entries[1].get("resource").is_none(), "id-only carries no resource");
    assert!(id_entries[1]["fullUrl"].as_str().unwrap().ends_with(&format!("/Task/{task_id}")));
    let empty_entries = last("empty")["entry"].as_array().unwrap().clone();
    assert_eq!(empty_entries.len(), 1, "empty carries the status only");
    assert_eq!(last("status")["entry"][1]["resource"]["status"], "completed");

    let full_id = full["id"].as_str().unwrap();
    assert_eq!(status_param(addr, full_id, "status").unwrap()["valueCode"], "active");
    assert_eq!(status_param(addr, full_id, "events-since-subscription-start").unwrap()["valueString"], "5");
    let events = get(addr, &format!("/fhir/Subscription/{full_id}/$events?eventsSinceNumber=2&eventsUntilNumber=3"));
    assert_eq!(events["type"], "history");
    let params = events["entry"][0]["resource"]["parameter"].as_array().unwrap();
    assert_eq!(params[3]["valueCode"], "query-event");
    let numbers: Vec<&str> = params
        .iter()
        .filter(|p| p["name"] == "notification-event")
        .map(|p| p["part"][0]["valueString"].as_str().unwrap())
        .collect();
    assert_eq!(numbers, ["2", "3"]);
    assert_eq!(events["entry"][1]["resource"]["status"], "accepted", "event 2 is the version that was accepted");
    let (status, _, body) = http(
        addr,
        "POST",
        &format!("/fhir/Subscription/{full_id}/$events"),
        Some(
            &json!({"resourceType": "Parameters", "parameter": [
            {"name": "eventsSinceNumber", "valueString": "5"}, {"name": "content", "valueCode": "id-only"}]})
            .to_string(),
        ),
    );
    assert_eq!(status, 200, "{body}");
    let events: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(events["entry"].as_array().unwrap().len(), 2);
    assert!(events["entry"][1].get("resource").is_none());
    let (status, _, body) =
        http(addr, "GET", &format!("/fhir/Subscription/{full_id}/$events?eventsSinceNumber=x"), None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("OperationOutcome"));
}

#[test]
fn sqlite_handshake_activates_and_task_changes_arrive_in_order_per_payload_type() {
    let dir = temp_dir();
    handshake_events_and_payloads(&format!("sqlite:{}", dir.path().join("gw.db").display()));
}

#[test]
fn postgres_handshake_activates_and_task_changes_arrive_in_order_per_payload_type() {
    handshake_events_and_payloads(&postgres_url_for_test());
}

fn postgres_url_for_test() -> String {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(postgres_schema_url(&postgres_url()))
}

/// The receiver stops mid-run and comes back on the same port: the subscription turns `error` while it is away,
/// every event arrives afterwards, in order, none twice, and the status returns to `active`.
fn receiver_outage(db_url: &str) {
    let mut receiver = Receiver::start();
    let dir = temp_dir();
    let (_gw, addr) = start_gateway(dir.path(), db_url, &[]);
    let sub = create(addr, &subscription(TASK_TOPIC, None, &receiver.url("hook"), "id-only"));
    let id = sub["id"].as_str().unwrap().to_owned();
    wait_for_status(addr, &id, "active");

    let mut referral = create(addr, &task("Organization/cbo-a", "requested"));
    referral["status"] = json!("accepted");
    referral = put(addr, &referral);
    receiver.wait_until("two events", |r| r.events("hook").len() >= 2);

    receiver.stop();
    for (i, status) in
        ["in-progress", "on-hold", "in-progress", "on-hold", "in-progress", "completed"].iter().enumerate()
    {
        referral["status"] = json!(status);
        referral["description"] = json!(format!("step {i}"));
        referral = put(addr, &referral);
    }
    wait_for_status(addr, &id, "error");
    let stored = get(addr, &format!("/fhir/Subscription/{id}"));
    assert!(stored["error"].as_str().unwrap().contains("consecutive notifications failed"), "{stored}");
    let error = status_param(addr, &id, "error").expect("$status reports the failures");
    assert!(error["valueCodeableConcept"]["text"].as_str().unwrap().contains("failed"));
    assert_eq!(status_param(addr, &id, "events-since-subscription-start").unwrap()["valueString"], "8");

    receiver.listen();
    receiver.wait_until("all eight events", |r| r.events("hook").len() >= 8);
    wait_for_status(addr, &id, "active");
    assert_eq!(receiver.events("hook"), numbered(8), "every event once, in order");
    assert!(get(addr, &format!("/fhir/Subscription/{id}")).get("error").is_none(), "the error is cleared");
    assert!(status_param(addr, &id, "error").is_none(), "no failures since the last success");
    let (_, _, metrics) = http(addr, "GET", "/metrics", None);
    let series = |outcome: &str| {
        metrics.lines().any(|l| {
            l.starts_with("subscription_notifications_total{")
                && l.contains("type=\"event-notification\"")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
    };
    assert!(series("delivered") && series("failed"), "{metrics}");
    assert!(metrics.contains("subscription_event_delivery_latency_seconds"));
}

#[test]
fn sqlite_a_receiver_outage_loses_nothing_and_the_status_recovers() {
    let dir = temp_dir();
    receiver_outage(&format!("sqlite:{}", dir.path().join("gw.db").display()));
}

#[test]
fn postgres_a_receiver_outage_loses_nothing_and_the_status_recovers() {
    receiver_outage(&postgres_url_for_test());
}

/// The gateway is killed (SIGKILL) while events wait for a receiver that is down; a new gateway on the same
/// database delivers them, after the ones already delivered, in order.
#[test]
fn sqlite_events_survive_a_killed_gateway() {
    let mut receiver = Receiver::start();
    let dir = temp_dir();
    let db_url = format!("sqlite:{}", dir.path().join("gw.db").display());
    let (mut gw, addr) = start_gateway(dir.path(), &db_url, &[]);
    let id = create(addr, &subscription(TASK_TOPIC, None, &receiver.url("hook"), "id-only"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for_status(addr, &id, "active");
    let mut referral = create(addr, &task("Organization/cbo-a", "requested"));
    receiver.wait_until("the first event", |r| !r.events("hook").is_empty());
    receiver.stop();
    for status in ["accepted", "in-progress", "completed"] {
        referral["status"] = json!(status);
        referral = put(addr, &referral);
    }
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();

    receiver.listen();
    let (_gw, addr) = start_gateway(dir.path(), &db_url, &[]);
    receiver.wait_until("all four events", |r| r.events("hook").len() >= 4);
    assert_eq!(receiver.events("hook"), numbered(4));
    assert_eq!(status_param(addr, &id, "events-since-subscription-start").unwrap()["valueString"], "4");
}

/// An endpoint nobody listens on: the handshake fails, the status is `error` (visible in `$status`), and after
/// `off_after_failures` failures `off`; a receiver that answers 500 is a failure too.
fn failing_endpoints(db_url: &str) {
    let receiver = Receiver::start();
    receiver.shared.answer.store(500, Ordering::SeqCst);
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = temp_dir();
    let (_gw, addr) = start_gateway(dir.path(), db_url, &[("SDOH_GATEWAY_SUBSCRIPTIONS__OFF_AFTER_FAILURES", "4")]);
    let nobody = create(addr, &subscription(TASK_TOPIC, None, &format!("http://{unused}/hook"), "id-only"));
    let refusing = create(addr, &subscription(TASK_TOPIC, None, &receiver.url("refuse"), "id-only"));
    let nobody_id = nobody["id"].as_str().unwrap().to_owned();
    wait_for_status(addr, &nobody_id, "error");
    assert_eq!(status_param(addr, &nobody_id, "status").unwrap()["valueCode"], "error");
    assert!(status_param(addr, &nobody_id, "error").is_some());
    wait_for_status(addr, &nobody_id, "off");
    let refusing_id = refusing["id"].as_str().unwrap();
    wait_for_status(addr, refusing_id, "off");
    assert_eq!(receiver.received("refuse").len(), 4, "four handshakes tried, then stopped");
    let versions = get(addr, &format!("/fhir/Subscription/{nobody_id}/_history"));
    let statuses: Vec<&str> =
        versions["entry"].as_array().unwrap().iter().rev().map(|e| e["resource"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["requested", "error", "off"], "status changes are Subscription versions");
    // Events are recorded in the transaction of the change, so once the Task is created the count is final.
    create(addr, &task("Organization/cbo-a", "requested"));
    let counted = status_param(addr, refusing_id, "events-since-subscription-start").unwrap();
    assert_eq!(counted["valueString"], "0", "an off subscription takes no events");
}

#[test]
fn sqlite_failing_endpoints_turn_error_then_off() {
    let dir = temp_dir();
    failing_endpoints(&format!("sqlite:{}", dir.path().join("gw.db").display()));
}

#[test]
fn postgres_failing_endpoints_turn_error_then_off() {
    failing_endpoints(&postgres_url_for_test());
}

/// Heartbeats go out to an active subscription with a heartbeat period when nothing else does.
#[test]
fn heartbeats_follow_the_period() {
    let receiver = Receiver::start();
    let dir = temp_dir();
    let (_gw, addr) = start_gateway(dir.path(), &format!("sqlite:{}", dir.path().join("gw.db").display()), &[]);
    let mut s = subscription(TASK_TOPIC, None, &receiver.url("beat"), "empty");
    s["channel"]["extension"] = json!([{"url": format!("{BACKPORT}backport-heartbeat-period"), "valueUnsignedInt": 1}]);
    let id = create(addr, &s)["id"].as_str().unwrap().to_owned();
    wait_for_status(addr, &id, "active");
    receiver.wait_until("two heartbeats", |r| r.received("beat").iter().filter(|n| n.kind == "heartbeat").count() >= 2);
}

/// An https endpoint is reached over TLS and verified against `subscriptions.ca_file`: a certificate for
/// `localhost` is accepted at `https://localhost`, refused at `https://127.0.0.1` (the name does not match).
#[test]
fn https_endpoints_are_verified_against_the_configured_authorities() {
    let pki = pki::Pki::generate();
    let tls = ::mllp::TlsServerConfig {
        cert_chain_pem: pki.server_cert.clone(),
        key_pem: pki.server_key.clone(),
        client_ca_pem: None,
    }
    .load()
    .unwrap();
    let receiver = Receiver::start_with(Some(tls));
    let dir = temp_dir();
    let ca = pki.ca.display().to_string();
    let db_url = format!("sqlite:{}", dir.path().join("gw.db").display());
    let (_gw, addr) = start_gateway(dir.path(), &db_url, &[("SDOH_GATEWAY_SUBSCRIPTIONS__CA_FILE", &ca)]);
    let port = receiver.addr.port();
    let good = create(addr, &subscription(TASK_TOPIC, None, &format!("https://localhost:{port}/secure"), "id-only"));
    let wrong_name = create(addr, &subscription(TASK_TOPIC, None, &format!("https://127.0.0.1:{port}/ip"), "id-only"));
    wait_for_status(addr, good["id"].as_str().unwrap(), "active");
    wait_for_status(addr, wrong_name["id"].as_str().unwrap(), "error");
    create(addr, &task("Organization/cbo-a", "requested"));
    receiver.wait_until("the event over TLS", |r| r.events("secure") == [1]);
    assert!(receiver.received("ip").is_empty(), "nothing reaches an endpoint whose certificate does not match");
}

/// Bad Subscriptions are refused with a 400 OperationOutcome naming the problem; the CapabilityStatement describes
/// what is supported.
#[test]
fn bad_subscriptions_get_clear_operation_outcomes() {
    let dir = temp_dir();
    let (_gw, addr) = start_gateway(dir.path(), &format!("sqlite:{}", dir.path().join("gw.db").display()), &[]);
    let ok = "http://127.0.0.1:9/hook";
    let mut email = subscription(TASK_TOPIC, None, ok, "id-only");
    email["channel"]["type"] = json!("email");
    let cases = [
        (subscription(TASK_TOPIC, None, "mailto:cbo@example.org", "id-only"), "endpoint", "http"),
        (subscription(TASK_TOPIC, None, "not a url", "id-only"), "endpoint", "absolute"),
        (subscription("http://example.org/SubscriptionTopic/nope", None, ok, "id-only"), "criteria", "no topic"),
        (subscription(TASK_TOPIC, Some("Task?owner"), ok, "id-only"), "filter-criteria", "malformed"),
        (subscription(TASK_TOPIC, Some("owner=Organization/1"), ok, "id-only"), "filter-criteria", "Task?"),
        (subscription(TASK_TOPIC, Some("Task?patient=Patient/1"), ok, "id-only"), "filter-criteria", "not a filter"),
        (subscription(TASK_TOPIC, None, ok, "everything"), "payload-content", "full-resource"),
        (email, "channel.type", "not supported"),
    ];
    for (resource, expression, words) in cases {
        let (status, _, body) = http(addr, "POST", "/fhir/Subscription", Some(&resource.to_string()));
        assert_eq!(status, 400, "{expression}: {body}");
        let outcome: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        let issue = &outcome["issue"][0];
        assert!(issue["expression"][0].as_str().unwrap_or("").contains(expression), "{body}");
        assert!(issue["diagnostics"].as_str().unwrap().contains(words), "{words}: {body}");
    }
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": subscription(TASK_TOPIC, None, ok, "id-only"),
        "request": {"method": "POST", "url": "Subscription"}}]});
    let (status, _, body) = http(addr, "POST", "/fhir", Some(&bundle.to_string()));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("POST [base]/Subscription"), "{body}");
    let (status, _, body) = http(addr, "GET", "/fhir/Subscription/none/$status", None);
    assert_eq!(status, 404, "{body}");
    let (status, _, _) = http(addr, "GET", "/fhir/Task/x/$status", None);
    assert_eq!(status, 404);

    let capability = get(addr, "/fhir/metadata");
    let subscription = capability["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Subscription")
        .unwrap()
        .clone();
    assert_eq!(subscription["supportedProfile"][0], format!("{BACKPORT}backport-subscription"));
    let operations: Vec<&str> =
        subscription["operation"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(operations, ["status", "events"]);
}
