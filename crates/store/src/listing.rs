//! Newest-first listings with optional filters (journal, outbound log, history): placeholders are numbered in the
//! order their values are bound, whatever mix of text and number filters a query has.

use crate::search::Bind;

/// A listing query being built: `SELECT … WHERE 1 = 1` plus the filters added so far.
pub(crate) struct Listing {
    sql: String,
    pub(crate) binds: Vec<Bind>,
}

impl Listing {
    /// `select` ends with a `WHERE` clause the filters can be ANDed to (e.g. `… WHERE 1 = 1`).
    pub(crate) fn new(select: String) -> Listing {
        Listing { sql: select, binds: Vec::new() }
    }

    fn placeholder(&mut self, bind: Bind) -> String {
        self.binds.push(bind);
        format!("${}", self.binds.len())
    }

    /// Adds ` AND {left} {value}`, e.g. `text("state =", …)`.
    pub(crate) fn text(&mut self, left: &str, value: impl Into<String>) {
        let p = self.placeholder(Bind::Text(value.into()));
        self.sql += &format!(" AND {left} {p}");
    }

    /// Adds ` AND {left} {value}`, e.g. `number("id <", …)`.
    pub(crate) fn number(&mut self, left: &str, value: i64) {
        let p = self.placeholder(Bind::Int(value));
        self.sql += &format!(" AND {left} {p}");
    }

    /// The finished SQL: newest first by `key`, at most `limit` rows.
    pub(crate) fn newest_first(&mut self, key: &str, limit: i64) -> String {
        let p = self.placeholder(Bind::Int(limit));
        format!("{} ORDER BY {key} DESC LIMIT {p}", self.sql)
    }
}
