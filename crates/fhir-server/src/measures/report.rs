//! FHIR renderings of measures: `Measure` resources generated from the definitions (data, not code), and summary
//! `MeasureReport`s from evaluated cells.
//!
//! How a MeasureReport shows what the evaluator decided (the extensions are the gateway's, under
//! [`CANONICAL`]`/StructureDefinition/`):
//! - a shown cell: `population` counts (denominator, numerator; for the median measure `measure-population` and
//!   `measure-observation`), `measureScore` (the rate, or the median in days), and the extensions
//!   `measure-score-interval` (95% Wilson interval, a `valueRange`) and `rate-ratio` (on strata: sub-extensions
//!   `status` = `estimated` | `reference` | `empty-group` | `zero-reference-rate` | `zero-rate` |
//!   `not-a-proportion` | `reference-suppressed` | `no-reference`, `reference` = the reference stratum,
//!   `ratio` and `interval` when estimated);
//! - a suppressed cell: the extension `suppressed` (`valueCode` `primary` or `complementary`), populations whose
//!   `count` is absent with the standard `data-absent-reason` extension `masked` on `_count`, and a
//!   `measureScore` carrying only that extension. No number of a suppressed cell appears anywhere.

use chrono::{SecondsFormat, Utc};
use sdoh::measures::stats::{Interval, RatioUndefined};
use sdoh::measures::{
    Cell, CellValue, Comparison, Criterion, Figures, Group, MeasureDefinition, Period, Scoring, Stratifier, Suppression,
};
use serde_json::{Value, json};

/// The gateway's canonical base for the measures, extensions and code systems it defines.
pub const CANONICAL: &str = "https://sdoh-gateway.org/fhir";
const DATA_ABSENT_REASON: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";
const MEASURE_POPULATION: &str = "http://terminology.hl7.org/CodeSystem/measure-population";
const MEASURE_SCORING: &str = "http://terminology.hl7.org/CodeSystem/measure-scoring";
const AGGREGATE_METHOD: &str = "http://hl7.org/fhir/us/cqfmeasures/StructureDefinition/cqfm-aggregateMethod";
/// Language of the criteria expressions: the definition file's own JSON criteria.
const CRITERIA_LANGUAGE: &str = "application/json";

pub fn extension_url(name: &str) -> String {
    format!("{CANONICAL}/StructureDefinition/{name}")
}

pub fn measure_url(id: &str) -> String {
    format!("{CANONICAL}/Measure/{id}")
}

fn stratifier_system() -> String {
    format!("{CANONICAL}/CodeSystem/measure-stratifier")
}

/// Rates and intervals to six decimals: more would only be noise.
pub fn round(value: f64) -> f64 {
    (value * 1e6).round() / 1e6
}

fn stratifier_description(stratifier: Stratifier) -> &'static str {
    match stratifier {
        Stratifier::Race => "OMB race category (US Core race extension); several categories: Multiple races",
        Stratifier::Ethnicity => "OMB ethnicity category (US Core ethnicity extension)",
        Stratifier::Language => "Preferred language (Patient.communication), as coded",
        Stratifier::Payer => "Payer type of the primary active Coverage (Coverage.type)",
        Stratifier::County => "County of the home address (Address.district)",
        Stratifier::AgeBand => "Age at the start of the period: 0-17, 18-44, 45-64, 65+",
        Stratifier::Sex => "Administrative gender (Patient.gender)",
    }
}

fn stratifier_concept(stratifier: Stratifier) -> Value {
    json!({ "coding": [{ "system": stratifier_system(), "code": stratifier.code() }], "text": stratifier.code() })
}

fn population_code(code: &str) -> Value {
    json!({ "coding": [{ "system": MEASURE_POPULATION, "code": code }] })
}

/// The (denominator, numerator) population codes of a measure's scoring.
fn population_codes(scoring: Scoring) -> (&'static str, &'static str) {
    match scoring {
        Scoring::Proportion => ("denominator", "numerator"),
        Scoring::MedianDaysToCompletion => ("measure-population", "measure-observation"),
    }
}

fn criteria_expression(criteria: &[Criterion]) -> Value {
    json!({ "language": CRITERIA_LANGUAGE, "expression": serde_json::to_string(criteria).unwrap_or_default() })
}

fn pascal_case(id: &str) -> String {
    id.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| first.to_ascii_uppercase().to_string() + chars.as_str())
        })
        .collect()
}

/// The FHIR Measure of a definition.
pub fn measure_resource(definition: &MeasureDefinition) -> Value {
    let (denominator, numerator) = population_codes(definition.scoring);
    let scoring = match definition.scoring {
        Scoring::Proportion => "proportion",
        Scoring::MedianDaysToCompletion => "continuous-variable",
    };
    let unit = match definition.subject {
        sdoh::measures::Subject::Patient => "patients",
        sdoh::measures::Subject::Referral => "referrals",
    };
    let mut group = json!({
        "population": [
            { "code": population_code(denominator), "description": format!("The {unit} counted"),
              "criteria": criteria_expression(&definition.denominator) },
            { "code": population_code(numerator), "description": format!("The {unit} meeting the measure"),
              "criteria": criteria_expression(&definition.numerator) },
        ],
        "stratifier": Stratifier::ALL.iter().map(|&s| json!({
            "code": stratifier_concept(s),
            "description": stratifier_description(s),
        })).collect::<Vec<_>>(),
    });
    if definition.scoring == Scoring::MedianDaysToCompletion {
        group["extension"] = json!([{ "url": AGGREGATE_METHOD, "valueCode": "median" }]);
    }
    let mut measure = json!({
        "resourceType": "Measure",
        "id": definition.id,
        "url": measure_url(&definition.id),
        "name": pascal_case(&definition.id),
        "title": definition.title,
        "status": "active",
        "description": definition.description,
        "scoring": { "coding": [{ "system": MEASURE_SCORING, "code": scoring }] },
        "type": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/measure-type", "code": "process" }] }],
        "disclaimer": "Counts from 1 to 10 are suppressed in every output, with complementary suppression so that \
                       no suppressed count can be worked out from the other strata.",
        "group": [group],
    });
    if definition.scoring == Scoring::MedianDaysToCompletion {
        measure["scoring"]["text"] = json!("median days from referral to completion");
    }
    if let Some(basis) = &definition.basis {
        measure["relatedArtifact"] = json!([{ "type": "derived-from", "display": basis }]);
    }
    measure
}

fn masked() -> Value {
    json!({ "extension": [{ "url": DATA_ABSENT_REASON, "valueCode": "masked" }] })
}

fn interval_extension(name: &str, interval: Interval) -> Value {
    json!({ "url": extension_url(name), "valueRange": {
        "low": { "value": round(interval.lower) }, "high": { "value": round(interval.upper) } } })
}

pub fn undefined_code(why: RatioUndefined) -> &'static str {
    match why {
        RatioUndefined::EmptyGroup => "empty-group",
        RatioUndefined::ZeroReferenceRate => "zero-reference-rate",
        RatioUndefined::ZeroRate => "zero-rate",
        RatioUndefined::NotAProportion => "not-a-proportion",
    }
}

pub fn suppression_code(why: Suppression) -> &'static str {
    match why {
        Suppression::Primary => "primary",
        Suppression::Complementary => "complementary",
    }
}

fn rate_ratio_extension(comparison: &Comparison) -> Option<Value> {
    let status = |code: &str| json!({ "url": "status", "valueCode": code });
    let reference = |label: &str| json!({ "url": "reference", "valueString": label });
    let parts = match comparison {
        Comparison::NotApplicable => return None,
        Comparison::Reference => vec![status("reference")],
        Comparison::NoReference => vec![status("no-reference")],
        Comparison::ReferenceSuppressed { reference: label } => vec![status("reference-suppressed"), reference(label)],
        Comparison::Ratio { reference: label, ratio: Err(why) } => vec![status(undefined_code(*why)), reference(label)],
        Comparison::Ratio { reference: label, ratio: Ok(ratio) } => vec![
            status("estimated"),
            reference(label),
            json!({ "url": "ratio", "valueDecimal": round(ratio.ratio) }),
            json!({ "url": "interval", "valueRange": {
                "low": { "value": round(ratio.interval.lower) }, "high": { "value": round(ratio.interval.upper) } } }),
        ],
    };
    Some(json!({ "url": extension_url("rate-ratio"), "extension": parts }))
}

/// Populations, score and extensions of one cell, as a MeasureReport group or stratum carries them.
fn cell_parts(definition: &MeasureDefinition, value: &CellValue) -> (Vec<Value>, Value, Vec<Value>) {
    let (denominator, numerator) = population_codes(definition.scoring);
    match value {
        CellValue::Suppressed(why) => (
            vec![
                json!({ "code": population_code(denominator), "_count": masked() }),
                json!({ "code": population_code(numerator), "_count": masked() }),
            ],
            masked(),
            vec![json!({ "url": extension_url("suppressed"), "valueCode": suppression_code(*why) })],
        ),
        CellValue::Shown(figures) => {
            let populations = vec![
                json!({ "code": population_code(denominator), "count": figures.denominator }),
                json!({ "code": population_code(numerator), "count": figures.numerator }),
            ];
            let mut extensions = Vec::new();
            let score = score(figures);
            if let Some(proportion) = figures.proportion {
                extensions.push(interval_extension("measure-score-interval", proportion.interval));
            }
            extensions.extend(rate_ratio_extension(&figures.comparison));
            (populations, score, extensions)
        }
    }
}

fn score(figures: &Figures) -> Value {
    if let Some(proportion) = figures.proportion {
        json!({ "value": round(proportion.rate) })
    } else if let Some(days) = figures.median_days {
        json!({ "value": round(days), "unit": "d", "system": "http://unitsofmeasure.org", "code": "d" })
    } else {
        // An empty denominator: there is no rate, and nothing is hidden.
        json!({ "extension": [{ "url": DATA_ABSENT_REASON, "valueCode": "not-applicable" }] })
    }
}

/// A summary MeasureReport of one measure in one period from its cells (overall first, then strata by
/// stratifier, as the evaluator orders them).
pub fn measure_report(
    definition: &MeasureDefinition,
    period: Period,
    cells: &[Cell],
    stratifiers: &[Stratifier],
    registry: Option<&str>,
) -> Value {
    let cells: Vec<&Cell> = cells.iter().filter(|c| c.measure == definition.id && c.period == period).collect();
    let mut group = json!({});
    if let Some(overall) = cells.iter().find(|c| c.group == Group::Overall) {
        let (population, score, extensions) = cell_parts(definition, &overall.value);
        group["population"] = json!(population);
        group["measureScore"] = score;
        if !extensions.is_empty() {
            group["extension"] = json!(extensions);
        }
    }
    let stratifier_entries: Vec<Value> = stratifiers
        .iter()
        .map(|&stratifier| {
            let strata: Vec<Value> = cells
                .iter()
                .filter_map(|cell| match &cell.group {
                    Group::Stratum { stratifier: s, value } if *s == stratifier => Some((value, &cell.value)),
                    _ => None,
                })
                .map(|(label, value)| {
                    let (population, score, extensions) = cell_parts(definition, value);
                    let mut stratum =
                        json!({ "value": { "text": label }, "population": population, "measureScore": score });
                    if !extensions.is_empty() {
                        stratum["extension"] = json!(extensions);
                    }
                    stratum
                })
                .collect();
            json!({ "code": [stratifier_concept(stratifier)], "stratum": strata })
        })
        .collect();
    if !stratifier_entries.is_empty() {
        group["stratifier"] = json!(stratifier_entries);
    }
    let mut report = json!({
        "resourceType": "MeasureReport",
        "status": "complete",
        "type": "summary",
        "measure": measure_url(&definition.id),
        "date": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        "period": { "start": period.start().to_string(), "end": period.end().to_string() },
        "group": [group],
    });
    if let Some(registry) = registry {
        report["extension"] = json!([{ "url": extension_url("measure-report-registry"), "valueString": registry }]);
    }
    report
}
