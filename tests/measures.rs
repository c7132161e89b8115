//! Equity measures over the real binary: a synthetic population loaded through `/fhir` (SQLite and PostgreSQL),
//! then `$evaluate-measure` MeasureReports and `/measures.csv` checked against numerators, denominators and
//! suppression worked out by hand from the population below; the Measure resources; bad input; who may ask.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const SDOHCC: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes";
const RACE: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race";
const ETHNICITY: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity";
const SUPPRESSED: &str = "https://sdoh-gateway.org/fhir/StructureDefinition/suppressed";
const INTERVAL: &str = "https://sdoh-gateway.org/fhir/StructureDefinition/measure-score-interval";
const RATE_RATIO: &str = "https://sdoh-gateway.org/fhir/StructureDefinition/rate-ratio";
const DATA_ABSENT: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";

// ---------------------------------------------------------------------------------------------------------------
// The population (2026-Q1), as FHIR resources:
//
// A: 40 adults (a00..a39): White, Not Hispanic, English, Medicaid, county Alpha, female, born 1980-06-01.
//    Encounter and a five-domain screening panel on 2026-01-15. a00..a19 also answer the food item positively.
//    a00..a09 are referred for food on 2026-01-20: a00..a05 completed 2026-02-03 (14 days), a06..a09 in progress.
// B: 30 adults (b00..b29): Black, Hispanic, Spanish, Medicare, county Beta, male, born 1950-03-10, type 2
//    diabetes (E11.9). Encounter 2026-02-10. b00..b14 screened in all five domains, b15..b29 for food only, all on
//    2026-02-10. b00..b05 and b15..b20 (12) positive for food, all referred on 2026-02-12: the first 8 of them
//    completed 2026-03-14 (30 days), the other 4 on 2026-04-13 (60 days).
// C: 5 adults (c0..c4): Asian, English, Private payer, county Alpha, female, born 2000-01-01, type 2 diabetes.
//    Encounter and five-domain screening on 2026-03-01, no positives.
// D: 3 adults (d0..d2): no race, no language, Medicaid, county Beta, female, born 1990-01-01. Encounter
//    2026-03-05, never screened.
//
// Worked answers for 2026-Q1:
// - screening rate: denominator A40 + B30 + C5 + D3 = 78, numerator A40 + B15 + C5 = 60.
//   race: Asian 5/5 (small: primary), Black 15/30, White 40/40, unknown 0/3 (primary); two suppressed, so no
//   complementary suppression. county: Alpha 45/45 (reference: largest), Beta 15/33, ratio (15/33)/(45/45).
//   payer: Medicaid 40/43, Medicare 15/30, Private 5/5 (primary) -> the next smallest, Medicare, complementary.
// - food positive: denominator A40 + B30 + C5 = 75, numerator A20 + B12 = 32.
// - referral rate: denominator A20 + B12 = 32, numerator A10 + B12 = 22.
// - closed loop (30 days): referrals A10 + B12 = 22, closed within 30 days A6 + B8 = 14.
// - days to closure: 22 referrals, 18 completed: 6 x 14, 8 x 30, 4 x 60 days; median (9th and 10th) 30.
// - months: January screening 40/40 (A), February 15/30 (B), March 5/8 -> primary suppressed overall.
// - registry diabetes (B and C): screening 20/35.
// ---------------------------------------------------------------------------------------------------------------

struct Person<'a> {
    id: String,
    race: Option<(&'a str, &'a str)>,
    ethnicity: Option<&'a str>,
    language: Option<&'a str>,
    payer: &'a str,
    county: &'a str,
    gender: &'a str,
    birth: &'a str,
    diabetes: bool,
}

fn patient(p: &Person) -> Value {
    let mut patient = json!({
        "resourceType": "Patient", "id": p.id, "gender": p.gender, "birthDate": p.birth,
        "address": [{"use": "home", "district": p.county, "state": "CO"}],
    });
    let mut extensions = Vec::new();
    if let Some((code, display)) = p.race {
        extensions.push(json!({"url": RACE, "extension": [
            {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": code, "display": display}},
            {"url": "text", "valueString": display}]}));
    }
    if let Some(code) = p.ethnicity {
        extensions.push(json!({"url": ETHNICITY, "extension": [
            {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": code}},
            {"url": "text", "valueString": code}]}));
    }
    if !extensions.is_empty() {
        patient["extension"] = json!(extensions);
    }
    if let Some(language) = p.language {
        patient["communication"] =
            json!([{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": language}]}, "preferred": true}]);
    }
    patient
}

fn reference(id: &str) -> Value {
    json!({"reference": format!("Patient/{id}")})
}

fn category(codes: &[&str]) -> Value {
    let mut categories = vec![
        json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "social-history"}]}),
        json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}]}),
    ];
    categories.extend(codes.iter().map(|c| json!({"coding": [{"system": SDOHCC, "code": c}]})));
    json!(categories)
}

const FIVE: &[&str] = &[
    "food-insecurity",
    "housing-instability",
    "transportation-insecurity",
    "utility-insecurity",
    "intimate-partner-violence",
];

/// The resources of one person: Patient, Coverage, Encounter, screenings and referrals as described above.
fn person_resources(p: &Person, encounter: &str, screening: Option<(&[&str], bool)>) -> Vec<Value> {
    let mut out = vec![
        patient(p),
        json!({"resourceType": "Coverage", "id": format!("cov-{}", p.id), "status": "active",
            "beneficiary": reference(&p.id), "payor": [{"display": p.payer}], "order": 1,
            "type": {"coding": [{"system": "https://nahdo.org/sopt", "display": p.payer}], "text": p.payer}}),
        json!({"resourceType": "Encounter", "id": format!("enc-{}", p.id), "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": reference(&p.id), "period": {"start": format!("{encounter}T09:00:00-07:00")}}),
    ];
    if let Some((domains, food_positive)) = screening {
        out.push(json!({"resourceType": "Observation", "id": format!("panel-{}", p.id), "status": "final",
            "category": category(domains), "subject": reference(&p.id),
            "code": {"coding": [{"system": "http://loinc.org", "code": "96777-8"}]},
            "effectiveDateTime": format!("{encounter}T09:30:00-07:00")}));
        if food_positive {
            out.push(json!({"resourceType": "Observation", "id": format!("food-{}", p.id), "status": "final",
                "category": category(&["food-insecurity"]), "subject": reference(&p.id),
                "code": {"coding": [{"system": "http://loinc.org", "code": "88122-7"}]},
                "valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "LA28397-0"}]},
                "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "POS"}]}],
                "effectiveDateTime": format!("{encounter}T09:30:00-07:00")}));
        }
    }
    if p.diabetes {
        out.push(json!({"resourceType": "Condition", "id": format!("dm-{}", p.id), "subject": reference(&p.id),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E11.9"}]},
            "onsetDateTime": "2020-01-01"}));
    }
    out
}

/// A food referral (ServiceRequest + referral Task), completed on `completed` if given.
fn referral(patient: &str, created: &str, completed: Option<&str>) -> Vec<Value> {
    let mut task = json!({"resourceType": "Task", "id": format!("task-{patient}"), "intent": "order",
        "status": if completed.is_some() { "completed" } else { "in-progress" },
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "focus": {"reference": format!("ServiceRequest/sr-{patient}")}, "for": reference(patient),
        "authoredOn": format!("{created}T12:00:00Z"),
        "requester": {"reference": "Organization/clinic"}, "owner": {"reference": "Organization/food-bank"}});
    if let Some(day) = completed {
        task["executionPeriod"] = json!({"start": format!("{created}T12:00:00Z"), "end": format!("{day}T16:00:00Z")});
    }
    vec![
        json!({"resourceType": "ServiceRequest", "id": format!("sr-{patient}"), "status": "active", "intent": "order",
            "category": [{"coding": [{"system": SDOHCC, "code": "food-insecurity"}]}],
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "467771000124109"}]},
            "subject": reference(patient), "authoredOn": format!("{created}T11:00:00Z")}),
        task,
    ]
}

fn population() -> Vec<Value> {
    let mut out = vec![
        json!({"resourceType": "Organization", "id": "clinic", "name": "Clinic"}),
        json!({"resourceType": "Organization", "id": "food-bank", "name": "Food bank"}),
    ];
    for i in 0..40 {
        let p = Person {
            id: format!("a{i:02}"),
            race: Some(("2106-3", "White")),
            ethnicity: Some("2186-5"),
            language: Some("en"),
            payer: "Medicaid",
            county: "Alpha",
            gender: "female",
            birth: "1980-06-01",
            diabetes: false,
        };
        out.extend(person_resources(&p, "2026-01-15", Some((FIVE, i < 20))));
        if i < 10 {
            out.extend(referral(&p.id, "2026-01-20", (i < 6).then_some("2026-02-03")));
        }
    }
    let mut b_positive = 0;
    for i in 0..30 {
        let p = Person {
            id: format!("b{i:02}"),
            race: Some(("2054-5", "Black or African American")),
            ethnicity: Some("2135-2"),
            language: Some("es"),
            payer: "Medicare",
            county: "Beta",
            gender: "male",
            birth: "1950-03-10",
            diabetes: true,
        };
        let positive = (0..6).contains(&i) || (15..21).contains(&i);
        let domains: &[&str] = if i < 15 { FIVE } else { &["food-insecurity"] };
        out.extend(person_resources(&p, "2026-02-10", Some((domains, positive))));
        if positive {
            let completed = if b_positive < 8 { "2026-03-14" } else { "2026-04-13" };
            out.extend(referral(&p.id, "2026-02-12", Some(completed)));
            b_positive += 1;
        }
    }
    for i in 0..5 {
        let p = Person {
            id: format!("c{i}"),
            race: Some(("2028-9", "Asian")),
            ethnicity: Some("2186-5"),
            language: Some("en"),
            payer: "Private",
            county: "Alpha",
            gender: "female",
            birth: "2000-01-01",
            diabetes: true,
        };
        out.extend(person_resources(&p, "2026-03-01", Some((FIVE, false))));
    }
    for i in 0..3 {
        let p = Person {
            id: format!("d{i}"),
            race: None,
            ethnicity: None,
            language: None,
            payer: "Medicaid",
            county: "Beta",
            gender: "female",
            birth: "1990-01-01",
            diabetes: false,
        };
        out.extend(person_resources(&p, "2026-03-05", None));
    }
    out
}

fn load(addr: SocketAddr, auth: &[(&str, &str)]) {
    for chunk in population().chunks(100) {
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": chunk.iter().map(|r| json!({
            "resource": r,
            "request": {"method": "PUT", "url": format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())}
        })).collect::<Vec<_>>()});
        let (status, _, body) = http_with(addr, "POST", "/fhir", auth, Some(&bundle.to_string()));
        assert_eq!(status, 200, "loading the population: {body}");
    }
}

fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, _, body) = http(addr, "GET", path, None);
    (status, serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: not JSON: {body}")))
}

fn evaluate(addr: SocketAddr, measure: &str, start: &str, end: &str, extra: &str) -> Value {
    let path = format!("/fhir/Measure/{measure}/$evaluate-measure?periodStart={start}&periodEnd={end}{extra}");
    let (status, report) = get_json(addr, &path);
    assert_eq!(status, 200, "{path}: {report}");
    assert_eq!(report["resourceType"], "MeasureReport");
    report
}

fn population_count(populations: &Value, code: &str) -> Option<u64> {
    let population = populations
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["code"]["coding"][0]["code"] == code)
        .unwrap_or_else(|| panic!("no {code} population in {populations}"));
    population["count"].as_u64()
}

/// (numerator, denominator) of a group or stratum, `None` when suppressed (and then checked to carry no number).
fn counts(part: &Value) -> Option<(u64, u64)> {
    let numerator = population_count(&part["population"], "numerator");
    let denominator = population_count(&part["population"], "denominator");
    match (numerator, denominator) {
        (Some(n), Some(d)) => Some((n, d)),
        (None, None) => {
            assert!(suppression(part).is_some(), "counts missing without the suppressed marker: {part}");
            assert!(part["measureScore"].get("value").is_none(), "a suppressed cell shows a score: {part}");
            for population in part["population"].as_array().unwrap() {
                assert_eq!(population["_count"]["extension"][0]["url"], DATA_ABSENT);
                assert_eq!(population["_count"]["extension"][0]["valueCode"], "masked");
            }
            None
        }
        _ => panic!("half a cell: {part}"),
    }
}

fn suppression(part: &Value) -> Option<String> {
    part["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == SUPPRESSED)
        .map(|e| e["valueCode"].as_str().unwrap().into())
}

fn stratum<'a>(report: &'a Value, stratifier: &str, label: &str) -> &'a Value {
    let stratifiers = report["group"][0]["stratifier"].as_array().expect("stratifiers");
    let entry = stratifiers.iter().find(|s| s["code"][0]["coding"][0]["code"] == stratifier).expect("stratifier");
    entry["stratum"].as_array().unwrap().iter().find(|s| s["value"]["text"] == label).unwrap_or_else(|| {
        panic!("no stratum {label} of {stratifier} in {entry}");
    })
}

fn extension<'a>(part: &'a Value, url: &str) -> &'a Value {
    part["extension"].as_array().and_then(|e| e.iter().find(|e| e["url"] == url)).unwrap_or(&Value::Null)
}

fn close(actual: &Value, expected: f64) -> bool {
    actual.as_f64().is_some_and(|a| (a - expected).abs() < 1e-5)
}

fn measures_on(db_url: &str) {
    let dir = temp_dir();
    let mut gateway = Gateway::start(dir.path(), &["--http-listen", "127.0.0.1:0", "--database-url", db_url], &[]);
    let addr = gateway.wait_ready();
    load(addr, &[]);

    // Screening rate, 2026-Q1, overall and by race, county and payer.
    let report = evaluate(addr, "hrsn-screening-rate", "2026-01-01", "2026-03-31", "&stratifier=race,county,payer");
    assert_eq!(report["measure"], "https://sdoh-gateway.org/fhir/Measure/hrsn-screening-rate");
    assert_eq!(report["type"], "summary");
    assert_eq!(report["period"], json!({"start": "2026-01-01", "end": "2026-03-31"}));
    let overall = &report["group"][0];
    assert_eq!(counts(overall), Some((60, 78)));
    assert!(close(&overall["measureScore"]["value"], 60.0 / 78.0));
    let interval = &extension(overall, INTERVAL)["valueRange"];
    let (low, high) = (interval["low"]["value"].as_f64().unwrap(), interval["high"]["value"].as_f64().unwrap());
    assert!(low < 60.0 / 78.0 && 60.0 / 78.0 < high && low > 0.6 && high < 0.9, "Wilson interval {interval}");
    assert_eq!(report["group"][0]["stratifier"].as_array().unwrap().len(), 3);

    assert_eq!(counts(stratum(&report, "race", "White")), Some((40, 40)));
    assert_eq!(counts(stratum(&report, "race", "Black or African American")), Some((15, 30)));
    assert_eq!(counts(stratum(&report, "race", "Asian")), None);
    assert_eq!(suppression(stratum(&report, "race", "Asian")).as_deref(), Some("primary"));
    assert_eq!(counts(stratum(&report, "race", "unknown")), None);
    let race_strata = report["group"][0]["stratifier"][0]["stratum"].as_array().unwrap();
    let labels: Vec<&str> = race_strata.iter().map(|s| s["value"]["text"].as_str().unwrap()).collect();
    assert_eq!(labels, ["Asian", "Black or African American", "White", "unknown"]);

    assert_eq!(counts(stratum(&report, "county", "Alpha")), Some((45, 45)));
    assert_eq!(counts(stratum(&report, "county", "Beta")), Some((15, 33)));
    let alpha_ratio = extension(stratum(&report, "county", "Alpha"), RATE_RATIO);
    assert_eq!(alpha_ratio["extension"][0], json!({"url": "status", "valueCode": "reference"}));
    let beta_ratio = extension(stratum(&report, "county", "Beta"), RATE_RATIO)["extension"].as_array().unwrap();
    assert!(beta_ratio.contains(&json!({"url": "status", "valueCode": "estimated"})));
    assert!(beta_ratio.contains(&json!({"url": "reference", "valueString": "Alpha"})));
    let ratio = beta_ratio.iter().find(|e| e["url"] == "ratio").unwrap();
    assert!(close(&ratio["valueDecimal"], (15.0 / 33.0) / 1.0), "{ratio}");

    assert_eq!(counts(stratum(&report, "payer", "Medicaid")), Some((40, 43)));
    assert_eq!(counts(stratum(&report, "payer", "Private")), None);
    assert_eq!(counts(stratum(&report, "payer", "Medicare")), None, "complementary suppression");
    assert_eq!(suppression(stratum(&report, "payer", "Medicare")).as_deref(), Some("complementary"));

    // The other measures, overall.
    let q1 = |measure: &str| evaluate(addr, measure, "2026-01-01", "2026-03-31", "&stratifier=none");
    assert_eq!(counts(&q1("hrsn-screen-positive-food")["group"][0]), Some((32, 75)));
    assert_eq!(counts(&q1("hrsn-screen-positive-housing")["group"][0]), Some((0, 60)));
    assert_eq!(counts(&q1("hrsn-referral-rate")["group"][0]), Some((22, 32)));
    assert_eq!(counts(&q1("hrsn-closed-loop-rate")["group"][0]), Some((14, 22)));
    let closure = q1("hrsn-days-to-closure");
    let group = &closure["group"][0];
    assert_eq!(population_count(&group["population"], "measure-population"), Some(22));
    assert_eq!(population_count(&group["population"], "measure-observation"), Some(18));
    assert_eq!(
        group["measureScore"],
        json!({"value": 30.0, "unit": "d", "system": "http://unitsofmeasure.org", "code": "d"})
    );
    assert!(group.get("stratifier").is_none());

    // Months: March has 8 patients in the denominator, so even its overall cell is suppressed.
    let march = evaluate(addr, "hrsn-screening-rate", "2026-03-01", "2026-03-31", "&stratifier=none");
    assert_eq!(counts(&march["group"][0]), None);
    assert_eq!(
        counts(&evaluate(addr, "hrsn-screening-rate", "2026-02-01", "2026-02-28", "")["group"][0]),
        Some((15, 30))
    );

    // A registry cohort: type 2 diabetes (B and C).
    let registry =
        evaluate(addr, "hrsn-screening-rate", "2026-01-01", "2026-03-31", "&registry=diabetes&stratifier=race");
    assert_eq!(counts(&registry["group"][0]), Some((20, 35)));
    assert_eq!(registry["extension"][0]["valueString"], "diabetes");

    // The CSV: one row per cell, the same figures.
    let (status, head, csv) = http(
        addr,
        "GET",
        "/measures.csv?measure=hrsn-screening-rate&period=month&from=2026-01&to=2026-03&stratifier=payer",
        None,
    );
    assert_eq!(status, 200, "{csv}");
    assert!(header_value(&head, "content-type").unwrap().starts_with("text/csv"));
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0],
        [
            "measure",
            "period",
            "stratifier",
            "stratum",
            "numerator",
            "denominator",
            "rate",
            "ci_low",
            "ci_high",
            "rate_ratio",
            "suppressed",
            "suppression_reason",
            "median_days"
        ]
    );
    assert!(rows.iter().all(|r| r.len() == rows[0].len()), "ragged CSV:\n{csv}");
    let row = |period: &str, stratifier: &str, stratum: &str| -> Vec<&str> {
        rows.iter()
            .find(|r| r[1] == period && r[2] == stratifier && r[3] == stratum)
            .unwrap_or_else(|| panic!("no row {period} {stratifier} {stratum} in\n{csv}"))
            .clone()
    };
    assert_eq!(&row("2026-01", "overall", "overall")[4..7], ["40", "40", "1"]);
    assert_eq!(&row("2026-02", "payer", "Medicare")[4..7], ["15", "30", "0.5"]);
    assert_eq!(&row("2026-03", "overall", "overall")[4..], ["", "", "", "", "", "", "true", "primary", ""]);
    // March: Private 5/5 and Medicaid 0/3 are small; Medicare has nobody and is shown as zeros.
    assert_eq!(&row("2026-03", "payer", "Private")[10..12], ["true", "primary"]);
    assert_eq!(&row("2026-03", "payer", "Medicaid")[10..12], ["true", "primary"]);
    assert_eq!(&row("2026-03", "payer", "Medicare")[4..6], ["0", "0"]);
    // January: Medicaid 40/40 is the only non-empty stratum and the reference group.
    assert_eq!(&row("2026-01", "payer", "Medicaid")[9..11], ["1", "false"]);
    // Rows: 3 months x (overall + 3 payers).
    assert_eq!(rows.len(), 1 + 3 * 4);
    // No row anywhere shows a count from 1 to 10.
    for r in &rows[1..] {
        for count in &r[4..6] {
            if let Ok(n) = count.parse::<u64>() {
                assert!(n == 0 || n > 10, "small count in {r:?}");
            }
        }
    }

    // Closed loop by quarter in the CSV: 14 of 22 within the configured 30 days.
    let (_, _, closed) = http(
        addr,
        "GET",
        "/measures.csv?measure=hrsn-closed-loop-rate&period=quarter&from=2026-01-01&to=2026-03-31&stratifier=none",
        None,
    );
    let line = closed.lines().nth(1).unwrap();
    assert!(line.starts_with("hrsn-closed-loop-rate,2026-Q1,overall,overall,14,22,0.636364,"), "{line}");
    // The dashboard's series: March is suppressed, so the p-chart's centre line pools January and February only
    // (40 + 15 of 40 + 30), never the hidden March counts.
    let (status, data) =
        get_json(addr, "/dashboard/api/series?measure=hrsn-screening-rate&period=month&from=2026-01-01&to=2026-03-31");
    assert_eq!(status, 200, "{data}");
    assert_eq!(data["periods"], json!(["2026-01", "2026-02", "2026-03"]));
    assert_eq!(data["series"].as_array().unwrap().len(), 1, "overall only without a stratifier");
    let overall = &data["series"][0];
    assert_eq!(overall["group"], "overall");
    assert_eq!(overall["points"][2], json!({"period": "2026-03", "suppressed": "primary"}));
    let p_bar = 55.0 / 70.0;
    assert!(close(&overall["p_chart"]["centre"], p_bar), "{overall}");
    let sigma = |n: f64| (p_bar * (1.0 - p_bar) / n).sqrt();
    let january = &overall["p_chart"]["limits"][0];
    assert!(close(&january["upper"], p_bar + 3.0 * sigma(40.0)), "{january}");
    assert!(close(&january["lower"], p_bar - 3.0 * sigma(40.0)), "{january}");
    assert_eq!(january["outside"], true, "100% in January is above its upper limit");
    let february = &overall["p_chart"]["limits"][1];
    assert!(close(&february["lower"], p_bar - 3.0 * sigma(30.0)), "{february}");
    assert_eq!(overall["p_chart"]["limits"][2], json!({"lower": null, "upper": null, "outside": false}));
    assert!(close(&overall["run_chart"]["median"], 0.75), "median of 1.0 and 0.5: {overall}");
    let (status, _) = get_json(
        addr,
        "/dashboard/api/series?measure=hrsn-screening-rate&from=2026-01-01&to=2026-03-31&stratifier=race,sex",
    );
    assert_eq!(status, 400);

    gateway.terminate();
    assert!(gateway.wait_exit(Duration::from_secs(20)).success());

    // The closed-loop window is configuration: with 60 days, B's four 60-day completions count too (18 of 22).
    let mut gateway = Gateway::start(
        dir.path(),
        &["--http-listen", "127.0.0.1:0", "--database-url", db_url],
        &[("SDOH_GATEWAY_MEASURES__COMPLETION_WINDOW_DAYS", "60")],
    );
    let addr = gateway.wait_ready();
    let report = evaluate(addr, "hrsn-closed-loop-rate", "2026-01-01", "2026-03-31", "&stratifier=none");
    assert_eq!(counts(&report["group"][0]), Some((18, 22)));
    gateway.terminate();
    assert!(gateway.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn measures_from_stored_data_on_sqlite() {
    let dir = temp_dir();
    measures_on(&format!("sqlite:{}", dir.path().join("measures.db").display()));
}

#[test]
fn measures_from_stored_data_on_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(postgres_schema_url(&postgres_url()));
    measures_on(&url);
}

#[test]
fn measures_are_read_only_data_and_bad_requests_get_operation_outcomes() {
    let dir = temp_dir();
    let mut gateway = Gateway::start(dir.path(), &["--http-listen", "127.0.0.1:0"], &[]);
    let addr = gateway.wait_ready();

    let (status, bundle) = get_json(addr, "/fhir/Measure");
    assert_eq!(status, 200);
    let ids: Vec<&str> =
        bundle["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"hrsn-screening-rate") && ids.contains(&"hrsn-closed-loop-rate"), "{ids:?}");
    assert_eq!(bundle["total"], ids.len());
    let (status, measure) = get_json(addr, "/fhir/Measure/hrsn-screening-rate");
    assert_eq!(status, 200);
    assert_eq!(measure["resourceType"], "Measure");
    assert_eq!(measure["url"], "https://sdoh-gateway.org/fhir/Measure/hrsn-screening-rate");
    assert_eq!(measure["scoring"]["coding"][0]["code"], "proportion");
    let stratifiers: Vec<&str> = measure["group"][0]["stratifier"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["code"]["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(stratifiers, ["race", "ethnicity", "language", "payer", "county", "age-band", "sex"]);
    // The criteria are the definition file's own.
    let criteria: Value =
        serde_json::from_str(measure["group"][0]["population"][0]["criteria"]["expression"].as_str().unwrap()).unwrap();
    assert_eq!(criteria[0], json!({"kind": "age-at-least", "years": 18}));
    let (_, closure) = get_json(addr, "/fhir/Measure/hrsn-days-to-closure");
    assert_eq!(closure["scoring"]["coding"][0]["code"], "continuous-variable");

    let (status, _, body) = http(addr, "PUT", "/fhir/Measure/hrsn-screening-rate", Some(&measure.to_string()));
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("OperationOutcome"));

    let outcome = |path: &str, expected: u16| {
        let (status, body) = get_json(addr, path);
        assert_eq!(status, expected, "{path}: {body}");
        assert_eq!(body["resourceType"], "OperationOutcome", "{path}");
        body["issue"][0]["diagnostics"].as_str().unwrap().to_owned()
    };
    outcome("/fhir/Measure/no-such-measure", 404);
    outcome("/fhir/Measure/no-such-measure/$evaluate-measure?periodStart=2026-01-01&periodEnd=2026-01-31", 404);
    let base = "/fhir/Measure/hrsn-screening-rate/$evaluate-measure";
    assert!(outcome(&format!("{base}?periodStart=2026-13-01&periodEnd=2026-12-31"), 400).contains("periodStart"));
    assert!(outcome(&format!("{base}?periodEnd=2026-01-31"), 400).contains("periodStart"));
    assert!(outcome(&format!("{base}?periodStart=2026-01-01&periodEnd=2026-12-31"), 400).contains("month or quarter"));
    assert!(
        outcome(&format!("{base}?periodStart=2026-01-01&periodEnd=2026-01-31&stratifier=shoe-size"), 400)
            .contains("shoe-size")
    );
    outcome(&format!("{base}?periodStart=2026-01-01&periodEnd=2026-01-31&reportType=subject-list"), 400);
    outcome(&format!("{base}?periodStart=2026-01-01&periodEnd=2026-01-31&registry=no-such-registry"), 404);
    outcome("/measures.csv?measure=no-such-measure&from=2026-01&to=2026-02", 404);
    assert!(outcome("/measures.csv?from=2026-01-xx&to=2026-02", 400).contains("from"));
    outcome("/measures.csv?from=2026-01&to=2026-02&period=week", 400);
    outcome("/measures.csv?from=2026-03&to=2026-02", 400);
    outcome("/measures.csv?from=2026-01&to=2026-02&stratifier=race,shoe-size", 400);
    outcome("/dashboard/api/series?from=2026-01&to=2026-02", 400);
}

#[test]
fn measures_are_open_to_admin_ehr_and_registry_clients_not_cbos() {
    let dir = temp_dir();
    let db_url = format!("sqlite:{}", dir.path().join("auth.db").display());
    let client = |role: &str| -> String {
        add_client(dir.path(), &db_url, role, role, &format!("Organization/{role}-org"))["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (ehr, cbo, registry) = (client("ehr"), client("cbo"), client("registry"));
    let mut gateway = Gateway::start(
        dir.path(),
        &["--http-listen", "127.0.0.1:0", "--database-url", &db_url],
        &[("SDOH_GATEWAY_AUTH__REQUIRED", "true")],
    );
    let addr = gateway.wait_ready();
    let status_of = |path: &str, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        http_with(addr, "GET", path, &headers, None).0
    };
    let evaluate = "/fhir/Measure/hrsn-screening-rate/$evaluate-measure?periodStart=2026-01-01&periodEnd=2026-03-31";
    let csv = "/measures.csv?from=2026-01&to=2026-03&stratifier=none";
    for path in [evaluate, csv, "/fhir/Measure", "/dashboard/api/options"] {
        assert_eq!(status_of(path, None), 401, "{path} without a token");
        assert_eq!(status_of(path, Some("not-a-token")), 401, "{path} with a bad token");
        assert_eq!(status_of(path, Some(&cbo)), 403, "{path} as a cbo");
        assert_eq!(status_of(path, Some(&ehr)), 200, "{path} as an ehr");
        assert_eq!(status_of(path, Some(&registry)), 200, "{path} as a registry");
    }
    // The page and its assets hold no data: they load without a token.
    for path in ["/dashboard", "/dashboard/app.js", "/dashboard/style.css"] {
        assert_eq!(status_of(path, None), 200, "{path}");
    }
}

/// The browser the dashboard test drives: `SDOH_TEST_CHROMIUM`, else Debian's `chromium` (scripts/ci-setup.sh
/// installs it).
fn chromium() -> String {
    if let Ok(path) = std::env::var("SDOH_TEST_CHROMIUM") {
        return path;
    }
    for candidate in ["chromium", "chromium-browser"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {candidate}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return candidate.to_owned();
        }
    }
    panic!("the dashboard test needs Chromium: run scripts/ci-setup.sh (apt-get install chromium)");
}

/// Loads `url` in headless Chromium and returns the DOM once the page's requests have settled.
fn rendered_dom(url: &str, profile: &std::path::Path) -> String {
    let mut child = std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--virtual-time-budget=20000",
            &format!("--user-data-dir={}", profile.display()),
            "--dump-dom",
            url,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut dom = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut dom).map(|_| dom)
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap().expect("chromium's output")
}

#[test]
fn dashboard_draws_charts_and_marks_suppressed_cells_in_headless_chromium() {
    let dir = temp_dir();
    let db_url = format!("sqlite:{}", dir.path().join("dashboard.db").display());
    let client = |role: &str| -> String {
        add_client(dir.path(), &db_url, role, role, "Organization/clinic")["token"].as_str().unwrap().to_owned()
    };
    // An operator loads the population (referral Tasks already completed); an EHR client looks at the dashboard.
    let (admin, token) = (client("admin"), client("ehr"));
    let mut gateway = Gateway::start(
        dir.path(),
        &["--http-listen", "127.0.0.1:0", "--database-url", &db_url],
        &[("SDOH_GATEWAY_AUTH__REQUIRED", "true")],
    );
    let addr = gateway.wait_ready();
    load(addr, &[("Authorization", &format!("Bearer {admin}"))]);

    let url = format!(
        "http://{addr}/dashboard#token={token}&measure=hrsn-screening-rate&stratifier=payer&period=month\
         &from=2026-01-01&to=2026-03-31&chart=p-chart"
    );
    let dom = rendered_dom(&url, &dir.path().join("chromium-profile"));
    let context = || format!("rendered DOM:\n{dom}");

    // One chart per group, each an SVG with points, a centre line and control limits.
    for group in ["overall", "Medicaid", "Medicare", "Private"] {
        assert!(
            dom.contains(&format!("<figure class=\"chart\" data-group=\"{group}\"")),
            "no chart for {group}: {}",
            context()
        );
    }
    assert_eq!(dom.matches("<svg").count(), 4, "{}", context());
    assert!(dom.matches("<circle class=\"point").count() >= 4, "{}", context());
    assert!(dom.contains("class=\"centre\""), "{}", context());
    assert!(dom.contains("class=\"limit upper\""), "{}", context());
    // March is suppressed overall, for Private and for Medicaid: hatched markers and the word in the table.
    assert_eq!(dom.matches("class=\"suppressed-marker\"").count(), 3, "{}", context());
    assert!(dom.contains("<text class=\"suppressed-label\""), "{}", context());
    assert!(
        dom.contains(
            "<tr data-group=\"Private\" data-period=\"2026-03\" class=\"suppressed\"><td>Private</td><td>2026-03</td>"
        ),
        "{}",
        context()
    );
    assert_eq!(dom.matches("<td class=\"status\">suppressed (primary)</td>").count(), 3, "{}", context());
    // Shown cells show their counts; suppressed ones none.
    assert!(dom.contains("<td>Medicare</td><td>2026-02</td><td>15</td><td>30</td><td>50.0%</td>"), "{}", context());
    assert!(dom.contains("3 cells suppressed"), "{}", context());
    // The token went to sessionStorage and off the address: the page never shows it.
    assert!(!dom.contains(&token), "the token is in the page");
}
