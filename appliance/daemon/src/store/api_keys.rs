//! Queries on `api_keys`. Rows hold a SHA-256 of the canonical key and a
//! short hint, never the key; hashing is the `keys` module's job.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{Error, Result};

/// One stored API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    /// Row id, shown by `lelantos keys list`.
    pub id: i64,
    /// Operator-chosen label.
    pub name: String,
    /// Lowercase hex SHA-256 of the canonical key.
    pub key_hash: String,
    /// Last few characters of the key, to tell keys apart; not secret.
    pub prefix_hint: String,
    /// Creation time (unix ms).
    pub created_at_ms: i64,
    /// Last successful authentication (unix ms), coarse.
    pub last_used_at_ms: Option<i64>,
    /// Revocation time (unix ms); a revoked key never authenticates.
    pub revoked_at_ms: Option<i64>,
}

const COLUMNS: &str = "id, name, key_hash, prefix_hint, created_at, last_used_at, revoked_at";

fn read_row(r: &Row<'_>) -> rusqlite::Result<ApiKeyRow> {
    Ok(ApiKeyRow {
        id: r.get(0)?,
        name: r.get(1)?,
        key_hash: r.get(2)?,
        prefix_hint: r.get(3)?,
        created_at_ms: r.get(4)?,
        last_used_at_ms: r.get(5)?,
        revoked_at_ms: r.get(6)?,
    })
}

/// Stores a new key and returns its row.
pub fn insert(
    conn: &Connection,
    name: &str,
    key_hash: &str,
    prefix_hint: &str,
    now_ms: i64,
) -> Result<ApiKeyRow> {
    conn.execute(
        "INSERT INTO api_keys (name, key_hash, prefix_hint, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![name, key_hash, prefix_hint, now_ms],
    )
    .map_err(Error::InsertApiKey)?;
    Ok(ApiKeyRow {
        id: conn.last_insert_rowid(),
        name: name.to_owned(),
        key_hash: key_hash.to_owned(),
        prefix_hint: prefix_hint.to_owned(),
        created_at_ms: now_ms,
        last_used_at_ms: None,
        revoked_at_ms: None,
    })
}

/// All keys, revoked ones included, by id.
pub fn list(conn: &Connection) -> Result<Vec<ApiKeyRow>> {
    let mut stmt = conn
        .prepare(&format!("SELECT {COLUMNS} FROM api_keys ORDER BY id"))
        .map_err(Error::QueryApiKeys)?;
    stmt.query_map([], read_row)
        .map_err(Error::QueryApiKeys)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(Error::QueryApiKeys)
}

/// The key with this hash, if any.
pub fn get_by_hash(conn: &Connection, key_hash: &str) -> Result<Option<ApiKeyRow>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM api_keys WHERE key_hash = ?1"),
        [key_hash],
        read_row,
    )
    .optional()
    .map_err(Error::QueryApiKeys)
}

/// The key with this id, if any.
pub fn get(conn: &Connection, id: i64) -> Result<Option<ApiKeyRow>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM api_keys WHERE id = ?1"),
        [id],
        read_row,
    )
    .optional()
    .map_err(Error::QueryApiKeys)
}

/// Keys whose hint equals `hint`.
pub fn find_by_hint(conn: &Connection, hint: &str) -> Result<Vec<ApiKeyRow>> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE prefix_hint = ?1 ORDER BY id"
        ))
        .map_err(Error::QueryApiKeys)?;
    stmt.query_map([hint], read_row)
        .map_err(Error::QueryApiKeys)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(Error::QueryApiKeys)
}

/// Marks a key revoked. Idempotent: an earlier revocation time is kept.
/// Returns false if no such key exists.
pub fn revoke(conn: &Connection, id: i64, now_ms: i64) -> Result<bool> {
    let changed = conn
        .execute(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
            params![id, now_ms],
        )
        .map_err(|source| Error::UpdateApiKey { id, source })?;
    Ok(changed > 0)
}

/// Records a successful authentication.
pub fn touch_last_used(conn: &Connection, id: i64, now_ms: i64) -> Result<()> {
    conn.execute(
        "UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1",
        params![id, now_ms],
    )
    .map_err(|source| Error::UpdateApiKey { id, source })?;
    Ok(())
}
