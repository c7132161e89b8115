//! Generic FHIR resource storage: the current version of each resource plus every version in history.

use serde_json::Value;
use sqlx::Row;

use crate::listing::Listing;
use crate::search::{Bind, bind_all};

use crate::time::{Timestamp, format_instant};
use crate::tx::{StoreTx, TxInner, with_tx_conn};
use crate::{Result, Store, StoreError, with_read_pool};

/// What a write expects to find, for optimistic concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Write whatever is there (last writer wins, but each write is still a new version).
    None,
    /// Create only: fail with [`StoreError::AlreadyExists`] if a live version exists.
    MustNotExist,
    /// Update only if the current version is exactly this one; otherwise [`StoreError::VersionConflict`].
    Version(i64),
}

/// One stored version of a resource. `content` is the resource's JSON with `id` and `meta` set; `None` when deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResource {
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    pub last_updated: Timestamp,
    pub deleted: bool,
    pub content: Option<String>,
}

/// A version in history, with its position in the system-wide write order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub seq: i64,
    pub resource: StoredResource,
}

/// Which history to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub resource_type: Option<String>,
    pub id: Option<String>,
    /// Only versions written at or after this time.
    pub since: Option<Timestamp>,
    /// Only versions written at or before this time.
    pub until: Option<Timestamp>,
    /// Paging cursor: only versions older than this `seq`.
    pub before_seq: Option<i64>,
    pub limit: u32,
    /// Whose grants limit the versions listed (by each resource's current grants).
    pub scope: crate::Scope,
}

/// The result of a successful write.
#[derive(Debug, Clone)]
pub struct Written {
    pub resource: StoredResource,
    /// True when there was no live version before (a create, or a re-create after delete).
    pub created: bool,
}

/// FHIR `id`: 1-64 characters from `[A-Za-z0-9\-\.]`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn is_valid_type(resource_type: &str) -> bool {
    let mut bytes = resource_type.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_uppercase()) && bytes.all(|b| b.is_ascii_alphanumeric())
}

struct Current {
    version_id: i64,
    last_updated: i64,
    deleted: bool,
}

pub(crate) fn row_to_resource<R: Row>(row: &R) -> Result<StoredResource>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(StoredResource {
        resource_type: row.try_get("resource_type")?,
        id: row.try_get("id")?,
        version_id: row.try_get("version_id")?,
        last_updated: Timestamp(row.try_get("last_updated_us")?),
        deleted: row.try_get("deleted")?,
        content: row.try_get("content")?,
    })
}

const SELECT_COLUMNS: &str = "resource_type, id, version_id, last_updated_us, deleted, content";

/// `(type, id)` pairs read per statement by `read_many`.
const KEYS_PER_SELECT: usize = 200;

/// The current versions of `pairs` resources, one key probe per pair on both backends; `mark(n)` is the
/// backend's bind placeholder `n` (types bound at odd, ids at even positions).
fn read_many_sql(pairs: usize, mark: impl Fn(usize) -> String) -> String {
    let probes: Vec<String> =
        (0..pairs).map(|i| format!("(resource_type = {} AND id = {})", mark(i * 2 + 1), mark(i * 2 + 2))).collect();
    format!("SELECT {SELECT_COLUMNS} FROM resources WHERE {}", probes.join(" OR "))
}

impl StoreTx {
    async fn current(&mut self, resource_type: &str, id: &str) -> Result<Option<Current>> {
        let sql = match self.inner {
            TxInner::Sqlite(_) => {
                "SELECT version_id, last_updated_us, deleted FROM resources WHERE resource_type = $1 AND id = $2"
            }
            // Row lock: concurrent writers to one resource serialize here and the loser sees the new version.
            TxInner::Postgres(_) => {
                "SELECT version_id, last_updated_us, deleted FROM resources WHERE resource_type = $1 AND id = $2 FOR UPDATE"
            }
        };
        let row = with_tx_conn!(self, conn => {
            let row = sqlx::query(sql).bind(resource_type).bind(id).fetch_optional(&mut *conn).await?;
            match row {
                Some(row) => Some(Current {
                    version_id: row.try_get("version_id")?,
                    last_updated: row.try_get("last_updated_us")?,
                    deleted: row.try_get("deleted")?,
                }),
                None => None,
            }
        });
        Ok(row)
    }

    /// Reads the current version inside this transaction (sees this transaction's own writes).
    pub async fn read(&mut self, resource_type: &str, id: &str) -> Result<Option<StoredResource>> {
        let sql = format!("SELECT {SELECT_COLUMNS} FROM resources WHERE resource_type = $1 AND id = $2");
        with_tx_conn!(self, conn => {
            match sqlx::query(&sql).bind(resource_type).bind(id).fetch_optional(&mut *conn).await? {
                Some(row) => Ok(Some(row_to_resource(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// Reads the current versions (tombstones included) of many resources in a few statements instead of one
    /// each, inside this transaction; resources never stored are absent from the map.
    pub async fn read_many(
        &mut self,
        keys: &[(&str, &str)],
    ) -> Result<std::collections::HashMap<(String, String), StoredResource>> {
        let mut found = std::collections::HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(KEYS_PER_SELECT) {
            let sql = read_many_sql(chunk.len(), |n| crate::tx::placeholder(self, n));
            let rows = with_tx_conn!(self, conn => {
                let mut query = sqlx::query(&sql);
                for (resource_type, id) in chunk {
                    query = query.bind(*resource_type).bind(*id);
                }
                query.fetch_all(&mut *conn).await?.iter().map(row_to_resource).collect::<Result<Vec<_>>>()?
            });
            for stored in rows {
                found.insert((stored.resource_type.clone(), stored.id.clone()), stored);
            }
        }
        Ok(found)
    }

    /// Reads one version from history inside this transaction (sees this transaction's own writes).
    pub async fn vread(&mut self, resource_type: &str, id: &str, version_id: i64) -> Result<Option<StoredResource>> {
        let sql = format!(
            "SELECT {SELECT_COLUMNS} FROM resource_history WHERE resource_type = $1 AND id = $2 AND version_id = $3"
        );
        with_tx_conn!(self, conn => {
            match sqlx::query(&sql).bind(resource_type).bind(id).bind(version_id).fetch_optional(&mut *conn).await? {
                Some(row) => Ok(Some(row_to_resource(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// Writes a new version of `resource` (which must carry `resourceType` and `id`), setting `meta.versionId` and
    /// `meta.lastUpdated`, and appends it to history.
    pub async fn put(&mut self, mut resource: Value, precondition: Precondition) -> Result<Written> {
        let (resource_type, id) = type_and_id(&resource)?;
        let current = self.current(&resource_type, &id).await?;
        check_precondition(&resource_type, &id, current.as_ref(), precondition)?;
        let version_id = current.as_ref().map_or(1, |c| c.version_id + 1);
        let last_updated = next_timestamp(current.as_ref());
        let content = stamp(&mut resource, version_id, last_updated)?;
        let created = current.as_ref().is_none_or(|c| c.deleted);
        self.write_version(&resource_type, &id, version_id, last_updated, current.is_some(), Some(&content)).await?;
        Ok(Written {
            resource: StoredResource {
                resource_type,
                id,
                version_id,
                last_updated,
                deleted: false,
                content: Some(content),
            },
            created,
        })
    }

    /// Writes brand-new resources (ids already assigned, never used before) with two multi-row INSERTs instead of
    /// a read and two writes each: the write path of plain creates, which group commit batches. An id that exists
    /// (even deleted) fails the whole call with a conflict and leaves the transaction unusable; callers retry such
    /// resources one by one with [`StoreTx::put`].
    pub async fn create_all(&mut self, resources: Vec<Value>) -> Result<Vec<Written>> {
        const ROWS_PER_INSERT: usize = 200;
        let mut written = Vec::with_capacity(resources.len());
        for mut resource in resources {
            let (resource_type, id) = type_and_id(&resource)?;
            let last_updated = next_timestamp(None);
            let content = stamp(&mut resource, 1, last_updated)?;
            written.push(Written {
                resource: StoredResource {
                    resource_type,
                    id,
                    version_id: 1,
                    last_updated,
                    deleted: false,
                    content: Some(content),
                },
                created: true,
            });
        }
        for chunk in written.chunks(ROWS_PER_INSERT) {
            let mut values = String::new();
            for i in 0..chunk.len() {
                if i > 0 {
                    values.push_str(", ");
                }
                values.push_str(&crate::tx::placeholders(self, i * 6 + 1, 6));
            }
            for table in ["resources", "resource_history"] {
                // The current-version rows return their `rid`s for the index rows that follow, each with its type
                // and id: neither backend promises RETURNING rows in VALUES order.
                let returning = if table == "resources" { " RETURNING resource_type, id, rid" } else { "" };
                let sql = format!(
                    "INSERT INTO {table} (resource_type, id, version_id, last_updated_us, deleted, content) \
                     VALUES {values}{returning}"
                );
                let outcome: std::result::Result<Vec<(String, String, i64)>, sqlx::Error> = with_tx_conn!(self, conn => {
                    async {
                        let mut query = sqlx::query_as(&sql);
                        for w in chunk {
                            let r = &w.resource;
                            query = query
                                .bind(r.resource_type.as_str())
                                .bind(r.id.as_str())
                                .bind(r.version_id)
                                .bind(r.last_updated.micros())
                                .bind(false)
                                .bind(r.content.as_deref());
                        }
                        query.fetch_all(&mut *conn).await
                    }
                    .await
                });
                match outcome {
                    Ok(rids) => self.rids.extend(rids.into_iter().map(|(t, id, rid)| ((t, id), rid))),
                    Err(e) if StoreError::is_unique_violation(&e) => {
                        return Err(StoreError::VersionConflict {
                            resource_type: chunk[0].resource.resource_type.clone(),
                            id: "(one of a batch)".into(),
                            expected: "none".into(),
                            current: "an existing resource".into(),
                        });
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(written)
    }

    /// Logically deletes a resource: a new version marked deleted. Returns `None` when there was nothing live to delete.
    pub async fn delete(
        &mut self,
        resource_type: &str,
        id: &str,
        precondition: Precondition,
    ) -> Result<Option<StoredResource>> {
        let current = self.current(resource_type, id).await?;
        check_precondition(resource_type, id, current.as_ref(), precondition)?;
        let Some(live) = current.as_ref().filter(|c| !c.deleted) else {
            return Ok(None);
        };
        let version_id = live.version_id + 1;
        let last_updated = next_timestamp(current.as_ref());
        self.write_version(resource_type, id, version_id, last_updated, true, None).await?;
        Ok(Some(StoredResource {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
            version_id,
            last_updated,
            deleted: true,
            content: None,
        }))
    }

    async fn write_version(
        &mut self,
        resource_type: &str,
        id: &str,
        version_id: i64,
        last_updated: Timestamp,
        exists: bool,
        content: Option<&str>,
    ) -> Result<()> {
        let deleted = content.is_none();
        let upsert = if exists {
            "UPDATE resources SET version_id = $3, last_updated_us = $4, deleted = $5, content = $6 \
             WHERE resource_type = $1 AND id = $2 RETURNING rid"
        } else {
            "INSERT INTO resources (resource_type, id, version_id, last_updated_us, deleted, content) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING rid"
        };
        let history = "INSERT INTO resource_history (resource_type, id, version_id, last_updated_us, deleted, content) \
                       VALUES ($1, $2, $3, $4, $5, $6)";
        let outcome: std::result::Result<i64, sqlx::Error> = with_tx_conn!(self, conn => {
            async {
                // The current row's statement returns its rid; the history row's returns nothing.
                let mut rid = None;
                for sql in [upsert, history] {
                    let returned = sqlx::query(sql)
                        .bind(resource_type)
                        .bind(id)
                        .bind(version_id)
                        .bind(last_updated.micros())
                        .bind(deleted)
                        .bind(content)
                        .fetch_optional(&mut *conn)
                        .await?;
                    if let Some(row) = returned {
                        rid = Some(row.try_get::<i64, _>(0)?);
                    }
                }
                rid.ok_or(sqlx::Error::RowNotFound)
            }
            .await
        });
        match outcome {
            Ok(rid) => {
                self.rids.insert((resource_type.to_owned(), id.to_owned()), rid);
                Ok(())
            }
            // Two transactions created the same new id at once; the loser sees a conflict, never a duplicate.
            Err(e) if StoreError::is_unique_violation(&e) => Err(StoreError::VersionConflict {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
                expected: if exists { (version_id - 1).to_string() } else { "none".into() },
                current: "a concurrent write".into(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// The valid `resourceType` and `id` of a resource about to be written.
fn type_and_id(resource: &Value) -> Result<(String, String)> {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .filter(|t| is_valid_type(t))
        .ok_or_else(|| StoreError::Invalid("resource has no valid resourceType".into()))?
        .to_owned();
    let id = resource
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| is_valid_id(id))
        .ok_or_else(|| StoreError::Invalid("resource has no valid id".into()))?
        .to_owned();
    Ok((resource_type, id))
}

/// Sets `meta.versionId` and `meta.lastUpdated` and returns the JSON to store.
fn stamp(resource: &mut Value, version_id: i64, last_updated: Timestamp) -> Result<String> {
    let meta = resource
        .as_object_mut()
        .ok_or_else(|| StoreError::Invalid("resource is not a JSON object".into()))?
        .entry("meta")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(meta) = meta.as_object_mut() else {
        return Err(StoreError::Invalid("meta is not a JSON object".into()));
    };
    meta.insert("versionId".into(), Value::String(version_id.to_string()));
    meta.insert("lastUpdated".into(), Value::String(format_instant(last_updated)));
    serde_json::to_string(resource).map_err(|e| StoreError::Invalid(e.to_string()))
}

fn check_precondition(
    resource_type: &str,
    id: &str,
    current: Option<&Current>,
    precondition: Precondition,
) -> Result<()> {
    let live = current.filter(|c| !c.deleted);
    match precondition {
        Precondition::None => Ok(()),
        Precondition::MustNotExist if live.is_some() => {
            Err(StoreError::AlreadyExists { resource_type: resource_type.to_owned(), id: id.to_owned() })
        }
        Precondition::MustNotExist => Ok(()),
        Precondition::Version(expected) => match current {
            Some(c) if c.version_id == expected => Ok(()),
            other => Err(StoreError::VersionConflict {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
                expected: expected.to_string(),
                current: other.map_or_else(|| "none".into(), |c| c.version_id.to_string()),
            }),
        },
    }
}

/// Now, but never at or before the previous version's time, so versions of one resource order by time too.
fn next_timestamp(current: Option<&Current>) -> Timestamp {
    let now = Timestamp::now().micros();
    Timestamp(current.map_or(now, |c| now.max(c.last_updated + 1)))
}

impl Store {
    /// The current version (possibly a deletion tombstone), or `None` if the resource never existed.
    pub async fn read(&self, resource_type: &str, id: &str) -> Result<Option<StoredResource>> {
        const SQL: &str = "SELECT resource_type, id, version_id, last_updated_us, deleted, content \
                           FROM resources WHERE resource_type = $1 AND id = $2";
        with_read_pool!(self, pool => {
            match sqlx::query(SQL).bind(resource_type).bind(id).fetch_optional(pool).await? {
                Some(row) => Ok(Some(row_to_resource(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// [`StoreTx::read_many`] on a reader: the current versions (tombstones included) of the resources that exist.
    pub async fn read_many(
        &self,
        keys: &[(&str, &str)],
    ) -> Result<std::collections::HashMap<(String, String), StoredResource>> {
        let backend = self.backend();
        let mut found = std::collections::HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(KEYS_PER_SELECT) {
            let sql = read_many_sql(chunk.len(), |n| crate::tx::bind_mark(backend, n));
            let rows = with_read_pool!(self, pool => {
                let mut query = sqlx::query(&sql);
                for (resource_type, id) in chunk {
                    query = query.bind(*resource_type).bind(*id);
                }
                query.fetch_all(pool).await?.iter().map(row_to_resource).collect::<Result<Vec<_>>>()?
            });
            for stored in rows {
                found.insert((stored.resource_type.clone(), stored.id.clone()), stored);
            }
        }
        Ok(found)
    }

    /// One specific version from history.
    pub async fn vread(&self, resource_type: &str, id: &str, version_id: i64) -> Result<Option<StoredResource>> {
        const SQL: &str = "SELECT resource_type, id, version_id, last_updated_us, deleted, content \
                           FROM resource_history WHERE resource_type = $1 AND id = $2 AND version_id = $3";
        with_read_pool!(self, pool => {
            match sqlx::query(SQL).bind(resource_type).bind(id).bind(version_id).fetch_optional(pool).await? {
                Some(row) => Ok(Some(row_to_resource(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// History newest first: of one resource, one type, or the whole system.
    pub async fn history(&self, query: &HistoryQuery) -> Result<Vec<HistoryEntry>> {
        if query.scope.organization().is_some() {
            return crate::search::scoped_history(self, query).await;
        }
        let mut listing = Listing::new(format!("SELECT seq, {SELECT_COLUMNS} FROM resource_history WHERE 1 = 1"));
        if let Some(t) = &query.resource_type {
            listing.text("resource_type =", t.as_str());
        }
        if let Some(id) = &query.id {
            listing.text("id =", id.as_str());
        }
        for (left, value) in [("last_updated_us >=", query.since), ("last_updated_us <=", query.until)] {
            if let Some(v) = value {
                listing.number(left, v.micros());
            }
        }
        if let Some(cursor) = query.before_seq {
            listing.number("seq <", cursor);
        }
        let sql = listing.newest_first("seq", i64::from(query.limit.max(1)));
        with_read_pool!(self, pool => {
            let rows = bind_all!(sqlx::query(&sql), &listing.binds).fetch_all(pool).await?;
            rows.iter()
                .map(|row| Ok(HistoryEntry { seq: row.try_get("seq")?, resource: row_to_resource(row)? }))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_fhir_id_rule() {
        assert!(is_valid_id("abc-123.X"));
        assert!(is_valid_id(&"a".repeat(64)));
        assert!(!is_valid_id(&"a".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("a b"));
    }

    #[test]
    fn resource_types_are_capitalised_words() {
        assert!(is_valid_type("Patient"));
        assert!(!is_valid_type("patient"));
        assert!(!is_valid_type("Pat-ient"));
        assert!(!is_valid_type(""));
    }
}
