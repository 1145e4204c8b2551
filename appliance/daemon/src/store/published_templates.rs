//! Queries on `published_templates`: API-built templates, as JSON records
//! owned by the `templates` module.

use rusqlite::{Connection, params};

use super::{Error, Result};

/// Inserts or replaces the record of `name`.
pub fn upsert(conn: &Connection, name: &str, record: &str, now_ms: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO published_templates (name, record, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT(name) DO UPDATE SET record = ?2, updated_at = ?3",
        params![name, record, now_ms],
    )
    .map_err(Error::QueryStatus)?;
    Ok(())
}

/// Every `(name, record)`.
pub fn list(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut stmt = conn
        .prepare("SELECT name, record FROM published_templates ORDER BY name")
        .map_err(Error::QueryStatus)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(Error::QueryStatus)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(Error::QueryStatus)?;
    Ok(rows)
}

/// Deletes the record of `name`; false if there was none.
pub fn delete(conn: &Connection, name: &str) -> Result<bool> {
    let n = conn
        .execute("DELETE FROM published_templates WHERE name = ?1", [name])
        .map_err(Error::QueryStatus)?;
    Ok(n > 0)
}
