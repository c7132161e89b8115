//! Conditional create, update and delete (FHIR R4 http.html#cond-update and friends), on the REST endpoints and
//! inside transaction and batch Bundles, with conditional references, on real SQLite and PostgreSQL.

mod common;

use common::{TestApp, TestDb};
use serde_json::{Value, json};

for_each_backend!(
    simultaneous_conditional_creates_make_one_resource,
    conditional_create_zero_one_many,
    conditional_create_refuses_bad_criteria,
    conditional_create_honours_prefer,
    conditional_update_zero_one_many,
    conditional_update_without_update_create,
    conditional_delete_zero_one_many,
    capability_statement_announces_conditional_interactions,
    transaction_conditional_create_run_twice_reuses_the_patient,
    transaction_conditional_update_and_delete,
    transaction_with_several_matches_fails_whole,
    conditional_references_resolve_to_one_match,
    conditional_reference_to_a_conditional_create_in_the_same_bundle,
    batch_conditional_entries_answer_on_their_own,
    bundle_conditional_input_errors,
);

const MRN: &str = "http://x";

fn patient(value: &str) -> Value {
    json!({"resourceType": "Patient", "identifier": [{"system": MRN, "value": value}], "name": [{"family": "Okafor"}]})
}

fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

/// Ids of the Patients carrying the identifier `http://x|value`.
async fn patients_with(app: &TestApp, value: &str) -> Vec<String> {
    let reply = app.get(&format!("/fhir/Patient?identifier={MRN}|{value}")).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.json);
    reply.json["entry"]
        .as_array()
        .map(|entries| entries.iter().filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

async fn history_len(app: &TestApp, path: &str) -> usize {
    app.get(&format!("{path}/_history")).await.json["entry"].as_array().map_or(0, Vec::len)
}

async fn conditional_create_zero_one_many(db: TestDb) {
    let app = db.app().await;
    let criteria = format!("identifier={MRN}|123");
    let first = app.write("POST", "/fhir/Patient", &[("if-none-exist", &criteria)], &patient("123")).await;
    assert_eq!(first.status.as_u16(), 201, "no match creates: {}", first.json);
    let id = first.json["id"].as_str().expect("id").to_owned();

    let mut changed = patient("123");
    changed["gender"] = json!("female");
    let second = app.write("POST", "/fhir/Patient", &[("if-none-exist", &criteria)], &changed).await;
    assert_eq!(second.status.as_u16(), 200, "one match answers with it: {}", second.json);
    assert_eq!(second.json["id"], id.as_str());
    assert!(second.json.get("gender").is_none(), "the existing resource, not the posted one");
    assert_eq!(second.header("etag"), Some("W/\"1\""));
    assert!(second.header("location").is_some_and(|l| l.contains(&format!("/Patient/{id}/_history/1"))));
    assert_eq!(history_len(&app, "/fhir/Patient").await, 1, "nothing was written");

    // The type-prefixed spelling some clients send means the same.
    let prefixed = format!("Patient?{criteria}");
    let third = app.write("POST", "/fhir/Patient", &[("if-none-exist", &prefixed)], &patient("123")).await;
    assert_eq!(third.status.as_u16(), 200, "{}", third.json);
    assert_eq!(third.json["id"], id.as_str());

    app.create_id(&patient("123")).await;
    let many = app.write("POST", "/fhir/Patient", &[("if-none-exist", &criteria)], &patient("123")).await;
    many.outcome(412, "conflict");
    assert_eq!(patients_with(&app, "123").await.len(), 2, "several matches create nothing");

    // Criteria on other types and other values do not interfere.
    let other =
        app.write("POST", "/fhir/Patient", &[("if-none-exist", "identifier=http://x|999")], &patient("999")).await;
    assert_eq!(other.status.as_u16(), 201, "{}", other.json);

    // A `?` inside a value is part of the criteria, not a type prefix.
    let odd = app.write("POST", "/fhir/Patient", &[("if-none-exist", "family=what?ever")], &patient("8")).await;
    assert_eq!(odd.status.as_u16(), 201, "{}", odd.json);
}

async fn conditional_create_refuses_bad_criteria(db: TestDb) {
    let app = db.app().await;
    let post = |criteria: &'static str| {
        let app = &app;
        async move { app.write("POST", "/fhir/Patient", &[("if-none-exist", criteria)], &patient("1")).await }
    };
    post("no-such-param=1").await.outcome(400, "not-supported");
    post("birthdate=not-a-date").await.outcome(400, "invalid");
    post("_count=5").await.outcome(400, "invalid");
    post("").await.outcome(400, "invalid");
    post("Observation?code=1").await.outcome(400, "invalid");
    // A bad body is refused before the criteria are looked at.
    app.write(
        "POST",
        "/fhir/Patient",
        &[("if-none-exist", "identifier=a|b")],
        &json!({"resourceType": "Patient", "birthDate": "x"}),
    )
    .await
    .outcome(400, "value");
    assert_eq!(history_len(&app, "/fhir/Patient").await, 0);
}

async fn conditional_create_honours_prefer(db: TestDb) {
    let app = db.app().await;
    let id = app.create_id(&patient("7")).await;
    let minimal = app
        .write(
            "POST",
            "/fhir/Patient",
            &[("if-none-exist", "identifier=http://x|7"), ("prefer", "return=minimal")],
            &patient("7"),
        )
        .await;
    assert_eq!(minimal.status.as_u16(), 200);
    assert!(minimal.bytes.is_empty());
    let outcome = app
        .write(
            "POST",
            "/fhir/Patient",
            &[("if-none-exist", "identifier=http://x|7"), ("prefer", "return=OperationOutcome")],
            &patient("7"),
        )
        .await;
    assert_eq!(outcome.status.as_u16(), 200);
    assert_eq!(outcome.json["resourceType"], "OperationOutcome");
    assert!(outcome.json["issue"][0]["diagnostics"].as_str().unwrap_or_default().contains(&id));
}

async fn conditional_update_zero_one_many(db: TestDb) {
    let app = db.app().await;
    let url = format!("/fhir/Patient?identifier={MRN}|555");
    let created = app.write("PUT", &url, &[], &patient("555")).await;
    assert_eq!(created.status.as_u16(), 201, "no match, no id: created under a server id: {}", created.json);
    let id = created.json["id"].as_str().expect("id").to_owned();
    assert!(created.header("location").is_some_and(|l| l.contains(&format!("/Patient/{id}/_history/1"))));

    let mut changed = patient("555");
    changed["gender"] = json!("male");
    let updated = app.write("PUT", &url, &[], &changed).await;
    assert_eq!(updated.status.as_u16(), 200, "one match is updated: {}", updated.json);
    assert_eq!(updated.json["id"], id.as_str());
    assert_eq!(updated.json["meta"]["versionId"], "2");
    assert_eq!(app.get(&format!("/fhir/Patient/{id}")).await.json["gender"], "male");

    changed["id"] = json!(id);
    changed["gender"] = json!("female");
    let same_id = app.write("PUT", &url, &[], &changed).await;
    assert_eq!(same_id.status.as_u16(), 200, "{}", same_id.json);
    assert_eq!(same_id.json["meta"]["versionId"], "3");

    changed["id"] = json!("someone-else");
    app.write("PUT", &url, &[], &changed).await.outcome(400, "invalid");

    // If-Match still applies to the matched resource.
    changed["id"] = json!(id);
    app.write("PUT", &url, &[("if-match", "W/\"1\"")], &changed).await.outcome(412, "conflict");
    let matched = app.write("PUT", &url, &[("if-match", "W/\"3\"")], &changed).await;
    assert_eq!(matched.status.as_u16(), 200, "{}", matched.json);

    // No match, id given: update-as-create under that id.
    let mut with_id = patient("556");
    with_id["id"] = json!("p-556");
    let as_create = app.write("PUT", &format!("/fhir/Patient?identifier={MRN}|556"), &[], &with_id).await;
    assert_eq!(as_create.status.as_u16(), 201, "{}", as_create.json);
    assert_eq!(as_create.json["id"], "p-556");

    // No match, but the id belongs to a resource the criteria do not select: refused, not overwritten.
    let mut clash = patient("557");
    clash["id"] = json!("p-556");
    app.write("PUT", &format!("/fhir/Patient?identifier={MRN}|557"), &[], &clash).await.outcome(409, "conflict");
    assert_eq!(app.get("/fhir/Patient/p-556").await.json["identifier"][0]["value"], "556");

    app.create_id(&patient("555")).await;
    app.write("PUT", &url, &[], &patient("555")).await.outcome(412, "conflict");

    app.write("PUT", "/fhir/Patient?nonsense=1", &[], &patient("1")).await.outcome(400, "not-supported");
    app.write("PUT", "/fhir/Patient?_sort=_id", &[], &patient("1")).await.outcome(400, "invalid");
    app.write("PUT", "/fhir/Spaceship?identifier=a|b", &[], &patient("1")).await.outcome(404, "not-found");
    app.write("PUT", "/fhir/Patient", &[], &patient("1")).await.outcome(405, "not-supported");
    app.write("PUT", "/fhir/Patient/_history?identifier=a|b", &[], &patient("1")).await.outcome(405, "not-supported");
}

async fn conditional_update_without_update_create(db: TestDb) {
    let app = db.app_with(|s| s.allow_update_create = false).await;
    let mut with_id = patient("9");
    with_id["id"] = json!("p-9");
    app.write("PUT", "/fhir/Patient?identifier=http://x|9", &[], &with_id).await.outcome(405, "not-supported");
    let server_id = app.write("PUT", "/fhir/Patient?identifier=http://x|9", &[], &patient("9")).await;
    assert_eq!(server_id.status.as_u16(), 201, "a server-assigned id is always allowed: {}", server_id.json);
    assert_ne!(server_id.json["id"], "p-9");
}

async fn conditional_delete_zero_one_many(db: TestDb) {
    let app = db.app().await;
    let none = app.send("DELETE", "/fhir/Patient?identifier=http://x|1", &[], None).await;
    assert_eq!(none.status.as_u16(), 204, "no match: like deleting an absent resource");
    assert_eq!(history_len(&app, "/fhir/Patient").await, 0);

    let id = app.create_id(&patient("1")).await;
    let keep = app.create_id(&patient("2")).await;
    let one = app.send("DELETE", "/fhir/Patient?identifier=http://x|1", &[], None).await;
    assert_eq!(one.status.as_u16(), 204, "{}", one.json);
    assert_eq!(one.header("etag"), Some("W/\"2\""));
    assert_eq!(app.get(&format!("/fhir/Patient/{id}")).await.status.as_u16(), 410);
    assert_eq!(app.get(&format!("/fhir/Patient/{keep}")).await.status.as_u16(), 200);
    assert!(patients_with(&app, "1").await.is_empty(), "the deleted resource leaves the index");

    app.create_id(&patient("3")).await;
    app.create_id(&patient("3")).await;
    app.send("DELETE", "/fhir/Patient?identifier=http://x|3", &[], None).await.outcome(412, "conflict");
    assert_eq!(patients_with(&app, "3").await.len(), 2, "single-delete semantics: nothing deleted");

    let stale = app.create_id(&patient("4")).await;
    app.send("DELETE", "/fhir/Patient?identifier=http://x|4", &[("if-match", "W/\"5\"")], None)
        .await
        .outcome(412, "conflict");
    assert_eq!(app.get(&format!("/fhir/Patient/{stale}")).await.status.as_u16(), 200);

    app.send("DELETE", "/fhir/Patient?bogus=1", &[], None).await.outcome(400, "not-supported");
    app.send("DELETE", "/fhir/Patient", &[], None).await.outcome(405, "not-supported");
}

async fn capability_statement_announces_conditional_interactions(db: TestDb) {
    let app = db.app().await;
    let cs = app.get("/fhir/metadata").await.json;
    for resource in cs["rest"][0]["resource"].as_array().expect("resources") {
        assert_eq!(resource["conditionalCreate"], true);
        assert_eq!(resource["conditionalUpdate"], true);
        assert_eq!(resource["conditionalDelete"], "single");
    }
}

fn patient_and_observation(loinc: &str) -> Value {
    bundle(
        "transaction",
        vec![
            json!({"fullUrl": "urn:uuid:9c7b0f3e-0000-4000-8000-000000000001", "resource": patient("123"),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=http://x|123"}}),
            json!({"fullUrl": "urn:uuid:9c7b0f3e-0000-4000-8000-000000000002",
                "resource": {"resourceType": "Observation", "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
                    "subject": {"reference": "urn:uuid:9c7b0f3e-0000-4000-8000-000000000001"}},
                "request": {"method": "POST", "url": "Observation"}}),
        ],
    )
}

async fn transaction_conditional_create_run_twice_reuses_the_patient(db: TestDb) {
    let app = db.app().await;
    let first = app.write("POST", "/fhir", &[], &patient_and_observation("88122-7")).await;
    assert_eq!(first.status.as_u16(), 200, "{}", first.json);
    assert_eq!(first.json["entry"][0]["response"]["status"], "201 Created");
    let patient_id = first.json["entry"][0]["resource"]["id"].as_str().expect("patient id").to_owned();
    let first_obs = first.json["entry"][1]["resource"]["id"].as_str().expect("observation id").to_owned();

    let second = app.write("POST", "/fhir", &[], &patient_and_observation("88123-5")).await;
    assert_eq!(second.status.as_u16(), 200, "{}", second.json);
    assert_eq!(second.json["entry"][0]["response"]["status"], "200 OK", "the match is reused, not written");
    assert_eq!(second.json["entry"][0]["resource"]["id"], patient_id.as_str());
    assert_eq!(second.json["entry"][0]["response"]["location"], format!("Patient/{patient_id}/_history/1").as_str());
    let second_obs = second.json["entry"][1]["resource"]["id"].as_str().expect("observation id").to_owned();
    assert_ne!(first_obs, second_obs);

    assert_eq!(patients_with(&app, "123").await, vec![patient_id.clone()], "no duplicate Patient");
    assert_eq!(history_len(&app, &format!("/fhir/Patient/{patient_id}")).await, 1);
    for obs in [first_obs, second_obs] {
        let stored = app.get(&format!("/fhir/Observation/{obs}")).await;
        assert_eq!(stored.json["subject"]["reference"], format!("Patient/{patient_id}").as_str());
    }
    let referencing = app.get(&format!("/fhir/Observation?subject=Patient/{patient_id}")).await;
    assert_eq!(referencing.json["total"], 2, "{}", referencing.json);
}

async fn transaction_conditional_update_and_delete(db: TestDb) {
    let app = db.app().await;
    let existing = app.create_id(&patient("10")).await;
    let doomed = app.create_id(&patient("11")).await;
    let mut update = patient("10");
    update["gender"] = json!("other");
    let reply = app
        .write(
            "POST",
            "/fhir",
            &[],
            &bundle(
                "transaction",
                vec![
                    json!({"resource": update, "request": {"method": "PUT", "url": "Patient?identifier=http://x|10"}}),
                    json!({"resource": patient("12"), "request": {"method": "PUT", "url": "Patient?identifier=http://x|12"}}),
                    json!({"request": {"method": "DELETE", "url": "Patient?identifier=http://x|11"}}),
                    json!({"request": {"method": "DELETE", "url": "Patient?identifier=http://x|404"}}),
                ],
            ),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.json);
    let entries = reply.json["entry"].as_array().expect("entries");
    assert_eq!(entries[0]["response"]["status"], "200 OK");
    assert_eq!(entries[0]["resource"]["id"], existing.as_str());
    assert_eq!(entries[1]["response"]["status"], "201 Created");
    assert_eq!(entries[2]["response"]["status"], "204 No Content");
    assert_eq!(entries[3]["response"]["status"], "204 No Content");
    assert_eq!(app.get(&format!("/fhir/Patient/{existing}")).await.json["gender"], "other");
    assert_eq!(app.get(&format!("/fhir/Patient/{doomed}")).await.status.as_u16(), 410);
    assert_eq!(patients_with(&app, "12").await.len(), 1);

    // The body id must name the match.
    let mut wrong = patient("10");
    wrong["id"] = json!("not-it");
    let reply = app
        .write(
            "POST",
            "/fhir",
            &[],
            &bundle(
                "transaction",
                vec![json!({"resource": wrong, "request": {"method": "PUT", "url": "Patient?identifier=http://x|10"}})],
            ),
        )
        .await;
    let issue = reply.outcome(400, "invalid");
    assert_eq!(issue["expression"][0], "Bundle.entry[0]");
}

async fn transaction_with_several_matches_fails_whole(db: TestDb) {
    let app = db.app().await;
    app.create_id(&patient("20")).await;
    app.create_id(&patient("20")).await;
    for (n, failing) in [
        (
            0,
            json!({"resource": patient("20"), "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=http://x|20"}}),
        ),
        (1, json!({"resource": patient("20"), "request": {"method": "PUT", "url": "Patient?identifier=http://x|20"}})),
        (2, json!({"request": {"method": "DELETE", "url": "Patient?identifier=http://x|20"}})),
    ] {
        let reply = app
            .write(
                "POST",
                "/fhir",
                &[],
                &bundle(
                    "transaction",
                    vec![json!({"resource": patient("21"), "request": {"method": "POST", "url": "Patient"}}), failing],
                ),
            )
            .await;
        let issue = reply.outcome(412, "conflict");
        assert_eq!(issue["expression"][0], "Bundle.entry[1]", "case {n}: {issue}");
        assert!(patients_with(&app, "21").await.is_empty(), "case {n}: rolled back");
        assert_eq!(patients_with(&app, "20").await.len(), 2, "case {n}");
    }
}

async fn conditional_references_resolve_to_one_match(db: TestDb) {
    let app = db.app().await;
    let target = app.create_id(&patient("30")).await;
    let observation = |reference: &str| {
        json!({"resource": {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "88122-7"}]},
            "subject": {"reference": reference}, "performer": [{"reference": reference}]},
            "request": {"method": "POST", "url": "Observation"}})
    };
    let reply = app
        .write("POST", "/fhir", &[], &bundle("transaction", vec![observation("Patient?identifier=http://x|30")]))
        .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.json);
    let stored = &reply.json["entry"][0]["resource"];
    assert_eq!(stored["subject"]["reference"], format!("Patient/{target}").as_str());
    assert_eq!(stored["performer"][0]["reference"], format!("Patient/{target}").as_str());

    let none = app
        .write(
            "POST",
            "/fhir",
            &[],
            &bundle(
                "transaction",
                vec![
                    json!({"resource": patient("31"), "request": {"method": "POST", "url": "Patient"}}),
                    observation("Patient?identifier=http://x|nobody"),
                ],
            ),
        )
        .await;
    let issue = none.outcome(412, "conflict");
    assert_eq!(issue["expression"][0], "Bundle.entry[1]");
    assert!(!issue["diagnostics"].as_str().unwrap_or_default().contains("nobody"), "criteria are not echoed");
    assert!(patients_with(&app, "31").await.is_empty());

    app.create_id(&patient("30")).await;
    let several = app
        .write("POST", "/fhir", &[], &bundle("transaction", vec![observation("Patient?identifier=http://x|30")]))
        .await;
    several.outcome(412, "conflict");

    let invalid =
        app.write("POST", "/fhir", &[], &bundle("transaction", vec![observation("Patient?birthdate=soon")])).await;
    assert_eq!(invalid.outcome(400, "invalid")["expression"][0], "Bundle.entry[0]");
    let unknown_type =
        app.write("POST", "/fhir", &[], &bundle("transaction", vec![observation("Spaceship?name=x")])).await;
    unknown_type.outcome(404, "not-found");
    assert_eq!(history_len(&app, "/fhir/Observation").await, 1, "only the first transaction wrote");
}

async fn conditional_reference_to_a_conditional_create_in_the_same_bundle(db: TestDb) {
    let app = db.app().await;
    let entries = || {
        vec![
            json!({"resource": patient("40"),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=http://x|40"}}),
            json!({"resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "88122-7"}]},
                "subject": {"reference": "Patient?identifier=http://x|40"}},
                "request": {"method": "POST", "url": "Observation"}}),
        ]
    };
    let first = app.write("POST", "/fhir", &[], &bundle("transaction", entries())).await;
    assert_eq!(first.status.as_u16(), 200, "{}", first.json);
    let patient_id = first.json["entry"][0]["resource"]["id"].as_str().expect("id").to_owned();
    assert_eq!(first.json["entry"][1]["resource"]["subject"]["reference"], format!("Patient/{patient_id}").as_str());
    let second = app.write("POST", "/fhir", &[], &bundle("transaction", entries())).await;
    assert_eq!(second.status.as_u16(), 200, "{}", second.json);
    assert_eq!(second.json["entry"][1]["resource"]["subject"]["reference"], format!("Patient/{patient_id}").as_str());
    assert_eq!(patients_with(&app, "40").await.len(), 1);
}

async fn batch_conditional_entries_answer_on_their_own(db: TestDb) {
    let app = db.app().await;
    let existing = app.create_id(&patient("50")).await;
    app.create_id(&patient("51")).await;
    app.create_id(&patient("51")).await;
    let reply = app
        .write(
            "POST",
            "/fhir",
            &[],
            &bundle(
                "batch",
                vec![
                    json!({"resource": patient("50"), "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=http://x|50"}}),
                    json!({"resource": patient("51"), "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=http://x|51"}}),
                    json!({"resource": patient("52"), "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=http://x|52"}}),
                    json!({"resource": {"resourceType": "Observation", "status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": "88122-7"}]},
                        "subject": {"reference": "Patient?identifier=http://x|50"}},
                        "request": {"method": "POST", "url": "Observation"}}),
                    json!({"request": {"method": "DELETE", "url": "Patient?identifier=http://x|51"}}),
                    json!({"resource": patient("53"), "request": {"method": "PUT", "url": "Patient?bogus=1"}}),
                ],
            ),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.json);
    let entries = reply.json["entry"].as_array().expect("entries");
    assert_eq!(entries[0]["response"]["status"], "200 OK");
    assert_eq!(entries[0]["resource"]["id"], existing.as_str());
    assert!(entries[1]["response"]["status"].as_str().unwrap_or_default().starts_with("412"), "{}", entries[1]);
    assert_eq!(entries[2]["response"]["status"], "201 Created");
    assert_eq!(entries[3]["response"]["status"], "201 Created");
    assert_eq!(entries[3]["resource"]["subject"]["reference"], format!("Patient/{existing}").as_str());
    assert!(entries[4]["response"]["status"].as_str().unwrap_or_default().starts_with("412"), "{}", entries[4]);
    assert!(entries[5]["response"]["status"].as_str().unwrap_or_default().starts_with("400"), "{}", entries[5]);
    assert_eq!(patients_with(&app, "52").await.len(), 1);
    assert_eq!(patients_with(&app, "51").await.len(), 2);
}

async fn bundle_conditional_input_errors(db: TestDb) {
    let app = db.app().await;
    let one = |entry: Value| bundle("transaction", vec![entry]);
    let cases = [
        (
            json!({"resource": patient("1"), "request": {"method": "PUT", "url": "Patient?identifier=a|b", "ifNoneExist": "identifier=a|b"}}),
            400,
            "invalid",
        ),
        (
            json!({"resource": patient("1"), "request": {"method": "POST", "url": "Patient", "ifNoneExist": 3}}),
            400,
            "value",
        ),
        (
            json!({"resource": patient("1"), "request": {"method": "POST", "url": "Patient", "ifNoneExist": "no-such=1"}}),
            400,
            "not-supported",
        ),
        (json!({"request": {"method": "GET", "url": "Patient?identifier=a|b"}}), 400, "not-supported"),
        (
            json!({"resource": patient("1"), "request": {"method": "PUT", "url": "Patient/abc?identifier=a|b"}}),
            400,
            "invalid",
        ),
        (json!({"request": {"method": "DELETE", "url": "Patient?"}}), 400, "not-supported"),
    ];
    for (entry, status, code) in cases {
        let reply = app.write("POST", "/fhir", &[], &one(entry.clone())).await;
        let issue = reply.outcome(status, code);
        assert!(issue["expression"][0].as_str().unwrap_or_default().contains("Bundle.entry[0]"), "{entry}: {issue}");
    }
    // Two creates with the same criteria would both find nothing and create twice.
    let twice = bundle(
        "transaction",
        vec![
            json!({"resource": patient("60"), "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=http://x|60"}}),
            json!({"resource": patient("60"), "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=http://x|60"}}),
        ],
    );
    app.write("POST", "/fhir", &[], &twice).await.outcome(400, "invalid");
    assert!(patients_with(&app, "60").await.is_empty());
}

/// Simultaneous conditional creates with the same criteria make exactly one resource; the others find it. On
/// PostgreSQL each request runs on its own pooled connection, as separate replicas would.
async fn simultaneous_conditional_creates_make_one_resource(db: TestDb) {
    let app = std::sync::Arc::new(db.app().await);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let criteria = [("if-none-exist", "identifier=http://x|race")];
                app.write("POST", "/fhir/Patient", &criteria, &patient("race")).await.status.as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task"));
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 200), "{statuses:?}");
    assert_eq!(patients_with(&app, "race").await.len(), 1);
}
