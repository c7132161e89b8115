//! The HTTP surface: health probes, Prometheus metrics, and (in later layers) the FHIR API, with request metrics.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: store::Store,
    /// Attempts for jobs queued from HTTP (reprocessing).
    pub max_attempts: i32,
}

/// The whole HTTP surface. The FHIR API enforces the body limit itself (answering 413 with an OperationOutcome),
/// so the generic limit layer covers only the operator routes.
pub fn router(
    state: AppState,
    fhir: fhir_server::FhirState,
    measures: fhir_server::measures::MeasuresState,
    registries: crate::registries::http::RegistryApi,
    auth: crate::auth::AuthLayer,
    max_body_bytes: usize,
    request_timeout: Duration,
) -> Router {
    let operator_routes = Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/admin/messages", get(crate::admin::list_messages))
        .route("/admin/messages/{id}", get(crate::admin::show_message))
        .route("/admin/messages/{id}/reprocess", axum::routing::post(crate::admin::reprocess_message))
        .route("/admin/outbound", get(crate::outbound_admin::list_outbound))
        .route("/admin/outbound/{id}", get(crate::outbound_admin::show_outbound))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body_bytes))
        .with_state(state);
    operator_routes
        .nest(
            "/fhir",
            fhir_server::router(fhir)
                .merge(fhir_server::measures::router(measures.clone()))
                .merge(crate::registries::http::routes(registries)),
        )
        .merge(crate::dashboard::router(measures))
        .layer(middleware::from_fn_with_state(auth, crate::auth::authenticate))
        .layer(middleware::from_fn(record_request))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, request_timeout))
}

/// The process is up and serving; says nothing about its dependencies (that is /health/ready).
async fn live() -> impl IntoResponse {
    (StatusCode::OK, axum::Json(json!({"status": "live"})))
}

/// Ready when the database answers within a bound; 503 otherwise, so a load balancer routes around us.
async fn ready(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, axum::Json(json!({"status": "ready", "database": "up"}))).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check: database unreachable");
            unready("database unreachable")
        }
        Err(_) => {
            tracing::warn!("readiness check: database did not answer within 2 s");
            unready("database did not answer in time")
        }
    }
}

fn unready(reason: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "unready", "database": "down", "reason": reason})))
        .into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    crate::telemetry::refresh_scrape_gauges(&state.store).await;
    let body = crate::telemetry::metrics_handle().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Counts and times every request by its route template (never the raw path, which may carry identifiers).
async fn record_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    response
}
