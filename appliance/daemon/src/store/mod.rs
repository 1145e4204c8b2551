//! SQLite state: the durable record of sandboxes, their lifecycle events and
//! API keys.
//!
//! This module owns the schema and plain query functions, nothing more. It
//! does not decide anything: `sandboxes` is the only writer of sandbox state
//! (STYLE.md §2) and `keys` owns key hashing. Query functions take a
//! [`rusqlite::Connection`] so callers can group several of them in one
//! transaction (a `Transaction` derefs to a `Connection`).
//!
//! ```text
//!   data_dir/lelantos.db  (+ -wal, -shm)
//!     sandboxes       one row per sandbox_id, state as text
//!     sandbox_events  append-only lifecycle log, cascades on sandbox delete
//!     api_keys        SHA-256 of the canonical key, never the key
//! ```
//!
//! Conventions: every timestamp is unix milliseconds (UTC) in an `INTEGER`
//! column, and the Rust field carries an `_ms` suffix. JSON columns
//! (`metadata`, `env_vars`) hold string→string objects.
//!
//! The connection runs in WAL mode so API reads never wait on the writer,
//! with `foreign_keys=ON` and a busy timeout so two writers queue instead of
//! failing at once. Migrations are embedded and forward-only; they run at
//! open, and a database written by a newer build is refused rather than
//! guessed at.

pub mod api_keys;
pub mod events;
mod migrations;
pub mod published_templates;
pub mod sandboxes;
pub mod template_status;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

pub use migrations::SCHEMA_VERSION;

/// File name of the database inside the data directory.
pub const DB_FILE_NAME: &str = "lelantos.db";

/// How long a statement waits for another connection's write lock before it
/// fails with `SQLITE_BUSY`. Writes are short, so this is only ever reached
/// when something is wrong.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors from opening the database or running a query.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory could not be created.
    #[error("create data dir {path}")]
    CreateDataDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// SQLite could not open the database file.
    #[error("open database {path}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
    /// Setting a connection pragma (WAL, foreign keys, busy timeout) failed.
    #[error("configure connection ({pragma})")]
    Configure {
        /// The pragma being set.
        pragma: &'static str,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
    /// Reading the schema version failed.
    #[error("read schema version")]
    ReadSchemaVersion(#[source] rusqlite::Error),
    /// The database was written by a newer build; we never downgrade.
    #[error("database schema version {found} is newer than this build knows ({known})")]
    SchemaTooNew {
        /// `PRAGMA user_version` found in the file.
        found: i64,
        /// The newest version this build has migrations for.
        known: i64,
    },
    /// Applying one migration failed; the database stays at the version
    /// before it.
    #[error("apply migration to version {version}")]
    Migrate {
        /// The version the migration would have produced.
        version: i64,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A sandbox row with this id already exists.
    #[error("sandbox {sandbox_id} already exists")]
    SandboxExists {
        /// The duplicate id.
        sandbox_id: String,
    },
    /// Inserting a sandbox row failed.
    #[error("insert sandbox {sandbox_id}")]
    InsertSandbox {
        /// The sandbox.
        sandbox_id: String,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
    /// Updating a sandbox row failed.
    #[error("update sandbox {sandbox_id}")]
    UpdateSandbox {
        /// The sandbox.
        sandbox_id: String,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
    /// Deleting a sandbox row failed.
    #[error("delete sandbox {sandbox_id}")]
    DeleteSandbox {
        /// The sandbox.
        sandbox_id: String,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
    /// Reading sandbox rows failed.
    #[error("query sandboxes")]
    QuerySandboxes(#[source] rusqlite::Error),
    /// Reading or writing template status or published templates failed.
    #[error("query template records")]
    QueryStatus(#[source] rusqlite::Error),
    /// A JSON column could not be encoded.
    #[error("encode {column} of sandbox {sandbox_id}")]
    EncodeJson {
        /// The sandbox.
        sandbox_id: String,
        /// The JSON column.
        column: &'static str,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A stored JSON column could not be decoded.
    #[error("decode {column} of sandbox {sandbox_id}")]
    DecodeJson {
        /// The sandbox.
        sandbox_id: String,
        /// The JSON column.
        column: &'static str,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// Appending a lifecycle event failed (for example, unknown sandbox).
    #[error("append event for sandbox {sandbox_id}")]
    AppendEvent {
        /// The sandbox.
        sandbox_id: String,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
    /// Reading lifecycle events failed.
    #[error("query events of sandbox {sandbox_id}")]
    QueryEvents {
        /// The sandbox.
        sandbox_id: String,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
    /// Inserting an API key failed.
    #[error("insert api key")]
    InsertApiKey(#[source] rusqlite::Error),
    /// Reading API keys failed.
    #[error("query api keys")]
    QueryApiKeys(#[source] rusqlite::Error),
    /// Updating an API key failed.
    #[error("update api key {id}")]
    UpdateApiKey {
        /// The key id.
        id: i64,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One open, migrated connection to the state database.
///
/// `Store` is `Send` but not `Sync`: give each thread (or blocking task) its
/// own `Store`; WAL lets them read concurrently while one writes.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) `data_dir/lelantos.db`, configures the
    /// connection and applies pending migrations.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::CreateDataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        Self::open_file(&data_dir.join(DB_FILE_NAME))
    }

    /// Opens a database at an exact file path (tests, tools).
    pub fn open_file(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::init(conn, true)
    }

    /// Opens a private in-memory database (unit tests). WAL does not apply to
    /// memory databases; everything else is the same.
    pub fn open_in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(|source| Error::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Self::init(conn, false)
    }

    fn init(mut conn: Connection, wal: bool) -> Result<Self> {
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|source| Error::Configure {
                pragma: "busy_timeout",
                source,
            })?;
        if wal {
            // journal_mode answers with the mode in force; a file system that
            // cannot do WAL would silently keep "delete", so check it.
            let mode: String = conn
                .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
                .map_err(|source| Error::Configure {
                    pragma: "journal_mode",
                    source,
                })?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(Error::Configure {
                    pragma: "journal_mode",
                    source: rusqlite::Error::InvalidQuery,
                });
            }
            // NORMAL is durable across process crashes in WAL mode; only a
            // power loss can drop the last commits, which recovery handles.
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(|source| Error::Configure {
                    pragma: "synchronous",
                    source,
                })?;
        }
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(|source| Error::Configure {
                pragma: "foreign_keys",
                source,
            })?;
        migrations::apply(&mut conn)?;
        Ok(Self { conn })
    }

    /// The connection, for the query functions in the submodules.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Mutable access, to open a transaction spanning several queries.
    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<i64> {
        migrations::current_version(&self.conn)
    }

    /// The journal mode in force (`"wal"` for file databases).
    pub fn journal_mode(&self) -> Result<String> {
        self.conn
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .map_err(|source| Error::Configure {
                pragma: "journal_mode",
                source,
            })
    }
}

/// The current time as unix milliseconds, the unit of every stored timestamp.
pub fn now_ms() -> i64 {
    // A clock before 1970 or past year 292 million is not worth an error
    // path: clamp instead.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// True when `err` is a UNIQUE / PRIMARY KEY constraint violation.
fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

#[cfg(test)]
mod tests;
