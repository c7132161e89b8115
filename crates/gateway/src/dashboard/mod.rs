//! The equity dashboard at `/dashboard` and the measures CSV at `/measures.csv`.
//!
//! The page, its script and its style sheet are compiled into the binary (`assets/`): nothing is loaded from
//! anywhere else, and a Content-Security-Policy says so to the browser. The page itself holds no data; it asks
//! `/dashboard/api/*` (bearer token from the page's login field, kept in `sessionStorage`) for the measures and
//! for one measure's series per stratum, with the p-chart limits and run-chart signals worked out here by
//! `sdoh::measures::stats`, so the page only draws. Suppressed cells come without counts, as everywhere.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fhir_server::FhirError;
use fhir_server::auth::Caller;
use fhir_server::measures::{MeasuresState, check_access, query, query_pairs, report};
use fhir_server::rest::IssueType;
use sdoh::measures::stats::{self, RunSignal, Subgroup};
use sdoh::measures::{Cell, CellValue, Comparison, Group, Scoring, Stratifier};
use serde_json::{Value, json};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Everything the page may load or call: this origin only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// `/dashboard…` and `/measures.csv`. The API routes sit behind the authentication layer (see `crate::auth`).
pub fn router(state: MeasuresState) -> Router {
    Router::new()
        .route("/dashboard", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/dashboard/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/dashboard/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
        .route("/dashboard/api/options", get(options))
        .route("/dashboard/api/series", get(series))
        .route("/measures.csv", get(fhir_server::measures::measures_csv))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn json_response(body: Value) -> Response {
    let mut response = (StatusCode::OK, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /dashboard/api/options`: the measures, stratifiers and registries to choose from.
async fn options(State(state): State<MeasuresState>, caller: Caller) -> Result<Response, FhirError> {
    check_access(&caller)?;
    let measures: Vec<Value> = state
        .measures
        .definitions()
        .iter()
        .map(|m| json!({ "id": m.id, "title": m.title, "description": m.description, "scoring": scoring(m.scoring) }))
        .collect();
    let registries: Vec<Value> =
        state.registries.definitions().iter().map(|r| json!({ "id": r.id, "title": r.title })).collect();
    let stratifiers: Vec<&str> = Stratifier::ALL.iter().map(|s| s.code()).collect();
    Ok(json_response(json!({ "measures": measures, "stratifiers": stratifiers, "registries": registries })))
}

fn scoring(scoring: Scoring) -> &'static str {
    match scoring {
        Scoring::Proportion => "proportion",
        Scoring::MedianDaysToCompletion => "median-days",
    }
}

/// `GET /dashboard/api/series?measure=&period=&from=&to=&stratifier=&registry=`: one measure, overall and per
/// stratum of at most one stratifier, a point per period with its p-chart limits and the run-chart analysis.
async fn series(
    State(state): State<MeasuresState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, FhirError> {
    check_access(&caller)?;
    let pairs = query_pairs(raw.as_deref())?;
    let mut query = query::table_query(&pairs, &state.measures)?;
    // Charts are one breakdown at a time: without a stratifier, the overall series alone.
    if !pairs.iter().any(|(name, _)| name == "stratifier") {
        query.stratifiers.clear();
    }
    let [measure] = query.measures.as_slice() else {
        return Err(
            FhirError::bad_request(IssueType::Invalid, "parameter measure: name exactly one measure").at("measure")
        );
    };
    if query.stratifiers.len() > 1 {
        return Err(
            FhirError::bad_request(IssueType::Invalid, "parameter stratifier: at most one (or none)").at("stratifier")
        );
    }
    let definition = state.definition(measure)?.clone();
    let cells = state.evaluate(&query).await?;
    let mut groups: Vec<Group> = Vec::new();
    for cell in &cells {
        if !groups.contains(&cell.group) {
            groups.push(cell.group.clone());
        }
    }
    let series: Vec<Value> = groups
        .iter()
        .map(|group| {
            let row: Vec<&Cell> = query
                .periods
                .iter()
                .filter_map(|&period| cells.iter().find(|c| c.period == period && &c.group == group))
                .collect();
            series_json(group, &row, definition.scoring)
        })
        .collect();
    Ok(json_response(json!({
        "measure": { "id": definition.id, "title": definition.title, "scoring": scoring(definition.scoring) },
        "stratifier": query.stratifiers.first().map(|s| s.code()),
        "registry": query.registry,
        "periods": query.periods.iter().map(|p| p.label()).collect::<Vec<_>>(),
        "series": series,
    })))
}

fn rounded(value: Option<f64>) -> Value {
    value.map_or(Value::Null, |v| json!(report::round(v)))
}

/// One group's points, p-chart and run chart. The p-chart's centre line pools the shown cells only, so a
/// suppressed cell's counts enter no figure.
fn series_json(group: &Group, row: &[&Cell], scoring: Scoring) -> Value {
    let label = match group {
        Group::Overall => "overall".to_owned(),
        Group::Stratum { value, .. } => value.clone(),
    };
    let mut values = Vec::with_capacity(row.len());
    let mut subgroups = Vec::with_capacity(row.len());
    let mut points = Vec::with_capacity(row.len());
    for cell in row {
        match &cell.value {
            CellValue::Suppressed(why) => {
                values.push(None);
                subgroups.push(Subgroup { numerator: 0, denominator: 0 });
                points.push(json!({ "period": cell.period.label(), "suppressed": report::suppression_code(*why) }));
            }
            CellValue::Shown(f) => {
                let value = match scoring {
                    Scoring::Proportion => f.proportion.map(|p| p.rate),
                    Scoring::MedianDaysToCompletion => f.median_days,
                };
                values.push(value);
                subgroups.push(Subgroup { numerator: f.numerator, denominator: f.denominator });
                let ratio = match &f.comparison {
                    Comparison::Reference if f.proportion.is_some() => Some(1.0),
                    Comparison::Ratio { ratio: Ok(r), .. } => Some(r.ratio),
                    _ => None,
                };
                points.push(json!({
                    "period": cell.period.label(),
                    "suppressed": Value::Null,
                    "numerator": f.numerator,
                    "denominator": f.denominator,
                    "value": rounded(value),
                    "ci_low": rounded(f.proportion.map(|p| p.interval.lower)),
                    "ci_high": rounded(f.proportion.map(|p| p.interval.upper)),
                    "rate_ratio": rounded(ratio),
                }));
            }
        }
    }
    let p_chart = (scoring == Scoring::Proportion).then(|| {
        let chart = stats::p_chart(&subgroups);
        json!({
            "centre": rounded(chart.centre),
            "limits": chart.points.iter().map(|p| json!({
                "lower": rounded(p.lower_limit), "upper": rounded(p.upper_limit), "outside": p.outside_limits,
            })).collect::<Vec<_>>(),
        })
    });
    let run = stats::run_chart(&values);
    let signals: Vec<Value> = run
        .signals
        .iter()
        .map(|signal| match *signal {
            RunSignal::Shift { above, first, last } => {
                json!({ "kind": "shift", "direction": if above { "above" } else { "below" }, "first": first, "last": last })
            }
            RunSignal::Trend { up, first, last } => {
                json!({ "kind": "trend", "direction": if up { "up" } else { "down" }, "first": first, "last": last })
            }
        })
        .collect();
    json!({
        "group": label,
        "points": points,
        "p_chart": p_chart,
        "run_chart": { "median": rounded(run.median), "runs": run.runs,
                        "useful_observations": run.useful_observations, "signals": signals },
    })
}
