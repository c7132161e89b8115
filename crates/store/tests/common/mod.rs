//! Test databases for the store suite: a fresh SQLite file, or a fresh PostgreSQL schema, per test.

use store::{Store, StoreOptions};

/// PostgreSQL the suite runs against; override with `SDOH_TEST_POSTGRES_URL`.
pub fn postgres_url() -> String {
    std::env::var("SDOH_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database that lives as long as the test: the SQLite file's folder or the PostgreSQL schema goes away on drop.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    schema: Option<String>,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite:{}", dir.path().join("store.db").display());
        TestDb { url, _dir: Some(dir), schema: None }
    }

    /// A new schema in the test database. A PostgreSQL that cannot be reached fails the test with a clear message:
    /// the suite must run on both backends, so a silent skip would hide a whole backend.
    pub async fn postgres() -> TestDb {
        let admin_url = postgres_url();
        let schema = format!("t_{:016x}", rand_u64());
        let mut admin = StoreOptions::new(admin_url.clone());
        admin.max_connections = 1;
        admin.connect_timeout = std::time::Duration::from_secs(5);
        let admin = Store::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required for the store test suite but {admin_url} could not be reached ({e}). \
                 Start PostgreSQL 15 on 127.0.0.1:5432 (user postgres, trust auth, database test) \
                 or set SDOH_TEST_POSTGRES_URL."
            )
        });
        store::testing::execute(&admin, &format!("CREATE SCHEMA {schema}")).await.expect("create schema");
        admin.close().await;
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{sep}options=-c%20search_path%3D{schema}");
        TestDb { url, _dir: None, schema: Some(schema) }
    }

    pub fn options(&self) -> StoreOptions {
        StoreOptions::new(self.url.clone())
    }

    /// A migrated store; call again for another independent pool on the same database (as another replica).
    pub async fn store(&self) -> Store {
        let store = Store::connect(&self.options()).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(schema) = self.schema.take() {
            // Best effort on a separate thread: Drop cannot await, and a leftover schema harms nothing.
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

/// Declares each listed async test once per backend: `mod sqlite { fn name }` and `mod postgres { fn name }`.
#[macro_export]
macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::common::TestDb::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::common::TestDb::postgres().await).await
                }
            )*
        }
    };
}
