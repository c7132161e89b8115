//! Closed-loop referrals over the real binary with real credentials: the authorization matrix (roles x resource
//! types x interactions, two CBOs), the referral Task state machine over REST, the ServiceRequest following its
//! Task, a coordination platform's sub-Task, and the `clients` command. SQLite and PostgreSQL.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const REFERRAL_TASK: &str =
    "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-TaskForReferralManagement";

struct Client {
    token: String,
    client_id: String,
}

fn client(dir: &std::path::Path, db_url: &str, role: &str, org: &str) -> Client {
    let v = add_client(dir, db_url, &format!("{role} {org}"), role, org);
    assert_eq!(v["role"], role);
    assert_eq!(v["organization"], org);
    Client { token: v["token"].as_str().unwrap().to_owned(), client_id: v["client_id"].as_str().unwrap().to_owned() }
}

struct Api {
    addr: SocketAddr,
}

impl Api {
    fn call(&self, who: &Client, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(Value::to_string);
        let (status, _, text) = http_as(self.addr, &who.token, method, path, &[], body.as_deref());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn get(&self, who: &Client, path: &str) -> (u16, Value) {
        self.call(who, "GET", path, None)
    }

    fn put(&self, who: &Client, resource: &Value) -> (u16, Value) {
        let path = format!("/fhir/{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
        self.call(who, "PUT", &path, Some(resource))
    }

    /// The ids a search answers with.
    fn search_ids(&self, who: &Client, path: &str) -> Vec<String> {
        let (status, bundle) = self.get(who, path);
        assert_eq!(status, 200, "{path}: {bundle}");
        ids_in(&bundle)
    }
}

/// A CBO platform's rest-hook endpoint: records every notification Bundle and answers 200.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let sink = sink.clone();
                std::thread::spawn(move || serve_notifications(stream, &sink));
            }
        });
        Receiver { addr, got }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// (event number, Task status) of the Tasks its event notifications carried, in event-number order.
    fn task_statuses(&self) -> Vec<(i64, String)> {
        let got = self.got.lock().unwrap();
        let mut events: Vec<(i64, String)> = got
            .iter()
            .filter(|b| notification_type(b) == "event-notification")
            .flat_map(|b| {
                let params = b["entry"][0]["resource"]["parameter"].as_array().cloned().unwrap_or_default();
                let number = params
                    .iter()
                    .find(|p| p["name"] == "notification-event")
                    .and_then(|e| e["part"][0]["valueString"].as_str()?.parse::<i64>().ok())
                    .unwrap_or(0);
                b["entry"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .skip(1)
                    .filter(|e| e["resource"]["resourceType"] == "Task")
                    .map(|e| (number, e["resource"]["status"].as_str().unwrap_or("").to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect();
        events.sort();
        events
    }

    fn count(&self, kind: &str) -> usize {
        self.got.lock().unwrap().iter().filter(|b| notification_type(b) == kind).count()
    }
}

fn notification_type(bundle: &Value) -> String {
    let params = bundle["entry"][0]["resource"]["parameter"].as_array().cloned().unwrap_or_default();
    params.iter().find(|p| p["name"] == "type").and_then(|p| p["valueCode"].as_str()).unwrap_or("").to_owned()
}

fn serve_notifications(stream: std::net::TcpStream, sink: &Mutex<Vec<Value>>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(bundle) = serde_json::from_slice(&body) {
            sink.lock().unwrap().push(bundle);
        }
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        if reader.get_mut().write_all(answer).is_err() {
            return;
        }
    }
}

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

/// A CBO's subscription to its own referral Tasks (the IG's Task topic), full-resource payloads.
fn own_tasks_subscription(owner: &str, endpoint: &str) -> Value {
    json!({
        "resourceType": "Subscription", "status": "requested", "reason": "my referrals",
        "criteria": "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task",
        "_criteria": {"extension": [{"url": format!("{BACKPORT}backport-filter-criteria"), "valueString": format!("Task?owner={owner}")}]},
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": format!("{BACKPORT}backport-payload-content"), "valueCode": "full-resource"}]}}
    })
}

fn ids_in(bundle: &Value) -> Vec<String> {
    let mut ids: Vec<String> = bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| {
                    let r = &e["resource"];
                    Some(format!("{}/{}", r["resourceType"].as_str()?, r["id"].as_str()?))
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn task(id: &str, status: &str, owner: &str, requester: &str, focus: &str) -> Value {
    json!({
        "resourceType": "Task", "id": id, "meta": {"profile": [REFERRAL_TASK]},
        "status": status, "intent": "order",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "focus": {"reference": focus}, "for": {"reference": "Patient/pat-1"},
        "authoredOn": "2026-11-20T10:00:00Z",
        "requester": {"reference": requester}, "owner": {"reference": owner}
    })
}

/// The clinic's referral of Patient/pat-1 to CBO A, with its context, plus data no referral mentions.
fn seed(api: &Api, ehr: &Client) {
    let entries = vec![
        json!({"resourceType": "Organization", "id": "clinic", "name": "Eastside Clinic"}),
        json!({"resourceType": "Organization", "id": "cbo-a", "name": "Food Bank A"}),
        json!({"resourceType": "Organization", "id": "cbo-b", "name": "Housing Partner B"}),
        json!({"resourceType": "HealthcareService", "id": "hs-a", "providedBy": {"reference": "Organization/cbo-a"},
            "category": [{"coding": [{"system": "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes", "code": "food-insecurity"}]}],
            "coverageArea": [{"reference": "Location/adams-county"}]}),
        json!({"resourceType": "Location", "id": "adams-county", "name": "Adams County service area", "mode": "kind",
            "address": {"district": "Adams County", "state": "CO"}}),
        json!({"resourceType": "Patient", "id": "pat-1", "name": [{"family": "Doe"}], "gender": "female"}),
        json!({"resourceType": "Patient", "id": "pat-2", "name": [{"family": "Roe"}]}),
        json!({"resourceType": "Condition", "id": "cond-food", "subject": {"reference": "Patient/pat-1"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "733423003"}]}}),
        json!({"resourceType": "Consent", "id": "consent-1", "status": "active", "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}], "patient": {"reference": "Patient/pat-1"}}),
        json!({"resourceType": "ServiceRequest", "id": "sr-1", "status": "active", "intent": "order",
            "subject": {"reference": "Patient/pat-1"}, "reasonReference": [{"reference": "Condition/cond-food"}],
            "supportingInfo": [{"reference": "Consent/consent-1"}], "performer": [{"reference": "Organization/cbo-a"}],
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "467771000124109"}]}}),
        task("task-1", "requested", "Organization/cbo-a", "Organization/clinic", "ServiceRequest/sr-1"),
        // Not part of any referral: no CBO may see these.
        json!({"resourceType": "Observation", "id": "obs-private", "status": "final", "subject": {"reference": "Patient/pat-1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]}}),
        json!({"resourceType": "Condition", "id": "cond-other", "subject": {"reference": "Patient/pat-2"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}}),
    ];
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries.iter().map(|r| json!({
        "resource": r,
        "request": {"method": "PUT", "url": format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())}
    })).collect::<Vec<_>>()});
    let (status, answer) = api.call(ehr, "POST", "/fhir", Some(&bundle));
    assert_eq!(status, 200, "{answer}");
}

const REFERRAL_CONTEXT: &[&str] =
    &["Task/task-1", "ServiceRequest/sr-1", "Patient/pat-1", "Condition/cond-food", "Consent/consent-1"];
const OUTSIDE: &[&str] = &["Observation/obs-private", "Patient/pat-2", "Condition/cond-other"];

fn referral_lifecycle(db_url: &str) {
    let dir = temp_dir();
    let admin = client(dir.path(), db_url, "admin", "Organization/gateway-ops");
    let ehr = client(dir.path(), db_url, "ehr", "Organization/clinic");
    let cbo_a = client(dir.path(), db_url, "cbo", "Organization/cbo-a");
    let cbo_b = client(dir.path(), db_url, "cbo", "Organization/cbo-b");
    let registry = client(dir.path(), db_url, "registry", "Organization/registry");
    let mut gw = Gateway::start(
        dir.path(),
        &["--database-url", db_url, "--http-listen", "127.0.0.1:0"],
        &[("SDOH_GATEWAY_AUTH__REQUIRED", "true"), ("SDOH_GATEWAY_AUTH__CACHE_SECS", "0")],
    );
    let api = Api { addr: gw.wait_ready() };

    // Authentication: none, malformed, wrong.
    let (status, head, body) = http(api.addr, "GET", "/fhir/Patient/pat-1", None);
    assert_eq!(status, 401, "{body}");
    assert!(header_value(&head, "WWW-Authenticate").is_some_and(|v| v.starts_with("Bearer")));
    assert!(body.contains("OperationOutcome"));
    let forged = Client { token: format!("{}.not-the-secret", ehr.client_id), client_id: ehr.client_id.clone() };
    assert_eq!(api.get(&forged, "/fhir/Patient").0, 401);
    assert_eq!(http_with(api.addr, "GET", "/fhir/Patient", &[("Authorization", "Basic eDp5")], None).0, 401);
    assert_eq!(http(api.addr, "GET", "/health/live", None).0, 200, "probes stay open");

    // Both CBO platforms subscribe to their own referral Tasks before the clinic refers.
    let (receiver_a, receiver_b) = (Receiver::start(), Receiver::start());
    let mut subscriptions = Vec::new();
    for (who, owner, receiver) in
        [(&cbo_a, "Organization/cbo-a", &receiver_a), (&cbo_b, "Organization/cbo-b", &receiver_b)]
    {
        let request = own_tasks_subscription(owner, &receiver.endpoint());
        let (status, created) = api.call(who, "POST", "/fhir/Subscription", Some(&request));
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        wait_for("the handshake", || {
            (api.get(who, &format!("/fhir/Subscription/{id}")).1["status"] == "active").then_some(())
        });
        subscriptions.push(id);
    }
    let foreign = own_tasks_subscription("Organization/cbo-a", &receiver_b.endpoint());
    let (status, body) = api.call(&cbo_b, "POST", "/fhir/Subscription", Some(&foreign));
    assert_eq!(status, 403, "a CBO cannot listen to another's referrals: {body}");

    seed(&api, &ehr);

    // The matrix of reads: who sees which resource through which interaction.
    let sees_all = |who: &Client| -> bool { std::ptr::eq(who, &ehr) || std::ptr::eq(who, &admin) };
    for who in [&admin, &ehr, &cbo_a, &cbo_b] {
        for reference in REFERRAL_CONTEXT.iter().chain(OUTSIDE) {
            let visible = sees_all(who) || (std::ptr::eq(who, &cbo_a) && REFERRAL_CONTEXT.contains(reference));
            let (rt, id) = reference.split_once('/').unwrap();
            let expected = if visible { 200 } else { 404 };
            let (status, body) = api.get(who, &format!("/fhir/{reference}"));
            assert_eq!(status, expected, "read {reference} as {}: {body}", who.client_id);
            if !visible {
                assert!(!body.to_string().contains(id) || body["resourceType"] == "OperationOutcome");
            }
            assert_eq!(api.get(who, &format!("/fhir/{reference}/_history/1")).0, expected, "vread {reference}");
            assert_eq!(api.get(who, &format!("/fhir/{reference}/_history")).0, expected, "history {reference}");
            let found = api.search_ids(who, &format!("/fhir/{rt}?_id={id}"));
            assert_eq!(found.contains(&reference.to_string()), visible, "search {reference} as {}", who.client_id);
        }
    }
    // The service directory is open to every client: a platform finds CBOs by SDOH domain and county.
    for who in [&cbo_a, &cbo_b] {
        assert_eq!(
            api.search_ids(who, "/fhir/HealthcareService?service-category=food-insecurity"),
            vec!["HealthcareService/hs-a"]
        );
        assert_eq!(api.get(who, "/fhir/Organization/cbo-b").0, 200);
    }
    // Includes and reverse includes, chains and _has, type and system history: never past the scope.
    let included = api.search_ids(&cbo_a, "/fhir/Task?_id=task-1&_include=Task:focus&_include=Task:patient");
    assert_eq!(included, vec!["Patient/pat-1", "ServiceRequest/sr-1", "Task/task-1"]);
    let revincluded =
        api.search_ids(&cbo_a, "/fhir/Patient?_id=pat-1&_revinclude=Observation:subject&_revinclude=Task:patient");
    assert_eq!(revincluded, vec!["Patient/pat-1", "Task/task-1"], "the private Observation stays hidden");
    assert_eq!(api.search_ids(&ehr, "/fhir/Patient?_has:Observation:subject:code=4548-4"), vec!["Patient/pat-1"]);
    assert!(
        api.search_ids(&cbo_a, "/fhir/Patient?_has:Observation:subject:code=4548-4").is_empty(),
        "_has leaks nothing"
    );
    assert!(api.search_ids(&cbo_b, "/fhir/Task?owner=Organization/cbo-a").is_empty());
    assert_eq!(api.search_ids(&cbo_a, "/fhir/Task?owner=Organization/cbo-a&status=requested"), vec!["Task/task-1"]);
    let (_, history) = api.get(&cbo_b, "/fhir/_history");
    let types: Vec<&str> = history["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["resourceType"].as_str())
        .collect();
    assert!(
        types.iter().all(|t| store::DIRECTORY_TYPES.contains(t) || *t == "Subscription"),
        "CBO B's history shows only the directory and its own Subscription: {types:?}"
    );
    let (_, history) = api.get(&cbo_a, "/fhir/_history?_count=100");
    let mut seen: Vec<String> = history["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["request"]["url"].as_str().or(e["fullUrl"].as_str()).map(str::to_owned))
        .collect();
    seen.retain(|u| OUTSIDE.iter().any(|o| u.ends_with(o)));
    assert!(seen.is_empty(), "CBO A's history shows nothing outside its referral: {seen:?}");

    // Registry loaders do not use the clinical API; every client reads /metadata.
    assert_eq!(api.get(&registry, "/fhir/Patient/pat-1").0, 403);
    assert_eq!(api.get(&registry, "/fhir/Task").0, 403);
    assert_eq!(api.get(&registry, "/fhir/metadata").0, 200);
    // Operators only on /admin.
    assert_eq!(api.get(&cbo_a, "/admin/messages").0, 403);
    assert_eq!(api.get(&admin, "/admin/messages").0, 200);

    // Writes: CBO B cannot touch CBO A's referral (404, nothing leaked); no CBO writes clinical data.
    let accepted = task("task-1", "accepted", "Organization/cbo-a", "Organization/clinic", "ServiceRequest/sr-1");
    assert_eq!(api.put(&cbo_b, &accepted).0, 404);
    let (status, body) = api.put(&cbo_a, &json!({"resourceType": "Patient", "id": "pat-1", "name": [{"family": "X"}]}));
    assert_eq!(status, 403, "{body}");
    assert_eq!(api.call(&cbo_a, "DELETE", "/fhir/Task/task-1", None).0, 403);
    let (status, body) = api.put(
        &cbo_a,
        &json!({"resourceType": "Observation", "id": "obs-private", "status": "final",
        "code": {"text": "x"}}),
    );
    assert_eq!(status, 403, "{body}");
    // Naming someone else's order or patient in a Task of its own grants nothing: refused, and still unreadable.
    let grab = task("grab", "requested", "Organization/cbo-b", "Organization/cbo-b", "ServiceRequest/sr-1");
    let (status, body) = api.put(&cbo_b, &grab);
    assert_eq!(status, 404, "a CBO never chooses ids (nor learns which exist): {body}");
    let (status, body) = api.call(&cbo_b, "POST", "/fhir/Task", Some(&grab));
    assert_eq!(status, 403, "{body}");
    // What a CBO can read of the clinic's it cannot change: the order is the clinic's.
    let (_, clinic_order) = api.get(&cbo_a, "/fhir/ServiceRequest/sr-1");
    let mut edited = clinic_order.clone();
    edited["status"] = json!("completed");
    assert_eq!(api.put(&cbo_a, &edited).0, 403);
    assert_eq!(api.call(&cbo_a, "DELETE", "/fhir/ServiceRequest/sr-1", None).0, 403);
    // A referral Task stays one: the owner cannot drop its profile and code to escape the state machine.
    let mut plain = task("task-1", "requested", "Organization/cbo-a", "Organization/clinic", "ServiceRequest/sr-1");
    plain.as_object_mut().unwrap().remove("meta");
    plain.as_object_mut().unwrap().remove("code");
    assert_eq!(api.put(&cbo_a, &plain).0, 403);
    assert_eq!(api.get(&cbo_b, "/fhir/ServiceRequest/sr-1").0, 404);
    assert_eq!(api.get(&cbo_b, "/fhir/Patient/pat-1").0, 404);
    assert_eq!(api.get(&cbo_b, "/fhir/Task/grab").0, 404, "the refused Task was not stored");
    // A transaction is all or nothing under the same rules.
    let sneaky = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": accepted, "request": {"method": "PUT", "url": "Task/task-1"}},
        {"resource": {"resourceType": "Patient", "id": "pat-1", "name": [{"family": "X"}]}, "request": {"method": "PUT", "url": "Patient/pat-1"}}
    ]});
    assert_eq!(api.call(&cbo_a, "POST", "/fhir", Some(&sneaky)).0, 403);
    assert_eq!(api.get(&ehr, "/fhir/Task/task-1").1["status"], "requested", "the refused transaction changed nothing");

    // The state machine: the owner's moves are not the requester's, invalid moves change nothing.
    let (status, body) = api.put(&ehr, &accepted);
    assert_eq!(status, 403, "the requester may not accept: {body}");
    let completed_early =
        task("task-1", "completed", "Organization/cbo-a", "Organization/clinic", "ServiceRequest/sr-1");
    let (status, body) = api.put(&cbo_a, &completed_early);
    assert_eq!(status, 422, "requested -> completed skips acceptance: {body}");
    assert_eq!(body["issue"][0]["code"], "business-rule");
    let (_, current) = api.get(&ehr, "/fhir/Task/task-1");
    assert_eq!((current["status"].as_str(), current["meta"]["versionId"].as_str()), (Some("requested"), Some("1")));
    let mut redirected = accepted.clone();
    redirected["owner"] = json!({"reference": "Organization/cbo-b"});
    assert_eq!(api.put(&cbo_a, &redirected).0, 403, "only the requester re-assigns");

    let (status, body) = api.put(&cbo_a, &accepted);
    assert_eq!(status, 200, "{body}");
    let (_, sr) = api.get(&ehr, "/fhir/ServiceRequest/sr-1");
    assert_eq!(sr["status"], "active");
    let cancelled = task("task-1", "cancelled", "Organization/cbo-a", "Organization/clinic", "ServiceRequest/sr-1");
    assert_eq!(api.put(&cbo_a, &cancelled).0, 403, "cancelling is the requester's");
    let in_progress = task("task-1", "in-progress", "Organization/cbo-a", "Organization/clinic", "ServiceRequest/sr-1");
    assert_eq!(api.put(&cbo_a, &in_progress).0, 200);

    // CBO A records the service it delivered and completes the Task with it as output.
    let procedure = json!({"resourceType": "Procedure", "status": "completed", "subject": {"reference": "Patient/pat-1"},
        "basedOn": [{"reference": "ServiceRequest/sr-1"}], "code": {"coding": [{"system": "http://snomed.info/sct", "code": "467771000124109"}]}});
    let (status, created) = api.call(&cbo_a, "POST", "/fhir/Procedure", Some(&procedure));
    assert_eq!(status, 201, "{created}");
    let procedure_ref = format!("Procedure/{}", created["id"].as_str().unwrap());
    assert_eq!(api.get(&cbo_a, &format!("/fhir/{procedure_ref}")).0, 200, "a CBO sees what it created");
    assert_eq!(api.get(&cbo_b, &format!("/fhir/{procedure_ref}")).0, 404);
    let mut done = task("task-1", "completed", "Organization/cbo-a", "Organization/clinic", "ServiceRequest/sr-1");
    done["output"] = json!([{"type": {"coding": [{"system": "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes", "code": "resulting-activity"}]},
        "valueReference": {"reference": procedure_ref}}]);
    let (status, body) = api.put(&cbo_a, &done);
    assert_eq!(status, 200, "{body}");

    // The clinic sees the closed loop: Task completed with its output, the ServiceRequest completed.
    let (_, t) = api.get(&ehr, "/fhir/Task/task-1");
    assert_eq!(t["status"], "completed");
    assert_eq!(t["output"][0]["valueReference"]["reference"], procedure_ref.as_str());
    let (_, sr) = api.get(&ehr, "/fhir/ServiceRequest/sr-1");
    assert_eq!(sr["status"], "completed", "the ServiceRequest follows its Task");
    // CBO B never saw any of it.
    assert!(api.search_ids(&cbo_b, "/fhir/Task").is_empty());
    assert!(api.search_ids(&cbo_b, "/fhir/ServiceRequest").is_empty());
    assert!(api.search_ids(&cbo_b, "/fhir/Procedure").is_empty());

    // Closed loop for CBO A's platform: one notification per change of its Task, numbered and in order; CBO B's
    // platform heard nothing but its handshake. Each Subscription's $status and $events are its owner's alone.
    let expected: Vec<(i64, String)> = ["requested", "accepted", "in-progress", "completed"]
        .iter()
        .enumerate()
        .map(|(i, s)| (i as i64 + 1, (*s).to_owned()))
        .collect();
    wait_for("CBO A's notifications", || (receiver_a.task_statuses().len() >= expected.len()).then_some(()));
    assert_eq!(receiver_a.task_statuses(), expected);
    assert_eq!(receiver_b.count("event-notification"), 0, "CBO B never hears of CBO A's referral");
    assert_eq!(receiver_b.count("handshake"), 1);
    let (sub_a, sub_b) = (&subscriptions[0], &subscriptions[1]);
    assert_eq!(api.get(&cbo_a, &format!("/fhir/Subscription/{sub_a}/$status")).0, 200);
    let (_, events) = api.get(&cbo_a, &format!("/fhir/Subscription/{sub_a}/$events"));
    assert_eq!(events["type"], "history", "{events}");
    for path in [
        format!("/fhir/Subscription/{sub_a}/$status"),
        format!("/fhir/Subscription/{sub_a}/$events"),
        format!("/fhir/Subscription/{sub_a}"),
    ] {
        assert_eq!(api.get(&cbo_b, &path).0, 404, "{path}");
    }
    assert_eq!(api.get(&cbo_b, &format!("/fhir/Subscription/{sub_b}/$status")).0, 200);

    // Revocation: the token stops working (cache disabled here).
    let (status, _, err) = run(dir.path(), &["--database-url", db_url, "clients", "revoke", &cbo_b.client_id], &[]);
    assert!(status.success(), "{err}");
    assert_eq!(api.get(&cbo_b, "/fhir/Task").0, 401);
    let (status, listing, _) = run(dir.path(), &["--database-url", db_url, "clients", "list", "--json"], &[]);
    assert!(status.success());
    assert_eq!(listing.lines().count(), 5);
    assert!(!listing.contains(&cbo_a.token) && !listing.contains("secret"), "listings never show secrets");

    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());
}

/// A coordination platform (CBO A) passes the referral on to CBO B as a sub-Task with its own ServiceRequest.
fn coordination_platform_subtask(db_url: &str) {
    let dir = temp_dir();
    let ehr = client(dir.path(), db_url, "ehr", "Organization/clinic");
    let platform = client(dir.path(), db_url, "cbo", "Organization/cbo-a");
    let provider = client(dir.path(), db_url, "cbo", "Organization/cbo-b");
    let mut gw = Gateway::start(
        dir.path(),
        &["--database-url", db_url, "--http-listen", "127.0.0.1:0"],
        &[("SDOH_GATEWAY_AUTH__REQUIRED", "true")],
    );
    let api = Api { addr: gw.wait_ready() };
    seed(&api, &ehr);
    let accepted = task("task-1", "accepted", "Organization/cbo-a", "Organization/clinic", "ServiceRequest/sr-1");
    assert_eq!(api.put(&platform, &accepted).0, 200);
    assert_eq!(api.get(&provider, "/fhir/Task/task-1").0, 404);

    // The platform's own order (filler-order, based on the clinic's) and the sub-Task it requests from CBO B.
    let platform_sr = json!({"resourceType": "ServiceRequest", "id": "sr-platform", "status": "active", "intent": "filler-order",
        "basedOn": [{"reference": "ServiceRequest/sr-1"}], "subject": {"reference": "Patient/pat-1"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "467771000124109"}]}});
    let sr_url = "urn:uuid:5b0f3c1e-7d4a-4c51-9a3e-2f1d8e6b9a01";
    let mut sub = task("sub-1", "requested", "Organization/cbo-b", "Organization/cbo-a", sr_url);
    sub.as_object_mut().unwrap().remove("id");
    sub["partOf"] = json!([{"reference": "Task/task-1"}]);
    let mut platform_sr = platform_sr;
    platform_sr.as_object_mut().unwrap().remove("id");
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": sr_url, "resource": platform_sr, "request": {"method": "POST", "url": "ServiceRequest"}},
        {"resource": sub, "request": {"method": "POST", "url": "Task"}}
    ]});
    let (status, body) = api.call(&platform, "POST", "/fhir", Some(&bundle));
    assert_eq!(status, 200, "{body}");
    let created: Vec<String> = body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["location"].as_str().unwrap().split("/_history").next().unwrap().to_owned())
        .collect();
    let sr_platform = created[0].rsplit('/').next().unwrap().to_owned();
    let sub_id = created[1].rsplit('/').next().unwrap().to_owned();
    // The platform may not refer the clinic's own order onwards: a sub-referral is about the platform's order.
    let mut misdirected = task("x", "requested", "Organization/cbo-b", "Organization/cbo-a", "ServiceRequest/sr-1");
    misdirected.as_object_mut().unwrap().remove("id");
    assert_eq!(api.call(&platform, "POST", "/fhir/Task", Some(&misdirected)).0, 403);

    // CBO B sees its sub-Task and its context, and works it; the platform sees the progress.
    assert_eq!(
        api.search_ids(&provider, "/fhir/Task?owner=Organization/cbo-b&status=requested"),
        vec![format!("Task/{sub_id}")]
    );
    assert_eq!(api.get(&provider, &format!("/fhir/ServiceRequest/{sr_platform}")).0, 200);
    assert_eq!(api.get(&provider, "/fhir/Patient/pat-1").0, 200);
    assert_eq!(api.get(&provider, "/fhir/Observation/obs-private").0, 404);
    for status in ["accepted", "in-progress", "completed"] {
        let focus = format!("ServiceRequest/{sr_platform}");
        let mut next = task(&sub_id, status, "Organization/cbo-b", "Organization/cbo-a", &focus);
        next["partOf"] = json!([{"reference": "Task/task-1"}]);
        let (code, body) = api.put(&provider, &next);
        assert_eq!(code, 200, "{status}: {body}");
    }
    let (_, sub_now) = api.get(&platform, &format!("/fhir/Task/{sub_id}"));
    assert_eq!(sub_now["status"], "completed");
    let (_, platform_sr_now) = api.get(&platform, &format!("/fhir/ServiceRequest/{sr_platform}"));
    assert_eq!(platform_sr_now["status"], "completed");
    // The platform closes its own Task with the clinic; the clinic's ServiceRequest follows.
    let in_progress = task("task-1", "in-progress", "Organization/cbo-a", "Organization/clinic", "ServiceRequest/sr-1");
    assert_eq!(api.put(&platform, &in_progress).0, 200);
    let done = task("task-1", "completed", "Organization/cbo-a", "Organization/clinic", "ServiceRequest/sr-1");
    assert_eq!(api.put(&platform, &done).0, 200);
    assert_eq!(api.get(&ehr, "/fhir/ServiceRequest/sr-1").1["status"], "completed");
    // A referral the clinic deletes grants nothing any more.
    assert_eq!(api.get(&platform, "/fhir/Patient/pat-1").0, 200);
    assert_eq!(api.call(&ehr, "DELETE", "/fhir/Task/task-1", None).0, 204);
    assert_eq!(api.get(&platform, "/fhir/Condition/cond-food").0, 404);
    assert_eq!(api.get(&platform, "/fhir/Consent/consent-1").0, 404);

    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn referral_lifecycle_and_authorization_on_sqlite() {
    let dir = temp_dir();
    referral_lifecycle(&format!("sqlite:{}", dir.path().join("referrals.db").display()));
}

#[test]
fn referral_lifecycle_and_authorization_on_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(postgres_schema_url(&postgres_url()));
    referral_lifecycle(&url);
}

#[test]
fn coordination_platform_subtasks_on_sqlite() {
    let dir = temp_dir();
    coordination_platform_subtask(&format!("sqlite:{}", dir.path().join("platform.db").display()));
}

#[test]
fn coordination_platform_subtasks_on_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(postgres_schema_url(&postgres_url()));
    coordination_platform_subtask(&url);
}
