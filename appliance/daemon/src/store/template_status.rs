//! Queries on `template_status`: what the reconciler last concluded about
//! each template (and, under the empty name, about its source).

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{Error, Result};

/// One status row. Timestamps are unix ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusRow {
    /// Template name; empty for the source.
    pub name: String,
    /// `Ready`, `Reconciling`, `Stalled` or `Draining`.
    pub phase: String,
    /// Machine-readable reason (`BuildSucceeded`, `BuildFailed`, …).
    pub reason: String,
    /// Human-readable detail (the build error, the parse error).
    pub message: String,
    /// Source revision applied.
    pub revision: Option<String>,
    /// Build serving now.
    pub build_id: Option<String>,
    /// Build the current definition asks for.
    pub desired_build: Option<String>,
    /// Log of the last build.
    pub build_log: Option<String>,
    /// Desired warm pool size (`pools.yaml`).
    pub pool_desired: u32,
    /// Last change.
    pub updated_at_ms: i64,
}

/// Inserts or replaces a row.
pub fn upsert(conn: &Connection, row: &StatusRow) -> Result<()> {
    conn.execute(
        "INSERT INTO template_status (name, phase, reason, message, revision, build_id, \
         desired_build, build_log, pool_desired, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
         ON CONFLICT(name) DO UPDATE SET phase = ?2, reason = ?3, message = ?4, revision = ?5, \
         build_id = ?6, desired_build = ?7, build_log = ?8, pool_desired = ?9, updated_at = ?10",
        params![
            row.name,
            row.phase,
            row.reason,
            row.message,
            row.revision,
            row.build_id,
            row.desired_build,
            row.build_log,
            row.pool_desired,
            row.updated_at_ms
        ],
    )
    .map_err(Error::QueryStatus)?;
    Ok(())
}

/// One row by name.
pub fn get(conn: &Connection, name: &str) -> Result<Option<StatusRow>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM template_status WHERE name = ?1"),
        [name],
        read,
    )
    .optional()
    .map_err(Error::QueryStatus)
}

/// Every row, by name (the source first).
pub fn list(conn: &Connection) -> Result<Vec<StatusRow>> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {COLUMNS} FROM template_status ORDER BY name"
        ))
        .map_err(Error::QueryStatus)?;
    let rows = stmt
        .query_map([], read)
        .map_err(Error::QueryStatus)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(Error::QueryStatus)?;
    Ok(rows)
}

/// Deletes a row; false if absent.
pub fn delete(conn: &Connection, name: &str) -> Result<bool> {
    let n = conn
        .execute("DELETE FROM template_status WHERE name = ?1", [name])
        .map_err(Error::QueryStatus)?;
    Ok(n > 0)
}

const COLUMNS: &str = "name, phase, reason, message, revision, build_id, desired_build, \
     build_log, pool_desired, updated_at";

fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<StatusRow> {
    Ok(StatusRow {
        name: r.get(0)?,
        phase: r.get(1)?,
        reason: r.get(2)?,
        message: r.get(3)?,
        revision: r.get(4)?,
        build_id: r.get(5)?,
        desired_build: r.get(6)?,
        build_log: r.get(7)?,
        pool_desired: r.get(8)?,
        updated_at_ms: r.get(9)?,
    })
}
