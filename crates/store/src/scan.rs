//! Whole-type reads: every live resource of a type in id order, a page at a time, continuing after the last id
//! seen (keyset, not offset), so each page costs the same however far the scan has come and reading a table is
//! linear in its size. For aggregate work such as equity measures; no scope applies (the caller decides who may
//! see the aggregate).

use crate::resources::row_to_resource;
use crate::{Result, Store, StoredResource, with_read_pool};

impl Store {
    /// Up to `limit` live resources of `resource_type` whose id sorts after `after_id` (from the start when
    /// `None`), in id order. The scan ends at a page shorter than `limit`. Resources written during a scan are
    /// seen if their id sorts after the point reached.
    pub async fn scan_current(
        &self,
        resource_type: &str,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredResource>> {
        const SQL: &str = "SELECT resource_type, id, version_id, last_updated_us, deleted, content FROM resources \
                           WHERE resource_type = $1 AND id > $2 AND NOT deleted ORDER BY id LIMIT $3";
        let after = after_id.unwrap_or("");
        let limit = i64::from(limit);
        with_read_pool!(self, pool => {
            let rows = sqlx::query(SQL).bind(resource_type).bind(after).bind(limit).fetch_all(pool).await?;
            rows.iter().map(row_to_resource).collect()
        })
    }
}
