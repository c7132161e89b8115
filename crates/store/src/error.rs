//! Store errors: what callers can act on, without leaking SQL text to clients.

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A write named a version that is not the current one (optimistic concurrency).
    #[error("version conflict on {resource_type}/{id}: expected version {expected}, current is {current}")]
    VersionConflict { resource_type: String, id: String, expected: String, current: String },
    /// A create-only write found the resource already there.
    #[error("{resource_type}/{id} already exists")]
    AlreadyExists { resource_type: String, id: String },
    /// The job's lease expired and someone else claimed it; the caller's work must not be committed.
    #[error("the lease on job {job_id} was lost")]
    LeaseLost { job_id: i64 },
    /// The resource does not exist for the caller: absent, or outside the caller's scope (the two are not told
    /// apart, so a denial leaks nothing).
    #[error("{resource_type}/{id} is not known")]
    NotFound { resource_type: String, id: String },
    /// The caller's role may not make this change. The text names roles, types and elements, never values.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The change breaks a rule of the workflow (an invalid referral Task transition). The text names statuses and
    /// elements, never other values.
    #[error("business rule: {0}")]
    BusinessRule(String),
    /// The caller handed the store something it cannot store.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The database cannot be reached right now (connection refused, pool timed out, closed).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database URL is malformed or names an unsupported backend.
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
    /// Schema migration failed.
    #[error("database migration failed: {0}")]
    Migration(String),
    /// Any other database failure; the source is for logs, never for clients.
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    /// True when retrying later may succeed (the database went away, a lock timed out).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
        matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::PoolTimedOut => StoreError::Unavailable("timed out waiting for a connection".into()),
            sqlx::Error::PoolClosed => StoreError::Unavailable("the connection pool is closed".into()),
            sqlx::Error::Io(e) => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Tls(e) => StoreError::Unavailable(format!("tls: {e}")),
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|c| {
                    // SQLite BUSY/LOCKED; PostgreSQL admin shutdown, cannot connect now, lock timeout, serialization failure
                    matches!(c.as_ref(), "5" | "6" | "57P01" | "57P03" | "55P03" | "40001" | "40P01")
                }) =>
            {
                StoreError::Unavailable(db.message().to_string())
            }
            other => StoreError::Database(other),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
