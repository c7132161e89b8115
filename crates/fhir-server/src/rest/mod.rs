//! FHIR R4 REST core: routing of the instance, type and system interactions onto the store.
//!
//! Mount with `Router::new().nest("/fhir", fhir_server::router(state))`. Every answer is FHIR JSON; every failure is
//! an OperationOutcome ([`FhirError`]). A 2xx to a write is sent only after the store committed it.

mod bundle;
mod capability;
mod commit;
mod error;
mod handlers;
mod history;
mod media;
pub mod patch;
mod search;
mod summary;
pub mod validate;
pub mod write;

use axum::Router;
use axum::routing::{get, post};
use store::Store;
use tower_http::compression::CompressionLayer;

pub use error::{FhirError, IssueType};
pub(crate) use handlers::{check_id, json_response, new_id, path_error};
pub(crate) use media::{parse_json, read_body};
pub(crate) use search::form_pairs;

/// `Content-Type` of every response body this server writes.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// The resource types that can be created, read and changed through the type endpoints. `Bundle` is deliberately
/// absent: Bundles are processed (transactions, batches), not stored as such.
pub const SUPPORTED_TYPES: &[&str] = crate::search::GATEWAY_RESOURCE_TYPES;

/// What the FHIR endpoints need: the store, how the server is addressed from outside, and the limits.
#[derive(Debug, Clone)]
pub struct FhirState {
    pub store: Store,
    /// The FHIR base as clients reach it, without a trailing slash (e.g. `http://127.0.0.1:8080/fhir`); used for
    /// `Location`, `fullUrl` and paging links.
    pub base_url: String,
    /// Whether `PUT` to an id that never existed creates the resource (client-assigned ids).
    pub allow_update_create: bool,
    /// Largest accepted request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Shares transactions between concurrent plain creates (see [`commit`]).
    creates: commit::CreateCommitter,
}

impl FhirState {
    /// Must be called inside a tokio runtime: it starts the task that commits creates.
    pub fn new(store: Store, base_url: impl Into<String>) -> Self {
        let creates = commit::CreateCommitter::spawn(store.clone());
        FhirState {
            store,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            allow_update_create: true,
            max_body_bytes: 4 * 1024 * 1024,
            creates,
        }
    }

    pub(crate) fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }
}

/// The FHIR REST router, to be nested under the FHIR base path.
pub fn router(state: FhirState) -> Router {
    Router::new()
        .route("/", axum::routing::post(bundle::process))
        .route("/metadata", get(capability::metadata))
        .route("/_history", get(history::system_history))
        .route("/{type}", get(search::search_get).post(handlers::create))
        .route("/{type}/_history", get(history::type_history))
        .route(
            "/{type}/{id}",
            get(handlers::read).put(handlers::update).delete(handlers::delete).patch(handlers::patch),
        )
        .route("/{type}/{id}/_history", get(history::instance_history))
        .route("/{type}/{id}/_history/{vid}", get(handlers::vread))
        .route("/{type}/{id}/{operation}", get(crate::subscriptions::operation).post(crate::subscriptions::operation))
        .fallback(handlers::unknown_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), media::negotiate))
        // Added after the negotiation layer, which admits only FHIR JSON bodies: `_search` posts a form.
        .route("/{type}/_search", post(search::search_post))
        .layer(CompressionLayer::new())
        .with_state(state)
}
