//! The outbound message log: every HL7 v2 message the gateway sends, with its attempts, ACK and final state.
//!
//! Rows are written in the transactions that queue, complete and fail the message's delivery job, so the log never
//! says "acknowledged" for a job that was not completed, nor loses a message that was queued. No bodies are kept.

use sqlx::Row;

use crate::listing::Listing;
use crate::search::{Bind, bind_all};

use crate::time::Timestamp;
use crate::tx::{StoreTx, with_tx_conn};
use crate::{Result, Store, autocommit, with_read_pool};

/// Where an outbound message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboundState {
    /// Waiting for its first attempt.
    Queued,
    /// An attempt is under way: sent (or being sent), no ACK yet.
    Sent,
    /// Answered AA or CA.
    Acknowledged,
    /// The last attempt failed (negative ACK, timeout, refused connection); another is scheduled.
    Failed,
    /// Dead-lettered after its last attempt.
    Dead,
}

impl OutboundState {
    pub const ALL: [OutboundState; 5] = [
        OutboundState::Queued,
        OutboundState::Sent,
        OutboundState::Acknowledged,
        OutboundState::Failed,
        OutboundState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutboundState::Queued => "queued",
            OutboundState::Sent => "sent",
            OutboundState::Acknowledged => "acknowledged",
            OutboundState::Failed => "failed",
            OutboundState::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<OutboundState> {
        OutboundState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// What the receiver answered: MSA-1, the ACK's own MSH-10, the ERR error code (table 0357 or the receiver's) and
/// MSA-3 text. The text is the receiver's own words and is kept for `show`, never logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundAck {
    pub code: String,
    pub control_id: Option<String>,
    pub error_code: Option<String>,
    pub text: Option<String>,
}

/// One logged outbound message (no body).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutboundRecord {
    pub id: i64,
    /// The delivery job (while it exists: a dead one can be requeued by this id).
    pub job_id: i64,
    pub destination: String,
    pub message_type: String,
    pub control_id: String,
    pub state: String,
    pub attempts: i32,
    #[serde(serialize_with = "serialize_ts")]
    pub queued: Timestamp,
    #[serde(serialize_with = "serialize_opt_ts")]
    pub sent: Option<Timestamp>,
    #[serde(serialize_with = "serialize_opt_ts")]
    pub acknowledged: Option<Timestamp>,
    #[serde(serialize_with = "serialize_ts")]
    pub updated: Timestamp,
    pub ack_code: Option<String>,
    pub ack_control_id: Option<String>,
    pub ack_error_code: Option<String>,
    /// MSA-3 of the last ACK; `None` in lists (see [`Store::outbound_list`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_text: Option<String>,
    pub last_error: Option<String>,
}

fn serialize_ts<S: serde::Serializer>(ts: &Timestamp, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&crate::format_instant(*ts))
}

fn serialize_opt_ts<S: serde::Serializer>(ts: &Option<Timestamp>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match ts {
        Some(ts) => s.serialize_str(&crate::format_instant(*ts)),
        None => s.serialize_none(),
    }
}

/// Which logged messages to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct OutboundQuery {
    pub state: Option<OutboundState>,
    pub destination: Option<String>,
    /// Paging cursor: only rows with a smaller id.
    pub before_id: Option<i64>,
    pub limit: u32,
}

const COLUMNS: &str = "id, job_id, destination, message_type, control_id, state, attempts, queued_us, sent_us, \
     acknowledged_us, updated_us, ack_code, ack_control_id, ack_error_code, last_error";

/// Longest receiver text or error kept (characters).
const TEXT_LIMIT: usize = 500;

fn clip(text: &str) -> String {
    text.chars().take(TEXT_LIMIT).collect()
}

impl StoreTx {
    /// Logs a message being queued as job `job_id` (in the transaction that queues the job); returns its log id.
    pub async fn log_outbound_queued(
        &mut self,
        job_id: i64,
        destination: &str,
        message_type: &str,
        control_id: &str,
    ) -> Result<i64> {
        let now = Timestamp::now().micros();
        let id = with_tx_conn!(self, conn => {
            sqlx::query(
                "INSERT INTO outbound_messages (job_id, destination, message_type, control_id, state, attempts, \
                 queued_us, updated_us) VALUES ($5, $1, $2, $3, 'queued', 0, $4, $4) RETURNING id",
            )
            .bind(destination)
            .bind(message_type)
            .bind(control_id)
            .bind(now)
            .bind(job_id)
            .fetch_one(&mut *conn)
            .await?
            .try_get::<i64, _>(0)?
        });
        Ok(id)
    }

    /// Records the positive ACK of attempt `attempts` of job `job_id` (in the transaction that completes it).
    pub async fn log_outbound_acknowledged(&mut self, job_id: i64, attempts: i32, ack: &OutboundAck) -> Result<()> {
        let now = Timestamp::now().micros();
        with_tx_conn!(self, conn => {
            sqlx::query(
                "UPDATE outbound_messages SET state = 'acknowledged', attempts = $2, acknowledged_us = $3, \
                 updated_us = $3, sent_us = COALESCE(sent_us, $3), ack_code = $4, ack_control_id = $5, \
                 ack_error_code = $6, ack_text = $7 WHERE job_id = $1",
            )
            .bind(job_id)
            .bind(attempts)
            .bind(now)
            .bind(&ack.code)
            .bind(&ack.control_id)
            .bind(&ack.error_code)
            .bind(ack.text.as_deref().map(clip))
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    /// Records a failed attempt of job `job_id` (in the transaction that fails it): `failed` when it will be retried,
    /// `dead` when it was the last. `ack` is the negative ACK, when there was one.
    pub async fn log_outbound_failed(
        &mut self,
        job_id: i64,
        attempts: i32,
        dead: bool,
        ack: Option<&OutboundAck>,
        error: &str,
    ) -> Result<()> {
        let now = Timestamp::now().micros();
        let state = if dead { OutboundState::Dead } else { OutboundState::Failed };
        with_tx_conn!(self, conn => {
            sqlx::query(
                "UPDATE outbound_messages SET state = $2, attempts = $3, updated_us = $4, \
                 ack_code = COALESCE($5, ack_code), ack_control_id = COALESCE($6, ack_control_id), \
                 ack_error_code = CASE WHEN $5 IS NULL THEN ack_error_code ELSE $7 END, \
                 ack_text = CASE WHEN $5 IS NULL THEN ack_text ELSE $8 END, last_error = $9 WHERE job_id = $1",
            )
            .bind(job_id)
            .bind(state.as_str())
            .bind(attempts)
            .bind(now)
            .bind(ack.map(|a| a.code.as_str()))
            .bind(ack.and_then(|a| a.control_id.as_deref()))
            .bind(ack.and_then(|a| a.error_code.as_deref()))
            .bind(ack.and_then(|a| a.text.as_deref()).map(clip))
            .bind(clip(error))
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }
}

impl Store {
    /// Records that attempt `attempt` of job `job_id` is starting (state `sent`, sent time). On its own: the
    /// attempt's outcome is recorded with the job's completion or failure.
    pub async fn log_outbound_sending(&self, job_id: i64, attempt: i32) -> Result<()> {
        let now = Timestamp::now().micros();
        autocommit!(self, pool => {
            sqlx::query(
                "UPDATE outbound_messages SET state = 'sent', attempts = $2, sent_us = $3, updated_us = $3 \
                 WHERE job_id = $1 AND state <> 'acknowledged'",
            )
            .bind(job_id)
            .bind(attempt)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Marks `dead` the unsettled rows whose job the queue dead-lettered by itself (its lease expired on the final
    /// attempt: the worker stopped mid-delivery), so the log never shows as under way a message that nothing will
    /// send again. Returns how many rows changed; writes nothing when there are none.
    pub async fn outbound_mark_dead_letters(&self) -> Result<u64> {
        const STRANDED: &str = "SELECT 1 FROM outbound_messages o WHERE o.state IN ('queued', 'sent', 'failed') \
             AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = o.job_id AND j.state = 'dead') LIMIT 1";
        let stranded = with_read_pool!(self, pool => sqlx::query(STRANDED).fetch_optional(pool).await?.is_some());
        if !stranded {
            return Ok(0);
        }
        let now = Timestamp::now().micros();
        let updated = autocommit!(self, pool => {
            sqlx::query(
                "UPDATE outbound_messages SET state = 'dead', updated_us = $1, last_error = COALESCE((SELECT \
                 j.last_error FROM jobs j WHERE j.id = outbound_messages.job_id), last_error) \
                 WHERE state IN ('queued', 'sent', 'failed') AND job_id IN (SELECT id FROM jobs WHERE state = 'dead')",
            )
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(updated)
    }

    /// Logged messages, newest first, without the receivers' texts.
    pub async fn outbound_list(&self, query: &OutboundQuery) -> Result<Vec<OutboundRecord>> {
        let mut listing =
            Listing::new(format!("SELECT {COLUMNS}, NULL AS ack_text FROM outbound_messages WHERE 1 = 1"));
        if let Some(state) = query.state {
            listing.text("state =", state.as_str());
        }
        if let Some(destination) = &query.destination {
            listing.text("destination =", destination.as_str());
        }
        if let Some(before) = query.before_id {
            listing.number("id <", before);
        }
        let sql = listing.newest_first("id", i64::from(query.limit.clamp(1, 10_000)));
        with_read_pool!(self, pool => {
            let rows = bind_all!(sqlx::query(&sql), &listing.binds).fetch_all(pool).await?;
            rows.iter().map(row_to_record).collect()
        })
    }

    /// One logged message, with the receiver's MSA-3 text of its last ACK.
    pub async fn outbound_record(&self, id: i64) -> Result<Option<OutboundRecord>> {
        let sql = format!("SELECT {COLUMNS}, ack_text FROM outbound_messages WHERE id = $1");
        with_read_pool!(self, pool => {
            match sqlx::query(&sql).bind(id).fetch_optional(pool).await? {
                Some(row) => Ok(Some(row_to_record(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// Logged messages per state, for metrics.
    pub async fn outbound_counts(&self) -> Result<Vec<(String, i64)>> {
        with_read_pool!(self, pool => {
            sqlx::query("SELECT state, COUNT(*) FROM outbound_messages GROUP BY state ORDER BY state")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })
    }
}

fn row_to_record<R: Row>(row: &R) -> Result<OutboundRecord>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i32: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(OutboundRecord {
        id: row.try_get("id")?,
        job_id: row.try_get("job_id")?,
        destination: row.try_get("destination")?,
        message_type: row.try_get("message_type")?,
        control_id: row.try_get("control_id")?,
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        queued: Timestamp(row.try_get("queued_us")?),
        sent: row.try_get::<Option<i64>, _>("sent_us")?.map(Timestamp),
        acknowledged: row.try_get::<Option<i64>, _>("acknowledged_us")?.map(Timestamp),
        updated: Timestamp(row.try_get("updated_us")?),
        ack_code: row.try_get("ack_code")?,
        ack_control_id: row.try_get("ack_control_id")?,
        ack_error_code: row.try_get("ack_error_code")?,
        ack_text: row.try_get("ack_text")?,
        last_error: row.try_get("last_error")?,
    })
}
