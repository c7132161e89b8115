//! Search through the REST router on SQLite and PostgreSQL: every parameter type, modifiers, chaining, paging,
//! includes and result shaping, answered from the index written with each resource.

mod common;

use common::{TestApp, TestDb};
use serde_json::{Value, json};

fn ids(reply: &common::Reply) -> Vec<String> {
    let mut out: Vec<String> = reply.json["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn sorted(mut v: Vec<&str>) -> Vec<String> {
    v.sort();
    v.into_iter().map(str::to_owned).collect()
}

async fn search(app: &TestApp, uri: &str) -> Vec<String> {
    let reply = app.get(uri).await;
    assert_eq!(reply.status, 200, "{uri}: {}", reply.json);
    assert_eq!(reply.json["type"], "searchset");
    ids(&reply)
}

fn patient(family: &str, given: &str, birth: &str, mrn: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "name": [{"family": family, "given": [given]}],
        "birthDate": birth,
        "gender": "female",
        "identifier": [{
            "system": "urn:mrn",
            "value": mrn,
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
        }],
    })
}

fn observation(subject: &str, code: &str, value: f64, when: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "social-history"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": "Food insecurity risk"}], "text": "Hunger vital sign"},
        "subject": {"reference": format!("Patient/{subject}")},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
    })
}

async fn tokens(db: TestDb) {
    let app = db.app().await;
    let a = app.create_id(&patient("Alpha", "Ann", "1970-01-01", "A1")).await;
    let b = app
        .create_id(&json!({"resourceType": "Patient", "gender": "male",
        "identifier": [{"value": "nosys"}]}))
        .await;
    assert_eq!(search(&app, "/fhir/Patient?gender=female").await, vec![a.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?identifier=urn:mrn|A1").await, vec![a.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?identifier=A1").await, vec![a.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?identifier=urn:mrn|").await, vec![a.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?identifier=%7Cnosys").await, vec![b.clone()]);
    assert!(search(&app, "/fhir/Patient?identifier=%7CA1").await.is_empty());
    assert!(search(&app, "/fhir/Patient?identifier=other|A1").await.is_empty());
    assert_eq!(search(&app, "/fhir/Patient?gender:not=female").await, vec![b.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?gender=female,male").await, sorted(vec![&a, &b]));
    assert!(search(&app, "/fhir/Patient?gender=female&gender=male").await.is_empty(), "repeats AND");
    let of_type = "/fhir/Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|A1";
    assert_eq!(search(&app, of_type).await, vec![a.clone()]);
    let o = app.create_id(&observation(&a, "88122-7", 1.0, "2026-11-01")).await;
    assert_eq!(search(&app, "/fhir/Observation?code:text=hunger").await, vec![o.clone()]);
    assert_eq!(search(&app, "/fhir/Observation?code:text=vital").await, vec![o.clone()]);
    assert!(search(&app, "/fhir/Observation?code:text=ital").await.is_empty());
    assert_eq!(search(&app, &format!("/fhir/Patient?_id={a}")).await, vec![a.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?birthdate:missing=true").await, vec![b.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?birthdate:missing=false").await, vec![a.clone()]);
    let tagged = app
        .create_id(&json!({"resourceType": "Patient", "meta": {
            "tag": [{"system": "urn:tags", "code": "sdoh"}],
            "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"],
            "security": [{"system": "urn:sec", "code": "R"}]}}))
        .await;
    assert_eq!(search(&app, "/fhir/Patient?_tag=urn:tags|sdoh").await, vec![tagged.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?_security=R").await, vec![tagged.clone()]);
    let profile = "/fhir/Patient?_profile=http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient";
    assert_eq!(search(&app, profile).await, vec![tagged.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?_id=nobody,bad_id").await, Vec::<String>::new());
}

async fn strings(db: TestDb) {
    let app = db.app().await;
    let a = app.create_id(&patient("Müller", "Zoë", "1970", "1")).await;
    let b = app.create_id(&patient("Mullins", "Bob", "1970", "2")).await;
    assert_eq!(search(&app, "/fhir/Patient?family=mul").await, sorted(vec![&a, &b]));
    assert_eq!(search(&app, "/fhir/Patient?family=MULLI").await, vec![b.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?name=zoe").await, vec![a.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?family:exact=M%C3%BCller").await, vec![a.clone()]);
    assert!(search(&app, "/fhir/Patient?family:exact=muller").await.is_empty());
    assert_eq!(search(&app, "/fhir/Patient?family:contains=lin").await, vec![b.clone()]);
    assert!(search(&app, "/fhir/Patient?family=ller").await.is_empty(), "default is starts-with");
    // LIKE wildcards in the query are literal characters.
    assert!(search(&app, "/fhir/Patient?family=m%25").await.is_empty());
    assert!(search(&app, "/fhir/Patient?family=m_l").await.is_empty());
}

async fn references_chains_and_has(db: TestDb) {
    let app = db.app().await;
    let p = app.create_id(&patient("Alpha", "Ann", "1970-01-01", "A1")).await;
    let q = app.create_id(&patient("Beta", "Bea", "1980-01-01", "B2")).await;
    let o1 = app.create_id(&observation(&p, "88122-7", 1.0, "2026-11-01")).await;
    let o2 = app.create_id(&observation(&q, "88123-5", 2.0, "2026-11-02")).await;
    assert_eq!(search(&app, &format!("/fhir/Observation?subject=Patient/{p}")).await, vec![o1.clone()]);
    assert_eq!(search(&app, &format!("/fhir/Observation?subject={p}")).await, vec![o1.clone()]);
    assert_eq!(search(&app, &format!("/fhir/Observation?subject:Patient={q}")).await, vec![o2.clone()]);
    assert_eq!(search(&app, &format!("/fhir/Observation?patient={q}")).await, vec![o2.clone()]);
    let url = format!("/fhir/Observation?subject=http://localhost/fhir/Patient/{p}");
    assert_eq!(search(&app, &url).await, vec![o1.clone()]);
    assert!(search(&app, &format!("/fhir/Observation?subject=Group/{p}")).await.is_empty());
    assert_eq!(search(&app, "/fhir/Observation?subject:Patient.identifier=urn:mrn|B2").await, vec![o2.clone()]);
    assert_eq!(search(&app, "/fhir/Observation?subject.family=alp").await, vec![o1.clone()]);
    assert_eq!(search(&app, "/fhir/Observation?patient.birthdate=1980").await, vec![o2.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?_has:Observation:subject:code=88122-7").await, vec![p.clone()]);
    assert_eq!(
        search(&app, "/fhir/Patient?_has:Observation:patient:code=http://loinc.org|88123-5").await,
        vec![q.clone()]
    );
    assert!(search(&app, "/fhir/Patient?_has:Observation:subject:code=nothing").await.is_empty());
    // Composite: code and value in the same observation.
    assert_eq!(search(&app, "/fhir/Observation?code-value-quantity=88122-7$lt1.5").await, vec![o1.clone()]);
    assert!(search(&app, "/fhir/Observation?code-value-quantity=88122-7$gt1.5").await.is_empty());
}

async fn dates_with_precision_and_prefixes(db: TestDb) {
    let app = db.app().await;
    let day = app.create_id(&patient("A", "A", "1970-01-01", "1")).await;
    let year = app.create_id(&patient("B", "B", "1970", "2")).await;
    assert_eq!(search(&app, "/fhir/Patient?birthdate=1970").await, sorted(vec![&day, &year]));
    assert_eq!(search(&app, "/fhir/Patient?birthdate=1970-01-01").await, vec![day.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?birthdate=ne1970-01-01").await, vec![year.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?birthdate=ge1970-06").await, vec![year.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?birthdate=lt1970-06").await, sorted(vec![&day, &year]));
    assert!(search(&app, "/fhir/Patient?birthdate=gt1970").await.is_empty());
    assert_eq!(search(&app, "/fhir/Patient?birthdate=le1969-12-31").await, Vec::<String>::new());

    let enc = |start: &str, end: &str| {
        json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "period": {"start": start, "end": end}})
    };
    let stay = app.create_id(&enc("2026-11-01", "2026-11-10")).await;
    let later = app.create_id(&enc("2026-12-05", "2026-12-06")).await;
    assert_eq!(search(&app, "/fhir/Encounter?date=2026-11").await, vec![stay.clone()]);
    assert!(search(&app, "/fhir/Encounter?date=2026-11-05").await.is_empty(), "eq needs containment");
    assert_eq!(search(&app, "/fhir/Encounter?date=ge2026-11").await, sorted(vec![&stay, &later]));
    assert_eq!(search(&app, "/fhir/Encounter?date=sa2026-11-30").await, vec![later.clone()]);
    assert_eq!(search(&app, "/fhir/Encounter?date=eb2026-11-11").await, vec![stay.clone()]);
    assert!(search(&app, "/fhir/Encounter?date=eb2026-11-10").await.is_empty());
    assert_eq!(search(&app, "/fhir/Encounter?date=gt2026-11-05&date=lt2026-11-05").await, vec![stay.clone()]);
    assert_eq!(search(&app, "/fhir/Encounter?date=ap2026-12-05").await, vec![later.clone()]);

    // _lastUpdated reads the resources table.
    assert_eq!(search(&app, "/fhir/Encounter?_lastUpdated=gt2020-01-01").await.len(), 2);
    assert!(search(&app, "/fhir/Encounter?_lastUpdated=lt2020-01-01").await.is_empty());
}

async fn quantities_and_numbers(db: TestDb) {
    let app = db.app().await;
    let p = app.create_id(&patient("A", "A", "1970", "1")).await;
    let light = app.create_id(&observation(&p, "29463-7", 60.0, "2026-11-01")).await;
    let heavy = app.create_id(&observation(&p, "29463-7", 100.0, "2026-11-01")).await;
    assert_eq!(search(&app, "/fhir/Observation?value-quantity=60").await, vec![light.clone()]);
    assert_eq!(search(&app, "/fhir/Observation?value-quantity=gt70").await, vec![heavy.clone()]);
    assert_eq!(search(&app, "/fhir/Observation?value-quantity=le60").await, vec![light.clone()]);
    assert_eq!(search(&app, "/fhir/Observation?value-quantity=ap95").await, vec![heavy.clone()]);
    assert_eq!(
        search(&app, "/fhir/Observation?value-quantity=100|http://unitsofmeasure.org|kg").await,
        vec![heavy.clone()]
    );
    assert_eq!(search(&app, "/fhir/Observation?value-quantity=100||kg").await, vec![heavy.clone()]);
    assert!(search(&app, "/fhir/Observation?value-quantity=100||g").await.is_empty());
    assert_eq!(search(&app, "/fhir/Observation?value-quantity=ne60").await, vec![heavy.clone()]);
}

async fn sorting_and_paging(db: TestDb) {
    let app = db.app().await;
    let mut made = Vec::new();
    for (i, family) in ["Delta", "alpha", "Charlie", "bravo", "Echo", "foxtrot", "Golf"].iter().enumerate() {
        let birth = format!("19{:02}-01-01", 70 + i);
        made.push((family.to_lowercase(), app.create_id(&patient(family, "X", &birth, &i.to_string())).await));
    }
    let reply = app.get("/fhir/Patient?_sort=-family&_count=3").await;
    let first: Vec<&str> = reply.json["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["name"][0]["family"].as_str().unwrap())
        .collect();
    assert_eq!(first, vec!["Golf", "foxtrot", "Echo"]);
    assert_eq!(reply.json["total"], 7);

    let mut seen = Vec::new();
    let mut next = Some("/fhir/Patient?_sort=birthdate&_count=2".to_owned());
    let mut pages = 0;
    while let Some(uri) = next {
        let uri = uri.replace("http://localhost", "");
        let reply = app.get(&uri).await;
        assert_eq!(reply.status, 200, "{}", reply.json);
        pages += 1;
        for e in reply.json["entry"].as_array().into_iter().flatten() {
            seen.push(e["resource"]["id"].as_str().unwrap().to_owned());
        }
        next = reply.json["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_owned);
    }
    assert_eq!(pages, 4);
    let expected: Vec<String> = made.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(seen, expected, "birth order, no duplicates, no misses");

    let by_updated = app.get("/fhir/Patient?_sort=-_lastUpdated&_count=1").await;
    assert_eq!(by_updated.json["entry"][0]["resource"]["id"], json!(made[6].1));
    app.get("/fhir/Patient?_sort=nonsense").await.outcome(400, "invalid");
}

async fn includes_and_revincludes(db: TestDb) {
    let app = db.app().await;
    let org = app.create_id(&json!({"resourceType": "Organization", "name": "Food Bank"})).await;
    let mut p = patient("A", "A", "1970", "1");
    p["managingOrganization"] = json!({"reference": format!("Organization/{org}")});
    let p = app.create_id(&p).await;
    let o = app.create_id(&observation(&p, "88122-7", 1.0, "2026-11-01")).await;

    let reply = app.get(&format!("/fhir/Observation?_id={o}&_include=Observation:subject")).await;
    let entries = reply.json["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1]["search"]["mode"], "include");
    assert_eq!(entries[1]["resource"]["id"], json!(p));
    assert_eq!(reply.json["total"], 1, "includes do not count");

    let reply = app
        .get(&format!(
            "/fhir/Observation?_id={o}&_include=Observation:subject:Patient&_include:iterate=Patient:organization"
        ))
        .await;
    let types: Vec<&str> = reply.json["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["Observation", "Patient", "Organization"]);

    let reply = app.get(&format!("/fhir/Patient?_id={p}&_revinclude=Observation:subject")).await;
    let entries = reply.json["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1]["resource"]["id"], json!(o));
    assert_eq!(entries[1]["search"]["mode"], "include");
}

async fn result_shaping_and_errors(db: TestDb) {
    let app = db.app().await;
    for i in 0..3 {
        app.create_id(&patient("Same", "X", "1970", &i.to_string())).await;
    }
    let count = app.get("/fhir/Patient?family=same&_summary=count").await;
    assert_eq!(count.json["total"], 3);
    assert!(count.json.get("entry").is_none());

    let none = app.get("/fhir/Patient?_total=none").await;
    assert!(none.json.get("total").is_none());
    assert_eq!(none.json["entry"].as_array().unwrap().len(), 3);

    let elements = app.get("/fhir/Patient?_elements=birthDate&_count=1").await;
    let r = &elements.json["entry"][0]["resource"];
    assert_eq!(r["birthDate"], "1970");
    assert!(r.get("name").is_none());
    assert_eq!(r["meta"]["tag"][0]["code"], "SUBSETTED");

    // Unknown parameters are ignored and left out of the self link; strict handling refuses them.
    let lenient = app.get("/fhir/Patient?family=same&bogus=1").await;
    assert_eq!(lenient.status, 200);
    assert_eq!(lenient.json["total"], 3);
    let self_link = lenient.json["link"][0]["url"].as_str().unwrap();
    assert!(self_link.contains("family=same") && !self_link.contains("bogus"), "{self_link}");
    let strict = app.get_with("/fhir/Patient?family=same&bogus=1", &[("prefer", "handling=strict")]).await;
    assert_eq!(strict.outcome(400, "not-supported")["expression"], json!(["bogus"]));

    app.get("/fhir/Patient?birthdate=notadate").await.outcome(400, "invalid");
    app.get("/fhir/Patient?_count=many").await.outcome(400, "invalid");
    app.get("/fhir/Patient?gender:bogus=x").await.outcome(400, "invalid");
    app.get("/fhir/Observation?value-quantity=abc").await.outcome(400, "invalid");
    app.get("/fhir/Spaceship?name=x").await.outcome(404, "not-found");

    // POST _search with a form body, URL parameters included.
    let reply = app
        .send(
            "POST",
            "/fhir/Patient/_search?_count=2",
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(b"family=same&gender=female".to_vec()),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json["total"], 3);
    assert_eq!(reply.json["entry"].as_array().unwrap().len(), 2);
    assert!(reply.json["link"].as_array().unwrap().iter().any(|l| l["relation"] == "next"));
    let wrong =
        app.send("POST", "/fhir/Patient/_search", &[("content-type", "application/json")], Some(b"{}".to_vec())).await;
    assert_eq!(wrong.status, 415);
    // _summary=true keeps the elements the R4 definitions mark isSummary (name, birthDate) and drops the rest.
    let summary_id = app
        .create_id(&json!({"resourceType": "Patient", "name": [{"family": "Summ"}], "birthDate": "1980",
            "photo": [{"contentType": "image/png", "data": "iVBORw0KGgo="}], "deceasedBoolean": false}))
        .await;
    let summary = app.get(&format!("/fhir/Patient?_id={summary_id}&_summary=true")).await;
    let r = &summary.json["entry"][0]["resource"];
    assert_eq!(r["name"][0]["family"], "Summ");
    assert_eq!(r["deceasedBoolean"], false, "choice elements follow their definition");
    assert!(r.get("photo").is_none(), "photo is not a summary element: {r}");
    assert_eq!(r["meta"]["tag"][0]["code"], "SUBSETTED");
}

async fn writes_keep_the_index_current(db: TestDb) {
    let app = db.app().await;
    let id = app.create_id(&patient("Before", "X", "1970", "1")).await;
    assert_eq!(search(&app, "/fhir/Patient?family=before").await, vec![id.clone()]);
    let mut changed = patient("After", "X", "1970", "1");
    changed["id"] = json!(id);
    assert_eq!(app.write("PUT", &format!("/fhir/Patient/{id}"), &[], &changed).await.status, 200);
    assert!(search(&app, "/fhir/Patient?family=before").await.is_empty(), "old values are gone");
    assert_eq!(search(&app, "/fhir/Patient?family=after").await, vec![id.clone()]);
    let ops = json!([{"op": "replace", "path": "/birthDate", "value": "1999"}]);
    assert_eq!(app.patch(&format!("/fhir/Patient/{id}"), &[], &ops).await.status, 200);
    assert!(search(&app, "/fhir/Patient?birthdate=1970").await.is_empty());
    assert_eq!(search(&app, "/fhir/Patient?birthdate=1999").await, vec![id.clone()]);
    assert_eq!(app.send("DELETE", &format!("/fhir/Patient/{id}"), &[], None).await.status, 204);
    assert!(search(&app, "/fhir/Patient?family=after").await.is_empty(), "deleted resources never match");
    assert!(search(&app, &format!("/fhir/Patient?_id={id}")).await.is_empty());
    assert_eq!(app.store.index_row_count("Patient", &id).await.unwrap(), 0);
}

async fn capability_lists_search_params(db: TestDb) {
    let app = db.app().await;
    let cs = app.get("/fhir/metadata").await.json;
    let obs = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Observation").unwrap();
    let names: Vec<&str> = obs["searchParam"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    for name in ["_id", "_lastUpdated", "code", "subject", "date", "value-quantity", "code-value-quantity", "_tag"] {
        assert!(names.contains(&name), "{name}");
    }
    assert!(obs["searchInclude"].as_array().unwrap().iter().any(|v| v == "Observation:subject"));
    let patient = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Patient").unwrap();
    assert!(patient["searchRevInclude"].as_array().unwrap().iter().any(|v| v == "Observation:subject"));
}

/// Parameters whose values other parameters' rows hold (`combo-*` = the observation's own and its components';
/// `phonetic` = `name`; Coverage `patient` = `beneficiary`) answer exactly as if they had rows of their own.
async fn parameters_sharing_index_rows(db: TestDb) {
    let app = db.app().await;
    let a = app.create_id(&patient("Alvarez", "Ann", "1970-01-01", "A1")).await;
    let b = app.create_id(&patient("Brown", "Bea", "1980-01-01", "B1")).await;
    let loinc = |code: &str| json!({"coding": [{"system": "http://loinc.org", "code": code}]});
    let own = app
        .create_id(&json!({"resourceType": "Observation", "status": "final", "code": loinc("88122-7"),
            "subject": {"reference": format!("Patient/{a}")}, "valueCodeableConcept": loinc("LA28397-0")}))
        .await;
    let panel = app
        .create_id(&json!({"resourceType": "Observation", "status": "final", "code": loinc("88121-9"),
            "subject": {"reference": format!("Patient/{b}")},
            "component": [{"code": loinc("88122-7"), "valueCodeableConcept": loinc("LA28398-8")},
                          {"code": loinc("88123-5"), "valueCodeableConcept": loinc("LA28397-0")}]}))
        .await;
    let bare = app
        .create_id(&json!({"resourceType": "Observation", "status": "final", "code": loinc("88124-3"),
            "subject": {"reference": format!("Patient/{a}")}}))
        .await;
    assert_eq!(search(&app, "/fhir/Observation?code=88122-7").await, vec![own.clone()]);
    assert_eq!(search(&app, "/fhir/Observation?combo-code=88122-7").await, sorted(vec![&own, &panel]));
    assert_eq!(search(&app, "/fhir/Observation?combo-code=88123-5,88124-3").await, sorted(vec![&panel, &bare]));
    assert_eq!(search(&app, "/fhir/Observation?combo-code:not=88122-7").await, vec![bare.clone()]);
    assert_eq!(search(&app, "/fhir/Observation?combo-value-concept=LA28397-0").await, sorted(vec![&own, &panel]));
    assert_eq!(search(&app, "/fhir/Observation?combo-value-concept:missing=true").await, vec![bare.clone()]);
    assert_eq!(search(&app, "/fhir/Observation?combo-value-concept:missing=false").await, sorted(vec![&own, &panel]));
    // A composite tuple matches within one node: the panel's 88122-7 is LA28398-8, not LA28397-0.
    let tuple = "/fhir/Observation?combo-code-value-concept=http://loinc.org|88122-7$http://loinc.org|LA28397-0";
    assert_eq!(search(&app, tuple).await, vec![own.clone()]);
    assert_eq!(search(&app, "/fhir/Observation?combo-code-value-concept=88122-7$LA28398-8").await, vec![panel.clone()]);
    let ascending = app.get("/fhir/Observation?combo-code=88122-7,88123-5,88124-3&_sort=combo-code").await;
    assert_eq!(ascending.status, 200, "{}", ascending.json);
    let order: Vec<&str> =
        ascending.json["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    // Smallest combo-code of each: own 88122-7, panel 88122-7 (component), bare 88124-3.
    assert_eq!(order.last(), Some(&bare.as_str()));

    assert_eq!(search(&app, "/fhir/Patient?phonetic=alv").await, vec![a.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?phonetic:exact=Brown").await, vec![b.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?_sort=-phonetic&_count=1").await.len(), 1);

    let coverage = app
        .create_id(&json!({"resourceType": "Coverage", "status": "active",
            "beneficiary": {"reference": format!("Patient/{a}")}, "payor": [{"reference": format!("Patient/{a}")}]}))
        .await;
    assert_eq!(search(&app, &format!("/fhir/Coverage?patient=Patient/{a}")).await, vec![coverage.clone()]);
    assert_eq!(search(&app, "/fhir/Coverage?patient.family=alvarez").await, vec![coverage.clone()]);
    assert_eq!(search(&app, "/fhir/Patient?_has:Coverage:patient:status=active").await, vec![a.clone()]);
    let included = app.get(&format!("/fhir/Coverage?_id={coverage}&_include=Coverage:patient")).await;
    assert!(included.json["entry"].as_array().unwrap().iter().any(|e| e["resource"]["id"] == a.as_str()));
    let revincluded = app.get(&format!("/fhir/Patient?_id={a}&_revinclude=Coverage:patient")).await;
    assert!(revincluded.json["entry"].as_array().unwrap().iter().any(|e| e["resource"]["id"] == coverage.as_str()));
}

for_each_backend!(
    parameters_sharing_index_rows,
    tokens,
    strings,
    references_chains_and_has,
    dates_with_precision_and_prefixes,
    quantities_and_numbers,
    sorting_and_paging,
    includes_and_revincludes,
    result_shaping_and_errors,
    writes_keep_the_index_current,
    capability_lists_search_params,
);
