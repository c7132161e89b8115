//! A write transaction: resources, history and queued jobs that commit or roll back together.

use crate::{Pools, Result, Store};

pub(crate) enum TxInner {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// One database transaction. Dropping it without [`StoreTx::commit`] rolls everything back.
pub struct StoreTx {
    pub(crate) store: Store,
    pub(crate) inner: TxInner,
    pub(crate) enqueued_jobs: bool,
    /// Search index rows waiting to be written in bulk, with their resource's `rid` and their parameter's key (see
    /// `StoreTx::insert_index`).
    pub(crate) pending_index: Vec<(i64, i64, crate::IndexRow)>,
    /// The `rid` of each resource this transaction wrote, as its INSERT or UPDATE returned it: index rows need it,
    /// and asking the database again would cost a statement per flush.
    pub(crate) rids: std::collections::HashMap<(String, String), i64>,
    /// Jobs waiting to be inserted in bulk (see `StoreTx::enqueue`).
    pub(crate) pending_jobs: Vec<crate::NewJob>,
}

impl StoreTx {
    pub(crate) async fn begin(store: &Store) -> Result<StoreTx> {
        let inner = match store.pools() {
            // IMMEDIATE takes the write lock up front, so a read-then-write transaction never fails to upgrade.
            Pools::Sqlite { write, .. } => TxInner::Sqlite(write.begin_with("BEGIN IMMEDIATE").await?),
            Pools::Postgres(pool) => TxInner::Postgres(pool.begin().await?),
        };
        Ok(StoreTx {
            store: store.clone(),
            inner,
            enqueued_jobs: false,
            pending_index: Vec::new(),
            rids: std::collections::HashMap::new(),
            pending_jobs: Vec::new(),
        })
    }

    /// Makes every write durable (per the backend's durability settings) and wakes local workers for new jobs.
    pub async fn commit(self) -> Result<()> {
        self.commit_visible().await?.durable().await
    }

    /// Commits, releasing the write lock, and returns before the commit is durable: the caller acknowledges it only
    /// after [`CommitTicket::durable`], and meanwhile can start the next transaction, whose writes overlap this
    /// one's fsync (see `durability`).
    pub async fn commit_visible(mut self) -> Result<crate::CommitTicket> {
        self.flush_index().await?;
        self.flush_jobs().await?;
        match self.inner {
            TxInner::Sqlite(tx) => tx.commit().await?,
            TxInner::Postgres(tx) => tx.commit().await?,
        }
        let ticket = self.store.committed();
        if self.enqueued_jobs {
            self.store.notify_jobs();
        }
        Ok(ticket)
    }

    pub async fn rollback(self) -> Result<()> {
        match self.inner {
            TxInner::Sqlite(tx) => tx.rollback().await?,
            TxInner::Postgres(tx) => tx.rollback().await?,
        }
        Ok(())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serializes this transaction with every other one that names the same key, until commit or rollback.
    /// Check-then-write work (conditional creates) uses it so two replicas cannot both find nothing and both
    /// create. PostgreSQL takes a transaction-scoped advisory lock; SQLite's single writer is already exclusive.
    pub async fn serialize_on(&mut self, key: &str) -> Result<()> {
        if let TxInner::Postgres(tx) = &mut self.inner {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(fnv1a(key)).execute(&mut **tx).await?;
        }
        Ok(())
    }
}

/// Bind placeholder number `n` on `backend`. SQLite gets anonymous `?`: binding a numbered parameter makes SQLite
/// scan its parameter list by name, which is quadratic over the thousands of parameters of a bulk insert;
/// PostgreSQL needs `$n`.
pub(crate) fn bind_mark(backend: crate::BackendKind, n: usize) -> String {
    match backend {
        crate::BackendKind::Sqlite => "?".to_owned(),
        crate::BackendKind::Postgres => format!("${n}"),
    }
}

/// A row of `width` bind placeholders for multi-row INSERTs, numbered from `first` (see [`bind_mark`]). Built in
/// one string: a bulk insert asks for one per row.
pub(crate) fn placeholders(tx: &StoreTx, first: usize, width: usize) -> String {
    use std::fmt::Write as _;
    let mut row = String::with_capacity(2 + width * 5);
    row.push('(');
    for n in first..first + width {
        if n > first {
            row.push_str(", ");
        }
        match tx.inner {
            TxInner::Sqlite(_) => row.push('?'),
            TxInner::Postgres(_) => {
                let _ = write!(row, "${n}");
            }
        }
    }
    row.push(')');
    row
}

/// Bind placeholder number `n` in this transaction (see [`bind_mark`]).
pub(crate) fn placeholder(tx: &StoreTx, n: usize) -> String {
    bind_mark(tx.store.backend(), n)
}

/// A stable 64-bit hash (FNV-1a): every replica must map a key to the same lock.
fn fnv1a(key: &str) -> i64 {
    fnv1a_bytes(key.bytes()) as i64
}

/// 64-bit FNV-1a of a byte sequence: stable across processes and releases (lock keys, stored parameter keys).
pub(crate) fn fnv1a_bytes(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Runs `$body` with `$conn` bound to the transaction's connection, whichever the backend.
macro_rules! with_tx_conn {
    ($tx:expr, $conn:ident => $body:expr) => {
        match &mut $tx.inner {
            $crate::tx::TxInner::Sqlite(t) => {
                let $conn: &mut sqlx::SqliteConnection = &mut *t;
                $body
            }
            $crate::tx::TxInner::Postgres(t) => {
                let $conn: &mut sqlx::PgConnection = &mut *t;
                $body
            }
        }
    };
}

pub(crate) use with_tx_conn;
