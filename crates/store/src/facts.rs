//! Materialized equity-measure facts: one small row per contributing resource (`measure_facts`), kept current by the
//! write path in the resource write's own transaction, and read in one keyset-paged pass by the measures. The store
//! only keeps the rows; what a payload says is the measures' business (`fhir_server::measures::facts`).

use sqlx::Row;

use crate::tx::{StoreTx, TxInner, with_tx_conn};
use crate::{Result, Store, with_read_pool};

/// One resource's fact row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactRow {
    pub resource_type: String,
    pub id: String,
    pub payload: String,
}

/// Where a [`Store::scan_facts`] continues: the last (resource type, id) read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FactCursor {
    resource_type: String,
    id: String,
}

/// Rows per multi-row INSERT (3 binds each, well under both backends' bind limits).
const ROWS_PER_INSERT: usize = 300;

const UPSERT_SQL: &str = "INSERT INTO measure_facts (resource_type, id, payload) VALUES ($1, $2, $3) \
                          ON CONFLICT (resource_type, id) DO UPDATE SET payload = excluded.payload";

impl StoreTx {
    /// Makes `resource_type/id`'s fact row say `payload`, or removes it when the version contributes nothing.
    pub async fn set_fact(&mut self, resource_type: &str, id: &str, payload: Option<&str>) -> Result<()> {
        with_tx_conn!(self, conn => {
            match payload {
                Some(payload) => {
                    sqlx::query(UPSERT_SQL).bind(resource_type).bind(id).bind(payload).execute(&mut *conn).await?;
                }
                None => {
                    sqlx::query("DELETE FROM measure_facts WHERE resource_type = $1 AND id = $2")
                        .bind(resource_type)
                        .bind(id)
                        .execute(&mut *conn)
                        .await?;
                }
            }
        });
        Ok(())
    }

    /// Writes the fact rows of many resources (replacing any row under the same key) with a few multi-row
    /// statements: the bulk create path and the backfill.
    pub async fn put_facts(&mut self, rows: &[(&str, &str, &str)]) -> Result<()> {
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            let mut sql = String::from("INSERT INTO measure_facts (resource_type, id, payload) VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&crate::tx::placeholders(self, i * 3 + 1, 3));
            }
            sql.push_str(" ON CONFLICT (resource_type, id) DO UPDATE SET payload = excluded.payload");
            with_tx_conn!(self, conn => {
                let mut query = sqlx::query(&sql);
                for (resource_type, id, payload) in chunk {
                    query = query.bind(*resource_type).bind(*id).bind(*payload);
                }
                query.execute(&mut *conn).await?;
            });
        }
        Ok(())
    }

    /// Starts the one-time fill of the fact rows of resources written before `measure_facts` existed: `true` when
    /// it is still to be done, and then no other transaction writes fact rows until this one ends (SQLite's
    /// `BEGIN IMMEDIATE` already excludes every writer; PostgreSQL locks the table against writers, so a write
    /// that commits before sees its row overwritten with the same current facts, and one that commits after
    /// writes its own row after the fill's).
    pub async fn begin_fact_backfill(&mut self) -> Result<bool> {
        if let TxInner::Postgres(_) = self.inner {
            with_tx_conn!(self, conn => {
                sqlx::query("LOCK TABLE measure_facts IN EXCLUSIVE MODE").execute(&mut *conn).await?;
            });
        }
        let pending: i64 = with_tx_conn!(self, conn => {
            sqlx::query("SELECT COUNT(*) AS n FROM measure_facts_backfill").fetch_one(&mut *conn).await?.try_get("n")?
        });
        Ok(pending > 0)
    }

    /// Records the fill as done (commit the transaction after).
    pub async fn finish_fact_backfill(&mut self) -> Result<()> {
        with_tx_conn!(self, conn => {
            sqlx::query("DELETE FROM measure_facts_backfill").execute(&mut *conn).await?;
        });
        Ok(())
    }
}

impl Store {
    /// The next `limit` fact rows in key order after `cursor`, and where to continue (`None` once done).
    pub async fn scan_facts(&self, cursor: &FactCursor, limit: u32) -> Result<(Vec<FactRow>, Option<FactCursor>)> {
        let limit = limit.max(1);
        let sql = format!(
            "SELECT resource_type, id, payload FROM measure_facts WHERE (resource_type, id) > ($1, $2) \
             ORDER BY resource_type, id LIMIT {limit}"
        );
        let rows: Vec<FactRow> = with_read_pool!(self, pool => {
            let rows = sqlx::query(&sql).bind(&cursor.resource_type).bind(&cursor.id).fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    Ok(FactRow {
                        resource_type: row.try_get("resource_type")?,
                        id: row.try_get("id")?,
                        payload: row.try_get("payload")?,
                    })
                })
                .collect::<Result<Vec<_>>>()?
        });
        let next = (rows.len() == limit as usize).then(|| {
            let last = rows.last().expect("a full page");
            FactCursor { resource_type: last.resource_type.clone(), id: last.id.clone() }
        });
        Ok((rows, next))
    }
}
