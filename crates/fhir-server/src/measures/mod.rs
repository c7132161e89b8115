//! Equity measures computed from stored data and served as FHIR (`Measure`, `$evaluate-measure` -> summary
//! `MeasureReport`) and CSV.
//!
//! [`facts`] pages through the store and builds one `sdoh::measures::PatientFacts` per patient (or per member of a
//! registry cohort, [`cohort`]); the pure `sdoh::measures::evaluate` does the counting, statistics and suppression;
//! [`report`] and [`csv`] only render its cells, so every output shows the same numbers and hides the same ones.
//! Open to the admin, ehr and registry roles: measures are aggregates, suppressed below 11, computed over all
//! stored data whatever the caller's read scope. CBO clients are refused.

pub mod cohort;
pub mod csv;
pub mod facts;
pub mod query;
pub mod report;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sdoh::measures::{Cell, MeasureDefinition, MeasureSet, StratifierSpec, evaluate};
use sdoh::registry::Registries;
use serde_json::{Value, json};
use store::Store;

pub use cohort::{CohortSource, ComputedMembership};
pub use query::MeasureQuery;

use crate::auth::{Caller, Role};
use crate::rest::{FHIR_JSON, FhirError, IssueType};

/// What the measure endpoints need.
#[derive(Clone)]
pub struct MeasuresState {
    pub store: Store,
    pub measures: Arc<MeasureSet>,
    pub registries: Arc<Registries>,
    pub cohorts: Arc<dyn CohortSource>,
    /// The FHIR base as clients reach it, without a trailing slash.
    pub base_url: String,
    /// Evaluations running at once: each holds every patient's facts, so memory stays bounded however many
    /// requests arrive (the others wait their turn).
    evaluations: Arc<tokio::sync::Semaphore>,
}

/// Evaluations at once (see [`MeasuresState::evaluate`]).
const CONCURRENT_EVALUATIONS: usize = 2;

impl MeasuresState {
    /// The built-in measures and registries, with registry membership computed from stored Conditions.
    pub fn new(store: Store, base_url: impl Into<String>) -> Self {
        MeasuresState {
            cohorts: Arc::new(ComputedMembership { store: store.clone() }),
            store,
            measures: Arc::new(MeasureSet::builtin().clone()),
            registries: Arc::new(Registries::builtin().clone()),
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            evaluations: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_EVALUATIONS)),
        }
    }

    /// The closed-loop window: a referral counts as closed when its Task completed within `days` days.
    pub fn with_completion_window(mut self, days: u32) -> Self {
        let mut measures = (*self.measures).clone();
        measures.set_completion_window(days);
        self.measures = Arc::new(measures);
        self
    }

    pub fn definition(&self, id: &str) -> Result<&MeasureDefinition, FhirError> {
        self.measures.get(id).ok_or_else(|| FhirError::not_found(format!("no measure {id:?}")))
    }

    /// Evaluates the query over the stored data: cells by measure, period, overall then strata.
    pub async fn evaluate(&self, query: &MeasureQuery) -> Result<Vec<Cell>, FhirError> {
        let _turn = self.evaluations.acquire().await.map_err(|_| {
            FhirError::new(StatusCode::SERVICE_UNAVAILABLE, IssueType::Transient, "the gateway is shutting down")
        })?;
        let started = Instant::now();
        let cohort = match &query.registry {
            None => None,
            Some(id) => {
                let registry = self.registries.get(id).ok_or_else(|| {
                    FhirError::not_found(format!("no registry {id:?} (known: {})", self.registry_ids().join(", ")))
                        .at("registry")
                })?;
                let as_of = query.last_day().unwrap_or_else(|| chrono::Utc::now().date_naive());
                Some(self.cohorts.members(registry, as_of).await?)
            }
        };
        let patients = facts::load_facts(&self.store, cohort.as_ref()).await?;
        let definitions: Vec<MeasureDefinition> =
            query.measures.iter().filter_map(|id| self.measures.get(id).cloned()).collect();
        let specs: Vec<StratifierSpec> = query.stratifiers.iter().map(|&s| StratifierSpec::new(s)).collect();
        let periods = query.periods.clone();
        let patient_count = patients.len();
        // Counting is CPU work over every patient: off the async workers.
        let cells =
            tokio::task::spawn_blocking(move || evaluate(&definitions, &patients, &periods, &specs)).await.map_err(
                |_| FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueType::Exception, "evaluation failed"),
            )?;
        tracing::info!(
            measures = query.measures.len(),
            periods = query.periods.len(),
            patients = patient_count,
            cells = cells.len(),
            registry = query.registry.as_deref().unwrap_or(""),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "measures evaluated"
        );
        Ok(cells)
    }

    pub fn registry_ids(&self) -> Vec<&str> {
        self.registries.definitions().iter().map(|r| r.id.as_str()).collect()
    }
}

/// Measures are for operators, clinics and registries; a CBO's clients see only their referral work.
pub fn check_access(caller: &Caller) -> Result<(), FhirError> {
    match caller.role() {
        None | Some(Role::Admin | Role::Ehr | Role::Registry) => Ok(()),
        Some(Role::Cbo) => Err(FhirError::new(
            StatusCode::FORBIDDEN,
            IssueType::Forbidden,
            "equity measures are open to admin, ehr and registry clients",
        )),
    }
}

fn fhir_json(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// The decoded query string, as search reads it.
pub fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, FhirError> {
    crate::rest::form_pairs(raw.unwrap_or(""))
}

/// The FHIR routes of the measures, to be merged into the FHIR router (they take precedence over the generic
/// `/{type}` routes: Measures are data of the gateway, read-only).
pub fn router(state: MeasuresState) -> Router {
    Router::new()
        .route("/Measure", get(list_measures).fallback(read_only))
        .route("/Measure/{id}", get(read_measure).fallback(read_only))
        .route("/Measure/{id}/$evaluate-measure", get(evaluate_measure).fallback(read_only))
        .with_state(state)
}

/// Measures are the gateway's definitions (`profiles/measures/`): they are read, never written over the API.
async fn read_only() -> FhirError {
    FhirError::method_not_allowed("Measure resources are generated from the gateway's measure definitions; only GET")
}

/// `GET /Measure`: every measure, as a searchset Bundle.
async fn list_measures(State(state): State<MeasuresState>, caller: Caller) -> Result<Response, FhirError> {
    check_access(&caller)?;
    let entries: Vec<Value> = state
        .measures
        .definitions()
        .iter()
        .map(|d| {
            json!({
                "fullUrl": format!("{}/Measure/{}", state.base_url, d.id),
                "resource": report::measure_resource(d),
                "search": { "mode": "match" },
            })
        })
        .collect();
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "link": [{ "relation": "self", "url": format!("{}/Measure", state.base_url) }],
        "entry": entries,
    });
    Ok(fhir_json(StatusCode::OK, &bundle))
}

/// `GET /Measure/{id}`.
async fn read_measure(
    State(state): State<MeasuresState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    check_access(&caller)?;
    Ok(fhir_json(StatusCode::OK, &report::measure_resource(state.definition(&id)?)))
}

/// `GET /Measure/{id}/$evaluate-measure?periodStart=&periodEnd=[&reportType=summary][&stratifier=][&registry=]`.
async fn evaluate_measure(
    State(state): State<MeasuresState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, FhirError> {
    check_access(&caller)?;
    let definition = state.definition(&id)?.clone();
    let query = query::evaluate_query(&query_pairs(raw.as_deref())?, &id)?;
    let cells = state.evaluate(&query).await?;
    let period = query.periods[0];
    let body = report::measure_report(&definition, period, &cells, &query.stratifiers, query.registry.as_deref());
    Ok(fhir_json(StatusCode::OK, &body))
}

/// `GET /measures.csv?measure=&period=month|quarter&from=&to=&stratifier=&registry=`: every cell as a CSV row.
pub async fn measures_csv(
    State(state): State<MeasuresState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, FhirError> {
    check_access(&caller)?;
    let query = query::table_query(&query_pairs(raw.as_deref())?, &state.measures)?;
    let cells = state.evaluate(&query).await?;
    let mut response = (StatusCode::OK, csv::table(&cells)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8; header=present"));
    headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"measures.csv\""));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
