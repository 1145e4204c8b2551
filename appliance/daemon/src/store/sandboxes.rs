//! Queries on the `sandboxes` table.
//!
//! State is stored as the text name of the core lifecycle state; this module
//! neither parses nor checks it, because legality belongs to the `sandboxes`
//! owner (STYLE.md §2). Listing pages through `(started_at, sandbox_id)`, a
//! total order, so a cursor is stable while rows are added or removed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{Error, Result, is_unique_violation};

/// One sandbox as stored. Timestamps are unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRow {
    /// Stable, user-facing id.
    pub sandbox_id: String,
    /// Id of the current boot/resume of this sandbox.
    pub lifecycle_id: String,
    /// Template the sandbox was created from.
    pub template_id: String,
    /// Template alias used at create, if any.
    pub alias: Option<String>,
    /// Lifecycle state name (see `lelantos-core`).
    pub state: String,
    /// Why the sandbox entered `state` (for example a failure cause).
    pub state_reason: Option<String>,
    /// vCPUs.
    pub cpu_count: u32,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// Root disk size in MiB.
    pub disk_size_mb: u32,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// Environment variables passed to envd `/init`.
    pub env_vars: BTreeMap<String, String>,
    /// envd access token of a `secure` sandbox; needed again at resume.
    pub envd_access_token: Option<String>,
    /// Whether guest egress is allowed.
    pub allow_internet_access: bool,
    /// Pause instead of kill when `end_at` passes.
    pub auto_pause: bool,
    /// When the sandbox started (unix ms).
    pub started_at_ms: i64,
    /// When the sandbox times out (unix ms).
    pub end_at_ms: i64,
    /// VM driver running it (`qemu`, `cloud-hypervisor`), once chosen.
    pub vm_driver: Option<String>,
    /// Per-VM working directory, once allocated.
    pub vm_dir: Option<String>,
    /// Row creation time (unix ms).
    pub created_at_ms: i64,
    /// Last update time (unix ms).
    pub updated_at_ms: i64,
}

/// Sort direction of a listing, by `(started_at, sandbox_id)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

/// Position after the last row of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// `started_at` of the last row returned.
    pub started_at_ms: i64,
    /// `sandbox_id` of the last row returned.
    pub sandbox_id: String,
}

impl Cursor {
    /// Opaque text form for a `X-Next-Token` header: `<ms>:<sandbox_id>`.
    pub fn to_token(&self) -> String {
        format!("{}:{}", self.started_at_ms, self.sandbox_id)
    }

    /// Parses [`Cursor::to_token`] output; `None` for anything else.
    pub fn from_token(token: &str) -> Option<Self> {
        // The number comes first, so splitting at the first ':' is right
        // whatever the id contains.
        let (ms, id) = token.split_once(':')?;
        if id.is_empty() {
            return None;
        }
        Some(Self {
            started_at_ms: ms.parse().ok()?,
            sandbox_id: id.to_owned(),
        })
    }
}

/// Which sandboxes to list. The default lists everything, oldest first.
#[derive(Debug, Clone, Default)]
pub struct SandboxFilter {
    /// Any of these states; empty means any state.
    pub states: Vec<String>,
    /// Every pair must be present in the sandbox's metadata.
    pub metadata: BTreeMap<String, String>,
    /// Matches `template_id` or `alias`, as E2B lets clients name either.
    pub template: Option<String>,
    /// Only sandboxes started strictly after this time (unix ms).
    pub started_after_ms: Option<i64>,
    /// Sort direction.
    pub order: Order,
    /// Continue after this position.
    pub cursor: Option<Cursor>,
    /// Page size; `None` returns all matching rows. Zero is treated as one.
    pub limit: Option<u32>,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct SandboxPage {
    /// Rows in the requested order.
    pub rows: Vec<SandboxRow>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

const COLUMNS: &str = "sandbox_id, lifecycle_id, template_id, alias, state, state_reason, \
     cpu_count, memory_mb, disk_size_mb, metadata, env_vars, envd_access_token, \
     allow_internet_access, auto_pause, started_at, end_at, vm_driver, vm_dir, \
     created_at, updated_at";

fn encode(
    sandbox_id: &str,
    column: &'static str,
    map: &BTreeMap<String, String>,
) -> Result<String> {
    serde_json::to_string(map).map_err(|source| Error::EncodeJson {
        sandbox_id: sandbox_id.to_owned(),
        column,
        source,
    })
}

fn decode(sandbox_id: &str, column: &'static str, text: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(text).map_err(|source| Error::DecodeJson {
        sandbox_id: sandbox_id.to_owned(),
        column,
        source,
    })
}

/// A row with its JSON columns still as text; decoded outside the rusqlite
/// closure so a bad value gets its own error variant.
struct RawRow {
    row: SandboxRow,
    metadata: String,
    env_vars: String,
}

fn read_row(r: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        row: SandboxRow {
            sandbox_id: r.get(0)?,
            lifecycle_id: r.get(1)?,
            template_id: r.get(2)?,
            alias: r.get(3)?,
            state: r.get(4)?,
            state_reason: r.get(5)?,
            cpu_count: r.get(6)?,
            memory_mb: r.get(7)?,
            disk_size_mb: r.get(8)?,
            metadata: BTreeMap::new(),
            env_vars: BTreeMap::new(),
            envd_access_token: r.get(11)?,
            allow_internet_access: r.get(12)?,
            auto_pause: r.get(13)?,
            started_at_ms: r.get(14)?,
            end_at_ms: r.get(15)?,
            vm_driver: r.get(16)?,
            vm_dir: r.get(17)?,
            created_at_ms: r.get(18)?,
            updated_at_ms: r.get(19)?,
        },
        metadata: r.get(9)?,
        env_vars: r.get(10)?,
    })
}

fn finish(raw: RawRow) -> Result<SandboxRow> {
    let mut row = raw.row;
    row.metadata = decode(&row.sandbox_id, "metadata", &raw.metadata)?;
    row.env_vars = decode(&row.sandbox_id, "env_vars", &raw.env_vars)?;
    Ok(row)
}

/// Inserts a new sandbox. [`Error::SandboxExists`] if the id is taken.
pub fn insert(conn: &Connection, row: &SandboxRow) -> Result<()> {
    let metadata = encode(&row.sandbox_id, "metadata", &row.metadata)?;
    let env_vars = encode(&row.sandbox_id, "env_vars", &row.env_vars)?;
    conn.execute(
        &format!(
            "INSERT INTO sandboxes ({COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
        ),
        params![
            row.sandbox_id,
            row.lifecycle_id,
            row.template_id,
            row.alias,
            row.state,
            row.state_reason,
            row.cpu_count,
            row.memory_mb,
            row.disk_size_mb,
            metadata,
            env_vars,
            row.envd_access_token,
            row.allow_internet_access,
            row.auto_pause,
            row.started_at_ms,
            row.end_at_ms,
            row.vm_driver,
            row.vm_dir,
            row.created_at_ms,
            row.updated_at_ms,
        ],
    )
    .map_err(|source| {
        if is_unique_violation(&source) {
            Error::SandboxExists {
                sandbox_id: row.sandbox_id.clone(),
            }
        } else {
            Error::InsertSandbox {
                sandbox_id: row.sandbox_id.clone(),
                source,
            }
        }
    })?;
    Ok(())
}

fn update(
    conn: &Connection,
    sandbox_id: &str,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<bool> {
    let changed = conn
        .execute(sql, params)
        .map_err(|source| Error::UpdateSandbox {
            sandbox_id: sandbox_id.to_owned(),
            source,
        })?;
    Ok(changed > 0)
}

/// Records a new state and its reason (`None` clears the reason). Returns
/// false if no such sandbox exists.
pub fn update_state(
    conn: &Connection,
    sandbox_id: &str,
    state: &str,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<bool> {
    update(
        conn,
        sandbox_id,
        "UPDATE sandboxes SET state = ?2, state_reason = ?3, updated_at = ?4 WHERE sandbox_id = ?1",
        &[&sandbox_id, &state, &reason, &now_ms],
    )
}

/// Moves the timeout. Returns false if no such sandbox exists.
pub fn update_end_at(
    conn: &Connection,
    sandbox_id: &str,
    end_at_ms: i64,
    now_ms: i64,
) -> Result<bool> {
    update(
        conn,
        sandbox_id,
        "UPDATE sandboxes SET end_at = ?2, updated_at = ?3 WHERE sandbox_id = ?1",
        &[&sandbox_id, &end_at_ms, &now_ms],
    )
}

/// Records a new boot/resume: its lifecycle id and where its VM runs.
/// Returns false if no such sandbox exists.
pub fn update_lifecycle(
    conn: &Connection,
    sandbox_id: &str,
    lifecycle_id: &str,
    vm_driver: Option<&str>,
    vm_dir: Option<&str>,
    now_ms: i64,
) -> Result<bool> {
    update(
        conn,
        sandbox_id,
        "UPDATE sandboxes SET lifecycle_id = ?2, vm_driver = ?3, vm_dir = ?4, updated_at = ?5 \
         WHERE sandbox_id = ?1",
        &[&sandbox_id, &lifecycle_id, &vm_driver, &vm_dir, &now_ms],
    )
}

/// One sandbox by id.
pub fn get(conn: &Connection, sandbox_id: &str) -> Result<Option<SandboxRow>> {
    let raw = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM sandboxes WHERE sandbox_id = ?1"),
            [sandbox_id],
            read_row,
        )
        .optional()
        .map_err(Error::QuerySandboxes)?;
    raw.map(finish).transpose()
}

/// Lists sandboxes matching `filter`, one page at a time.
pub fn list(conn: &Connection, filter: &SandboxFilter) -> Result<SandboxPage> {
    let mut sql = format!("SELECT {COLUMNS} FROM sandboxes WHERE 1 = 1");
    let mut args: Vec<Value> = Vec::new();
    // Every value goes in as a numbered parameter; only fixed SQL text is
    // appended, so filter input cannot change the query.
    fn bind(args: &mut Vec<Value>, v: Value) -> usize {
        args.push(v);
        args.len()
    }
    if !filter.states.is_empty() {
        let marks: Vec<String> = filter
            .states
            .iter()
            .map(|s| format!("?{}", bind(&mut args, Value::Text(s.clone()))))
            .collect();
        let _ = write!(sql, " AND state IN ({})", marks.join(", "));
    }
    for (key, value) in &filter.metadata {
        let k = bind(&mut args, Value::Text(key.clone()));
        let v = bind(&mut args, Value::Text(value.clone()));
        let _ = write!(
            sql,
            " AND EXISTS (SELECT 1 FROM json_each(sandboxes.metadata) AS m \
             WHERE m.key = ?{k} AND m.type = 'text' AND m.value = ?{v})"
        );
    }
    if let Some(template) = &filter.template {
        let t = bind(&mut args, Value::Text(template.clone()));
        let _ = write!(sql, " AND (template_id = ?{t} OR alias = ?{t})");
    }
    if let Some(after) = filter.started_after_ms {
        let a = bind(&mut args, Value::Integer(after));
        let _ = write!(sql, " AND started_at > ?{a}");
    }
    let (cmp, dir) = match filter.order {
        Order::Asc => (">", "ASC"),
        Order::Desc => ("<", "DESC"),
    };
    if let Some(cursor) = &filter.cursor {
        let s = bind(&mut args, Value::Integer(cursor.started_at_ms));
        let i = bind(&mut args, Value::Text(cursor.sandbox_id.clone()));
        let _ = write!(sql, " AND (started_at, sandbox_id) {cmp} (?{s}, ?{i})");
    }
    let _ = write!(sql, " ORDER BY started_at {dir}, sandbox_id {dir}");
    let limit = filter.limit.map(|l| l.max(1));
    if let Some(limit) = limit {
        // One extra row tells whether another page exists.
        let l = bind(&mut args, Value::Integer(i64::from(limit) + 1));
        let _ = write!(sql, " LIMIT ?{l}");
    }

    let mut stmt = conn.prepare(&sql).map_err(Error::QuerySandboxes)?;
    let raws = stmt
        .query_map(rusqlite::params_from_iter(args), read_row)
        .map_err(Error::QuerySandboxes)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(Error::QuerySandboxes)?;
    let mut rows = raws.into_iter().map(finish).collect::<Result<Vec<_>>>()?;

    let next = match limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)) {
        Some(limit) if rows.len() > limit => {
            rows.truncate(limit);
            rows.last().map(|r| Cursor {
                started_at_ms: r.started_at_ms,
                sandbox_id: r.sandbox_id.clone(),
            })
        }
        _ => None,
    };
    Ok(SandboxPage { rows, next })
}

/// Deletes a sandbox and, by cascade, its events. Returns false if it did
/// not exist.
pub fn delete(conn: &Connection, sandbox_id: &str) -> Result<bool> {
    let changed = conn
        .execute("DELETE FROM sandboxes WHERE sandbox_id = ?1", [sandbox_id])
        .map_err(|source| Error::DeleteSandbox {
            sandbox_id: sandbox_id.to_owned(),
            source,
        })?;
    Ok(changed > 0)
}

/// Number of sandboxes per stored state.
pub fn count_by_state(conn: &Connection) -> Result<BTreeMap<String, u64>> {
    let mut stmt = conn
        .prepare("SELECT state, COUNT(*) FROM sandboxes GROUP BY state")
        .map_err(Error::QuerySandboxes)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))
        .map_err(Error::QuerySandboxes)?
        .collect::<rusqlite::Result<BTreeMap<_, _>>>()
        .map_err(Error::QuerySandboxes)?;
    Ok(rows)
}
