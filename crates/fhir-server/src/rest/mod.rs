//! FHIR R4 REST core: routing of the instance, type and system interactions onto the store.
//!
//! Mount with `Router::new().nest("/fhir", fhir_server::router(state))`. Every answer is FHIR JSON; every failure is
//! an OperationOutcome ([`FhirError`]). A 2xx to a write is sent only after the store committed it.

pub mod access;
mod bundle;
mod capability;
mod commit;
mod error;
mod handlers;
mod history;
mod media;
pub mod membership;
pub mod patch;
pub mod referral;
pub mod referral_status;
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
    /// Who the current request acts for; [`Caller::System`] in the state given to [`router`].
    pub(crate) caller: crate::auth::Caller,
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
            caller: crate::auth::Caller::System,
        }
    }

    /// This state for one request's caller.
    pub(crate) fn acting_for(mut self, caller: crate::auth::Caller) -> Self {
        self.caller = caller;
        self
    }

    /// The current version inside `tx` if the current caller may see it.
    pub(crate) async fn read_in(
        &self,
        tx: &mut store::StoreTx,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<store::StoredResource>, store::StoreError> {
        let stored = tx.read(resource_type, id).await?;
        if stored.is_some() && !tx.visible(&self.scope(), resource_type, id).await? {
            return Ok(None);
        }
        Ok(stored)
    }

    /// The store scope of the current caller's reads.
    pub(crate) fn scope(&self) -> store::Scope {
        access::scope(&self.caller)
    }

    pub(crate) fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }
}

/// The state of one request, acting for its caller: what every resource interaction extracts. Refuses callers
/// whose role may not use the resource interactions (registry loaders) before anything is read.
pub(crate) struct Acting(pub(crate) FhirState);

impl axum::extract::FromRequestParts<FhirState> for Acting {
    type Rejection = FhirError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &FhirState,
    ) -> Result<Self, Self::Rejection> {
        let caller = parts.extensions.get::<crate::auth::Caller>().cloned().unwrap_or_default();
        access::check_fhir_api(&caller)?;
        Ok(Acting(state.clone().acting_for(caller)))
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
