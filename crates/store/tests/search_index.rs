//! The search index on both backends: rows replaced with each write, and every kind of condition compiled to SQL.

mod common;

use common::TestDb;
use serde_json::json;
use store::{
    Cond, DateCond, IndexEntry, IndexRow, IndexTable, NumberCond, Precondition, RangeOp, Scope, SearchQuery, SortBy,
    SortKey, Store, StringMatch, SystemMatch, UriMatch, ValueTest,
};

fn row(param: &str, value: IndexEntry) -> IndexRow {
    IndexRow { param: param.into(), group: 0, component: 0, value }
}

fn token(system: Option<&str>, code: &str, text: Option<&str>) -> IndexEntry {
    IndexEntry::Token {
        system: system.map(Into::into),
        code: Some(code.into()),
        text: text.map(Into::into),
        type_system: None,
        type_code: None,
    }
}

fn reference(t: &str, id: &str) -> IndexEntry {
    IndexEntry::Reference {
        target_type: Some(t.into()),
        target_id: Some(id.into()),
        url: None,
        version: None,
        identifier_system: None,
        identifier_value: None,
    }
}

async fn put(store: &Store, t: &str, id: &str, rows: Vec<IndexRow>) {
    let mut tx = store.begin().await.unwrap();
    tx.put(json!({"resourceType": t, "id": id}), Precondition::None).await.unwrap();
    tx.replace_index(t, id, &rows).await.unwrap();
    tx.commit().await.unwrap();
}

async fn find(store: &Store, t: &str, clauses: Vec<Vec<Cond>>) -> Vec<String> {
    let q = SearchQuery { resource_type: t.into(), clauses, count: 100, total: true, ..Default::default() };
    let page = store.search(&q).await.unwrap();
    assert_eq!(page.total, Some(page.resources.len() as i64));
    page.resources.into_iter().map(|r| r.id).collect()
}

fn m(param: &str, test: ValueTest) -> Cond {
    Cond::Match { param: param.into(), test }
}

async fn fixture(store: &Store) {
    put(
        store,
        "Patient",
        "p1",
        vec![
            row("family", IndexEntry::String { normalized: "muller".into(), exact: "Müller".into() }),
            row("birthdate", IndexEntry::Date { low: 0, high: 86_399_999_999 }),
            row("identifier", token(Some("urn:mrn"), "A1", None)),
            row("url", IndexEntry::Uri("http://example.org/fhir/a".into())),
        ],
    )
    .await;
    put(
        store,
        "Patient",
        "p2",
        vec![
            row("family", IndexEntry::String { normalized: "50%_off".into(), exact: "50%_off".into() }),
            row("birthdate", IndexEntry::Date { low: 1_000_000_000_000, high: 1_000_000_000_000 }),
            row("identifier", token(None, "A1", None)),
        ],
    )
    .await;
    let quantity = |low: f64| IndexEntry::Quantity {
        low: Some(low),
        high: Some(low),
        system: Some("http://unitsofmeasure.org".into()),
        code: Some("kg".into()),
        unit: Some("kg".into()),
    };
    let composite = |grp: i32, code: &str, value: f64| {
        vec![
            IndexRow { param: "code-value-quantity".into(), group: grp, component: 0, value: token(None, code, None) },
            IndexRow { param: "code-value-quantity".into(), group: grp, component: 1, value: quantity(value) },
        ]
    };
    let mut o1 = vec![
        row("subject", reference("Patient", "p1")),
        row("code", token(Some("http://loinc.org"), "88122-7", Some("hunger vital sign"))),
        row("value-quantity", quantity(60.0)),
        row("probability", IndexEntry::Number { low: Some(0.5), high: None }),
    ];
    o1.extend(composite(1, "88122-7", 60.0));
    o1.extend(composite(2, "other", 10.0));
    put(store, "Observation", "o1", o1).await;
    let mut o2 =
        vec![row("subject", reference("Patient", "p2")), row("code", token(Some("http://loinc.org"), "x", None))];
    o2.extend(composite(1, "88122-7", 10.0));
    put(store, "Observation", "o2", o2).await;
}

async fn every_condition_kind(db: TestDb) {
    let store = db.store().await;
    fixture(&store).await;
    let tok = |system: SystemMatch, code: Option<&str>| ValueTest::Token { system, code: code.map(Into::into) };
    assert_eq!(
        find(&store, "Patient", vec![vec![m("identifier", tok(SystemMatch::Any, Some("A1")))]]).await,
        ["p1", "p2"]
    );
    assert_eq!(find(&store, "Patient", vec![vec![m("identifier", tok(SystemMatch::None, Some("A1")))]]).await, ["p2"]);
    assert_eq!(
        find(&store, "Patient", vec![vec![m("identifier", tok(SystemMatch::Exactly("urn:mrn".into()), None))]]).await,
        ["p1"]
    );
    let not = Cond::NotMatch { param: "identifier".into(), test: tok(SystemMatch::None, Some("A1")) };
    assert_eq!(find(&store, "Patient", vec![vec![not]]).await, ["p1"]);
    assert_eq!(find(&store, "Observation", vec![vec![m("code", ValueTest::TokenText("vital".into()))]]).await, ["o1"]);

    let s = |mode, v: &str| ValueTest::String { mode, value: v.into() };
    assert_eq!(find(&store, "Patient", vec![vec![m("family", s(StringMatch::Prefix, "mul"))]]).await, ["p1"]);
    assert_eq!(find(&store, "Patient", vec![vec![m("family", s(StringMatch::Contains, "ll"))]]).await, ["p1"]);
    assert_eq!(find(&store, "Patient", vec![vec![m("family", s(StringMatch::Exact, "Müller"))]]).await, ["p1"]);
    assert_eq!(find(&store, "Patient", vec![vec![m("family", s(StringMatch::Prefix, "50%_"))]]).await, ["p2"]);
    assert!(find(&store, "Patient", vec![vec![m("family", s(StringMatch::Prefix, "m%"))]]).await.is_empty());

    let r = ValueTest::Reference { target_type: Some("Patient".into()), target_id: "p1".into() };
    assert_eq!(find(&store, "Observation", vec![vec![m("subject", r)]]).await, ["o1"]);

    let date = |op, low, high| ValueTest::Date(DateCond { op, low, high });
    assert_eq!(find(&store, "Patient", vec![vec![m("birthdate", date(RangeOp::Eq, 0, 86_399_999_999))]]).await, ["p1"]);
    assert_eq!(find(&store, "Patient", vec![vec![m("birthdate", date(RangeOp::Sa, 0, 86_399_999_999))]]).await, ["p2"]);
    assert_eq!(
        find(&store, "Patient", vec![vec![m("birthdate", date(RangeOp::Eb, 1, 2))]]).await,
        Vec::<String>::new()
    );
    assert_eq!(find(&store, "Patient", vec![vec![m("birthdate", date(RangeOp::Ge, 5, 6))]]).await, ["p1", "p2"]);
    let updated = Cond::LastUpdated(DateCond { op: RangeOp::Gt, low: 0, high: 0 });
    assert_eq!(find(&store, "Patient", vec![vec![updated]]).await, ["p1", "p2"]);

    let n = |op, value: f64| NumberCond { op, value, low: value - 0.5, high: value + 0.5 };
    let q = |op, v| ValueTest::Quantity { cond: n(op, v), system: None, code: Some("kg".into()) };
    assert_eq!(find(&store, "Observation", vec![vec![m("value-quantity", q(RangeOp::Eq, 60.0))]]).await, ["o1"]);
    assert!(find(&store, "Observation", vec![vec![m("value-quantity", q(RangeOp::Gt, 60.0))]]).await.is_empty());
    assert_eq!(
        find(&store, "Observation", vec![vec![m("probability", ValueTest::Number(n(RangeOp::Gt, 100.0)))]]).await,
        ["o1"]
    );
    assert!(
        find(&store, "Observation", vec![vec![m("probability", ValueTest::Number(n(RangeOp::Eq, 0.5)))]])
            .await
            .is_empty()
    );

    let uri = |mode, v: &str| ValueTest::Uri { mode, value: v.into() };
    assert_eq!(
        find(&store, "Patient", vec![vec![m("url", uri(UriMatch::Below, "http://example.org/"))]]).await,
        ["p1"]
    );
    assert_eq!(
        find(&store, "Patient", vec![vec![m("url", uri(UriMatch::Above, "http://example.org/fhir/a/b"))]]).await,
        ["p1"]
    );
    let missing = |missing| Cond::Missing { param: "url".into(), table: IndexTable::Uri, missing };
    assert_eq!(find(&store, "Patient", vec![vec![missing(true)]]).await, ["p2"]);
    assert_eq!(find(&store, "Patient", vec![vec![missing(false)]]).await, ["p1"]);

    // Composite components must come from the same tuple.
    let composite = |code: &str, op, v| Cond::Composite {
        param: "code-value-quantity".into(),
        components: vec![tok(SystemMatch::Any, Some(code)), q(op, v)],
    };
    assert_eq!(find(&store, "Observation", vec![vec![composite("88122-7", RangeOp::Eq, 60.0)]]).await, ["o1"]);
    assert_eq!(find(&store, "Observation", vec![vec![composite("88122-7", RangeOp::Eq, 10.0)]]).await, ["o2"]);
    assert!(find(&store, "Observation", vec![vec![composite("other", RangeOp::Eq, 60.0)]]).await.is_empty());

    let chain = Cond::Chain {
        param: "subject".into(),
        target_type: "Patient".into(),
        conds: vec![vec![m("family", s(StringMatch::Prefix, "50"))]],
    };
    assert_eq!(find(&store, "Observation", vec![vec![chain]]).await, ["o2"]);
    let has = Cond::Has {
        source_type: "Observation".into(),
        param: "subject".into(),
        conds: vec![vec![m("code", tok(SystemMatch::Any, Some("x")))]],
    };
    assert_eq!(find(&store, "Patient", vec![vec![has]]).await, ["p2"]);
    assert_eq!(find(&store, "Patient", vec![vec![Cond::Id("p2".into()), Cond::Id("zz".into())]]).await, ["p2"]);

    let included =
        store.included(&Scope::All, "Observation", &["o1".into(), "o2".into()], "subject", None).await.unwrap();
    assert_eq!(included.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["p1", "p2"]);
    let rev =
        store.revincluded(&Scope::All, "Observation", "subject", &[("Patient".into(), "p2".into())]).await.unwrap();
    assert_eq!(rev.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["o2"]);
}

async fn replace_sort_page_and_delete(db: TestDb) {
    let store = db.store().await;
    fixture(&store).await;
    let by = |desc| SortKey {
        by: SortBy::Param { params: vec!["family".into()], table: IndexTable::String },
        descending: desc,
    };
    let mut q = SearchQuery { resource_type: "Patient".into(), count: 1, sort: vec![by(true)], ..Default::default() };
    let page = store.search(&q).await.unwrap();
    assert_eq!(page.resources[0].id, "p1");
    assert!(page.more);
    assert_eq!(page.total, None);
    q.offset = 1;
    let page = store.search(&q).await.unwrap();
    assert_eq!(page.resources[0].id, "p2");
    assert!(!page.more);
    q.sort = vec![SortKey { by: SortBy::Id, descending: true }];
    q.offset = 0;
    assert_eq!(store.search(&q).await.unwrap().resources[0].id, "p2");

    // Replacing drops the old rows; clearing (on delete) drops all.
    put(
        &store,
        "Patient",
        "p1",
        vec![row("family", IndexEntry::String { normalized: "new".into(), exact: "New".into() })],
    )
    .await;
    let prefix = |v: &str| vec![vec![m("family", ValueTest::String { mode: StringMatch::Prefix, value: v.into() })]];
    assert!(find(&store, "Patient", prefix("mul")).await.is_empty());
    assert_eq!(find(&store, "Patient", prefix("new")).await, ["p1"]);
    assert_eq!(store.index_row_count("Patient", "p1").await.unwrap(), 1);
    let mut tx = store.begin().await.unwrap();
    tx.delete("Patient", "p1", Precondition::None).await.unwrap();
    tx.clear_index("Patient", "p1").await.unwrap();
    tx.commit().await.unwrap();
    assert!(find(&store, "Patient", prefix("new")).await.is_empty());
    assert_eq!(store.index_row_count("Patient", "p1").await.unwrap(), 0);

    // A rolled-back write leaves its index rows behind neither.
    let mut tx = store.begin().await.unwrap();
    tx.put(json!({"resourceType": "Patient", "id": "p3"}), Precondition::None).await.unwrap();
    tx.replace_index(
        "Patient",
        "p3",
        &[row("family", IndexEntry::String { normalized: "x".into(), exact: "x".into() })],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(store.index_row_count("Patient", "p3").await.unwrap(), 0);

    // Many rows go in as multi-row inserts in chunks.
    let many: Vec<IndexRow> = (0..450).map(|i| row("identifier", token(Some("urn:x"), &i.to_string(), None))).collect();
    put(&store, "Patient", "p4", many).await;
    assert_eq!(store.index_row_count("Patient", "p4").await.unwrap(), 450);
}

/// Canonical and absolute references are found by their url, and a version narrows the match; local references
/// (no url) are still found by target, and a url search never matches them.
async fn references_by_url_and_by_target(db: TestDb) {
    let store = db.store().await;
    let canonical = |url: &str, version: Option<&str>| IndexEntry::Reference {
        target_type: None,
        target_id: None,
        url: Some(url.into()),
        version: version.map(Into::into),
        identifier_system: None,
        identifier_value: None,
    };
    let hvs = "http://hl7.org/fhir/us/sdoh-clinicalcare/Questionnaire/SDOHCC-QuestionnaireHungerVitalSign";
    put(&store, "QuestionnaireResponse", "q1", vec![row("questionnaire", canonical(hvs, Some("2.2.0")))]).await;
    put(&store, "QuestionnaireResponse", "q2", vec![row("questionnaire", canonical(hvs, None))]).await;
    put(&store, "QuestionnaireResponse", "q3", vec![row("subject", reference("Patient", "p1"))]).await;
    let by_url = |version: Option<&str>| {
        vec![vec![m("questionnaire", ValueTest::ReferenceUrl { url: hvs.into(), version: version.map(Into::into) })]]
    };
    let mut found = find(&store, "QuestionnaireResponse", by_url(None)).await;
    found.sort();
    assert_eq!(found, ["q1", "q2"]);
    assert_eq!(find(&store, "QuestionnaireResponse", by_url(Some("2.2.0"))).await, ["q1"]);
    let subject = ValueTest::Reference { target_type: Some("Patient".into()), target_id: "p1".into() };
    assert_eq!(find(&store, "QuestionnaireResponse", vec![vec![m("subject", subject)]]).await, ["q3"]);
    let elsewhere = vec![vec![m("subject", ValueTest::ReferenceUrl { url: "Patient/p1".into(), version: None })]];
    assert!(find(&store, "QuestionnaireResponse", elsewhere).await.is_empty());
}

for_each_backend!(every_condition_kind, replace_sort_page_and_delete, references_by_url_and_by_target);

/// A fresh SQLite database plans a subject + category search from the subject's reference rows and probes the
/// category through the owner index: the fixed planner statistics installed at migration, not a measured ANALYZE,
/// make that so (without them the probe walks every `category` row: O(stored resources)).
#[tokio::test]
async fn sqlite_plans_searches_on_the_owner_index_from_the_start() {
    let db = TestDb::sqlite().await;
    let store = db.store().await;
    let query = SearchQuery {
        resource_type: "Observation".into(),
        clauses: vec![
            vec![m("subject", ValueTest::Reference { target_type: Some("Patient".into()), target_id: "p1".into() })],
            vec![m("category", ValueTest::Token { system: SystemMatch::Any, code: Some("survey".into()) })],
        ],
        count: 20,
        ..Default::default()
    };
    let plan = store.explain_search(&query).await.unwrap().join("\n");
    assert!(plan.contains("search_reference_target"), "{plan}");
    assert!(plan.contains("search_token_owner"), "{plan}");
    assert!(!plan.contains("search_token_value"), "{plan}");

    // The url index holds only rows with a url; a search by url still uses it.
    let url = ValueTest::ReferenceUrl { url: "http://example.org/Questionnaire/q".into(), version: None };
    let query = SearchQuery {
        resource_type: "QuestionnaireResponse".into(),
        clauses: vec![vec![m("questionnaire", url)]],
        count: 20,
        ..Default::default()
    };
    let plan = store.explain_search(&query).await.unwrap().join("\n");
    assert!(plan.contains("search_reference_url"), "{plan}");
}
