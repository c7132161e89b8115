//! Authentication of HTTP API clients: bearer credentials to a [`Caller`] for the FHIR router, roles for the
//! operator endpoints.
//!
//! An [`Authenticator`] turns the bearer token of a request into a [`Principal`]; [`ClientCredentials`] (tokens
//! issued by `sdoh-gateway clients add`, stored hashed) is the one in use today, and SMART Backend Services (signed
//! JWT assertions exchanged for access tokens) plugs in as another implementation without touching the FHIR layer,
//! which only ever sees the `Caller` left in the request's extensions. Health probes and metrics stay open;
//! `/metadata` is open to every authenticated client; everything else needs a valid token, and `/admin` the admin
//! role. `/measures.csv` and the dashboard's data (`/dashboard/api`) need a token too; the dashboard page and its
//! assets hold no data and load without one. Failures are OperationOutcomes (401 with `WWW-Authenticate: Bearer`,
//! 403), logged by client id only.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fhir_server::FhirError;
use fhir_server::auth::{Caller, Principal, Role};
use fhir_server::rest::IssueType;

/// Turns a bearer token into the principal it authenticates; `Ok(None)` for a token that authenticates no one.
pub trait Authenticator: Send + Sync {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Principal>, store::StoreError>> + Send + 'a>>;
}

/// Tokens issued by `sdoh-gateway clients add`. Answers are cached briefly, so a busy client costs no database
/// read per request; a revocation takes effect within the cache period.
pub struct ClientCredentials {
    store: store::Store,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, Option<Principal>)>>,
}

/// Most cached token answers; the cache is cleared when full (tokens are few; this bounds what garbage costs).
const CACHE_LIMIT: usize = 10_000;

impl ClientCredentials {
    pub fn new(store: store::Store, ttl: Duration) -> Self {
        ClientCredentials { store, ttl, cache: Mutex::new(HashMap::new()) }
    }

    fn cached(&self, token: &str) -> Option<Option<Principal>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(token).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, p)| p.clone())
    }

    fn remember(&self, token: &str, principal: Option<Principal>) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(token.to_owned(), (Instant::now(), principal));
    }
}

impl Authenticator for ClientCredentials {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Principal>, store::StoreError>> + Send + 'a>> {
        Box::pin(async move {
            if let Some(answer) = self.cached(token) {
                return Ok(answer);
            }
            let principal = self.store.authenticate_client(token).await?.and_then(|client| {
                Some(Principal {
                    role: Role::parse(&client.role)?,
                    client_id: client.client_id,
                    organization: client.organization,
                })
            });
            self.remember(token, principal.clone());
            Ok(principal)
        })
    }
}

/// What the authentication layer needs.
#[derive(Clone)]
pub struct AuthLayer {
    /// `None`: authentication is off (`auth.required = false`) and every request acts as the gateway itself.
    pub authenticator: Option<Arc<dyn Authenticator>>,
}

fn unauthorized(why: &str) -> Response {
    let mut response = FhirError::new(
        StatusCode::UNAUTHORIZED,
        IssueType::Login,
        format!("{why}; send Authorization: Bearer <token>"),
    )
    .into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"sdoh-gateway\""));
    response
}

fn bearer_token(request: &Request) -> Result<Option<&str>, &'static str> {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else { return Ok(None) };
    let text = value.to_str().map_err(|_| "the Authorization header is not readable")?;
    let (scheme, token) = text.split_once(' ').ok_or("the Authorization header is not a bearer token")?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err("the Authorization header is not a bearer token");
    }
    Ok(Some(token.trim()))
}

/// Authenticates `/fhir`, `/admin`, `/measures.csv` and `/dashboard/api` requests and leaves the [`Caller`] in the request's extensions.
pub async fn authenticate(State(layer): State<AuthLayer>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let protected = path.starts_with("/fhir")
        || path.starts_with("/admin")
        || path.starts_with("/dashboard/api")
        || path == "/measures.csv";
    let Some(authenticator) = layer.authenticator.filter(|_| protected) else {
        return next.run(request).await;
    };
    let principal = match bearer_token(&request) {
        Err(why) => return unauthorized(why),
        Ok(None) => return unauthorized("authentication required"),
        Ok(Some(token)) => match authenticator.authenticate(token).await {
            Ok(Some(principal)) => principal,
            Ok(None) => {
                metrics::counter!("http_auth_failures_total").increment(1);
                return unauthorized("the bearer token is not valid");
            }
            Err(e) => return FhirError::from(e).into_response(),
        },
    };
    if path.starts_with("/admin") && principal.role != Role::Admin {
        tracing::info!(client_id = %principal.client_id, "admin endpoint refused for a non-admin client");
        return FhirError::new(StatusCode::FORBIDDEN, IssueType::Forbidden, "the admin endpoints need the admin role")
            .into_response();
    }
    tracing::debug!(client_id = %principal.client_id, role = principal.role.as_str(), "authenticated");
    request.extensions_mut().insert(Caller::Client(principal));
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: Option<&str>) -> Request {
        let mut builder = axum::http::Request::builder().uri("/fhir/Task");
        if let Some(a) = authorization {
            builder = builder.header(header::AUTHORIZATION, a);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_other_schemes_refused() {
        assert_eq!(bearer_token(&request(Some("Bearer abc.def"))), Ok(Some("abc.def")));
        assert_eq!(bearer_token(&request(Some("bearer abc.def"))), Ok(Some("abc.def")));
        assert!(bearer_token(&request(Some("Basic dXNlcjpwYXNz"))).is_err());
        assert!(bearer_token(&request(Some("Bearer "))).is_err());
        assert_eq!(bearer_token(&request(None)), Ok(None));
    }
}
