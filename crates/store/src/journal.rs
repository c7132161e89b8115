//! The HL7 v2 message journal: raw messages with their header facts, stored before they are acknowledged.

use std::collections::HashMap;

use sqlx::Row;

use crate::listing::Listing;
use crate::search::{Bind, bind_all};

use crate::jobs::NewJob;
use crate::time::Timestamp;
use crate::tx::{StoreTx, with_tx_conn};
use crate::{Result, Store, StoreError, with_read_pool, with_write_pool};

/// A message to journal. Header fields are the decoded MSH values; `raw` is the message exactly as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    /// `MSH-9.1^MSH-9.2`, e.g. `ADT^A01`.
    pub message_type: String,
    pub control_id: String,
    pub version: String,
    pub raw: Vec<u8>,
}

/// What journaling did with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalOutcome {
    /// Newly stored under this journal id.
    Stored { id: i64 },
    /// Already journaled earlier (same sending application, facility and control id): not stored again.
    Duplicate,
}

/// Where a journaled message stands in processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JournalStatus {
    /// Stored and acknowledged; conversion is queued.
    Received,
    Converted,
    Failed,
}

impl JournalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JournalStatus::Received => "received",
            JournalStatus::Converted => "converted",
            JournalStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<JournalStatus> {
        match s {
            "received" => Some(JournalStatus::Received),
            "converted" => Some(JournalStatus::Converted),
            "failed" => Some(JournalStatus::Failed),
            _ => None,
        }
    }
}

/// A journal entry without its body: safe to list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JournalEntry {
    pub id: i64,
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    pub message_type: String,
    pub control_id: String,
    pub version: String,
    #[serde(serialize_with = "serialize_ts")]
    pub received: Timestamp,
    pub status: String,
    /// Why conversion failed, as a FHIR OperationOutcome (JSON), when it did.
    pub status_detail: Option<String>,
    #[serde(serialize_with = "serialize_ts")]
    pub updated: Timestamp,
    pub size_bytes: i64,
}

fn serialize_ts<S: serde::Serializer>(ts: &Timestamp, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&crate::format_instant(*ts))
}

/// Which journal entries to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct JournalQuery {
    pub status: Option<JournalStatus>,
    pub message_type: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// Paging cursor: only entries with a smaller id.
    pub before_id: Option<i64>,
    pub limit: u32,
}

/// Rows per multi-row INSERT: 10 parameters each stays far below both backends' parameter limits.
const CHUNK: usize = 100;

const ENTRY_COLUMNS: &str = "id, sending_application, sending_facility, receiving_application, receiving_facility, \
     message_type, control_id, version, received_us, status, status_detail, updated_us";

impl StoreTx {
    /// Journals messages and queues one job on `job_queue` for the newly stored ones (payload
    /// `{"journal_ids":[...]}`: one job per commit keeps the ingest hot path to one extra row). Resends (same sender
    /// application/facility + control id, in this batch or before) are reported as duplicates and neither stored
    /// nor queued again.
    pub async fn journal_messages(
        &mut self,
        messages: &[NewMessage],
        job_queue: &str,
        max_attempts: i32,
    ) -> Result<Vec<JournalOutcome>> {
        let now = Timestamp::now();
        let mut stored: HashMap<(String, String, String), i64> = HashMap::new();
        for chunk in messages.chunks(CHUNK) {
            let mut sql = String::from(
                "INSERT INTO message_journal (sending_application, sending_facility, receiving_application, \
                 receiving_facility, message_type, control_id, version, received_us, updated_us, raw) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 10;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7,
                    b + 8,
                    b + 9,
                    b + 10
                ));
            }
            sql.push_str(
                " ON CONFLICT (sending_application, sending_facility, control_id) DO NOTHING \
                 RETURNING id, sending_application, sending_facility, control_id",
            );
            let rows: Vec<(i64, String, String, String)> = with_tx_conn!(self, conn => {
                let mut q = sqlx::query(&sql);
                for m in chunk {
                    q = q
                        .bind(&m.sending_application)
                        .bind(&m.sending_facility)
                        .bind(&m.receiving_application)
                        .bind(&m.receiving_facility)
                        .bind(&m.message_type)
                        .bind(&m.control_id)
                        .bind(&m.version)
                        .bind(now.micros())
                        .bind(now.micros())
                        .bind(m.raw.as_slice());
                }
                q.fetch_all(&mut *conn)
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
                    .collect::<Result<Vec<_>>>()?
            });
            stored.extend(rows.into_iter().map(|(id, app, facility, control)| ((app, facility, control), id)));
        }
        let mut outcomes = Vec::with_capacity(messages.len());
        let mut ids = Vec::new();
        for m in messages {
            let key = (m.sending_application.clone(), m.sending_facility.clone(), m.control_id.clone());
            // The first occurrence in the batch takes the stored id; later copies are duplicates.
            match stored.remove(&key) {
                Some(id) => {
                    outcomes.push(JournalOutcome::Stored { id });
                    ids.push(id);
                }
                None => outcomes.push(JournalOutcome::Duplicate),
            }
        }
        if !ids.is_empty() {
            self.enqueue(&journal_job(job_queue, &ids, max_attempts)).await?;
        }
        Ok(outcomes)
    }

    /// Records the outcome of processing a journal entry (in the same transaction as the work it describes).
    pub async fn set_journal_status(&mut self, id: i64, status: JournalStatus, detail: Option<&str>) -> Result<()> {
        let updated = with_tx_conn!(self, conn => {
            sqlx::query("UPDATE message_journal SET status = $2, status_detail = $3, updated_us = $4 WHERE id = $1")
                .bind(id)
                .bind(status.as_str())
                .bind(detail)
                .bind(Timestamp::now().micros())
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        if updated == 1 { Ok(()) } else { Err(StoreError::Invalid(format!("no journal entry {id}"))) }
    }

    /// Sets many entries to one `status` and `detail`, with one statement per chunk (a batch of messages
    /// converted with the same warnings, or none).
    pub async fn set_journal_statuses(
        &mut self,
        ids: &[i64],
        status: JournalStatus,
        detail: Option<&str>,
    ) -> Result<()> {
        const IDS_PER_UPDATE: usize = 200;
        let now = Timestamp::now().micros();
        for chunk in ids.chunks(IDS_PER_UPDATE) {
            let sql = format!(
                "UPDATE message_journal SET (status, status_detail, updated_us) = {} WHERE id IN {}",
                crate::tx::placeholders(self, 1, 3),
                crate::tx::placeholders(self, 4, chunk.len())
            );
            let updated = with_tx_conn!(self, conn => {
                let mut query = sqlx::query(&sql).bind(status.as_str()).bind(detail).bind(now);
                for id in chunk {
                    query = query.bind(*id);
                }
                query.execute(&mut *conn).await?.rows_affected()
            });
            if updated != chunk.len() as u64 {
                return Err(StoreError::Invalid(format!(
                    "{} of {} journal entries to update do not exist",
                    chunk.len() as u64 - updated,
                    chunk.len()
                )));
            }
        }
        Ok(())
    }

    /// The raw bytes of many journal entries with one statement per chunk, for a worker converting them together;
    /// entries that no longer exist are absent from the map.
    pub async fn journal_raw_many(&mut self, ids: &[i64]) -> Result<std::collections::HashMap<i64, Vec<u8>>> {
        const IDS_PER_SELECT: usize = 200;
        let mut found = std::collections::HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_SELECT) {
            let sql = format!(
                "SELECT id, raw FROM message_journal WHERE id IN {}",
                crate::tx::placeholders(self, 1, chunk.len())
            );
            with_tx_conn!(self, conn => {
                let mut query = sqlx::query(&sql);
                for id in chunk {
                    query = query.bind(*id);
                }
                for row in query.fetch_all(&mut *conn).await? {
                    found.insert(row.try_get::<i64, _>(0)?, row.try_get::<Vec<u8>, _>(1)?);
                }
            });
        }
        Ok(found)
    }
}

/// The job that processes these journal entries.
fn journal_job(queue: &str, ids: &[i64], max_attempts: i32) -> NewJob {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    NewJob::new(queue, format!("{{\"journal_ids\":[{}]}}", list.join(","))).max_attempts(max_attempts)
}

/// The journal ids a job made by this module names.
pub fn journal_ids_of(payload: &str) -> Option<Vec<i64>> {
    #[derive(serde::Deserialize)]
    struct Payload {
        journal_ids: Vec<i64>,
    }
    serde_json::from_str::<Payload>(payload).ok().map(|p| p.journal_ids)
}

fn row_to_entry<R: Row>(row: &R) -> Result<JournalEntry>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(JournalEntry {
        id: row.try_get("id")?,
        sending_application: row.try_get("sending_application")?,
        sending_facility: row.try_get("sending_facility")?,
        receiving_application: row.try_get("receiving_application")?,
        receiving_facility: row.try_get("receiving_facility")?,
        message_type: row.try_get("message_type")?,
        control_id: row.try_get("control_id")?,
        version: row.try_get("version")?,
        received: Timestamp(row.try_get("received_us")?),
        status: row.try_get("status")?,
        status_detail: row.try_get("status_detail")?,
        updated: Timestamp(row.try_get("updated_us")?),
        size_bytes: row.try_get("size_bytes")?,
    })
}

impl Store {
    /// Journals messages in one transaction of their own (see [`StoreTx::journal_messages`]).
    pub async fn journal_messages(
        &self,
        messages: &[NewMessage],
        job_queue: &str,
        max_attempts: i32,
    ) -> Result<Vec<JournalOutcome>> {
        let mut tx = self.begin().await?;
        let outcomes = tx.journal_messages(messages, job_queue, max_attempts).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Journal entries (never bodies), newest first.
    pub async fn journal_list(&self, query: &JournalQuery) -> Result<Vec<JournalEntry>> {
        let mut listing = Listing::new(format!(
            "SELECT {ENTRY_COLUMNS}, CAST(LENGTH(raw) AS BIGINT) AS size_bytes FROM message_journal WHERE 1 = 1"
        ));
        if let Some(status) = query.status {
            listing.text("status =", status.as_str());
        }
        if let Some(t) = &query.message_type {
            listing.text("message_type =", t.as_str());
        }
        for (left, value) in [("received_us >=", query.since), ("received_us <=", query.until)] {
            if let Some(v) = value {
                listing.number(left, v.micros());
            }
        }
        if let Some(before) = query.before_id {
            listing.number("id <", before);
        }
        let sql = listing.newest_first("id", i64::from(query.limit.clamp(1, 10_000)));
        with_read_pool!(self, pool => {
            let rows = bind_all!(sqlx::query(&sql), &listing.binds).fetch_all(pool).await?;
            rows.iter().map(row_to_entry).collect()
        })
    }

    pub async fn journal_entry(&self, id: i64) -> Result<Option<JournalEntry>> {
        let sql = format!(
            "SELECT {ENTRY_COLUMNS}, CAST(LENGTH(raw) AS BIGINT) AS size_bytes FROM message_journal WHERE id = $1"
        );
        with_read_pool!(self, pool => {
            match sqlx::query(&sql).bind(id).fetch_optional(pool).await? {
                Some(row) => Ok(Some(row_to_entry(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// Finds the entry of one message by its idempotency key.
    pub async fn journal_find(
        &self,
        sending_application: &str,
        sending_facility: &str,
        control_id: &str,
    ) -> Result<Option<JournalEntry>> {
        let sql = format!(
            "SELECT {ENTRY_COLUMNS}, CAST(LENGTH(raw) AS BIGINT) AS size_bytes FROM message_journal \
             WHERE sending_application = $1 AND sending_facility = $2 AND control_id = $3"
        );
        with_read_pool!(self, pool => {
            match sqlx::query(&sql).bind(sending_application).bind(sending_facility).bind(control_id).fetch_optional(pool).await? {
                Some(row) => Ok(Some(row_to_entry(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// The message exactly as received. Patient data: for operators' tools, never for lists or logs.
    pub async fn journal_body(&self, id: i64) -> Result<Option<Vec<u8>>> {
        with_read_pool!(self, pool => {
            match sqlx::query("SELECT raw FROM message_journal WHERE id = $1").bind(id).fetch_optional(pool).await? {
                Some(row) => Ok(Some(row.try_get::<Vec<u8>, _>(0)?)),
                None => Ok(None),
            }
        })
    }

    /// Entries per status, for metrics.
    pub async fn journal_counts(&self) -> Result<Vec<(String, i64)>> {
        with_read_pool!(self, pool => {
            sqlx::query("SELECT status, COUNT(*) FROM message_journal GROUP BY status ORDER BY status")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })
    }

    /// Queues entries for processing again (e.g. failed ones after a mapping fix) and marks them received.
    /// Returns how many were queued.
    pub async fn journal_reprocess(&self, ids: &[i64], job_queue: &str, max_attempts: i32) -> Result<u64> {
        let mut tx = self.begin().await?;
        let mut queued = Vec::new();
        for id in ids {
            let updated = with_tx_conn!(tx, conn => {
                sqlx::query("UPDATE message_journal SET status = 'received', status_detail = NULL, updated_us = $2 WHERE id = $1")
                    .bind(*id)
                    .bind(Timestamp::now().micros())
                    .execute(&mut *conn)
                    .await?
                    .rows_affected()
            });
            if updated == 1 {
                queued.push(*id);
            }
        }
        let jobs: Vec<NewJob> = queued.chunks(100).map(|chunk| journal_job(job_queue, chunk, max_attempts)).collect();
        tx.enqueue_many(&jobs).await?;
        tx.commit().await?;
        Ok(queued.len() as u64)
    }

    /// Ids of entries in a status, oldest first (for bulk reprocessing).
    pub async fn journal_ids_with_status(&self, status: JournalStatus, limit: u32) -> Result<Vec<i64>> {
        with_write_pool!(self, pool => {
            sqlx::query("SELECT id FROM message_journal WHERE status = $1 ORDER BY id LIMIT $2")
                .bind(status.as_str())
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok(r.try_get(0)?))
                .collect()
        })
    }
}
