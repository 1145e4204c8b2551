-- Templates built through the E2B template API (their definitions live
-- nowhere else), so a daemon restart serves them again from the build cache.

CREATE TABLE published_templates (
    name       TEXT PRIMARY KEY NOT NULL,
    record     TEXT NOT NULL CHECK (json_valid(record)),
    updated_at INTEGER NOT NULL
) STRICT;
