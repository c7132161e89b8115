//! Test harness for the REST tests: a fresh SQLite file or PostgreSQL schema per test, and request helpers.

#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use fhir_server::FhirState;
use serde_json::Value;
use store::{Store, StoreOptions};
use tower::ServiceExt;

pub const BASE: &str = "http://localhost/fhir";

/// PostgreSQL the suite runs against; override with `SDOH_TEST_POSTGRES_URL`.
pub fn postgres_url() -> String {
    std::env::var("SDOH_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database that lives as long as the test: the SQLite folder or the PostgreSQL schema goes away on drop.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    schema: Option<String>,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite:{}", dir.path().join("fhir.db").display());
        TestDb { url, _dir: Some(dir), schema: None }
    }

    /// A new schema in the test database. An unreachable PostgreSQL fails the test: a silent skip would hide a backend.
    pub async fn postgres() -> TestDb {
        let admin_url = postgres_url();
        let schema = format!("fhir_{:016x}", rand_u64());
        let mut admin = StoreOptions::new(admin_url.clone());
        admin.max_connections = 1;
        admin.connect_timeout = std::time::Duration::from_secs(5);
        let admin = Store::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required for the fhir-server REST tests but {admin_url} could not be reached ({e}). \
                 Start PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth, database test) \
                 or set SDOH_TEST_POSTGRES_URL."
            )
        });
        store::testing::execute(&admin, &format!("CREATE SCHEMA {schema}")).await.expect("create schema");
        admin.close().await;
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{sep}options=-c%20search_path%3D{schema}");
        TestDb { url, _dir: None, schema: Some(schema) }
    }

    pub async fn store(&self) -> Store {
        let mut options = StoreOptions::new(self.url.clone());
        options.max_connections = 4;
        let store = Store::connect(&options).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }

    /// The FHIR router nested under `/fhir`, as the gateway mounts it.
    pub async fn app(&self) -> TestApp {
        self.app_with(|_| {}).await
    }

    pub async fn app_with(&self, configure: impl FnOnce(&mut FhirState)) -> TestApp {
        let store = self.store().await;
        let mut state = FhirState::new(store.clone(), BASE);
        state.max_body_bytes = 64 * 1024;
        configure(&mut state);
        TestApp { router: Router::new().nest("/fhir", fhir_server::router(state)), store }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(schema) = self.schema.take() {
            // Drop cannot await; a separate thread with its own runtime does the clean-up, best effort.
            let url = postgres_url();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                rt.block_on(async {
                    let store = Store::connect(&StoreOptions::new(url)).await.ok()?;
                    store::testing::execute(&store, &format!("DROP SCHEMA {schema} CASCADE")).await.ok()?;
                    store.close().await;
                    Some(())
                })
            })
            .join();
        }
    }
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

pub struct TestApp {
    pub router: Router,
    pub store: Store,
}

/// A response, with its body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub bytes: Vec<u8>,
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an OperationOutcome with this status and issue code, and returns its first issue.
    #[track_caller]
    pub fn outcome(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status.as_u16(), status, "status; body: {}", self.json);
        assert_eq!(self.json["resourceType"], "OperationOutcome", "body: {}", self.json);
        assert_eq!(self.json["issue"][0]["code"], code, "body: {}", self.json);
        assert_eq!(self.header("content-type"), Some("application/fhir+json; charset=utf-8"));
        &self.json["issue"][0]
    }
}

impl TestApp {
    pub async fn send(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Reply {
        let mut request = Request::builder().method(Method::from_bytes(method.as_bytes()).expect("method")).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body.map_or_else(Body::empty, Body::from)).expect("request");
        let response = self.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body").to_vec();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, headers, bytes, json }
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.send("GET", uri, &[], None).await
    }

    pub async fn get_with(&self, uri: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", uri, headers, None).await
    }

    /// A request with a FHIR JSON body.
    pub async fn write(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
        let mut all = vec![("content-type", "application/fhir+json")];
        all.extend_from_slice(headers);
        self.send(method, uri, &all, Some(body.to_string().into_bytes())).await
    }

    pub async fn create(&self, resource: &Value) -> Reply {
        let t = resource["resourceType"].as_str().expect("resourceType");
        self.write("POST", &format!("/fhir/{t}"), &[], resource).await
    }

    /// Creates and returns the server-assigned id.
    pub async fn create_id(&self, resource: &Value) -> String {
        let reply = self.create(resource).await;
        assert_eq!(reply.status, StatusCode::CREATED, "create: {}", reply.json);
        reply.json["id"].as_str().expect("id").to_owned()
    }

    pub async fn patch(&self, uri: &str, headers: &[(&str, &str)], operations: &Value) -> Reply {
        let mut all = vec![("content-type", "application/json-patch+json")];
        all.extend_from_slice(headers);
        self.send("PATCH", uri, &all, Some(operations.to_string().into_bytes())).await
    }
}

/// Declares each listed async test once per backend: `mod sqlite { fn name }` and `mod postgres { fn name }`.
#[macro_export]
macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::TestDb::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::TestDb::postgres().await).await
                }
            )*
        }
    };
}
