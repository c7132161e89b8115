//! Access scoping in the store: API client credentials, and the grants that decide what a scoped organization sees.
//!
//! A [`Scope`] travels with every read the FHIR layer makes on a client's behalf (read, vread, search, includes,
//! history) and is compiled into the same SQL as the read, so a scoped caller cannot reach a row the grants do not
//! name, whatever the handler above asks for. Grants are rows of `access_grants`, maintained by the write path in
//! the transaction of the write that causes them: a referral Task grants its owner (and an Organization requester)
//! the Task and what it references; a resource a scoped client creates is granted to that client's organization.
//!
//! Client secrets are 256-bit random values; only their SHA-256 is stored (a slow password hash adds nothing
//! against guessing a random 256-bit value and would cost every request).

use base64::Engine;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::time::Timestamp;
use crate::tx::{StoreTx, with_tx_conn};
use crate::{Result, Store, StoreError, autocommit, with_read_pool};

/// Which rows a read may return.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Scope {
    /// Everything (the gateway itself, operators, EHRs).
    #[default]
    All,
    /// Only rows granted to this organization (`Organization/{id}`).
    Organization(String),
}

impl Scope {
    /// The organization whose grants limit this scope.
    pub fn organization(&self) -> Option<&str> {
        match self {
            Scope::All => None,
            Scope::Organization(org) => Some(org),
        }
    }
}

/// The service directory: resource types every scoped client may read (who offers which social-care services
/// where), so a coordination platform can find the CBO to refer to. They carry no patient data.
pub const DIRECTORY_TYPES: [&str; 3] = ["Organization", "HealthcareService", "Location"];

/// An SQL condition limiting the resource rows aliased `alias` to `scope`: directory entries, or rows granted to
/// the scope's organization (bound at `placeholder`). `None` for [`Scope::All`].
pub(crate) fn scope_condition(scope: &Scope, alias: &str, placeholder: &str) -> Option<String> {
    scope.organization().map(|_| {
        let directory: Vec<String> = DIRECTORY_TYPES.iter().map(|t| format!("'{t}'")).collect();
        format!(
            "({alias}.resource_type IN ({}) OR EXISTS (SELECT 1 FROM access_grants g WHERE g.organization = \
             {placeholder} AND g.resource_type = {alias}.resource_type AND g.id = {alias}.id))",
            directory.join(", ")
        )
    })
}

/// A registered API client, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiClient {
    pub client_id: String,
    pub name: String,
    /// `admin`, `ehr`, `cbo` or `registry`.
    pub role: String,
    /// `Organization/{id}`.
    pub organization: String,
    pub created: Timestamp,
    pub revoked: Option<Timestamp>,
}

/// A new client and the bearer token that authenticates it; the token is shown once and never stored.
#[derive(Debug, Clone)]
pub struct NewClientCredentials {
    pub client: ApiClient,
    pub token: String,
}

/// Roles a client may be registered with.
pub const CLIENT_ROLES: [&str; 4] = ["admin", "ehr", "cbo", "registry"];

fn random_bytes<const N: usize>() -> [u8; N] {
    // rand's thread generator is a CSPRNG seeded from the operating system.
    let mut bytes = [0u8; N];
    rand::Rng::fill(&mut rand::rng(), &mut bytes);
    bytes
}

fn secret_digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Splits a bearer token `<client_id>.<secret>`.
fn split_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let id_ok = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && !secret.is_empty() && secret.len() <= 128).then_some((id, secret))
}

fn row_to_client<R: Row>(row: &R) -> Result<ApiClient>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ApiClient {
        client_id: row.try_get("client_id")?,
        name: row.try_get("name")?,
        role: row.try_get("role")?,
        organization: row.try_get("organization")?,
        created: Timestamp(row.try_get("created_us")?),
        revoked: row.try_get::<Option<i64>, _>("revoked_us")?.map(Timestamp),
    })
}

const CLIENT_COLUMNS: &str = "client_id, name, role, organization, created_us, revoked_us";

/// Whether `reference` is a relative `Organization/{id}` reference.
pub fn is_organization_reference(reference: &str) -> bool {
    reference.strip_prefix("Organization/").is_some_and(crate::is_valid_id)
}

impl Store {
    /// Registers a client and returns its token (shown once).
    pub async fn add_client(&self, name: &str, role: &str, organization: &str) -> Result<NewClientCredentials> {
        if !CLIENT_ROLES.contains(&role) {
            return Err(StoreError::Invalid(format!("role must be one of {}", CLIENT_ROLES.join(", "))));
        }
        if !is_organization_reference(organization) {
            return Err(StoreError::Invalid("organization must be a reference Organization/{id}".into()));
        }
        if name.trim().is_empty() || name.len() > 200 {
            return Err(StoreError::Invalid("name must be 1-200 characters".into()));
        }
        let client_id = hex::encode(random_bytes::<8>());
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>());
        let created = Timestamp::now();
        let sql = "INSERT INTO api_clients (client_id, name, role, organization, secret_sha256, created_us) \
                   VALUES ($1, $2, $3, $4, $5, $6)";
        autocommit!(self, pool => {
            sqlx::query(sql)
                .bind(&client_id)
                .bind(name)
                .bind(role)
                .bind(organization)
                .bind(secret_digest(&secret))
                .bind(created.micros())
                .execute(pool)
                .await?;
        });
        let token = format!("{client_id}.{secret}");
        let client = ApiClient {
            client_id,
            name: name.to_owned(),
            role: role.to_owned(),
            organization: organization.to_owned(),
            created,
            revoked: None,
        };
        Ok(NewClientCredentials { client, token })
    }

    /// Every client, newest first, revoked ones included.
    pub async fn list_clients(&self) -> Result<Vec<ApiClient>> {
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM api_clients ORDER BY created_us DESC, client_id");
        with_read_pool!(self, pool => {
            sqlx::query(&sql).fetch_all(pool).await?.iter().map(row_to_client).collect()
        })
    }

    /// Revokes a client; `false` when no such live client exists.
    pub async fn revoke_client(&self, client_id: &str) -> Result<bool> {
        let sql = "UPDATE api_clients SET revoked_us = $1 WHERE client_id = $2 AND revoked_us IS NULL";
        let done = autocommit!(self, pool => {
            sqlx::query(sql).bind(Timestamp::now().micros()).bind(client_id).execute(pool).await?.rows_affected()
        });
        Ok(done == 1)
    }

    /// The live client a bearer token belongs to, or `None` for unknown, malformed, wrong or revoked tokens.
    pub async fn authenticate_client(&self, token: &str) -> Result<Option<ApiClient>> {
        let Some((client_id, secret)) = split_token(token) else {
            return Ok(None);
        };
        let sql = format!("SELECT {CLIENT_COLUMNS}, secret_sha256 FROM api_clients WHERE client_id = $1");
        let found = with_read_pool!(self, pool => {
            match sqlx::query(&sql).bind(client_id).fetch_optional(pool).await? {
                Some(row) => Some((row_to_client(&row)?, row.try_get::<String, _>("secret_sha256")?)),
                None => None,
            }
        });
        Ok(found.and_then(|(client, stored)| {
            let presented = secret_digest(secret);
            let same = constant_time_eq(presented.as_bytes(), stored.as_bytes());
            (same && client.revoked.is_none()).then_some(client)
        }))
    }

    /// The current version of a resource if `scope` may see it (deleted tombstones included, as [`Store::read`]).
    pub async fn read_as(&self, scope: &Scope, resource_type: &str, id: &str) -> Result<Option<crate::StoredResource>> {
        if !self.visible(scope, resource_type, id).await? {
            return Ok(None);
        }
        self.read(resource_type, id).await
    }

    /// One version from history if `scope` may see the resource.
    pub async fn vread_as(
        &self,
        scope: &Scope,
        resource_type: &str,
        id: &str,
        version_id: i64,
    ) -> Result<Option<crate::StoredResource>> {
        if !self.visible(scope, resource_type, id).await? {
            return Ok(None);
        }
        self.vread(resource_type, id, version_id).await
    }

    /// Whether `scope` may see the resource (always for [`Scope::All`] and for directory entries).
    pub async fn visible(&self, scope: &Scope, resource_type: &str, id: &str) -> Result<bool> {
        let (sql, org) = match grant_check(scope, resource_type, false) {
            GrantCheck::Answer(answer) => return Ok(answer),
            GrantCheck::Query { sql, organization } => (sql, organization),
        };
        with_read_pool!(self, pool => {
            Ok(sqlx::query(sql).bind(org).bind(resource_type).bind(id).fetch_optional(pool).await?.is_some())
        })
    }
}

/// How a grant check is decided: by the rules alone, or by a query on `access_grants` (`$1` organization, `$2`
/// type, `$3` id).
enum GrantCheck<'a> {
    Answer(bool),
    Query { sql: &'static str, organization: &'a str },
}

/// Everything is visible to [`Scope::All`] and the directory to every scope; otherwise a grant decides (with
/// `authored_only`, one the organization holds because it created the resource).
fn grant_check<'a>(scope: &'a Scope, resource_type: &str, authored_only: bool) -> GrantCheck<'a> {
    let Some(organization) = scope.organization() else { return GrantCheck::Answer(true) };
    if authored_only {
        let sql = "SELECT 1 AS one FROM access_grants WHERE organization = $1 AND resource_type = $2 AND id = $3 \
                   AND via_task = ''";
        return GrantCheck::Query { sql, organization };
    }
    if DIRECTORY_TYPES.contains(&resource_type) {
        return GrantCheck::Answer(true);
    }
    let sql = "SELECT 1 AS one FROM access_grants WHERE organization = $1 AND resource_type = $2 AND id = $3 LIMIT 1";
    GrantCheck::Query { sql, organization }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A resource reference granted to an organization.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    pub organization: String,
    pub resource_type: String,
    pub id: String,
}

impl StoreTx {
    /// Whether `scope` may see the resource, inside this transaction (sees its own grants).
    pub async fn visible(&mut self, scope: &Scope, resource_type: &str, id: &str) -> Result<bool> {
        self.check_grant(grant_check(scope, resource_type, false), resource_type, id).await
    }

    /// Whether the scope's organization created the resource (a grant not made through a Task).
    pub async fn authored(&mut self, scope: &Scope, resource_type: &str, id: &str) -> Result<bool> {
        self.check_grant(grant_check(scope, resource_type, true), resource_type, id).await
    }

    async fn check_grant(&mut self, check: GrantCheck<'_>, resource_type: &str, id: &str) -> Result<bool> {
        let (sql, org) = match check {
            GrantCheck::Answer(answer) => return Ok(answer),
            GrantCheck::Query { sql, organization } => (sql, organization),
        };
        with_tx_conn!(self, conn => {
            Ok(sqlx::query(sql).bind(org).bind(resource_type).bind(id).fetch_optional(&mut *conn).await?.is_some())
        })
    }

    /// Replaces the grants made through referral Task `task_id` with `grants`.
    pub async fn set_task_grants(&mut self, task_id: &str, grants: &[Grant]) -> Result<()> {
        with_tx_conn!(self, conn => {
            sqlx::query("DELETE FROM access_grants WHERE via_task = $1").bind(task_id).execute(&mut *conn).await?;
        });
        self.insert_grants(task_id, grants).await
    }

    /// Adds grants through `via_task` (`""` for a resource the organization created itself) and keeps existing ones.
    pub async fn insert_grants(&mut self, via_task: &str, grants: &[Grant]) -> Result<()> {
        for chunk in grants.chunks(100) {
            let mut sql = String::from("INSERT INTO access_grants (organization, resource_type, id, via_task) VALUES ");
            for i in 0..chunk.len() {
                let b = i * 4;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql += &format!("(${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4);
            }
            sql += " ON CONFLICT DO NOTHING";
            with_tx_conn!(self, conn => {
                let mut q = sqlx::query(&sql);
                for g in chunk {
                    q = q.bind(&g.organization).bind(&g.resource_type).bind(&g.id).bind(via_task);
                }
                q.execute(&mut *conn).await?;
            });
        }
        Ok(())
    }

    /// The (organization, Task) pairs holding a grant on a resource through a Task: whose grants must be
    /// recomputed when that resource (a Task's focus) changes what it references.
    pub async fn task_grants_on(&mut self, resource_type: &str, id: &str) -> Result<Vec<(String, String)>> {
        let sql = "SELECT DISTINCT organization, via_task FROM access_grants \
                   WHERE resource_type = $1 AND id = $2 AND via_task <> ''";
        with_tx_conn!(self, conn => {
            let rows = sqlx::query(sql).bind(resource_type).bind(id).fetch_all(&mut *conn).await?;
            rows.iter().map(|r| Ok((r.try_get("organization")?, r.try_get("via_task")?))).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_into_a_hex_client_id_and_a_secret() {
        assert_eq!(split_token("0123456789abcdef.s3cr3t"), Some(("0123456789abcdef", "s3cr3t")));
        assert_eq!(split_token("0123456789abcdef."), None);
        assert_eq!(split_token("short.secret"), None);
        assert_eq!(split_token("no-dot-at-all"), None);
        assert_eq!(split_token(&format!("0123456789abcdef.{}", "x".repeat(129))), None);
    }

    #[test]
    fn digests_compare_in_constant_time_and_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
