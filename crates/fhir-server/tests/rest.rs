//! REST interaction tests: every interaction and error status through the real router on real SQLite and PostgreSQL.

mod common;

use common::{BASE, TestDb};
use serde_json::{Value, json};

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "active": true,
        "name": [{"family": "Example", "given": ["Pat"]}],
        "gender": "female",
        "birthDate": "1980-04-01",
    })
}

/// A UUID version 7 (RFC 9562) whose timestamp is within a minute of now: server ids sort by creation time.
fn is_recent_uuid_v7(id: &str) -> bool {
    let parts: Vec<&str> = id.split('-').collect();
    let well_formed = parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && id.bytes().all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && parts[2].starts_with('7')
        && matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b');
    if !well_formed {
        return false;
    }
    let millis = u64::from_str_radix(&format!("{}{}", parts[0], parts[1]), 16).unwrap_or(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    now.abs_diff(millis) < 60_000
}

async fn capability_statement_tells_the_truth(db: TestDb) {
    let app = db.app().await;
    let reply = app.get("/fhir/metadata").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/fhir+json; charset=utf-8"));
    let cs = &reply.json;
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    assert_eq!(cs["format"], json!(["json", "application/fhir+json"]));
    let resources = cs["rest"][0]["resource"].as_array().expect("resources");
    assert_eq!(resources.len(), fhir_server::rest::SUPPORTED_TYPES.len());
    assert!(resources.iter().all(|r| r["type"] != "Bundle"));
    let task = resources.iter().find(|r| r["type"] == "Task").expect("Task");
    assert_eq!(task["versioning"], "versioned");
    assert_eq!(task["readHistory"], true);
    assert_eq!(task["updateCreate"], true);
    assert_eq!(task["conditionalCreate"], true);
    assert_eq!(task["conditionalUpdate"], true);
    assert_eq!(task["conditionalDelete"], "single");
    let params: Vec<&str> =
        task["searchParam"].as_array().expect("searchParam").iter().filter_map(|p| p["name"].as_str()).collect();
    for name in ["_id", "_lastUpdated", "owner", "status"] {
        assert!(params.contains(&name), "{name}");
    }
    let codes: Vec<&str> =
        task["interaction"].as_array().expect("interactions").iter().filter_map(|i| i["code"].as_str()).collect();
    for code in
        ["read", "vread", "create", "update", "patch", "delete", "history-instance", "history-type", "search-type"]
    {
        assert!(codes.contains(&code), "{code}");
    }
    assert_eq!(cs["rest"][0]["interaction"], json!([{"code": "history-system"}]));

    let strict = db.app_with(|s| s.allow_update_create = false).await;
    let reply = strict.get("/fhir/metadata").await;
    assert_eq!(reply.json["rest"][0]["resource"][0]["updateCreate"], false);
}

async fn create_then_read(db: TestDb) {
    let app = db.app().await;
    let mut body = patient();
    body["id"] = json!("client-chosen");
    let reply = app.create(&body).await;
    assert_eq!(reply.status, 201, "{}", reply.json);
    let id = reply.json["id"].as_str().expect("id").to_owned();
    assert!(is_recent_uuid_v7(&id), "server-assigned UUID v7, got {id}");
    assert_eq!(reply.header("location"), Some(format!("{BASE}/Patient/{id}/_history/1").as_str()));
    assert_eq!(reply.header("etag"), Some("W/\"1\""));
    assert!(reply.header("last-modified").is_some_and(|d| d.ends_with(" GMT")));
    assert_eq!(reply.header("content-type"), Some("application/fhir+json; charset=utf-8"));
    assert_eq!(reply.json["meta"]["versionId"], "1");

    let read = app.get(&format!("/fhir/Patient/{id}")).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.header("etag"), Some("W/\"1\""));
    assert_eq!(read.header("last-modified"), reply.header("last-modified"));
    assert_eq!(read.header("content-type"), Some("application/fhir+json; charset=utf-8"));
    assert_eq!(read.json, reply.json);
    assert_eq!(read.json["birthDate"], "1980-04-01");
    assert_eq!(app.get("/fhir/Patient/client-chosen").await.status, 404);

    let minimal = app.write("POST", "/fhir/Patient", &[("prefer", "return=minimal")], &patient()).await;
    assert_eq!(minimal.status, 201);
    assert!(minimal.bytes.is_empty());
    assert!(minimal.header("location").is_some());
    assert_eq!(minimal.header("etag"), Some("W/\"1\""));
    let outcome = app.write("POST", "/fhir/Patient", &[("prefer", "return=OperationOutcome")], &patient()).await;
    assert_eq!(outcome.status, 201);
    assert_eq!(outcome.json["resourceType"], "OperationOutcome");
    assert_eq!(outcome.json["issue"][0]["severity"], "information");
}

async fn read_errors(db: TestDb) {
    let app = db.app().await;
    app.get("/fhir/Patient/nope").await.outcome(404, "not-found");
    app.get("/fhir/Spaceship/1").await.outcome(404, "not-found");
    app.get("/fhir/Bundle/1").await.outcome(404, "not-found");
    app.create(&json!({"resourceType": "Bundle", "type": "collection"})).await.outcome(404, "not-found");
    app.get("/fhir/Patient/bad_id").await.outcome(400, "invalid");
    app.get(&format!("/fhir/Patient/{}", "a".repeat(65))).await.outcome(400, "invalid");
    app.get("/fhir/Patient/x/y/z/w").await.outcome(404, "not-found");
    app.send("POST", "/fhir/Patient/abc", &[("content-type", "application/fhir+json")], Some(b"{}".to_vec()))
        .await
        .outcome(405, "not-supported");
    app.send("PUT", "/fhir/Patient", &[("content-type", "application/fhir+json")], Some(b"{}".to_vec()))
        .await
        .outcome(405, "not-supported");
    app.get("/fhir/Patient/abc/_history/zero").await.outcome(404, "not-found");
}

async fn vread_versions(db: TestDb) {
    let app = db.app().await;
    let id = app.create_id(&patient()).await;
    let mut v2 = patient();
    v2["id"] = json!(id);
    v2["gender"] = json!("male");
    let reply = app.write("PUT", &format!("/fhir/Patient/{id}"), &[], &v2).await;
    assert_eq!(reply.status, 200);
    let one = app.get(&format!("/fhir/Patient/{id}/_history/1")).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json["gender"], "female");
    assert_eq!(one.header("etag"), Some("W/\"1\""));
    let two = app.get(&format!("/fhir/Patient/{id}/_history/2")).await;
    assert_eq!(two.json["gender"], "male");
    assert_eq!(two.json["meta"]["versionId"], "2");
    app.get(&format!("/fhir/Patient/{id}/_history/3")).await.outcome(404, "not-found");
}

async fn update_rules(db: TestDb) {
    let app = db.app().await;
    let id = app.create_id(&patient()).await;
    let uri = format!("/fhir/Patient/{id}");
    let mut body = patient();
    body["id"] = json!(id);
    body["active"] = json!(false);
    let reply = app.write("PUT", &uri, &[], &body).await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.header("etag"), Some("W/\"2\""));
    assert_eq!(reply.json["meta"]["versionId"], "2");
    assert_eq!(reply.json["active"], false);

    app.write("PUT", &uri, &[], &patient()).await.outcome(400, "required");
    let mut other = body.clone();
    other["id"] = json!("someone-else");
    let e = app.write("PUT", &uri, &[], &other).await;
    assert_eq!(e.outcome(400, "invalid")["expression"], json!(["Patient.id"]));
    let mut wrong_type = body.clone();
    wrong_type["resourceType"] = json!("Observation");
    app.write("PUT", &uri, &[], &wrong_type).await.outcome(400, "invalid");

    // If-Match
    app.write("PUT", &uri, &[("if-match", "W/\"1\"")], &body).await.outcome(412, "conflict");
    let ok = app.write("PUT", &uri, &[("if-match", "W/\"2\"")], &body).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("etag"), Some("W/\"3\""));
    app.write("PUT", &uri, &[("if-match", "garbage")], &body).await.outcome(400, "invalid");

    // Update as create
    let mut fresh = patient();
    fresh["id"] = json!("chosen-by-client");
    let created = app.write("PUT", "/fhir/Patient/chosen-by-client", &[], &fresh).await;
    assert_eq!(created.status, 201);
    assert_eq!(created.header("location"), Some(format!("{BASE}/Patient/chosen-by-client/_history/1").as_str()));
    let strict = db.app_with(|s| s.allow_update_create = false).await;
    fresh["id"] = json!("another-one");
    strict.write("PUT", "/fhir/Patient/another-one", &[], &fresh).await.outcome(405, "not-supported");
    assert_eq!(strict.get("/fhir/Patient/another-one").await.status, 404);
    // Updating an existing resource is still fine on the strict server.
    assert_eq!(strict.write("PUT", &uri, &[], &body).await.status, 200);
}

async fn concurrent_updates_with_if_match_have_one_winner(db: TestDb) {
    let app = std::sync::Arc::new(db.app().await);
    let id = app.create_id(&patient()).await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let app = app.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut body = patient();
            body["id"] = json!(id);
            body["name"][0]["family"] = json!(format!("Writer{i}"));
            app.write("PUT", &format!("/fhir/Patient/{id}"), &[("if-match", "W/\"1\"")], &body).await.status.as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task"));
    }
    statuses.sort();
    assert_eq!(statuses, [200, 412, 412, 412, 412, 412]);
    assert_eq!(app.get(&format!("/fhir/Patient/{id}")).await.header("etag"), Some("W/\"2\""));
}

/// Concurrent creates share transactions (group commit); each must still be answered with its own resource and be
/// readable and searchable once answered.
async fn concurrent_creates_are_each_committed_and_indexed(db: TestDb) {
    let app = std::sync::Arc::new(db.app().await);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut body = patient();
            body["name"][0]["family"] = json!(format!("Concurrent{i}"));
            let reply = app.create(&body).await;
            assert_eq!(reply.status, 201, "{}", reply.json);
            assert_eq!(reply.json["name"][0]["family"], format!("Concurrent{i}"));
            (i, reply.json["id"].as_str().expect("id").to_owned())
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let (i, id) = task.await.expect("task");
        assert!(ids.insert(id.clone()), "id {id} given twice");
        let read = app.get(&format!("/fhir/Patient/{id}")).await;
        assert_eq!(read.status, 200);
        assert_eq!(read.json["name"][0]["family"], format!("Concurrent{i}"));
        let found = app.get(&format!("/fhir/Patient?family:exact=Concurrent{i}")).await;
        assert_eq!(found.json["total"], 1, "{}", found.json);
        assert_eq!(found.json["entry"][0]["resource"]["id"], id.as_str());
    }
}

/// Every way a QuestionnaireResponse version is written or deleted queues exactly one normalization job for it,
/// in the same transaction: a rolled-back transaction queues nothing.
async fn questionnaire_responses_queue_normalization(db: TestDb) {
    let app = db.app().await;
    let claim = |store: store::Store| async move {
        let jobs =
            store.claim(fhir_server::rest::write::NORMALIZE_QUEUE, 100, std::time::Duration::from_secs(60)).await;
        let jobs = jobs.expect("claim");
        for job in &jobs {
            store.complete(job).await.expect("complete");
        }
        jobs.into_iter().map(|j| serde_json::from_str::<Value>(&j.payload).expect("payload")).collect::<Vec<_>>()
    };
    let qr =
        json!({"resourceType": "QuestionnaireResponse", "status": "completed", "subject": {"reference": "Patient/p"}});
    let created = app.create(&qr).await;
    assert_eq!(created.status, 201);
    let id = created.json["id"].as_str().expect("id").to_owned();
    app.create(&patient()).await;
    assert_eq!(
        claim(app.store.clone()).await,
        [json!({"resourceType": "QuestionnaireResponse", "id": id, "versionId": 1})]
    );

    let mut amended = qr.clone();
    amended["id"] = json!(id);
    amended["status"] = json!("amended");
    assert_eq!(app.write("PUT", &format!("/fhir/QuestionnaireResponse/{id}"), &[], &amended).await.status, 200);
    assert_eq!(app.send("DELETE", &format!("/fhir/QuestionnaireResponse/{id}"), &[], None).await.status, 204);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b0c5a8e-6f7e-4b8e-9d43-1a2b3c4d5e6f", "resource": qr, "request": {"method": "POST", "url": "QuestionnaireResponse"}}
    ]});
    let reply = app.write("POST", "/fhir", &[], &bundle).await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    let versions: Vec<Value> = claim(app.store.clone()).await.iter().map(|p| p["versionId"].clone()).collect();
    assert_eq!(versions, [json!(2), json!(3), json!(1)]);

    // A transaction that fails after its QuestionnaireResponse entry leaves no job behind.
    let failing = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "QuestionnaireResponse", "status": "completed"}, "request": {"method": "POST", "url": "QuestionnaireResponse"}},
        {"resource": {"resourceType": "Patient", "id": "x"}, "request": {"method": "PUT", "url": "Patient/x", "ifMatch": "W/\"9\""}}
    ]});
    assert_ne!(app.write("POST", "/fhir", &[], &failing).await.status, 200);
    assert!(claim(app.store.clone()).await.is_empty());
}

async fn conditional_reads(db: TestDb) {
    let app = db.app().await;
    let reply = app.create(&patient()).await;
    let id = reply.json["id"].as_str().expect("id");
    let uri = format!("/fhir/Patient/{id}");
    let last_modified = reply.header("last-modified").expect("last-modified").to_owned();
    let r = app.get_with(&uri, &[("if-none-match", "W/\"1\"")]).await;
    assert_eq!(r.status, 304);
    assert!(r.bytes.is_empty());
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    assert_eq!(app.get_with(&uri, &[("if-none-match", "W/\"7\"")]).await.status, 200);
    assert_eq!(app.get_with(&uri, &[("if-modified-since", &last_modified)]).await.status, 304);
    assert_eq!(app.get_with(&uri, &[("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT")]).await.status, 200);
    assert_eq!(app.get_with(&uri, &[("if-modified-since", "not a date")]).await.status, 200);
}

async fn delete_is_logical(db: TestDb) {
    let app = db.app().await;
    let id = app.create_id(&patient()).await;
    let uri = format!("/fhir/Patient/{id}");
    app.send("DELETE", &uri, &[("if-match", "W/\"5\"")], None).await.outcome(412, "conflict");
    let reply = app.send("DELETE", &uri, &[("if-match", "W/\"1\"")], None).await;
    assert_eq!(reply.status, 204);
    assert!(reply.bytes.is_empty());
    assert_eq!(reply.header("etag"), Some("W/\"2\""));
    let gone = app.get(&uri).await;
    gone.outcome(410, "deleted");
    assert_eq!(gone.header("etag"), Some("W/\"2\""));
    app.get(&format!("{uri}/_history/2")).await.outcome(410, "deleted");
    assert_eq!(app.get(&format!("{uri}/_history/1")).await.status, 200);
    assert_eq!(app.send("DELETE", &uri, &[], None).await.status, 204, "already deleted");
    assert_eq!(app.send("DELETE", "/fhir/Patient/never-was", &[], None).await.status, 204, "never existed");
    let oo = app.send("DELETE", "/fhir/Patient/never-was", &[("prefer", "return=OperationOutcome")], None).await;
    assert_eq!(oo.status, 200);
    assert_eq!(oo.json["resourceType"], "OperationOutcome");
    app.patch(&uri, &[], &json!([{"op": "replace", "path": "/active", "value": false}])).await.outcome(410, "deleted");
    // A deleted resource can be brought back by an update, as a new version.
    let mut again = patient();
    again["id"] = json!(id);
    let back = app.write("PUT", &uri, &[], &again).await;
    assert_eq!(back.status, 201);
    assert_eq!(back.header("etag"), Some("W/\"3\""));
}

async fn json_patch(db: TestDb) {
    let app = db.app().await;
    let id = app.create_id(&patient()).await;
    let uri = format!("/fhir/Patient/{id}");
    let reply = app
        .patch(
            &uri,
            &[("if-match", "W/\"1\"")],
            &json!([
                {"op": "test", "path": "/gender", "value": "female"},
                {"op": "replace", "path": "/gender", "value": "other"},
                {"op": "add", "path": "/name/0/given/-", "value": "Q"},
                {"op": "remove", "path": "/active"},
                {"op": "copy", "from": "/birthDate", "path": "/deceasedDateTime"},
                {"op": "move", "from": "/deceasedDateTime", "path": "/_birthDate"},
                {"op": "remove", "path": "/_birthDate"},
            ]),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.header("etag"), Some("W/\"2\""));
    assert_eq!(reply.json["gender"], "other");
    assert_eq!(reply.json["name"][0]["given"], json!(["Pat", "Q"]));
    assert!(reply.json.get("active").is_none());
    assert_eq!(app.get(&uri).await.json, reply.json);

    app.patch(&uri, &[], &json!([{"op": "test", "path": "/gender", "value": "female"}]))
        .await
        .outcome(422, "processing");
    app.patch(&uri, &[], &json!([{"op": "remove", "path": "/nothing"}])).await.outcome(422, "processing");
    app.patch(&uri, &[], &json!([{"op": "replace", "path": "/id", "value": "other"}])).await.outcome(422, "processing");
    app.patch(&uri, &[], &json!([{"op": "replace", "path": "/resourceType", "value": "Group"}]))
        .await
        .outcome(422, "invalid");
    let bad = app.patch(&uri, &[], &json!([{"op": "replace", "path": "/birthDate", "value": "1980-02-30"}])).await;
    assert_eq!(bad.outcome(422, "value")["expression"], json!(["Patient.birthDate"]));
    app.patch(&uri, &[], &json!({"op": "add"})).await.outcome(400, "invalid");
    app.patch(&uri, &[], &json!([{"op": "fly", "path": "/a"}])).await.outcome(400, "invalid");
    app.patch(&uri, &[("if-match", "W/\"1\"")], &json!([])).await.outcome(412, "conflict");
    app.patch("/fhir/Patient/nobody", &[], &json!([])).await.outcome(404, "not-found");
    app.send("PATCH", &uri, &[("content-type", "application/fhir+json")], Some(b"[]".to_vec()))
        .await
        .outcome(415, "not-supported");
    // Nothing of the failed patches was written.
    assert_eq!(app.get(&uri).await.header("etag"), Some("W/\"2\""));
}

async fn media_types_and_limits(db: TestDb) {
    let app = db.app().await;
    app.get_with("/fhir/metadata", &[("accept", "application/fhir+xml")]).await.outcome(406, "not-supported");
    app.get_with("/fhir/metadata", &[("accept", "text/turtle")]).await.outcome(406, "not-supported");
    app.get("/fhir/metadata?_format=xml").await.outcome(406, "not-supported");
    app.get("/fhir/metadata?_format=application/fhir%2Bxml").await.outcome(406, "not-supported");
    for ok in ["application/fhir+json", "application/json", "*/*", "application/fhir+xml, application/json;q=0.5"] {
        assert_eq!(app.get_with("/fhir/metadata", &[("accept", ok)]).await.status, 200, "{ok}");
    }
    for ok in ["json", "application/fhir%2Bjson", "application/json"] {
        assert_eq!(app.get(&format!("/fhir/metadata?_format={ok}")).await.status, 200, "{ok}");
    }
    // _format overrides Accept.
    assert_eq!(app.get_with("/fhir/metadata?_format=json", &[("accept", "application/fhir+xml")]).await.status, 200);

    let body = patient().to_string().into_bytes();
    app.send("POST", "/fhir/Patient", &[("content-type", "application/fhir+xml")], Some(body.clone()))
        .await
        .outcome(415, "not-supported");
    app.send("POST", "/fhir/Patient", &[], Some(body.clone())).await.outcome(415, "not-supported");
    let plain =
        app.send("POST", "/fhir/Patient", &[("content-type", "application/json; charset=utf-8")], Some(body)).await;
    assert_eq!(plain.status, 201);

    // Over the limit: declared by Content-Length, and streamed without one.
    let mut big = patient();
    big["name"][0]["family"] = json!("x".repeat(70 * 1024));
    let big = big.to_string().into_bytes();
    let declared = big.len().to_string();
    app.send(
        "POST",
        "/fhir/Patient",
        &[("content-type", "application/fhir+json"), ("content-length", &declared)],
        Some(big.clone()),
    )
    .await
    .outcome(413, "too-long");
    app.send("POST", "/fhir/Patient", &[("content-type", "application/fhir+json")], Some(big))
        .await
        .outcome(413, "too-long");

    // gzip when asked for.
    let zipped = app.get_with("/fhir/metadata", &[("accept-encoding", "gzip")]).await;
    assert_eq!(zipped.status, 200);
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    assert_eq!(zipped.header("content-type"), Some("application/fhir+json; charset=utf-8"));
}

async fn invalid_input(db: TestDb) {
    let app = db.app().await;
    let post = |body: &'static [u8]| {
        app.send("POST", "/fhir/Patient", &[("content-type", "application/fhir+json")], Some(body.to_vec()))
    };
    post(b"{not json").await.outcome(400, "structure");
    post(b"").await.outcome(400, "required");
    post(b"[1, 2]").await.outcome(400, "structure");
    post(b"\"Patient\"").await.outcome(400, "structure");
    post(b"{}").await.outcome(400, "required");
    post(br#"{"resourceType": "Observation", "status": "final"}"#).await.outcome(400, "invalid");
    let cases = [
        (json!({"resourceType": "Patient", "birthDate": "1980-13-01"}), "Patient.birthDate"),
        (json!({"resourceType": "Patient", "birthDate": "1980-01-01T00:00:00Z"}), "Patient.birthDate"),
        (json!({"resourceType": "Patient", "gender": " female"}), "Patient.gender"),
        (json!({"resourceType": "Patient", "gender": ""}), "Patient.gender"),
        (json!({"resourceType": "Patient", "gender": 1}), "Patient.gender"),
        (json!({"resourceType": "Patient", "meta": {"lastUpdated": "2024-01-01"}}), "Patient.meta.lastUpdated"),
        (json!({"resourceType": "Patient", "name": []}), "Patient.name"),
        (json!({"resourceType": "Patient", "active": null}), "Patient.active"),
        (json!({"resourceType": "Patient", "deceasedDateTime": "2024-01-01T10:00"}), "Patient.deceasedDateTime"),
        (
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": "1.5"}}),
            "Observation.valueQuantity.value",
        ),
        (
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "issued": "2024-01-01"}),
            "Observation.issued",
        ),
        (json!({"resourceType": "Observation", "status": "final ", "code": {"text": "x"}}), "Observation.status"),
        (
            json!({"resourceType": "Task", "status": "ready", "intent": "order", "authoredOn": "tomorrow"}),
            "Task.authoredOn",
        ),
        (
            json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"}, "recordedDate": "2024-02-30"}),
            "Condition.recordedDate",
        ),
    ];
    for (body, element) in cases {
        let reply = app.create(&body).await;
        assert_eq!(reply.status, 400, "{element}: {}", reply.json);
        assert_eq!(reply.json["issue"][0]["expression"], json!([element]), "{}", reply.json);
    }
    // The diagnostics name the element, never the submitted value.
    let reply = app.create(&json!({"resourceType": "Patient", "birthDate": "SECRET-1980"})).await;
    assert!(!reply.json.to_string().contains("SECRET"));
}

async fn search_by_id_only(db: TestDb) {
    let app = db.app().await;
    let a = app.create_id(&patient()).await;
    let b = app.create_id(&patient()).await;
    let gone = app.create_id(&patient()).await;
    assert_eq!(app.send("DELETE", &format!("/fhir/Patient/{gone}"), &[], None).await.status, 204);
    let reply = app.get(&format!("/fhir/Patient?_id={a},{b},{gone},nobody,bad_id")).await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json["type"], "searchset");
    assert_eq!(reply.json["total"], 2);
    let mut found: Vec<&str> =
        reply.json["entry"].as_array().expect("entries").iter().filter_map(|e| e["resource"]["id"].as_str()).collect();
    found.sort();
    let mut expected = vec![a.as_str(), b.as_str()];
    expected.sort();
    assert_eq!(found, expected);
    assert_eq!(reply.json["entry"][0]["search"]["mode"], "match");
    let none = app.get("/fhir/Observation?_id=nothing").await;
    assert_eq!(none.json["total"], 0);
    assert!(none.json.get("entry").is_none());
    // Without parameters every live resource matches; other parameters are answered from the index.
    assert_eq!(app.get("/fhir/Patient").await.json["total"], 2);
    assert_eq!(app.get("/fhir/Patient?name=Example").await.json["total"], 2);
    app.get("/fhir/Spaceship?_id=1").await.outcome(404, "not-found");
}

async fn history_bundles(db: TestDb) {
    let app = db.app().await;
    let id = app.create_id(&patient()).await;
    let uri = format!("/fhir/Patient/{id}");
    let mut v2 = patient();
    v2["id"] = json!(id);
    v2["active"] = json!(false);
    assert_eq!(app.write("PUT", &uri, &[], &v2).await.status, 200);
    assert_eq!(app.send("DELETE", &uri, &[], None).await.status, 204);

    let reply = app.get(&format!("{uri}/_history")).await;
    assert_eq!(reply.status, 200);
    let bundle = &reply.json;
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "history");
    let entries = bundle["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 3);
    let full_url = format!("{BASE}/Patient/{id}");
    assert!(entries.iter().all(|e| e["fullUrl"] == full_url.as_str()));
    assert_eq!(entries[0]["request"], json!({"method": "DELETE", "url": format!("Patient/{id}")}));
    assert!(entries[0].get("resource").is_none());
    assert_eq!(entries[0]["response"]["etag"], "W/\"3\"");
    assert_eq!(entries[1]["request"]["method"], "PUT");
    assert_eq!(entries[1]["resource"]["active"], false);
    assert_eq!(entries[1]["response"]["status"], "200 OK");
    assert_eq!(entries[2]["request"], json!({"method": "POST", "url": "Patient"}));
    assert_eq!(entries[2]["response"]["status"], "201 Created");
    assert_eq!(entries[2]["response"]["lastModified"], entries[2]["resource"]["meta"]["lastUpdated"]);
    app.get("/fhir/Patient/nobody/_history").await.outcome(404, "not-found");
    app.get(&format!("{uri}/_history?_count=abc")).await.outcome(400, "invalid");
    app.get(&format!("{uri}/_history?_since=yesterday")).await.outcome(400, "invalid");

    // _since in the future: nothing; _at before any write: nothing.
    let later = app.get(&format!("{uri}/_history?_since=2999-01-01T00:00:00Z")).await;
    assert!(later.json.get("entry").is_none());
    let before = app.get(&format!("{uri}/_history?_at=2001")).await;
    assert!(before.json.get("entry").is_none());
    // _at now: only the version current now (the deletion).
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let at = app.get(&format!("{uri}/_history?_at={}", now.replace('+', "%2B"))).await;
    assert_eq!(at.status, 200, "{}", at.json);
    let at_entries = at.json["entry"].as_array().expect("entries at now");
    assert_eq!(at_entries.len(), 1, "{}", at.json);
    assert_eq!(at_entries[0]["request"]["method"], "DELETE");

    let system = app.get("/fhir/_history").await;
    assert_eq!(system.json["entry"].as_array().map(Vec::len), Some(3));
    let observations = app.get("/fhir/Observation/_history").await;
    assert!(observations.json.get("entry").is_none());
    app.get("/fhir/Spaceship/_history").await.outcome(404, "not-found");
}

async fn history_paging_is_stable(db: TestDb) {
    let app = db.app().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.create_id(&json!({"resourceType": "Group", "type": "person", "actual": true})).await);
    }
    app.create_id(&patient()).await;
    let mut seen = Vec::new();
    let mut next = Some("/fhir/Group/_history?_count=2".to_owned());
    let mut pages = 0;
    while let Some(uri) = next.take() {
        let reply = app.get(&uri).await;
        assert_eq!(reply.status, 200, "{}", reply.json);
        pages += 1;
        if pages == 1 {
            // A write after the first page must not shift the later pages.
            app.create_id(&json!({"resourceType": "Group", "type": "device", "actual": false})).await;
        }
        for entry in reply.json["entry"].as_array().into_iter().flatten() {
            seen.push(entry["resource"]["id"].as_str().expect("id").to_owned());
        }
        let links = reply.json["link"].as_array().expect("links");
        assert!(links.iter().any(|l| l["relation"] == "self"));
        next = links.iter().find(|l| l["relation"] == "next").map(|l| {
            let url = l["url"].as_str().expect("url");
            assert!(url.starts_with(BASE), "{url}");
            url.trim_start_matches("http://localhost").to_owned()
        });
    }
    assert_eq!(pages, 3);
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected, "newest first, each exactly once");
    app.get("/fhir/Group/_history?_cursor=abc").await.outcome(400, "invalid");
}

async fn store_outage_is_transient(db: TestDb) {
    let app = db.app().await;
    let id = app.create_id(&patient()).await;
    app.store.close().await;
    let reply = app.get(&format!("/fhir/Patient/{id}")).await;
    let issue = reply.outcome(503, "transient");
    let text = issue["diagnostics"].as_str().unwrap_or("");
    assert!(!text.to_lowercase().contains("pool") && !text.contains("sql"), "{text}");
    app.create(&patient()).await.outcome(503, "transient");
}

for_each_backend!(
    capability_statement_tells_the_truth,
    create_then_read,
    read_errors,
    vread_versions,
    update_rules,
    concurrent_updates_with_if_match_have_one_winner,
    concurrent_creates_are_each_committed_and_indexed,
    questionnaire_responses_queue_normalization,
    conditional_reads,
    delete_is_logical,
    json_patch,
    media_types_and_limits,
    invalid_input,
    search_by_id_only,
    history_bundles,
    history_paging_is_stable,
    store_outage_is_transient,
);
