//! Queries on `sandbox_events`: the append-only lifecycle log that the logs
//! endpoints merge with process output.
//!
//! Events belong to a sandbox row (foreign key, cascading delete), so an
//! event for an unknown sandbox is refused rather than orphaned.

use rusqlite::{Connection, params};

use super::{Error, Result};

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent<'a> {
    /// The sandbox.
    pub sandbox_id: &'a str,
    /// The boot/resume it happened in.
    pub lifecycle_id: &'a str,
    /// When it happened (unix ms).
    pub ts_ms: i64,
    /// Short machine-readable kind, e.g. `pausing`, `paused`.
    pub kind: &'a str,
    /// Human-readable message.
    pub message: &'a str,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Insertion order; breaks ties between equal timestamps.
    pub id: i64,
    /// The sandbox.
    pub sandbox_id: String,
    /// The boot/resume it happened in.
    pub lifecycle_id: String,
    /// When it happened (unix ms).
    pub ts_ms: i64,
    /// Machine-readable kind.
    pub kind: String,
    /// Human-readable message.
    pub message: String,
}

/// Appends one event and returns its id.
pub fn append(conn: &Connection, event: &NewEvent<'_>) -> Result<i64> {
    conn.execute(
        "INSERT INTO sandbox_events (sandbox_id, lifecycle_id, ts_ms, kind, message) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            event.sandbox_id,
            event.lifecycle_id,
            event.ts_ms,
            event.kind,
            event.message
        ],
    )
    .map_err(|source| Error::AppendEvent {
        sandbox_id: event.sandbox_id.to_owned(),
        source,
    })?;
    Ok(conn.last_insert_rowid())
}

/// Events of one sandbox with `from_ms <= ts_ms < to_ms` (either bound
/// optional), oldest first, at most `limit` (`None`: all).
pub fn list(
    conn: &Connection,
    sandbox_id: &str,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    limit: Option<u32>,
) -> Result<Vec<EventRow>> {
    let step = |source| Error::QueryEvents {
        sandbox_id: sandbox_id.to_owned(),
        source,
    };
    let mut stmt = conn
        .prepare(
            "SELECT id, sandbox_id, lifecycle_id, ts_ms, kind, message FROM sandbox_events \
             WHERE sandbox_id = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 \
             ORDER BY ts_ms, id LIMIT ?4",
        )
        .map_err(step)?;
    // SQLite treats a negative LIMIT as "no limit".
    let limit = limit.map_or(-1, i64::from);
    let rows = stmt
        .query_map(
            params![
                sandbox_id,
                from_ms.unwrap_or(i64::MIN),
                to_ms.unwrap_or(i64::MAX),
                limit
            ],
            |r| {
                Ok(EventRow {
                    id: r.get(0)?,
                    sandbox_id: r.get(1)?,
                    lifecycle_id: r.get(2)?,
                    ts_ms: r.get(3)?,
                    kind: r.get(4)?,
                    message: r.get(5)?,
                })
            },
        )
        .map_err(step)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(step)?;
    Ok(rows)
}

/// Appends several events of one sandbox in one transaction (console
/// output arrives in bursts).
pub fn append_many(conn: &Connection, events: &[NewEvent<'_>]) -> Result<()> {
    let Some(first) = events.first() else {
        return Ok(());
    };
    let fail = |source| Error::AppendEvent {
        sandbox_id: first.sandbox_id.to_owned(),
        source,
    };
    let tx = conn.unchecked_transaction().map_err(fail)?;
    for event in events {
        append(&tx, event)?;
    }
    tx.commit().map_err(fail)
}
