//! The search index: typed index rows written with each resource version, and a small search AST compiled to SQL.
//!
//! The store knows nothing of FHIR search semantics beyond what the rows and conditions say: the FHIR layer turns
//! resources into [`IndexRow`]s and queries into a [`SearchQuery`]. Every condition becomes an
//! `EXISTS (SELECT 1 FROM search_x ...)` probe on an index led by `(param, value)`, with bound parameters only; the
//! SQL text is the same on SQLite and PostgreSQL.
//!
//! Index rows are keyed by numbers: the resource by `resources.rid`, the parameter by [`param_key`], which names
//! the resource type too. Text keys repeated in every row and its two indexes made the index most of what a write
//! stored, and hash-derived resource ids scattered each write's owner-index entries over the whole index.

use sqlx::Row;

use crate::access::scope_condition;
use crate::resources::row_to_resource;
use crate::tx::{StoreTx, with_tx_conn};
use crate::{Result, Store, StoreError, StoredResource, with_read_pool};

/// Rows per multi-row INSERT: well below both backends' bind-parameter limits.
const INSERT_CHUNK: usize = 200;
/// Index rows a transaction buffers before writing them: a batch of converted messages or normalized screenings
/// (a few thousand rows) is written at commit in full multi-row statements rather than in several partial flushes.
const PENDING_INDEX_ROWS: usize = 5_000;

/// The number that names `resource_type`'s search parameter `param` in the index tables: the top 48 bits of the
/// 64-bit FNV-1a hash of `"ResourceType.code"` (48 bits fit SQLite's 6-byte integer encoding; a test checks that the
/// official parameters do not collide). It is stored in every index row: changing it is a migration.
pub fn param_key(resource_type: &str, param: &str) -> i64 {
    let name = resource_type.bytes().chain(std::iter::once(b'.')).chain(param.bytes());
    (crate::tx::fnv1a_bytes(name) >> 16) as i64
}

/// One index value of one parameter of one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexRow {
    /// The SearchParameter code (`code`, `subject`, `code-value-quantity`, ...).
    pub param: String,
    /// 0 for plain values; composite tuples number their rows 1.. and share the group across components.
    pub group: i32,
    /// The component position within a composite tuple (0 for plain values).
    pub component: i32,
    pub value: IndexEntry,
}

/// The typed payload of an index row; each kind lives in its own table.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexEntry {
    Token {
        system: Option<String>,
        code: Option<String>,
        /// Normalised display text, for `:text`.
        text: Option<String>,
        type_system: Option<String>,
        type_code: Option<String>,
    },
    String {
        normalized: String,
        exact: String,
    },
    Reference {
        target_type: Option<String>,
        target_id: Option<String>,
        url: Option<String>,
        version: Option<String>,
        identifier_system: Option<String>,
        identifier_value: Option<String>,
    },
    /// Inclusive epoch-microsecond range.
    Date {
        low: i64,
        high: i64,
    },
    /// `None` bounds are open.
    Number {
        low: Option<f64>,
        high: Option<f64>,
    },
    Quantity {
        low: Option<f64>,
        high: Option<f64>,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    Uri(String),
}

/// The index tables, one per kind of [`IndexEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexTable {
    Token,
    String,
    Reference,
    Date,
    Number,
    Quantity,
    Uri,
}

impl IndexTable {
    const ALL: [IndexTable; 7] = [
        IndexTable::Token,
        IndexTable::String,
        IndexTable::Reference,
        IndexTable::Date,
        IndexTable::Number,
        IndexTable::Quantity,
        IndexTable::Uri,
    ];

    fn name(self) -> &'static str {
        match self {
            IndexTable::Token => "search_token",
            IndexTable::String => "search_string",
            IndexTable::Reference => "search_reference",
            IndexTable::Date => "search_date",
            IndexTable::Number => "search_number",
            IndexTable::Quantity => "search_quantity",
            IndexTable::Uri => "search_uri",
        }
    }

    fn value_columns(self) -> &'static [&'static str] {
        match self {
            IndexTable::Token => &["system", "code", "text_norm", "type_system", "type_code"],
            IndexTable::String => &["value_norm", "value_exact"],
            IndexTable::Reference => &["target_type", "target_id", "url", "version", "ident_system", "ident_value"],
            IndexTable::Date => &["low_us", "high_us"],
            IndexTable::Number => &["low", "high"],
            IndexTable::Quantity => &["low", "high", "system", "code", "unit"],
            IndexTable::Uri => &["value"],
        }
    }
}

impl IndexEntry {
    fn table(&self) -> IndexTable {
        match self {
            IndexEntry::Token { .. } => IndexTable::Token,
            IndexEntry::String { .. } => IndexTable::String,
            IndexEntry::Reference { .. } => IndexTable::Reference,
            IndexEntry::Date { .. } => IndexTable::Date,
            IndexEntry::Number { .. } => IndexTable::Number,
            IndexEntry::Quantity { .. } => IndexTable::Quantity,
            IndexEntry::Uri(_) => IndexTable::Uri,
        }
    }

    fn binds(&self, out: &mut Vec<Bind>) {
        let text = |v: &Option<String>| Bind::OptText(v.clone());
        match self {
            IndexEntry::Token { system, code, text: t, type_system, type_code } => {
                out.extend([text(system), text(code), text(t), text(type_system), text(type_code)])
            }
            IndexEntry::String { normalized, exact } => {
                out.extend([Bind::Text(normalized.clone()), Bind::Text(exact.clone())])
            }
            IndexEntry::Reference { target_type, target_id, url, version, identifier_system, identifier_value } => out
                .extend([
                    text(target_type),
                    text(target_id),
                    text(url),
                    text(version),
                    text(identifier_system),
                    text(identifier_value),
                ]),
            IndexEntry::Date { low, high } => out.extend([Bind::Int(*low), Bind::Int(*high)]),
            IndexEntry::Number { low, high } => out.extend([Bind::OptFloat(*low), Bind::OptFloat(*high)]),
            IndexEntry::Quantity { low, high, system, code, unit } => {
                out.extend([Bind::OptFloat(*low), Bind::OptFloat(*high), text(system), text(code), text(unit)])
            }
            IndexEntry::Uri(v) => out.push(Bind::Text(v.clone())),
        }
    }
}

/// A value bound to a `$N` placeholder.
#[derive(Debug, Clone)]
pub(crate) enum Bind {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    Small(i32),
    OptFloat(Option<f64>),
    Float(f64),
}

/// Binds `$binds` in order onto a `sqlx::query`, for either backend.
macro_rules! bind_all {
    ($query:expr, $binds:expr) => {{
        let mut q = $query;
        for b in $binds {
            q = match b {
                Bind::Text(v) => q.bind(v.clone()),
                Bind::OptText(v) => q.bind(v.clone()),
                Bind::Int(v) => q.bind(*v),
                Bind::Small(v) => q.bind(*v),
                Bind::OptFloat(v) => q.bind(*v),
                Bind::Float(v) => q.bind(*v),
            };
        }
        q
    }};
}
pub(crate) use bind_all;

impl StoreTx {
    /// Replaces the index rows of `resource_type/id` with `rows`, inside this transaction. Call it after `put`;
    /// an empty `rows` (or [`StoreTx::clear_index`]) leaves the resource unfindable by any indexed parameter.
    pub async fn replace_index(&mut self, resource_type: &str, id: &str, rows: &[IndexRow]) -> Result<()> {
        self.clear_index(resource_type, id).await?;
        self.insert_index(resource_type, id, rows).await
    }

    /// Adds the index rows of a resource that has none yet (just created, or re-created after a delete cleared
    /// them): a create skips the per-table deletes of [`StoreTx::replace_index`]. The rows are buffered and written
    /// with one multi-row statement per table for the whole transaction (before a search in it, and at commit), so
    /// a 100-entry transaction costs a handful of index statements instead of hundreds.
    pub async fn insert_index(&mut self, resource_type: &str, id: &str, rows: &[IndexRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let Some(rid) = self.rid_of(resource_type, id).await? else {
            return Err(StoreError::Invalid(format!("index rows for {resource_type}/{id}, which is not stored")));
        };
        self.pending_index.extend(rows.iter().map(|r| (rid, param_key(resource_type, &r.param), r.clone())));
        if self.pending_index.len() >= PENDING_INDEX_ROWS {
            self.flush_index().await?;
        }
        Ok(())
    }

    /// Writes the buffered index rows.
    pub(crate) async fn flush_index(&mut self) -> Result<()> {
        if self.pending_index.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending_index);
        for table in IndexTable::ALL {
            let of_table: Vec<&(i64, i64, IndexRow)> =
                pending.iter().filter(|(_, _, r)| r.value.table() == table).collect();
            for chunk in of_table.chunks(INSERT_CHUNK) {
                let columns = table.value_columns();
                let width = 4 + columns.len();
                let mut sql =
                    format!("INSERT INTO {} (rid, param, grp, comp, {}) VALUES ", table.name(), columns.join(", "));
                let mut binds = Vec::with_capacity(chunk.len() * width);
                for (i, (rid, param, row)) in chunk.iter().enumerate() {
                    if i > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&crate::tx::placeholders(self, i * width + 1, width));
                    binds.push(Bind::Int(*rid));
                    binds.push(Bind::Int(*param));
                    binds.push(Bind::Small(row.group));
                    binds.push(Bind::Small(row.component));
                    row.value.binds(&mut binds);
                }
                with_tx_conn!(self, conn => {
                    bind_all!(sqlx::query(&sql), &binds).execute(&mut *conn).await?;
                });
            }
        }
        Ok(())
    }

    /// Removes every index row of `resource_type/id` (on delete).
    pub async fn clear_index(&mut self, resource_type: &str, id: &str) -> Result<()> {
        let Some(rid) = self.rid_of(resource_type, id).await? else { return Ok(()) };
        self.pending_index.retain(|(owner, _, _)| *owner != rid);
        for table in IndexTable::ALL {
            let sql = format!("DELETE FROM {} WHERE rid = $1", table.name());
            with_tx_conn!(self, conn => {
                sqlx::query(&sql).bind(rid).execute(&mut *conn).await?;
            });
        }
        Ok(())
    }

    /// The `rid` of a stored resource: the one its write in this transaction returned, else read.
    async fn rid_of(&mut self, resource_type: &str, id: &str) -> Result<Option<i64>> {
        if let Some(rid) = self.rids.get(&(resource_type.to_owned(), id.to_owned())) {
            return Ok(Some(*rid));
        }
        let rid = with_tx_conn!(self, conn => {
            sqlx::query_scalar::<_, i64>("SELECT rid FROM resources WHERE resource_type = $1 AND id = $2")
                .bind(resource_type)
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?
        });
        if let Some(rid) = rid {
            self.rids.insert((resource_type.to_owned(), id.to_owned()), rid);
        }
        Ok(rid)
    }
}

/// Converts the index rows of a database written before index rows had numeric keys (migration 0011 renamed its
/// tables `legacy_search_*`): each table's rows are copied with their resource's `rid` and their parameter's
/// [`param_key`], and the legacy tables are dropped, in one transaction. Replicas starting together on PostgreSQL
/// take turns (an advisory lock); the one that comes second finds nothing left. A database without legacy tables
/// (every start after the first) costs one query in a transaction rolled back.
pub(crate) async fn convert_legacy_index(store: &Store) -> Result<()> {
    /// Any constant shared by every replica; it names this conversion's lock.
    const CONVERSION_LOCK: i64 = 0x5d0_0011;
    let mut tx = store.begin().await?;
    let legacy: Vec<String> = match &mut tx.inner {
        crate::tx::TxInner::Sqlite(conn) => {
            sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE type = 'table' AND name LIKE 'legacy_search_%'")
                .fetch_all(&mut **conn)
                .await?
        }
        crate::tx::TxInner::Postgres(conn) => {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CONVERSION_LOCK).execute(&mut **conn).await?;
            sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() \
                 AND table_name LIKE 'legacy_search_%'",
            )
            .fetch_all(&mut **conn)
            .await?
        }
    };
    if legacy.is_empty() {
        return tx.rollback().await;
    }
    let mut done = Vec::new();
    for table in IndexTable::ALL.into_iter().filter(|t| legacy.contains(&format!("legacy_{}", t.name()))) {
        let legacy = format!("legacy_{}", table.name());
        let params: Vec<(String, String)> = with_tx_conn!(tx, conn => {
            sqlx::query_as(&format!("SELECT DISTINCT resource_type, param FROM {legacy}")).fetch_all(&mut *conn).await?
        });
        let columns = table.value_columns().iter().map(|c| format!("x.{c}")).collect::<Vec<_>>().join(", ");
        let insert = format!(
            "INSERT INTO {} (rid, param, grp, comp, {}) SELECT r.rid, $1, x.grp, x.comp, {columns} FROM {legacy} x \
             JOIN resources r ON r.resource_type = x.resource_type AND r.id = x.id \
             WHERE x.resource_type = $2 AND x.param = $3",
            table.name(),
            table.value_columns().join(", ")
        );
        let mut converted = 0;
        for (resource_type, param) in &params {
            converted += with_tx_conn!(tx, conn => {
                sqlx::query(&insert)
                    .bind(param_key(resource_type, param))
                    .bind(resource_type)
                    .bind(param)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected()
            });
        }
        with_tx_conn!(tx, conn => {
            sqlx::query(&format!("DROP TABLE {legacy}")).execute(&mut *conn).await?;
        });
        done.push((table.name(), converted, params.len()));
    }
    tx.commit().await?;
    for (table, rows, parameters) in done {
        tracing::info!(table, rows, parameters, "converted legacy index rows");
    }
    Ok(())
}

/// Which systems a token condition accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemMatch {
    Any,
    /// Only values without a system.
    None,
    Exactly(String),
}

/// How a date or number range relates to the indexed range (the FHIR prefixes). For dates `low`/`high` are the
/// search range; `Ap` means "overlaps `[low, high]`", the caller having widened the range already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOp {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// A date condition on inclusive microsecond bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateCond {
    pub op: RangeOp,
    pub low: i64,
    pub high: i64,
}

/// A number condition: `value` is the written value (ordering prefixes), `[low, high)` its precision interval
/// (`Eq`/`Ne`), or for `Ap` the already widened interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumberCond {
    pub op: RangeOp,
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatch {
    /// The normalised value starts with the (normalised) query.
    Prefix,
    /// The normalised value contains the query.
    Contains,
    /// The value as written equals the query.
    Exact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriMatch {
    Exact,
    /// The indexed URI starts with the query.
    Below,
    /// The query starts with the indexed URI.
    Above,
}

/// A test on one index row.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueTest {
    Token {
        system: SystemMatch,
        code: Option<String>,
    },
    /// The normalised text starts with the query, or one of its words does.
    TokenText(String),
    TokenOfType {
        type_system: Option<String>,
        type_code: String,
        value: String,
    },
    String {
        mode: StringMatch,
        value: String,
    },
    /// A literal reference; `target_type: None` accepts any type.
    Reference {
        target_type: Option<String>,
        target_id: String,
    },
    ReferenceUrl {
        url: String,
        version: Option<String>,
    },
    ReferenceIdentifier {
        system: SystemMatch,
        value: Option<String>,
    },
    Date(DateCond),
    Number(NumberCond),
    /// `system`/`code` as in FHIR: with a system the code must equal `code`; without, `code` matches code or unit.
    Quantity {
        cond: NumberCond,
        system: Option<String>,
        code: Option<String>,
    },
    Uri {
        mode: UriMatch,
        value: String,
    },
}

impl ValueTest {
    fn table(&self) -> IndexTable {
        match self {
            ValueTest::Token { .. } | ValueTest::TokenText(_) | ValueTest::TokenOfType { .. } => IndexTable::Token,
            ValueTest::String { .. } => IndexTable::String,
            ValueTest::Reference { .. } | ValueTest::ReferenceUrl { .. } | ValueTest::ReferenceIdentifier { .. } => {
                IndexTable::Reference
            }
            ValueTest::Date(_) => IndexTable::Date,
            ValueTest::Number(_) => IndexTable::Number,
            ValueTest::Quantity { .. } => IndexTable::Quantity,
            ValueTest::Uri { .. } => IndexTable::Uri,
        }
    }
}

/// One condition on a resource. A [`SearchQuery`] ANDs lists of these, each list ORed.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// The logical id.
    Id(String),
    /// `meta.lastUpdated`, read from the resources table.
    LastUpdated(DateCond),
    /// Some index row of `param` passes `test`.
    Match { param: String, test: ValueTest },
    /// No index row of `param` passes `test` (`:not`).
    NotMatch { param: String, test: ValueTest },
    /// The resource has (`missing: false`) or lacks (`missing: true`) rows of `param` in `table`.
    Missing { param: String, table: IndexTable, missing: bool },
    /// One composite tuple of `param` whose component `i` passes `components[i]`.
    Composite { param: String, components: Vec<ValueTest> },
    /// Chaining: the reference `param` points at a live `target_type` resource satisfying `conds`.
    Chain { param: String, target_type: String, conds: Vec<Vec<Cond>> },
    /// Reverse chaining (`_has`): a live `source_type` resource whose reference `param` points here satisfies `conds`.
    Has { source_type: String, param: String, conds: Vec<Vec<Cond>> },
}

/// What to order results by; ties always fall back to the id, so paging is stable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortBy {
    Id,
    LastUpdated,
    /// A parameter's representative value: the smallest when ascending, the largest when descending, over the
    /// rows of `params` (one parameter, or the several whose rows hold a union parameter's values).
    Param {
        params: Vec<String>,
        table: IndexTable,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub by: SortBy,
    pub descending: bool,
}

/// A type-level search: `clauses` are ANDed, each clause's conditions ORed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchQuery {
    pub resource_type: String,
    pub clauses: Vec<Vec<Cond>>,
    pub sort: Vec<SortKey>,
    /// Page size; 0 fetches no resources (a count-only search).
    pub count: u32,
    pub offset: u64,
    /// Also count every match (a second query).
    pub total: bool,
    /// Whose grants limit the matches.
    pub scope: crate::Scope,
}

/// One page of matches, in order, with the total when asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPage {
    pub resources: Vec<StoredResource>,
    pub total: Option<i64>,
    /// Whether more matches follow this page.
    pub more: bool,
}

/// Most references an include / revinclude step looks at or returns.
pub const MAX_INCLUDES: u32 = 1000;

struct Compiler {
    binds: Vec<Bind>,
    aliases: usize,
    /// Applied to the resources that chains and `_has` look at too, so they cannot reveal what the scope hides.
    scope: crate::Scope,
}

impl Compiler {
    fn new() -> Self {
        Compiler { binds: Vec::new(), aliases: 0, scope: crate::Scope::All }
    }

    fn bind(&mut self, b: Bind) -> String {
        self.binds.push(b);
        format!("${}", self.binds.len())
    }

    fn text(&mut self, s: &str) -> String {
        self.bind(Bind::Text(s.to_owned()))
    }

    fn alias(&mut self, stem: &str) -> String {
        self.aliases += 1;
        format!("{stem}{}", self.aliases)
    }

    /// The placeholder of `resource_type`'s parameter `param` (see [`param_key`]).
    fn param(&mut self, resource_type: &str, param: &str) -> String {
        self.bind(Bind::Int(param_key(resource_type, param)))
    }

    /// `( a OR b ) AND ( c )` over the `resource_type` resource aliased `r`; an empty list is true.
    fn clauses(&mut self, clauses: &[Vec<Cond>], r: &str, resource_type: &str) -> Result<String> {
        let mut parts = Vec::new();
        for clause in clauses {
            if clause.is_empty() {
                continue;
            }
            let ors = clause.iter().map(|c| self.cond(c, r, resource_type)).collect::<Result<Vec<_>>>()?;
            parts.push(format!("({})", ors.join(" OR ")));
        }
        Ok(if parts.is_empty() { "1 = 1".to_owned() } else { parts.join(" AND ") })
    }

    fn owner(&self, x: &str, r: &str) -> String {
        format!("{x}.rid = {r}.rid")
    }

    fn cond(&mut self, cond: &Cond, r: &str, resource_type: &str) -> Result<String> {
        Ok(match cond {
            Cond::Id(id) => format!("{r}.id = {}", self.text(id)),
            Cond::LastUpdated(d) => self.date(d, &format!("{r}.last_updated_us"), &format!("{r}.last_updated_us")),
            Cond::Match { param, test } | Cond::NotMatch { param, test } => {
                let x = self.alias("x");
                let owner = self.owner(&x, r);
                let p = self.param(resource_type, param);
                let t = self.test(test, &x);
                let exists = format!(
                    "EXISTS (SELECT 1 FROM {} {x} WHERE {owner} AND {x}.param = {p} AND {t})",
                    test.table().name()
                );
                if matches!(cond, Cond::NotMatch { .. }) { format!("NOT {exists}") } else { exists }
            }
            Cond::Missing { param, table, missing } => {
                let x = self.alias("x");
                let owner = self.owner(&x, r);
                let p = self.param(resource_type, param);
                let exists = format!("EXISTS (SELECT 1 FROM {} {x} WHERE {owner} AND {x}.param = {p})", table.name());
                if *missing { format!("NOT {exists}") } else { exists }
            }
            Cond::Composite { param, components } => {
                if components.is_empty() {
                    return Err(StoreError::Invalid("a composite condition needs components".into()));
                }
                let p = self.param(resource_type, param);
                let aliases: Vec<String> = components.iter().map(|_| self.alias("c")).collect();
                let first = &aliases[0];
                let mut from = format!("{} {first}", components[0].table().name());
                let mut wheres =
                    vec![self.owner(first, r), format!("{first}.param = {p}"), format!("{first}.comp = 0")];
                for (i, (test, a)) in components.iter().zip(&aliases).enumerate() {
                    if i > 0 {
                        from += &format!(
                            " JOIN {} {a} ON {a}.rid = {first}.rid AND {a}.param = {first}.param AND {a}.grp = {first}.grp AND {a}.comp = {i}",
                            test.table().name()
                        );
                    }
                    wheres.push(self.test(test, a));
                }
                format!("EXISTS (SELECT 1 FROM {from} WHERE {})", wheres.join(" AND "))
            }
            Cond::Chain { param, target_type, conds } => {
                let x = self.alias("x");
                let t = self.alias("t");
                let owner = self.owner(&x, r);
                let p = self.param(resource_type, param);
                let ty = self.text(target_type);
                let inner = self.clauses(conds, &t, target_type)?;
                let scoped = self.scoped(&t);
                format!(
                    "EXISTS (SELECT 1 FROM search_reference {x} JOIN resources {t} ON {t}.resource_type = {x}.target_type \
                     AND {t}.id = {x}.target_id WHERE {owner} AND {x}.param = {p} AND {x}.target_type = {ty} \
                     AND NOT {t}.deleted AND {inner}{scoped})"
                )
            }
            Cond::Has { source_type, param, conds } => {
                let x = self.alias("x");
                let s = self.alias("s");
                let p = self.param(source_type, param);
                let inner = self.clauses(conds, &s, source_type)?;
                let scoped = self.scoped(&s);
                // The parameter key names the source type: rows of `p` belong to `source_type` resources only.
                format!(
                    "EXISTS (SELECT 1 FROM search_reference {x} JOIN resources {s} ON {s}.rid = {x}.rid \
                     WHERE {x}.param = {p} AND {x}.target_id = {r}.id AND {x}.target_type = {r}.resource_type AND NOT {s}.deleted AND {inner}{scoped})"
                )
            }
        })
    }

    /// ` AND <grant condition>` on the resources aliased `alias` for a scoped search; empty otherwise.
    fn scoped(&mut self, alias: &str) -> String {
        match self.scope.organization().map(str::to_owned) {
            Some(org) => {
                let placeholder = self.text(&org);
                format!(" AND {}", scope_filter(&self.scope.clone(), alias, &placeholder))
            }
            None => String::new(),
        }
    }

    /// A clause of same-parameter matches as an uncorrelated `r.rid IN (...)`: the database reads the matching rows
    /// from the value index and probes the resources by `rid`, instead of probing the index per resource.
    fn driver(&mut self, clause: &[Cond], resource_type: &str) -> Result<String> {
        let mut table = None;
        let mut param = None;
        let mut tests = Vec::new();
        for cond in clause {
            let Cond::Match { param: p, test } = cond else {
                return Err(StoreError::Invalid("only matches can drive a search".into()));
            };
            table = Some(test.table());
            param = Some(p);
            tests.push(test);
        }
        let (Some(table), Some(param)) = (table, param) else {
            return Err(StoreError::Invalid("an empty clause cannot drive a search".into()));
        };
        let x = self.alias("d");
        let p = self.param(resource_type, param);
        let ors: Vec<String> = tests.into_iter().map(|t| format!("({})", self.test(t, &x))).collect();
        Ok(format!(
            "r.rid IN (SELECT {x}.rid FROM {} {x} WHERE {x}.param = {p} AND ({}))",
            table.name(),
            ors.join(" OR ")
        ))
    }

    fn system(&mut self, m: &SystemMatch, column: &str) -> String {
        match m {
            SystemMatch::Any => "1 = 1".to_owned(),
            SystemMatch::None => format!("{column} IS NULL"),
            SystemMatch::Exactly(s) => format!("{column} = {}", self.text(s)),
        }
    }

    fn test(&mut self, test: &ValueTest, x: &str) -> String {
        match test {
            ValueTest::Token { system, code } => {
                let code = match code {
                    Some(c) => format!("{x}.code = {}", self.text(c)),
                    None => format!("{x}.code IS NOT NULL"),
                };
                format!("{code} AND {}", self.system(system, &format!("{x}.system")))
            }
            ValueTest::TokenText(q) => {
                let starts = self.text(&format!("{}%", like_escape(q)));
                let word = self.text(&format!("% {}%", like_escape(q)));
                format!("({x}.text_norm LIKE {starts} ESCAPE '\\' OR {x}.text_norm LIKE {word} ESCAPE '\\')")
            }
            ValueTest::TokenOfType { type_system, type_code, value } => {
                let mut s = format!("{x}.code = {} AND {x}.type_code = {}", self.text(value), self.text(type_code));
                if let Some(ts) = type_system {
                    s += &format!(" AND {x}.type_system = {}", self.text(ts));
                }
                s
            }
            ValueTest::String { mode, value } => match mode {
                StringMatch::Exact => format!("{x}.value_exact = {}", self.text(value)),
                StringMatch::Prefix => {
                    format!("{x}.value_norm LIKE {} ESCAPE '\\'", self.text(&format!("{}%", like_escape(value))))
                }
                StringMatch::Contains => {
                    format!("{x}.value_norm LIKE {} ESCAPE '\\'", self.text(&format!("%{}%", like_escape(value))))
                }
            },
            ValueTest::Reference { target_type, target_id } => {
                let mut s = format!("{x}.target_id = {}", self.text(target_id));
                if let Some(t) = target_type {
                    s += &format!(" AND {x}.target_type = {}", self.text(t));
                }
                s
            }
            ValueTest::ReferenceUrl { url, version } => {
                let mut s = format!("{x}.url = {}", self.text(url));
                if let Some(v) = version {
                    s += &format!(" AND {x}.version = {}", self.text(v));
                }
                s
            }
            ValueTest::ReferenceIdentifier { system, value } => {
                let v = match value {
                    Some(v) => format!("{x}.ident_value = {}", self.text(v)),
                    None => format!("{x}.ident_value IS NOT NULL"),
                };
                format!("{v} AND {}", self.system(system, &format!("{x}.ident_system")))
            }
            ValueTest::Date(d) => self.date(d, &format!("{x}.low_us"), &format!("{x}.high_us")),
            ValueTest::Number(n) => self.number(n, x),
            ValueTest::Quantity { cond, system, code } => {
                let unit = match (system, code) {
                    (Some(s), Some(c)) => format!("{x}.system = {} AND {x}.code = {}", self.text(s), self.text(c)),
                    (Some(s), None) => format!("{x}.system = {}", self.text(s)),
                    (None, Some(c)) => {
                        let c1 = self.text(c);
                        let c2 = self.text(c);
                        format!("({x}.code = {c1} OR {x}.unit = {c2})")
                    }
                    (None, None) => "1 = 1".to_owned(),
                };
                format!("{unit} AND {}", self.number(cond, x))
            }
            ValueTest::Uri { mode, value } => match mode {
                UriMatch::Exact => format!("{x}.value = {}", self.text(value)),
                UriMatch::Below => {
                    format!("{x}.value LIKE {} ESCAPE '\\'", self.text(&format!("{}%", like_escape(value))))
                }
                // The indexed URI is a prefix of the query: compare against the query's prefixes of that length.
                UriMatch::Above => {
                    let v = self.text(value);
                    format!("substr({v}, 1, length({x}.value)) = {x}.value")
                }
            },
        }
    }

    /// The R4 prefix table over inclusive ranges `[sl, sh]` (search) and `[tl, th]` (target columns).
    fn date(&mut self, d: &DateCond, tl: &str, th: &str) -> String {
        let sl = self.bind(Bind::Int(d.low));
        let sh = self.bind(Bind::Int(d.high));
        let eq = format!("({tl} >= {sl} AND {th} <= {sh})");
        match d.op {
            RangeOp::Eq => eq,
            RangeOp::Ne => format!("NOT {eq}"),
            RangeOp::Gt => format!("{th} > {sh}"),
            RangeOp::Lt => format!("{tl} < {sl}"),
            RangeOp::Ge => format!("({th} > {sh} OR {eq})"),
            RangeOp::Le => format!("({tl} < {sl} OR {eq})"),
            RangeOp::Sa => format!("{tl} > {sh}"),
            RangeOp::Eb => format!("{th} < {sl}"),
            RangeOp::Ap => format!("({tl} <= {sh} AND {th} >= {sl})"),
        }
    }

    /// Number semantics with NULL bounds open; mirrors the in-memory matcher of the FHIR layer.
    fn number(&mut self, n: &NumberCond, x: &str) -> String {
        let (tl, th) = (format!("{x}.low"), format!("{x}.high"));
        let mut f = |v: f64| self.bind(Bind::Float(v));
        match n.op {
            RangeOp::Eq => format!("({tl} >= {} AND {th} < {})", f(n.low), f(n.high)),
            RangeOp::Ne => format!("({tl} IS NULL OR {th} IS NULL OR {tl} < {} OR {th} >= {})", f(n.low), f(n.high)),
            RangeOp::Gt => format!("({th} IS NULL OR {th} > {})", f(n.value)),
            RangeOp::Lt => format!("({tl} IS NULL OR {tl} < {})", f(n.value)),
            RangeOp::Ge => format!("({th} IS NULL OR {th} >= {})", f(n.value)),
            RangeOp::Le => format!("({tl} IS NULL OR {tl} <= {})", f(n.value)),
            RangeOp::Sa => format!("{tl} > {}", f(n.value)),
            RangeOp::Eb => format!("{th} < {}", f(n.value)),
            RangeOp::Ap => {
                format!("(({tl} IS NULL OR {tl} <= {}) AND ({th} IS NULL OR {th} >= {}))", f(n.high), f(n.low))
            }
        }
    }

    fn order(&mut self, sort: &[SortKey], r: &str, resource_type: &str) -> String {
        let mut keys = Vec::new();
        for key in sort {
            let dir = if key.descending { "DESC" } else { "ASC" };
            let expr = match &key.by {
                SortBy::Id => format!("{r}.id"),
                SortBy::LastUpdated => format!("{r}.last_updated_us"),
                SortBy::Param { params, table } => {
                    let column = match (table, key.descending) {
                        (IndexTable::Token, _) => "code",
                        (IndexTable::String, _) => "value_norm",
                        (IndexTable::Reference, _) => "target_id",
                        (IndexTable::Date, false) => "low_us",
                        (IndexTable::Date, true) => "high_us",
                        (IndexTable::Number | IndexTable::Quantity, false) => "low",
                        (IndexTable::Number | IndexTable::Quantity, true) => "high",
                        (IndexTable::Uri, _) => "value",
                    };
                    let agg = if key.descending { "MAX" } else { "MIN" };
                    let x = self.alias("o");
                    let owner = self.owner(&x, r);
                    let in_params =
                        |c: &mut Self| params.iter().map(|p| c.param(resource_type, p)).collect::<Vec<_>>().join(", ");
                    let p = in_params(self);
                    let sub = format!(
                        "(SELECT {agg}({x}.{column}) FROM {} {x} WHERE {owner} AND {x}.param IN ({p}))",
                        table.name()
                    );
                    // Resources without a value sort last either way; the backends disagree on NULL order otherwise.
                    keys.push(format!("CASE WHEN {sub} IS NULL THEN 1 ELSE 0 END"));
                    let p2 = in_params(self);
                    format!(
                        "(SELECT {agg}({x}.{column}) FROM {} {x} WHERE {owner} AND {x}.param IN ({p2}))",
                        table.name()
                    )
                }
            };
            keys.push(format!("{expr} {dir}"));
            if key.by == SortBy::Id {
                return keys.join(", ");
            }
        }
        keys.push(format!("{r}.id ASC"));
        keys.join(", ")
    }
}

/// How well a clause narrows a search when it drives it (0: not at all). Equality on a reference or a code
/// usually selects a handful of rows out of millions; ranges and prefixes may select most of them.
fn selectivity(clause: &[Cond]) -> u8 {
    let mut param = None;
    let mut score = u8::MAX;
    for cond in clause {
        let Cond::Match { param: p, test } = cond else { return 0 };
        if param.is_some_and(|q: &String| q != p) {
            return 0;
        }
        param = Some(p);
        let s = match test {
            ValueTest::Reference { .. } => 3,
            ValueTest::Token { code: Some(_), .. } | ValueTest::TokenOfType { .. } => 2,
            ValueTest::String { mode: StringMatch::Exact, .. }
            | ValueTest::Uri { mode: UriMatch::Exact, .. }
            | ValueTest::ReferenceUrl { .. } => 2,
            _ => 0,
        };
        score = score.min(s);
    }
    if param.is_none() { 0 } else { score }
}

/// The clause that should drive the query (looked up by index first), if any is selective enough.
fn driving_clause(clauses: &[Vec<Cond>]) -> Option<usize> {
    let (i, score) =
        clauses.iter().enumerate().map(|(i, c)| (i, selectivity(c))).max_by_key(|(i, s)| (*s, usize::MAX - i))?;
    (score > 0).then_some(i)
}

/// Escapes `%`, `_` and the escape character itself for `LIKE ... ESCAPE '\'`.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A search compiled to SQL: the page query and the count query with their bound values.
struct CompiledSearch {
    page_sql: Option<String>,
    binds: Vec<Bind>,
    count_sql: String,
    count_binds: Vec<Bind>,
}

fn compile_search(query: &SearchQuery) -> Result<CompiledSearch> {
    let mut c = Compiler::new();
    c.scope = query.scope.clone();
    let rt = c.text(&query.resource_type);
    let driver = driving_clause(&query.clauses);
    let mut filter = String::new();
    let mut rest = Vec::with_capacity(query.clauses.len());
    for (i, clause) in query.clauses.iter().enumerate() {
        if Some(i) == driver {
            filter = c.driver(clause, &query.resource_type)? + " AND ";
        } else {
            rest.push(clause.clone());
        }
    }
    filter += &c.clauses(&rest, "r", &query.resource_type)?;
    filter += &c.scoped("r");
    let base = format!("FROM resources r WHERE r.resource_type = {rt} AND NOT r.deleted AND {filter}");
    let count_binds = c.binds.clone();
    let count_sql = format!("SELECT COUNT(*) AS n {base}");
    let page_sql = (query.count > 0).then(|| {
        let order = c.order(&query.sort, "r", &query.resource_type);
        let limit = c.bind(Bind::Int(i64::from(query.count) + 1));
        let offset = c.bind(Bind::Int(i64::try_from(query.offset).unwrap_or(i64::MAX)));
        format!("SELECT {SELECT_COLUMNS} {base} ORDER BY {order} LIMIT {limit} OFFSET {offset}")
    });
    Ok(CompiledSearch { page_sql, binds: c.binds, count_sql, count_binds })
}

/// The grant condition of a scoped read; callers check the scope has an organization first.
fn scope_filter(scope: &crate::Scope, alias: &str, placeholder: &str) -> String {
    scope_condition(scope, alias, placeholder).unwrap_or_else(|| "1 = 1".to_owned())
}

/// History as a scoped client may see it, driven by the client's grants rather than by the whole history: a CBO
/// polling `_history` costs what its own referrals hold, however busy the rest of the system is. The directory
/// types are listed alongside (they are few).
pub(crate) async fn scoped_history(store: &Store, query: &crate::HistoryQuery) -> Result<Vec<crate::HistoryEntry>> {
    let Some(org) = query.scope.organization() else {
        return Err(StoreError::Invalid("scoped history needs an organization".into()));
    };
    let mut c = Compiler::new();
    let filters = |c: &mut Compiler| {
        let mut f = String::new();
        if let Some(t) = &query.resource_type {
            f += &format!(" AND h.resource_type = {}", c.text(t));
        }
        if let Some(id) = &query.id {
            f += &format!(" AND h.id = {}", c.text(id));
        }
        if let Some(since) = query.since {
            f += &format!(" AND h.last_updated_us >= {}", c.bind(Bind::Int(since.micros())));
        }
        if let Some(until) = query.until {
            f += &format!(" AND h.last_updated_us <= {}", c.bind(Bind::Int(until.micros())));
        }
        if let Some(cursor) = query.before_seq {
            f += &format!(" AND h.seq < {}", c.bind(Bind::Int(cursor)));
        }
        f
    };
    let granted_filters = filters(&mut c);
    let o = c.text(org);
    let directory_filters = filters(&mut c);
    let directory: Vec<String> = crate::DIRECTORY_TYPES.iter().map(|t| format!("'{t}'")).collect();
    let limit = c.bind(Bind::Int(i64::from(query.limit.max(1))));
    let sql = format!(
        "SELECT seq, resource_type, id, version_id, last_updated_us, deleted, content FROM resource_history \
         WHERE seq IN (\
           SELECT h.seq FROM resource_history h WHERE (h.resource_type, h.id) IN \
             (SELECT g.resource_type, g.id FROM access_grants g WHERE g.organization = {o}){granted_filters} \
           UNION ALL \
           SELECT h.seq FROM resource_history h WHERE h.resource_type IN ({}){directory_filters}\
         ) ORDER BY seq DESC LIMIT {limit}",
        directory.join(", ")
    );
    with_read_pool!(store, pool => {
        let rows = bind_all!(sqlx::query(&sql), &c.binds).fetch_all(pool).await?;
        rows.iter()
            .map(|row| Ok(crate::HistoryEntry { seq: row.try_get("seq")?, resource: row_to_resource(row)? }))
            .collect()
    })
}

/// Runs a compiled search on any executor (the read pool, or a transaction's connection).
macro_rules! run_search {
    ($query:expr, $compiled:expr, $exec:expr) => {{
        let query: &SearchQuery = $query;
        let compiled: &CompiledSearch = $compiled;
        let mut resources = Vec::new();
        let mut more = false;
        if let Some(sql) = &compiled.page_sql {
            let rows = bind_all!(sqlx::query(sql), &compiled.binds).fetch_all($exec).await?;
            resources = rows.iter().map(row_to_resource).collect::<Result<Vec<_>>>()?;
            if resources.len() > query.count as usize {
                resources.truncate(query.count as usize);
                more = true;
            }
        }
        // A first page that holds every match is its own total: no second query.
        let total = if query.total && compiled.page_sql.is_some() && !more && query.offset == 0 {
            Some(resources.len() as i64)
        } else if query.total {
            let n: i64 = bind_all!(sqlx::query(&compiled.count_sql), &compiled.count_binds)
                .fetch_one($exec)
                .await?
                .try_get("n")?;
            Some(n)
        } else {
            None
        };
        Ok::<SearchPage, StoreError>(SearchPage { resources, total, more })
    }};
}

impl StoreTx {
    /// Searches inside this transaction: sees its own writes, and needs no second connection (check-then-write
    /// work such as conditional creates runs its query here).
    pub async fn search(&mut self, query: &SearchQuery) -> Result<SearchPage> {
        self.flush_index().await?;
        let compiled = compile_search(query)?;
        with_tx_conn!(self, conn => run_search!(query, &compiled, &mut *conn))
    }
}

impl Store {
    /// Runs a type-level search: the current, non-deleted resources matching every clause, one page at a time.
    pub async fn search(&self, query: &SearchQuery) -> Result<SearchPage> {
        let compiled = compile_search(query)?;
        // PostgreSQL answers the page and the total on two connections at once: a search's latency is then the
        // longer of the two, not their sum. (SQLite keeps them sequential and skips the count when the first page
        // holds every match: its readers share two cores with everything else.)
        if let (crate::Pools::Postgres(pool), Some(page_sql), true) = (self.pools(), &compiled.page_sql, query.total) {
            let page = async {
                let rows = bind_all!(sqlx::query(page_sql), &compiled.binds).fetch_all(pool).await?;
                rows.iter().map(row_to_resource).collect::<Result<Vec<_>>>()
            };
            let count = async {
                let row = bind_all!(sqlx::query(&compiled.count_sql), &compiled.count_binds).fetch_one(pool).await?;
                Ok::<i64, StoreError>(row.try_get("n")?)
            };
            let (mut resources, total) = tokio::try_join!(page, count)?;
            let more = resources.len() > query.count as usize;
            resources.truncate(query.count as usize);
            return Ok(SearchPage { resources, total: Some(total), more });
        }
        with_read_pool!(self, pool => run_search!(query, &compiled, pool))
    }

    /// SQLite's query plan for a search's page query (`EXPLAIN QUERY PLAN` detail lines); empty on PostgreSQL.
    /// For tests and operators checking that a search is served by the indexes it should be.
    pub async fn explain_search(&self, query: &SearchQuery) -> Result<Vec<String>> {
        let compiled = compile_search(query)?;
        let (Some(sql), crate::Pools::Sqlite { read, .. }) = (&compiled.page_sql, self.pools()) else {
            return Ok(Vec::new());
        };
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let rows = bind_all!(sqlx::query(&explain), &compiled.binds).fetch_all(read).await?;
        rows.iter().map(|row| Ok(row.try_get::<String, _>("detail")?)).collect()
    }

    /// `_include`: the live resources that the reference `param` of the given `source_type` resources points at,
    /// optionally only those of `target_type`.
    pub async fn included(
        &self,
        scope: &crate::Scope,
        source_type: &str,
        source_ids: &[String],
        param: &str,
        target_type: Option<&str>,
    ) -> Result<Vec<StoredResource>> {
        if source_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = Compiler::new();
        let st = c.text(source_type);
        let p = c.param(source_type, param);
        let ids: Vec<String> = source_ids.iter().map(|id| c.text(id)).collect();
        let mut target_filter = String::new();
        if let Some(t) = target_type {
            target_filter = format!(" AND x.target_type = {}", c.text(t));
        }
        let mut filter = String::new();
        if let Some(org) = scope.organization() {
            let placeholder = c.text(org);
            filter += &format!(" AND {}", scope_filter(scope, "r", &placeholder));
        }
        let limit = c.bind(Bind::Int(i64::from(MAX_INCLUDES)));
        let sql = format!(
            "SELECT {SELECT_COLUMNS} FROM resources r WHERE NOT r.deleted AND (r.resource_type, r.id) IN \
             (SELECT x.target_type, x.target_id FROM search_reference x JOIN resources s ON s.rid = x.rid \
             WHERE s.resource_type = {st} AND s.id IN ({}) AND x.param = {p}{target_filter}){filter} ORDER BY r.resource_type, r.id LIMIT {limit}",
            ids.join(", ")
        );
        self.fetch_resources(&sql, &c.binds).await
    }

    /// `_revinclude`: the live `source_type` resources whose reference `param` points at one of `targets`
    /// (`(type, id)` pairs).
    pub async fn revincluded(
        &self,
        scope: &crate::Scope,
        source_type: &str,
        param: &str,
        targets: &[(String, String)],
    ) -> Result<Vec<StoredResource>> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = Compiler::new();
        let st = c.text(source_type);
        let p = c.param(source_type, param);
        // Grouped by type, so each group is one `target_id IN (...)` range on the target index.
        let mut by_type: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
        for (t, id) in targets {
            by_type.entry(t.as_str()).or_default().push(id.as_str());
        }
        let pairs: Vec<String> = by_type
            .into_iter()
            .map(|(t, ids)| {
                let ids: Vec<String> = ids.into_iter().map(|id| c.text(id)).collect();
                let t = c.text(t);
                format!("(x.target_id IN ({}) AND x.target_type = {t})", ids.join(", "))
            })
            .collect();
        let mut filter = String::new();
        if let Some(org) = scope.organization() {
            let placeholder = c.text(org);
            filter = format!(" AND {}", scope_filter(scope, "r", &placeholder));
        }
        let limit = c.bind(Bind::Int(i64::from(MAX_INCLUDES)));
        let sql = format!(
            "SELECT {SELECT_COLUMNS} FROM resources r WHERE r.resource_type = {st} AND NOT r.deleted AND r.rid IN \
             (SELECT x.rid FROM search_reference x WHERE x.param = {p} AND ({})){filter} \
             ORDER BY r.id LIMIT {limit}",
            pairs.join(" OR ")
        );
        self.fetch_resources(&sql, &c.binds).await
    }

    async fn fetch_resources(&self, sql: &str, binds: &[Bind]) -> Result<Vec<StoredResource>> {
        with_read_pool!(self, pool => {
            let rows = bind_all!(sqlx::query(sql), binds).fetch_all(pool).await?;
            rows.iter().map(row_to_resource).collect()
        })
    }

    /// How many index rows one resource has, over all tables (for diagnostics and tests).
    pub async fn index_row_count(&self, resource_type: &str, id: &str) -> Result<i64> {
        let mut total = 0;
        for table in IndexTable::ALL {
            let sql = format!(
                "SELECT COUNT(*) AS n FROM {} WHERE rid = (SELECT rid FROM resources WHERE resource_type = $1 AND id = $2)",
                table.name()
            );
            let n: i64 = with_read_pool!(self, pool => {
                sqlx::query(&sql).bind(resource_type).bind(id).fetch_one(pool).await?.try_get("n")?
            });
            total += n;
        }
        Ok(total)
    }
}

const SELECT_COLUMNS: &str = "r.resource_type, r.id, r.version_id, r.last_updated_us, r.deleted, r.content";

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameter keys are stored in every index row: a change to the function would orphan them all.
    #[test]
    fn parameter_keys_are_stable_and_name_the_resource_type() {
        assert_eq!(param_key("Observation", "code"), 0x338b04e21f01);
        assert_ne!(param_key("Observation", "code"), param_key("Condition", "code"));
        assert!(param_key("Patient", "name") >= 0 && param_key("Patient", "name") < 1 << 48);
    }

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(like_escape("50%_a\\b"), "50\\%\\_a\\\\b");
    }

    #[test]
    fn nested_conditions_number_their_placeholders_in_order() {
        let mut c = Compiler::new();
        let sql = c
            .clauses(
                &[vec![
                    Cond::Id("a".into()),
                    Cond::Chain {
                        param: "subject".into(),
                        target_type: "Patient".into(),
                        conds: vec![vec![Cond::Match {
                            param: "name".into(),
                            test: ValueTest::String { mode: StringMatch::Prefix, value: "x".into() },
                        }]],
                    },
                ]],
                "r",
                "Observation",
            )
            .unwrap();
        assert_eq!(c.binds.len(), 5);
        assert!(sql.contains("$5") && !sql.contains("$6"));
    }
}
