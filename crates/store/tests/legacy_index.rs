//! A database whose index rows were written with text keys (schema 10) is converted when a newer store opens it:
//! every row keeps its meaning, searches find what they found before, and the old tables are gone.

mod common;

use common::TestDb;
use store::{Cond, DateCond, RangeOp, SearchQuery, Store, StringMatch, SystemMatch, ValueTest};

/// Two resources and their index rows exactly as schema 10 stored them.
const SCHEMA_10_ROWS: &str = "
INSERT INTO resources (resource_type, id, version_id, last_updated_us, deleted, content) VALUES
    ('Patient', 'p1', 1, 1000, FALSE, '{\"resourceType\":\"Patient\",\"id\":\"p1\"}'),
    ('Patient', 'p2', 1, 1001, FALSE, '{\"resourceType\":\"Patient\",\"id\":\"p2\"}'),
    ('Observation', 'o1', 1, 1002, FALSE, '{\"resourceType\":\"Observation\",\"id\":\"o1\"}');
INSERT INTO search_token (resource_type, id, param, system, code) VALUES
    ('Patient', 'p1', 'identifier', 'urn:mrn', 'MRN1'),
    ('Patient', 'p2', 'identifier', 'urn:mrn', 'MRN2'),
    ('Observation', 'o1', 'code', 'http://loinc.org', '88122-7');
INSERT INTO search_string (resource_type, id, param, value_norm, value_exact) VALUES
    ('Patient', 'p1', 'name', 'rivera', 'Rivera'),
    ('Patient', 'p2', 'name', 'chen', 'Chen');
INSERT INTO search_reference (resource_type, id, param, target_type, target_id) VALUES
    ('Observation', 'o1', 'subject', 'Patient', 'p1');
INSERT INTO search_date (resource_type, id, param, low_us, high_us) VALUES
    ('Observation', 'o1', 'date', 5000, 5999);
";

async fn ids(store: &Store, resource_type: &str, clauses: Vec<Vec<Cond>>) -> Vec<String> {
    let q = SearchQuery { resource_type: resource_type.into(), clauses, count: 10, ..Default::default() };
    store.search(&q).await.unwrap().resources.into_iter().map(|r| r.id).collect()
}

fn matching(param: &str, test: ValueTest) -> Vec<Cond> {
    vec![Cond::Match { param: param.into(), test }]
}

async fn text_keyed_index_rows_are_converted_on_open(db: TestDb) {
    let old = Store::connect(&db.options()).await.unwrap();
    store::testing::migrate_to(&old, 10).await.unwrap();
    store::testing::execute(&old, SCHEMA_10_ROWS).await.unwrap();
    old.close().await;

    let store = db.store().await;
    let token = |code: &str| ValueTest::Token { system: SystemMatch::Any, code: Some(code.into()) };
    assert_eq!(ids(&store, "Patient", vec![matching("identifier", token("MRN2"))]).await, ["p2"]);
    assert_eq!(ids(&store, "Observation", vec![matching("code", token("88122-7"))]).await, ["o1"]);
    // The same code under another resource type's parameter of the same name matches nothing.
    assert!(ids(&store, "Patient", vec![matching("code", token("88122-7"))]).await.is_empty());
    let name = ValueTest::String { mode: StringMatch::Prefix, value: "riv".into() };
    assert_eq!(ids(&store, "Patient", vec![matching("name", name.clone())]).await, ["p1"]);
    let subject = ValueTest::Reference { target_type: Some("Patient".into()), target_id: "p1".into() };
    assert_eq!(ids(&store, "Observation", vec![matching("subject", subject)]).await, ["o1"]);
    let day = DateCond { op: RangeOp::Eq, low: 5000, high: 5999 };
    assert_eq!(ids(&store, "Observation", vec![matching("date", ValueTest::Date(day))]).await, ["o1"]);
    let chained =
        Cond::Chain { param: "subject".into(), target_type: "Patient".into(), conds: vec![matching("name", name)] };
    assert_eq!(ids(&store, "Observation", vec![vec![chained]]).await, ["o1"]);
    let has = Cond::Has {
        source_type: "Observation".into(),
        param: "subject".into(),
        conds: vec![matching("code", token("88122-7"))],
    };
    assert_eq!(ids(&store, "Patient", vec![vec![has]]).await, ["p1"]);
    assert_eq!(store.index_row_count("Patient", "p1").await.unwrap(), 2);
    assert_eq!(store.index_row_count("Observation", "o1").await.unwrap(), 3);

    // The legacy tables are gone, so opening again converts nothing twice.
    let again = db.store().await;
    assert_eq!(again.index_row_count("Observation", "o1").await.unwrap(), 3);
    let legacy = store::testing::execute(&again, "SELECT * FROM legacy_search_token").await;
    assert!(legacy.is_err(), "legacy_search_token should have been dropped");
}

for_each_backend!(text_keyed_index_rows_are_converted_on_open);
