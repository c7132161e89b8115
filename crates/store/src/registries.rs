//! Registry membership with each member's pseudonymized record (the change feed's rows), and Bulk Data export jobs.
//!
//! The store keeps what the gateway's registry worker decided; it knows nothing of registry rules or FHIR. Each
//! registry's rows carry a change sequence, assigned under a per-registry lock so that sequence order is commit
//! order and a reader paging by sequence never skips a change that commits later.

use sqlx::Row;

use crate::time::Timestamp;
use crate::tx::{StoreTx, with_tx_conn};
use crate::{Result, Store, StoredResource, autocommit, with_read_pool};

/// A patient's standing in one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryMember {
    pub registry_id: String,
    pub patient_id: String,
    pub pseudonym: String,
    /// False once the patient left the registry (the row stays, so the feed can report it).
    pub member: bool,
    /// FHIR dates.
    pub period_start: Option<String>,
    pub period_end: Option<String>,
    pub inactive: bool,
    /// The pseudonymized record (a FHIR Bundle as JSON); `None` for a removed member.
    pub record: Option<String>,
    /// Position in the registry's change order; set by the store.
    pub seq: i64,
    pub changed: Timestamp,
}

/// Which rows of a registry to list.
#[derive(Debug, Clone, Default)]
pub struct MemberQuery {
    pub registry_id: String,
    /// Only rows changed at or after this time.
    pub since: Option<Timestamp>,
    /// Only rows after this change sequence (feed paging), in sequence order.
    pub after_seq: Option<i64>,
    /// Only rows after this patient id (keyset paging over the membership), in patient order; ignored when
    /// `after_seq` is set.
    pub after_patient: Option<String>,
    /// Only current members.
    pub members_only: bool,
    pub limit: u32,
}

const MEMBER_COLUMNS: &str =
    "registry_id, patient_id, pseudonym, member, period_start, period_end, inactive, record, seq, changed_us";

fn row_to_member<R: Row>(row: &R) -> Result<RegistryMember>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(RegistryMember {
        registry_id: row.try_get("registry_id")?,
        patient_id: row.try_get("patient_id")?,
        pseudonym: row.try_get("pseudonym")?,
        member: row.try_get("member")?,
        period_start: row.try_get("period_start")?,
        period_end: row.try_get("period_end")?,
        inactive: row.try_get("inactive")?,
        record: row.try_get("record")?,
        seq: row.try_get("seq")?,
        changed: Timestamp(row.try_get("changed_us")?),
    })
}

impl StoreTx {
    /// The patient's row in the registry, if it ever had one.
    pub async fn registry_member(&mut self, registry_id: &str, patient_id: &str) -> Result<Option<RegistryMember>> {
        let sql = format!("SELECT {MEMBER_COLUMNS} FROM registry_members WHERE registry_id = $1 AND patient_id = $2");
        with_tx_conn!(self, conn => {
            match sqlx::query(&sql).bind(registry_id).bind(patient_id).fetch_optional(&mut *conn).await? {
                Some(row) => Ok(Some(row_to_member(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// Records the patient's row with the registry's next change sequence (the caller's `seq` and `changed` are
    /// ignored). Serializes with every other change to the registry until this transaction ends.
    pub async fn put_registry_member(&mut self, member: &RegistryMember) -> Result<i64> {
        self.serialize_on(&format!("registry-members:{}", member.registry_id)).await?;
        let now = Timestamp::now().micros();
        const NEXT: &str = "SELECT COALESCE(MAX(seq), 0) + 1 FROM registry_members WHERE registry_id = $1";
        const UPSERT: &str = "INSERT INTO registry_members (registry_id, patient_id, pseudonym, member, period_start, \
             period_end, inactive, record, seq, changed_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (registry_id, patient_id) DO UPDATE SET pseudonym = excluded.pseudonym, \
             member = excluded.member, period_start = excluded.period_start, period_end = excluded.period_end, \
             inactive = excluded.inactive, record = excluded.record, seq = excluded.seq, \
             changed_us = excluded.changed_us";
        with_tx_conn!(self, conn => {
            let seq: i64 = sqlx::query_scalar(NEXT).bind(&member.registry_id).fetch_one(&mut *conn).await?;
            sqlx::query(UPSERT)
                .bind(&member.registry_id)
                .bind(&member.patient_id)
                .bind(&member.pseudonym)
                .bind(member.member)
                .bind(&member.period_start)
                .bind(&member.period_end)
                .bind(member.inactive)
                .bind(&member.record)
                .bind(seq)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            Ok(seq)
        })
    }

    /// Records the fingerprint of the key a registry's rows are computed with; `true` when it differs from the one
    /// recorded (or none was), i.e. when every patient must be evaluated again. Serialized per registry.
    pub async fn set_registry_fingerprint(&mut self, registry_id: &str, fingerprint: &str) -> Result<bool> {
        self.serialize_on(&format!("registry-state:{registry_id}")).await?;
        const READ: &str = "SELECT key_fingerprint FROM registry_state WHERE registry_id = $1";
        const UPSERT: &str = "INSERT INTO registry_state (registry_id, key_fingerprint, evaluated_us) \
             VALUES ($1, $2, $3) ON CONFLICT (registry_id) DO UPDATE SET \
             key_fingerprint = excluded.key_fingerprint, evaluated_us = excluded.evaluated_us";
        with_tx_conn!(self, conn => {
            let current: Option<String> =
                sqlx::query_scalar(READ).bind(registry_id).fetch_optional(&mut *conn).await?;
            if current.as_deref() == Some(fingerprint) {
                return Ok(false);
            }
            sqlx::query(UPSERT)
                .bind(registry_id)
                .bind(fingerprint)
                .bind(Timestamp::now().micros())
                .execute(&mut *conn)
                .await?;
            Ok(true)
        })
    }

    /// Takes the registry's next evaluation of every patient when the last one was queued before `due_before`:
    /// `true` for exactly one of any number of concurrent callers (replicas).
    pub async fn take_registry_evaluation(&mut self, registry_id: &str, due_before: Timestamp) -> Result<bool> {
        const SQL: &str = "UPDATE registry_state SET evaluated_us = $3 WHERE registry_id = $1 AND evaluated_us < $2";
        with_tx_conn!(self, conn => {
            let done = sqlx::query(SQL)
                .bind(registry_id)
                .bind(due_before.micros())
                .bind(Timestamp::now().micros())
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Whether a job with exactly this queue and payload is waiting (not yet claimed): queuing another would only
    /// repeat it.
    pub async fn has_waiting_job(&mut self, queue: &str, payload: &str) -> Result<bool> {
        const SQL: &str = "SELECT COUNT(*) FROM jobs WHERE queue = $1 AND payload = $2 AND state = 'ready'";
        self.flush_jobs().await?;
        with_tx_conn!(self, conn => {
            let n: i64 = sqlx::query_scalar(SQL).bind(queue).bind(payload).fetch_one(&mut *conn).await?;
            Ok(n > 0)
        })
    }

    /// Records a new export (status `queued`) after checking that the client has fewer than `limit` exports queued
    /// or running; `false` (and nothing written) when it has not. Check and insert are atomic per client.
    pub async fn insert_export(&mut self, export: &NewExport, limit: u32) -> Result<bool> {
        self.serialize_on(&format!("bulk-export:{}", export.client_id)).await?;
        const ACTIVE: &str =
            "SELECT COUNT(*) FROM bulk_exports WHERE client_id = $1 AND status IN ('queued', 'running')";
        const INSERT: &str = "INSERT INTO bulk_exports (id, client_id, status, request, params, transaction_us, \
             created_us) VALUES ($1, $2, 'queued', $3, $4, $5, $6)";
        with_tx_conn!(self, conn => {
            let active: i64 = sqlx::query_scalar(ACTIVE).bind(&export.client_id).fetch_one(&mut *conn).await?;
            if active >= i64::from(limit) {
                return Ok(false);
            }
            sqlx::query(INSERT)
                .bind(&export.id)
                .bind(&export.client_id)
                .bind(&export.request)
                .bind(&export.params)
                .bind(export.transaction_time.micros())
                .bind(Timestamp::now().micros())
                .execute(&mut *conn)
                .await?;
            Ok(true)
        })
    }
}

/// An export being kicked off.
#[derive(Debug, Clone)]
pub struct NewExport {
    /// Random, unguessable: it names the status URL and the files.
    pub id: String,
    /// The API client that asked (`""` for the gateway itself); only it may poll, download or cancel.
    pub client_id: String,
    /// The kick-off request URL, for the manifest.
    pub request: String,
    /// What to export, opaque to the store (JSON by convention).
    pub params: String,
    pub transaction_time: Timestamp,
}

/// Where an export stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl ExportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportStatus::Queued => "queued",
            ExportStatus::Running => "running",
            ExportStatus::Completed => "completed",
            ExportStatus::Failed => "failed",
            ExportStatus::Cancelled => "cancelled",
        }
    }

    fn parse(text: &str) -> Option<ExportStatus> {
        [Self::Queued, Self::Running, Self::Completed, Self::Failed, Self::Cancelled]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A recorded export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub id: String,
    pub client_id: String,
    pub status: ExportStatus,
    pub request: String,
    pub params: String,
    pub transaction_time: Timestamp,
    pub created: Timestamp,
    /// When a completed export's files go away.
    pub expires: Option<Timestamp>,
    pub progress: Option<String>,
    pub manifest: Option<String>,
    pub error: Option<String>,
}

const EXPORT_COLUMNS: &str =
    "id, client_id, status, request, params, transaction_us, created_us, expires_us, progress, manifest, error";

fn row_to_export<R: Row>(row: &R) -> Result<Export>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let status: String = row.try_get("status")?;
    Ok(Export {
        id: row.try_get("id")?,
        client_id: row.try_get("client_id")?,
        status: ExportStatus::parse(&status)
            .ok_or_else(|| crate::StoreError::Invalid(format!("unknown export status {status:?}")))?,
        request: row.try_get("request")?,
        params: row.try_get("params")?,
        transaction_time: Timestamp(row.try_get("transaction_us")?),
        created: Timestamp(row.try_get("created_us")?),
        expires: row.try_get::<Option<i64>, _>("expires_us")?.map(Timestamp),
        progress: row.try_get("progress")?,
        manifest: row.try_get("manifest")?,
        error: row.try_get("error")?,
    })
}

impl Store {
    /// Registry rows in sequence order (with `after_seq`) or patient order, one page at a time.
    pub async fn registry_members(&self, query: &MemberQuery) -> Result<Vec<RegistryMember>> {
        let mut sql = format!("SELECT {MEMBER_COLUMNS} FROM registry_members WHERE registry_id = $1");
        if query.members_only {
            sql += " AND member";
        }
        sql += " AND changed_us >= $2";
        let by_seq = query.after_seq.is_some();
        if by_seq {
            sql += " AND seq > $3 ORDER BY seq LIMIT $4";
        } else {
            sql += " AND patient_id > $3 ORDER BY patient_id LIMIT $4";
        }
        let since = query.since.map_or(i64::MIN, Timestamp::micros);
        let limit = i64::from(query.limit.max(1));
        with_read_pool!(self, pool => {
            let q = sqlx::query(&sql).bind(&query.registry_id).bind(since);
            let rows = match query.after_seq {
                Some(after) => q.bind(after).bind(limit).fetch_all(pool).await?,
                None => q.bind(query.after_patient.clone().unwrap_or_default()).bind(limit).fetch_all(pool).await?,
            };
            rows.iter().map(row_to_member).collect()
        })
    }

    /// How many current members a registry has changed at or after `since`.
    pub async fn registry_member_count(&self, registry_id: &str, since: Option<Timestamp>) -> Result<i64> {
        const SQL: &str =
            "SELECT COUNT(*) FROM registry_members WHERE registry_id = $1 AND member AND changed_us >= $2";
        with_read_pool!(self, pool => {
            Ok(sqlx::query_scalar(SQL)
                .bind(registry_id)
                .bind(since.map_or(i64::MIN, Timestamp::micros))
                .fetch_one(pool)
                .await?)
        })
    }

    /// Live resources of one type in id order, after `after_id`, updated at or after `since`: a full scan in pages
    /// (bulk export), each page one indexed range read.
    pub async fn resources_page(
        &self,
        resource_type: &str,
        since: Option<Timestamp>,
        after_id: &str,
        limit: u32,
    ) -> Result<Vec<StoredResource>> {
        const SQL: &str = "SELECT resource_type, id, version_id, last_updated_us, deleted, content FROM resources \
             WHERE resource_type = $1 AND id > $2 AND NOT deleted AND last_updated_us >= $3 ORDER BY id LIMIT $4";
        with_read_pool!(self, pool => {
            let rows = sqlx::query(SQL)
                .bind(resource_type)
                .bind(after_id)
                .bind(since.map_or(i64::MIN, Timestamp::micros))
                .bind(i64::from(limit.max(1)))
                .fetch_all(pool)
                .await?;
            rows.iter().map(crate::resources::row_to_resource).collect()
        })
    }

    /// How many live resources of one type were updated at or after `since`.
    pub async fn resource_count(&self, resource_type: &str, since: Option<Timestamp>) -> Result<i64> {
        const SQL: &str =
            "SELECT COUNT(*) FROM resources WHERE resource_type = $1 AND NOT deleted AND last_updated_us >= $2";
        with_read_pool!(self, pool => {
            Ok(sqlx::query_scalar(SQL)
                .bind(resource_type)
                .bind(since.map_or(i64::MIN, Timestamp::micros))
                .fetch_one(pool)
                .await?)
        })
    }

    /// One export.
    pub async fn export(&self, id: &str) -> Result<Option<Export>> {
        let sql = format!("SELECT {EXPORT_COLUMNS} FROM bulk_exports WHERE id = $1");
        with_read_pool!(self, pool => {
            match sqlx::query(&sql).bind(id).fetch_optional(pool).await? {
                Some(row) => Ok(Some(row_to_export(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// Moves an export to `status` unless it was cancelled (or already finished): `false` when it was not moved.
    /// A running export calls this with its progress; finishing sets the manifest or the error and the expiry.
    pub async fn update_export(
        &self,
        id: &str,
        status: ExportStatus,
        progress: Option<&str>,
        manifest: Option<&str>,
        error: Option<&str>,
        expires: Option<Timestamp>,
    ) -> Result<bool> {
        const SQL: &str = "UPDATE bulk_exports SET status = $2, progress = COALESCE($3, progress), \
             manifest = COALESCE($4, manifest), error = COALESCE($5, error), expires_us = COALESCE($6, expires_us) \
             WHERE id = $1 AND status IN ('queued', 'running')";
        autocommit!(self, pool => {
            let done = sqlx::query(SQL)
                .bind(id)
                .bind(status.as_str())
                .bind(progress)
                .bind(manifest)
                .bind(error)
                .bind(expires.map(Timestamp::micros))
                .execute(pool)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Marks an export cancelled (whatever its state) and sets when its row goes; `false` if there is no such
    /// export.
    pub async fn cancel_export(&self, id: &str, forget_at: Timestamp) -> Result<bool> {
        const SQL: &str = "UPDATE bulk_exports SET status = 'cancelled', expires_us = $2 WHERE id = $1";
        autocommit!(self, pool => {
            Ok(sqlx::query(SQL).bind(id).bind(forget_at.micros()).execute(pool).await?.rows_affected() == 1)
        })
    }

    /// Ids of exports whose expiry has passed.
    pub async fn expired_exports(&self, now: Timestamp) -> Result<Vec<String>> {
        const SQL: &str = "SELECT id FROM bulk_exports WHERE expires_us IS NOT NULL AND expires_us <= $1";
        with_read_pool!(self, pool => {
            Ok(sqlx::query_scalar(SQL).bind(now.micros()).fetch_all(pool).await?)
        })
    }

    /// Forgets an export.
    pub async fn delete_export(&self, id: &str) -> Result<()> {
        autocommit!(self, pool => {
            sqlx::query("DELETE FROM bulk_exports WHERE id = $1").bind(id).execute(pool).await?;
            Ok(())
        })
    }
}
