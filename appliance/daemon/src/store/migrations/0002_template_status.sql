-- Reconciler status, one row per template it knows (Flux-style conditions),
-- plus one row named '' for the source itself (fetch and parse errors).

CREATE TABLE template_status (
    name          TEXT PRIMARY KEY NOT NULL,
    phase         TEXT NOT NULL,          -- Ready | Reconciling | Stalled | Draining
    reason        TEXT NOT NULL,
    message       TEXT NOT NULL DEFAULT '',
    revision      TEXT,                   -- git commit (or dir content hash) applied
    build_id      TEXT,                   -- build serving now
    desired_build TEXT,                   -- build the definition asks for
    build_log     TEXT,                   -- path of the last build's log
    pool_desired  INTEGER NOT NULL DEFAULT 0,
    updated_at    INTEGER NOT NULL
) STRICT;
