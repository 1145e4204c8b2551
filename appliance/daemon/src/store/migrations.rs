//! Forward-only schema migrations, embedded in the binary.
//!
//! `PRAGMA user_version` holds the number of migrations applied. Each one
//! runs in its own transaction together with the version bump, so a crash
//! leaves the database at a whole version.

use rusqlite::Connection;

use super::{Error, Result};

/// Migration `i` takes the schema from version `i` to `i + 1`.
/// Append only: a released entry never changes.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_template_status.sql"),
    include_str!("migrations/0003_published_templates.sql"),
];

/// The schema version this build produces.
// A handful of entries: the cast cannot wrap.
#[allow(clippy::cast_possible_wrap)]
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(super) fn current_version(conn: &Connection) -> Result<i64> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(Error::ReadSchemaVersion)
}

/// Brings the database up to [`SCHEMA_VERSION`]; a no-op when it is there.
pub(super) fn apply(conn: &mut Connection) -> Result<()> {
    let found = current_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS.iter())
        .skip_while(|(v, _)| *v <= found)
    {
        let step = |source| Error::Migrate { version, source };
        let tx = conn.transaction().map_err(step)?;
        tx.execute_batch(sql).map_err(step)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(step)?;
        tx.commit().map_err(step)?;
    }
    Ok(())
}
