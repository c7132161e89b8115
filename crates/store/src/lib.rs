//! Persistence for sdoh-gateway: FHIR resources with complete history, and a durable job queue, on SQLite or PostgreSQL.
//!
//! The backend is chosen by the database URL. SQLite (embedded default) gets one writer connection and a pool of
//! readers, so writers queue in-process instead of failing with `SQLITE_BUSY`; PostgreSQL gets one shared pool and
//! claims jobs with `FOR UPDATE SKIP LOCKED`, so any number of gateway replicas can share one database.

mod access;
mod durability;
mod error;
mod facts;
mod jobs;
mod journal;
mod listing;
mod outbound;
mod registries;
mod resources;
mod scan;
mod search;
mod subscriptions;
mod time;
mod tx;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::Notify;

pub use access::{
    ApiClient, CLIENT_ROLES, DIRECTORY_TYPES, Grant, NewClientCredentials, Scope, is_organization_reference,
};
pub use error::{Result, StoreError};
pub use facts::{FactCursor, FactPage};
pub use jobs::{Backoff, FailOutcome, Job, JobCount, JobState, NewJob};
pub use journal::{JournalEntry, JournalOutcome, JournalQuery, JournalStatus, NewMessage, journal_ids_of};
pub use outbound::{OutboundAck, OutboundQuery, OutboundRecord, OutboundState};
pub use registries::{Export, ExportStatus, MemberQuery, NewExport, RegistryMember};
pub use resources::{HistoryEntry, HistoryQuery, Precondition, StoredResource, Written, is_valid_id};
pub use scan::ScanCursor;
pub use search::*;
pub use subscriptions::{SubscriptionEvent, SubscriptionRow, SubscriptionSpec};
pub use time::{Timestamp, format_instant};
pub use tx::StoreTx;

/// Which database engine a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

impl BackendKind {
    /// The backend a database URL selects, or an error naming what is wrong with it.
    pub fn from_url(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(BackendKind::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(BackendKind::Postgres)
        } else {
            Err(StoreError::InvalidUrl("expected a URL starting with sqlite: or postgres:// (postgresql://)".into()))
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
        }
    }
}

/// SQLite durability level for commits. `Full` survives power loss; `Normal` survives a process crash only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteDurability {
    #[default]
    Full,
    Normal,
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub url: String,
    /// Connections per pool (for SQLite: readers; there is always exactly one writer).
    pub max_connections: u32,
    /// Bound on the initial connection, so a missing database fails start-up instead of hanging it.
    pub connect_timeout: Duration,
    /// Bound on waiting for a pooled connection at run time.
    pub acquire_timeout: Duration,
    pub sqlite_durability: SqliteDurability,
    /// Page cache of SQLite's writer connection, in MiB. Conversion and normalization insert index rows all over
    /// the index b-trees: a cache that holds more of them reads fewer pages back per write (measured: 16 -> 32
    /// -> 64 MiB took ORU conversion from ~245 to ~270 to ~340 messages/s) at the price of resident memory.
    pub sqlite_writer_cache_mib: u32,
}

impl StoreOptions {
    pub fn new(url: impl Into<String>) -> Self {
        StoreOptions {
            url: url.into(),
            max_connections: 8,
            connect_timeout: Duration::from_secs(10),
            acquire_timeout: Duration::from_secs(5),
            sqlite_durability: SqliteDurability::Full,
            sqlite_writer_cache_mib: 32,
        }
    }
}

/// What a WAL checkpoint found and did ([`Store::checkpoint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointProgress {
    /// Frames (pages) in the write-ahead log.
    pub wal_pages: i64,
    /// Of those, how many are now copied into the database file.
    pub copied_pages: i64,
}

#[derive(Debug)]
pub(crate) enum Pools {
    /// `checkpointer`: one connection that may write the database file, for [`Store::checkpoint`] (a read-only
    /// reader may not checkpoint, and the writer would hold up every write while it copies pages).
    Sqlite {
        read: SqlitePool,
        write: SqlitePool,
        checkpointer: SqlitePool,
    },
    Postgres(PgPool),
}

#[derive(Debug)]
struct Inner {
    pools: Pools,
    /// Wakes local workers when a job is committed, so they need not wait for their next poll.
    job_notify: Notify,
    /// SQLite at full durability: commits are synced after the write lock is released (see `durability`).
    wal_sync: Option<durability::WalSync>,
}

/// A handle to the database; cheap to clone and share between tasks.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// A commit that is visible but perhaps not yet durable (see [`StoreTx::commit_visible`]).
#[derive(Debug)]
#[must_use = "a commit is acknowledged only once durable() returns"]
pub struct CommitTicket {
    store: Store,
    ticket: Option<u64>,
}

impl CommitTicket {
    /// Returns once the commit is on disk (at once where the commit itself already synced).
    pub async fn durable(self) -> Result<()> {
        match (&self.store.inner.wal_sync, self.ticket) {
            (Some(sync), Some(ticket)) => sync.durable(ticket).await,
            _ => Ok(()),
        }
    }
}

/// Commits and the WAL fsyncs that made them durable, since the store opened (SQLite at full durability).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitSyncStats {
    pub commits: u64,
    pub syncs: u64,
}

/// Connection pool figures for the metrics endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub name: &'static str,
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

impl Store {
    /// Opens the database named by `options.url`, creating an SQLite file (and its folder) if missing.
    /// Does not migrate; call [`Store::migrate`].
    pub async fn connect(options: &StoreOptions) -> Result<Store> {
        let (pools, wal_sync) = match BackendKind::from_url(&options.url)? {
            BackendKind::Sqlite => connect_sqlite(options).await?,
            BackendKind::Postgres => (connect_postgres(options).await?, None),
        };
        Ok(Store { inner: Arc::new(Inner { pools, job_notify: Notify::new(), wal_sync }) })
    }

    pub fn backend(&self) -> BackendKind {
        match self.inner.pools {
            Pools::Sqlite { .. } => BackendKind::Sqlite,
            Pools::Postgres(_) => BackendKind::Postgres,
        }
    }

    pub(crate) fn pools(&self) -> &Pools {
        &self.inner.pools
    }

    /// Called once a write transaction (or an autocommit write) has committed: returns when it is durable. On
    /// SQLite at full durability that is the group fsync of the WAL; otherwise the commit already was.
    pub(crate) async fn commit_done(&self) -> Result<()> {
        self.committed().durable().await
    }

    /// How many commits shared each WAL fsync; `None` where commits sync themselves (PostgreSQL, or SQLite at
    /// `normal` durability, which does not sync commits at all).
    pub fn commit_sync_stats(&self) -> Option<CommitSyncStats> {
        self.inner.wal_sync.as_ref().map(durability::WalSync::stats)
    }

    /// Counts a commit that just returned, for a caller that waits for its durability later.
    pub(crate) fn committed(&self) -> CommitTicket {
        CommitTicket { store: self.clone(), ticket: self.inner.wal_sync.as_ref().map(durability::WalSync::committed) }
    }

    /// Brings the schema up to date. Safe to run from several replicas at once on PostgreSQL (sqlx takes an
    /// advisory lock) and on every start.
    pub async fn migrate(&self) -> Result<()> {
        let outcome = match &self.inner.pools {
            Pools::Sqlite { write, .. } => sqlx::migrate!("./migrations/sqlite").run(write).await,
            Pools::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await,
        };
        outcome.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(inner) => match StoreError::from(inner) {
                StoreError::Unavailable(why) => StoreError::Unavailable(why),
                other => StoreError::Migration(other.to_string()),
            },
            other => StoreError::Migration(other.to_string()),
        })?;
        search::convert_legacy_index(self).await?;
        if let Pools::Sqlite { write, .. } = &self.inner.pools {
            install_sqlite_statistics(write).await?;
        }
        Ok(())
    }

    /// A round trip to the database, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        match &self.inner.pools {
            Pools::Sqlite { read, write, .. } => {
                sqlx::query("SELECT 1").execute(read).await?;
                // The writer is what ingest depends on; a wedged writer means not ready.
                sqlx::query("SELECT 1").execute(write).await?;
            }
            Pools::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }

    pub fn pool_stats(&self) -> Vec<PoolStats> {
        fn stats<DB: sqlx::Database>(name: &'static str, pool: &sqlx::Pool<DB>) -> PoolStats {
            PoolStats {
                name,
                size: pool.size(),
                idle: pool.num_idle() as u32,
                max: pool.options().get_max_connections(),
            }
        }
        match &self.inner.pools {
            Pools::Sqlite { read, write, .. } => vec![stats("read", read), stats("write", write)],
            Pools::Postgres(pool) => vec![stats("main", pool)],
        }
    }

    /// Refreshes the query planner's statistics on PostgreSQL, whose search plans depend on them. Autovacuum
    /// analyzes too, but only after a threshold of changed rows and on its own schedule, so a bulk load searched at
    /// once would be planned with the empty tables' statistics; `ANALYZE` samples and does not block writers.
    /// SQLite keeps the fixed statistics installed by [`Store::migrate`] (see `install_sqlite_statistics`).
    /// `measure_facts` is among them: planned as a near-empty table, each page of a measure's read sorted a whole
    /// resource type instead of walking its key (16.5-18.8 s instead of ~1 s for a quarter at 100,000 patients).
    pub async fn refresh_statistics(&self) -> Result<()> {
        if let Pools::Postgres(pool) = &self.inner.pools {
            sqlx::raw_sql(
                "ANALYZE resources, search_token, search_string, search_reference, search_date, search_number, \
                 search_quantity, search_uri, measure_facts",
            )
            .execute(pool)
            .await?;
        }
        Ok(())
    }

    /// How many resource versions were ever written: a cheap measure of growth (the newest history sequence number).
    pub async fn versions_written(&self) -> Result<i64> {
        with_read_pool!(self, pool => {
            let n: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM resource_history").fetch_one(pool).await?;
            Ok(n.unwrap_or(0))
        })
    }

    /// Copies committed WAL pages back into the SQLite database file, on a connection of its own. Run
    /// periodically, this keeps checkpoints (page copies and an fsync of the database file) off the writer:
    /// otherwise the commit that crosses the WAL's size threshold does the checkpoint while every other writer
    /// waits. PASSIVE never blocks readers or the writer. Returns the WAL's size and how much of it is now in the
    /// database file, in pages. PostgreSQL checkpoints by itself.
    pub async fn checkpoint(&self) -> Result<Option<CheckpointProgress>> {
        let Pools::Sqlite { checkpointer, .. } = &self.inner.pools else { return Ok(None) };
        let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(checkpointer).await?;
        Ok(Some(CheckpointProgress { wal_pages: row.try_get(1)?, copied_pages: row.try_get(2)? }))
    }

    /// Closes every connection after in-flight queries finish.
    pub async fn close(&self) {
        match &self.inner.pools {
            Pools::Sqlite { read, write, checkpointer } => {
                read.close().await;
                write.close().await;
                checkpointer.close().await;
            }
            Pools::Postgres(pool) => pool.close().await,
        }
    }

    /// Starts a write transaction. Everything written through it, resources and jobs alike, commits or rolls back as one.
    pub async fn begin(&self) -> Result<StoreTx> {
        StoreTx::begin(self).await
    }

    pub(crate) fn notify_jobs(&self) {
        self.inner.job_notify.notify_waiters();
    }

    /// Resolves when a job is enqueued through this handle (or a clone), or never; pair with a poll interval.
    pub async fn job_enqueued(&self) {
        self.inner.job_notify.notified().await
    }
}

/// Planner statistics for the search tables, in `sqlite_stat1` form ("rows, then rows per distinct prefix"),
/// describing a large database: about ten resource types, fifty parameters each, and an owner prefix
/// (`rid, param`) that names a handful of rows while a value prefix (`param, code`) can name thousands. Without statistics SQLite probes a search's `EXISTS` conditions through the value index and a
/// search costs O(stored resources); with them it uses the owner index (a search over 1,000,000 Observations:
/// ~1 ms). They are fixed rather than measured because `ANALYZE` counts every row while holding the one writer
/// connection (4.2 s at 411,000 stored versions, stalling every write), and the plans only need the proportions,
/// which do not change as the data grows.
const SQLITE_STATISTICS: &[(&str, &str, &str)] = &[
    ("resources", "resources_key", "1000000 100000 1"),
    ("resources", "resources_type_updated", "1000000 100000 1"),
    ("resource_history", "sqlite_autoindex_resource_history_1", "1000000 100000 1 1"),
    ("resource_history", "resource_history_type_time", "1000000 100000 1"),
    ("resource_history", "resource_history_time", "1000000 1"),
    ("search_token", "search_token_owner", "5000000 8 2"),
    ("search_token", "search_token_value", "5000000 20000 1000 1000 1"),
    ("search_string", "search_string_owner", "1000000 15 2"),
    ("search_string", "search_string_value", "1000000 20000 5 1"),
    ("search_reference", "search_reference_owner", "1000000 2 1 1 1"),
    ("search_reference", "search_reference_target", "1000000 20000 10 10 1"),
    ("search_reference", "search_reference_url", "1000000 20000 1000"),
    ("search_date", "search_date_owner", "500000 1 1"),
    ("search_date", "search_date_value", "500000 20000 2 2 1"),
    ("search_number", "search_number_owner", "100000 1 1"),
    ("search_number", "search_number_value", "100000 2000 2 1"),
    ("search_quantity", "search_quantity_owner", "100000 1 1"),
    ("search_quantity", "search_quantity_value", "100000 2000 200 2 1"),
    ("search_uri", "search_uri_owner", "500000 1 1"),
    ("search_uri", "search_uri_value", "500000 20000 1000 1"),
];

/// Installs [`SQLITE_STATISTICS`] for the indexes that exist, replacing any measured ones, and makes every
/// connection load them (`ANALYZE sqlite_schema` creates `sqlite_stat1` if needed and bumps the schema cookie).
async fn install_sqlite_statistics(write: &SqlitePool) -> Result<()> {
    let mut tx = write.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query("ANALYZE sqlite_schema").execute(&mut *tx).await?;
    let existing: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE type = 'index'").fetch_all(&mut *tx).await?;
    for (table, index, stat) in SQLITE_STATISTICS {
        if !existing.iter().any(|e| e == index) {
            continue;
        }
        sqlx::query("DELETE FROM sqlite_stat1 WHERE tbl = $1 AND idx = $2")
            .bind(table)
            .bind(index)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES ($1, $2, $3)")
            .bind(table)
            .bind(index)
            .bind(stat)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("ANALYZE sqlite_schema").execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Page cache of each SQLite reader connection (`PRAGMA cache_size`, negative: KiB). The cache is private to its
/// connection and SQLite keeps it full once a long read has passed through it, so with eight readers a 16 MB cache
/// (the writer's) held some 130 MB of the process for good after one bulk export or measure evaluation, most of it
/// copies of pages the operating system caches anyway. Readers keep the b-tree interior pages of the indexes they
/// use at this size; misses are a copy from the OS page cache.
const READER_CACHE_SIZE: &str = "-2000";
/// Rows a reader's worker thread may run ahead of the task consuming them (sqlx's default is 50): whole-table reads
/// (measures, exports) page 1,000 rows at a time, and a fuller buffer lets the worker finish a page without waiting
/// for the consumer to be scheduled every 50 rows.
const READER_ROW_BUFFER: usize = 1024;

async fn connect_sqlite(options: &StoreOptions) -> Result<(Pools, Option<durability::WalSync>)> {
    // Full durability syncs the WAL after each commit, outside the write lock (`durability`); SQLite itself runs
    // at NORMAL either way.
    let base = SqliteConnectOptions::from_str(&options.url)
        .map_err(|e| StoreError::InvalidUrl(e.to_string()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(options.acquire_timeout)
        .pragma("temp_store", "memory")
        .pragma("cache_size", format!("-{}", u64::from(options.sqlite_writer_cache_mib.max(1)) * 1024))
        // `Store::checkpoint`, run five times a second on a connection of its own, copies committed pages into the
        // database file off the write path; but under continuous writes it never catches up completely, and only a
        // complete checkpoint lets the WAL restart from its beginning. So the writer still checkpoints once the WAL
        // passes 64 MiB, and the WAL stays bounded instead of growing to gigabytes (which slows every read that has to
        // consult it). At 16 MiB the writer checkpointed inside a commit so often under conversion load that it spent
        // 12 % of its time there (a profile), and conversion ran ~18 % slower.
        .pragma("wal_autocheckpoint", "16384");
    let path = base.get_filename();
    let in_memory = path == std::path::Path::new(":memory:");
    let wal_sync =
        (options.sqlite_durability == SqliteDurability::Full && !in_memory).then(|| durability::WalSync::new(path));
    if !in_memory && let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", parent.display())))?;
    }
    let connect = async {
        // The writer is opened first: it creates the file and switches it to WAL before readers attach.
        // A local file cannot drop a connection the way a network can, so the per-acquire ping is pure overhead.
        let write = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(base.clone())
            .await?;
        let read = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(options.max_connections.max(1))
            .min_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(
                base.clone().read_only(true).pragma("cache_size", READER_CACHE_SIZE).row_buffer_size(READER_ROW_BUFFER),
            )
            .await?;
        let checkpointer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(base.pragma("cache_size", READER_CACHE_SIZE))
            .await?;
        Ok::<_, sqlx::Error>(Pools::Sqlite { read, write, checkpointer })
    };
    match tokio::time::timeout(options.connect_timeout, connect).await {
        Ok(result) => Ok((result?, wal_sync)),
        Err(_) => Err(StoreError::Unavailable(format!("no connection within {:?}", options.connect_timeout))),
    }
}

async fn connect_postgres(options: &StoreOptions) -> Result<Pools> {
    let connect_options =
        PgConnectOptions::from_str(&options.url).map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
    let connect = PgPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .min_connections(1)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect_options);
    match tokio::time::timeout(options.connect_timeout, connect).await {
        Ok(result) => Ok(Pools::Postgres(result.map_err(StoreError::from)?)),
        Err(_) => Err(StoreError::Unavailable(format!("no connection within {:?}", options.connect_timeout))),
    }
}

/// Runs `$body` with `$pool` bound to the pool that serves reads, whichever the backend.
macro_rules! with_read_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store.pools() {
            $crate::Pools::Sqlite { read: $pool, .. } => $body,
            $crate::Pools::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` with `$pool` bound to the pool that serves writes, whichever the backend.
macro_rules! with_write_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store.pools() {
            $crate::Pools::Sqlite { write: $pool, .. } => $body,
            $crate::Pools::Postgres($pool) => $body,
        }
    };
}

/// A write outside a transaction (one statement, its own commit): as [`with_write_pool`], then waits until the
/// write is durable like [`StoreTx::commit`] does.
macro_rules! autocommit {
    ($store:expr, $pool:ident => $body:expr) => {{
        let outcome = $crate::with_write_pool!($store, $pool => $body);
        $store.commit_done().await?;
        outcome
    }};
}

pub(crate) use {autocommit, with_read_pool, with_write_pool};

/// Raw statements for tests and tools that set up databases (schemas, fixtures). Not for request paths.
pub mod testing {
    use crate::{Result, Store};

    pub async fn execute(store: &Store, sql: &str) -> Result<u64> {
        with_write_pool!(store, pool => Ok(sqlx::raw_sql(sql).execute(pool).await?.rows_affected()))
    }

    /// Brings a new database only up to schema `version`, as an older release left it, so a test can write data
    /// in that shape and check what [`Store::migrate`] makes of it.
    pub async fn migrate_to(store: &Store, version: i64) -> Result<()> {
        let older = |mut migrator: sqlx::migrate::Migrator| {
            migrator.migrations = migrator.migrations.iter().filter(|m| m.version <= version).cloned().collect();
            migrator
        };
        let outcome = match store.pools() {
            crate::Pools::Sqlite { write, .. } => older(sqlx::migrate!("./migrations/sqlite")).run(write).await,
            crate::Pools::Postgres(pool) => older(sqlx::migrate!("./migrations/postgres")).run(pool).await,
        };
        outcome.map_err(|e| crate::StoreError::Migration(e.to_string()))
    }
}
