//! Delivery state of topic-based subscriptions: which Subscriptions listen to which resource type, their numbered
//! events, and the cursor, failure count and single-sender flag that keep delivery at least once and in order.
//!
//! The Subscription resources themselves are stored like every other resource; a row here mirrors the facts event
//! matching needs and carries what delivery changes on every notification (so a notification does not write a
//! Subscription version). Event numbers are assigned by incrementing the row's counter inside the transaction of
//! the change that caused the event: on PostgreSQL the row lock serializes concurrent writers, on SQLite the single
//! writer does, so numbers have no gaps and follow commit order.

use sqlx::Row;

use crate::time::Timestamp;
use crate::tx::{StoreTx, TxInner, with_tx_conn};
use crate::{Result, Store, StoredResource, with_read_pool};

/// What a written Subscription version says, as far as matching and delivery are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    pub id: String,
    /// The topic canonical URL (`Subscription.criteria`).
    pub topic: String,
    /// The resource type the topic is about.
    pub focus_type: String,
    /// `backport-filter-criteria` values, each a query string such as `Task?owner=Organization/1`.
    pub filters: Vec<String>,
    /// The Organization (`Organization/{id}`) whose client created the subscription; `None` for the system.
    pub organization: Option<String>,
    /// `requested`, `active`, `error` or `off`.
    pub status: String,
    pub heartbeat_secs: Option<i64>,
}

/// A subscription's stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRow {
    pub spec: SubscriptionSpec,
    pub events_since_start: i64,
    /// The highest event number the endpoint has acknowledged.
    pub delivered_through: i64,
    pub consecutive_failures: i64,
    pub delivery_queued: bool,
    /// The endpoint has not yet acknowledged a handshake since the subscription was (re)requested.
    pub handshake_pending: bool,
    /// When the last notification of any type was acknowledged (epoch microseconds; 0 never).
    pub last_sent: Timestamp,
    pub deleted: bool,
}

/// One event of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionEvent {
    pub number: i64,
    pub focus_type: String,
    pub focus_id: String,
    pub focus_version: i64,
    pub occurred: Timestamp,
}

const ROW_COLUMNS: &str = "id, topic, focus_type, filters, organization, status, heartbeat_secs, events_since_start, \
                           delivered_through, consecutive_failures, delivery_queued, handshake_pending, last_sent_us, deleted";

fn row_to_subscription<R: Row>(row: &R) -> Result<SubscriptionRow>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let filters: String = row.try_get("filters")?;
    Ok(SubscriptionRow {
        spec: SubscriptionSpec {
            id: row.try_get("id")?,
            topic: row.try_get("topic")?,
            focus_type: row.try_get("focus_type")?,
            filters: serde_json::from_str(&filters).unwrap_or_default(),
            organization: row.try_get("organization")?,
            status: row.try_get("status")?,
            heartbeat_secs: row.try_get("heartbeat_secs")?,
        },
        events_since_start: row.try_get("events_since_start")?,
        delivered_through: row.try_get("delivered_through")?,
        consecutive_failures: row.try_get("consecutive_failures")?,
        delivery_queued: row.try_get("delivery_queued")?,
        handshake_pending: row.try_get("handshake_pending")?,
        last_sent: Timestamp(row.try_get("last_sent_us")?),
        deleted: row.try_get("deleted")?,
    })
}

fn row_to_event<R: Row>(row: &R) -> Result<SubscriptionEvent>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(SubscriptionEvent {
        number: row.try_get("event_number")?,
        focus_type: row.try_get("focus_type")?,
        focus_id: row.try_get("focus_id")?,
        focus_version: row.try_get("focus_version")?,
        occurred: Timestamp(row.try_get("occurred_us")?),
    })
}

impl StoreTx {
    /// Creates or updates the state of a subscription from its newest version. Counters and the cursor are kept.
    /// With `wants_delivery` (a handshake is due) the subscription is flagged for delivery; returns true when the
    /// caller must queue its delivery job (no job was queued before).
    pub async fn sync_subscription(&mut self, spec: &SubscriptionSpec, wants_delivery: bool) -> Result<bool> {
        let filters = serde_json::to_string(&spec.filters).unwrap_or_else(|_| "[]".into());
        let upsert = "INSERT INTO subscriptions (id, topic, focus_type, filters, organization, status, heartbeat_secs, \
                      consecutive_failures, delivery_queued, handshake_pending, deleted) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7, 0, FALSE, $6 = 'requested', FALSE) \
                      ON CONFLICT (id) DO UPDATE SET topic = $2, focus_type = $3, filters = $4, organization = $5, \
                      status = $6, heartbeat_secs = $7, deleted = FALSE, \
                      handshake_pending = CASE WHEN $6 = 'requested' THEN TRUE ELSE subscriptions.handshake_pending END, \
                      consecutive_failures = CASE WHEN $6 = 'requested' THEN 0 ELSE subscriptions.consecutive_failures END";
        with_tx_conn!(self, conn => {
            sqlx::query(upsert)
                .bind(&spec.id)
                .bind(&spec.topic)
                .bind(&spec.focus_type)
                .bind(&filters)
                .bind(spec.organization.as_deref())
                .bind(&spec.status)
                .bind(spec.heartbeat_secs)
                .execute(&mut *conn)
                .await?;
        });
        if !wants_delivery {
            return Ok(false);
        }
        self.flag_for_delivery(&spec.id).await
    }

    /// Sets the single-sender flag; true when it was not set (the caller queues the delivery job).
    async fn flag_for_delivery(&mut self, id: &str) -> Result<bool> {
        let flagged = with_tx_conn!(self, conn => {
            sqlx::query("UPDATE subscriptions SET delivery_queued = TRUE WHERE id = $1 AND delivery_queued = FALSE")
                .bind(id)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(flagged == 1)
    }

    /// Marks a subscription deleted: it matches no more events and its delivery stops.
    pub async fn drop_subscription(&mut self, id: &str) -> Result<()> {
        with_tx_conn!(self, conn => {
            sqlx::query("UPDATE subscriptions SET deleted = TRUE, status = 'off' WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// Subscriptions that take events about `focus_type` now: status `active`, or `error` (still retrying).
    /// One indexed lookup, which finds nothing when nobody subscribes.
    pub async fn listening_subscriptions(&mut self, focus_type: &str) -> Result<Vec<SubscriptionRow>> {
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM subscriptions WHERE focus_type = $1 AND status IN ('active', 'error') \
             AND deleted = FALSE ORDER BY id"
        );
        with_tx_conn!(self, conn => {
            let rows = sqlx::query(&sql).bind(focus_type).fetch_all(&mut *conn).await?;
            rows.iter().map(row_to_subscription).collect()
        })
    }

    /// Numbers and stores an event of subscription `id`. Returns the event number and whether the caller must
    /// queue the subscription's delivery job.
    pub async fn record_subscription_event(
        &mut self,
        id: &str,
        focus: &StoredResource,
        occurred: Timestamp,
    ) -> Result<(i64, bool)> {
        let number: i64 = with_tx_conn!(self, conn => {
            sqlx::query_scalar(
                "UPDATE subscriptions SET events_since_start = events_since_start + 1 WHERE id = $1 \
                 RETURNING events_since_start",
            )
            .bind(id)
            .fetch_one(&mut *conn)
            .await?
        });
        with_tx_conn!(self, conn => {
            sqlx::query(
                "INSERT INTO subscription_events (subscription_id, event_number, focus_type, focus_id, focus_version, \
                 occurred_us) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(number)
            .bind(&focus.resource_type)
            .bind(&focus.id)
            .bind(focus.version_id)
            .bind(occurred.micros())
            .execute(&mut *conn)
            .await?;
        });
        let queue = self.flag_for_delivery(id).await?;
        Ok((number, queue))
    }

    /// The state of a subscription, locked for this transaction on PostgreSQL.
    pub async fn subscription(&mut self, id: &str) -> Result<Option<SubscriptionRow>> {
        let lock = if matches!(self.inner, TxInner::Postgres(_)) { " FOR UPDATE" } else { "" };
        let sql = format!("SELECT {ROW_COLUMNS} FROM subscriptions WHERE id = $1{lock}");
        with_tx_conn!(self, conn => {
            match sqlx::query(&sql).bind(id).fetch_optional(&mut *conn).await? {
                Some(row) => Ok(Some(row_to_subscription(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// Records an acknowledged notification: the cursor moves to `through` (never back), failures reset.
    pub async fn subscription_delivered(&mut self, id: &str, through: i64, at: Timestamp) -> Result<()> {
        with_tx_conn!(self, conn => {
            sqlx::query(
                "UPDATE subscriptions SET delivered_through = CASE WHEN delivered_through < $2 THEN $2 \
                 ELSE delivered_through END, consecutive_failures = 0, last_sent_us = $3 WHERE id = $1",
            )
            .bind(id)
            .bind(through)
            .bind(at.micros())
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    /// Records an acknowledged handshake.
    pub async fn subscription_handshaken(&mut self, id: &str, at: Timestamp) -> Result<()> {
        with_tx_conn!(self, conn => {
            sqlx::query(
                "UPDATE subscriptions SET handshake_pending = FALSE, consecutive_failures = 0, last_sent_us = $2 \
                 WHERE id = $1",
            )
            .bind(id)
            .bind(at.micros())
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    /// Counts a failed notification; returns the consecutive failures so far.
    pub async fn subscription_failed(&mut self, id: &str) -> Result<i64> {
        let n = with_tx_conn!(self, conn => {
            sqlx::query_scalar(
                "UPDATE subscriptions SET consecutive_failures = consecutive_failures + 1 WHERE id = $1 \
                 RETURNING consecutive_failures",
            )
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
        });
        Ok(n.unwrap_or(0))
    }

    /// Ends a delivery job's turn: clears the single-sender flag unless events arrived that are not delivered yet
    /// (then the job must go on). Returns whether the flag was cleared.
    pub async fn finish_subscription_delivery(&mut self, id: &str) -> Result<bool> {
        let cleared = with_tx_conn!(self, conn => {
            sqlx::query(
                "UPDATE subscriptions SET delivery_queued = FALSE WHERE id = $1 AND (deleted = TRUE \
                 OR status = 'off' OR (handshake_pending = FALSE AND delivered_through >= events_since_start))",
            )
            .bind(id)
            .execute(&mut *conn)
            .await?
            .rows_affected()
        });
        Ok(cleared == 1)
    }

    /// Flags every active subscription whose heartbeat is due (nothing acknowledged for its heartbeat period) and
    /// not already being delivered; returns their ids, whose delivery jobs the caller queues in this transaction.
    pub async fn flag_due_heartbeats(&mut self, now: Timestamp) -> Result<Vec<String>> {
        with_tx_conn!(self, conn => {
            Ok(sqlx::query_scalar(
                "UPDATE subscriptions SET delivery_queued = TRUE WHERE status = 'active' AND deleted = FALSE \
                 AND delivery_queued = FALSE AND heartbeat_secs IS NOT NULL \
                 AND last_sent_us + heartbeat_secs * 1000000 <= $1 RETURNING id",
            )
            .bind(now.micros())
            .fetch_all(&mut *conn)
            .await?)
        })
    }
}

impl Store {
    /// The state of a subscription.
    pub async fn subscription(&self, id: &str) -> Result<Option<SubscriptionRow>> {
        let sql = format!("SELECT {ROW_COLUMNS} FROM subscriptions WHERE id = $1");
        with_read_pool!(self, pool => {
            match sqlx::query(&sql).bind(id).fetch_optional(pool).await? {
                Some(row) => Ok(Some(row_to_subscription(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// Events of a subscription numbered `from..=until`, in order, at most `limit`.
    pub async fn subscription_events(
        &self,
        id: &str,
        from: i64,
        until: i64,
        limit: u32,
    ) -> Result<Vec<SubscriptionEvent>> {
        const SQL: &str = "SELECT event_number, focus_type, focus_id, focus_version, occurred_us \
                           FROM subscription_events WHERE subscription_id = $1 AND event_number >= $2 \
                           AND event_number <= $3 ORDER BY event_number LIMIT $4";
        with_read_pool!(self, pool => {
            let rows = sqlx::query(SQL).bind(id).bind(from).bind(until).bind(i64::from(limit)).fetch_all(pool).await?;
            rows.iter().map(row_to_event).collect()
        })
    }

    /// Subscriptions (not deleted) per status, for metrics.
    pub async fn subscription_status_counts(&self) -> Result<Vec<(String, i64)>> {
        with_read_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT status, COUNT(*) AS n FROM subscriptions WHERE deleted = FALSE GROUP BY status ORDER BY status",
            )
            .fetch_all(pool)
            .await?;
            rows.iter().map(|row| Ok((row.try_get("status")?, row.try_get("n")?))).collect()
        })
    }
}
