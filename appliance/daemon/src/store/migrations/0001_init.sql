-- Initial schema. Migrations are forward-only: never edit a released file,
-- add a new numbered one instead. Timestamps are unix milliseconds (UTC).

CREATE TABLE sandboxes (
    sandbox_id            TEXT PRIMARY KEY NOT NULL,
    lifecycle_id          TEXT NOT NULL,
    template_id           TEXT NOT NULL,
    alias                 TEXT,
    state                 TEXT NOT NULL,
    state_reason          TEXT,
    cpu_count             INTEGER NOT NULL,
    memory_mb             INTEGER NOT NULL,
    disk_size_mb          INTEGER NOT NULL,
    metadata              TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    env_vars              TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(env_vars)),
    envd_access_token     TEXT,
    allow_internet_access INTEGER NOT NULL DEFAULT 1,
    auto_pause            INTEGER NOT NULL DEFAULT 0,
    started_at            INTEGER NOT NULL,
    end_at                INTEGER NOT NULL,
    vm_driver             TEXT,
    vm_dir                TEXT,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL
) STRICT;

-- Cursor pagination walks (started_at, sandbox_id) in either direction.
CREATE INDEX sandboxes_by_start ON sandboxes (started_at, sandbox_id);
CREATE INDEX sandboxes_by_state ON sandboxes (state);

CREATE TABLE sandbox_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id   TEXT NOT NULL REFERENCES sandboxes (sandbox_id) ON DELETE CASCADE,
    lifecycle_id TEXT NOT NULL,
    ts_ms        INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    message      TEXT NOT NULL
) STRICT;

CREATE INDEX sandbox_events_by_time ON sandbox_events (sandbox_id, ts_ms, id);

CREATE TABLE api_keys (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    prefix_hint  TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
) STRICT;

CREATE INDEX api_keys_by_hint ON api_keys (prefix_hint);
