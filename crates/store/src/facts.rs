//! Materialized equity-measure facts: one small row per contributing resource (`measure_facts`), kept current by the
//! write path in the resource write's own transaction, and read in one keyset-paged pass by the measures. The store
//! only keeps the rows; what a payload says is the measures' business (`fhir_server::measures::facts`).

use sqlx::Row;

use crate::tx::{StoreTx, TxInner, with_tx_conn};
use crate::{Result, Store, with_read_pool};

/// A page of fact rows of one resource type, as one text: a line `id<TAB>payload` per row, in no particular order.
/// Ids never hold tabs or line breaks (FHIR ids are `[A-Za-z0-9\-.]`) and payloads are refused if they do, so the
/// lines split unambiguously. The database joins a page into one value: a measure reads a million small rows, and
/// the driver's per-row cost (a row object, a channel hop and owned strings per column) was most of the time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FactPage {
    pub resource_type: String,
    pub lines: String,
}

impl FactPage {
    /// The (id, payload) of each row.
    pub fn rows(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.split('\n').filter_map(|line| line.split_once('\t'))
    }
}

/// Where a [`Store::scan_facts`] continues: the type being read (index into the caller's list) and the last id read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FactCursor {
    type_index: usize,
    after_id: String,
}

fn check_payload(payload: &str) -> Result<()> {
    if payload.contains(['\n', '\t']) {
        return Err(crate::StoreError::Invalid("a measure fact payload may not hold tabs or line breaks".into()));
    }
    Ok(())
}

/// Rows per multi-row INSERT (3 binds each, well under both backends' bind limits).
const ROWS_PER_INSERT: usize = 300;

impl StoreTx {
    /// Makes `resource_type/id`'s fact row say `payload`, or removes it when the version contributes nothing.
    pub async fn set_fact(&mut self, resource_type: &str, id: &str, payload: Option<&str>) -> Result<()> {
        if let Some(payload) = payload {
            return self.put_facts(&[(resource_type, id, payload)]).await;
        }
        with_tx_conn!(self, conn => {
            sqlx::query("DELETE FROM measure_facts WHERE resource_type = $1 AND id = $2")
                .bind(resource_type)
                .bind(id)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// Writes the fact rows of many resources (replacing any row under the same key) with a few multi-row
    /// statements: the bulk create path and the backfill.
    pub async fn put_facts(&mut self, rows: &[(&str, &str, &str)]) -> Result<()> {
        for (_, _, payload) in rows {
            check_payload(payload)?;
        }
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
    /// The next page of the fact rows of `types` (up to `limit` rows of one type), and where to continue (`None`
    /// once done). The table is keyed by (type, id), so the whole read is one pass over it.
    pub async fn scan_facts(
        &self,
        types: &[&str],
        cursor: &FactCursor,
        limit: u32,
    ) -> Result<(FactPage, Option<FactCursor>)> {
        let limit = limit.max(1);
        let aggregate = match self.pools() {
            crate::Pools::Sqlite { .. } => "group_concat(id || char(9) || payload, char(10))",
            crate::Pools::Postgres(_) => "string_agg(id || chr(9) || payload, chr(10))",
        };
        let sql = format!(
            "SELECT {aggregate} AS lines, max(id) AS last_id, count(*) AS n FROM \
             (SELECT id, payload FROM measure_facts WHERE resource_type = $1 AND id > $2 ORDER BY id LIMIT {limit}) page"
        );
        let mut next = cursor.clone();
        while let Some(resource_type) = types.get(next.type_index) {
            let (lines, last_id, n): (Option<String>, Option<String>, i64) = with_read_pool!(self, pool => {
                let row = sqlx::query(&sql).bind(*resource_type).bind(&next.after_id).fetch_one(pool).await?;
                (row.try_get("lines")?, row.try_get("last_id")?, row.try_get("n")?)
            });
            let page = FactPage { resource_type: (*resource_type).to_owned(), lines: lines.unwrap_or_default() };
            if n == i64::from(limit) {
                next.after_id = last_id.unwrap_or_default();
                return Ok((page, Some(next)));
            }
            next.type_index += 1;
            next.after_id.clear();
            if n > 0 {
                return Ok((page, types.get(next.type_index).map(|_| next)));
            }
        }
        Ok((FactPage::default(), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_that_would_break_a_page_into_wrong_lines_are_refused() {
        assert!(check_payload(r#"{"E":{"p":"a","d":1}}"#).is_ok());
        assert!(check_payload("{\"P\":{\"c\":\"A\nB\"}}").is_err());
        assert!(check_payload("{\"P\":{\"c\":\"A\tB\"}}").is_err());
        let page = FactPage { resource_type: "Encounter".into(), lines: "e1\t{\"x\":1}\ne2\t{\"y\":2}".into() };
        assert_eq!(page.rows().collect::<Vec<_>>(), vec![("e1", "{\"x\":1}"), ("e2", "{\"y\":2}")]);
        assert_eq!(FactPage::default().rows().count(), 0);
    }
}
