-- statusd outbox (SQLite). Times are integer milliseconds since the Unix
-- epoch, UTC, taken from the database clock.

CREATE TABLE status_outbox (
    id               TEXT PRIMARY KEY NOT NULL DEFAULT (
                        lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' ||
                        substr(hex(randomblob(2)), 2) || '-' ||
                        substr('89ab', 1 + (abs(random()) % 4), 1) ||
                        substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    instance         TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('text', 'image', 'voice', 'video')),
    payload          TEXT NOT NULL,
    dedupe_key       TEXT UNIQUE,
    message_id       TEXT UNIQUE,
    state            TEXT NOT NULL DEFAULT 'queued' CHECK (state IN (
                        'queued', 'pending_upload', 'uploading', 'in_doubt', 'posted',
                        'failed', 'invalid', 'cancelled', 'deleted')),
    priority         INTEGER NOT NULL DEFAULT 0,
    not_before       INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    claimed_at       INTEGER,
    reconcile_attempts INTEGER NOT NULL DEFAULT 0,
    parked_at        INTEGER,
    provider_id      TEXT,
    last_error       TEXT,
    last_http_status INTEGER,
    created_at       INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    updated_at       INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    posted_at        INTEGER,
    -- Rule 1: from pending_upload on, the message id is durable.
    CHECK (state IN ('queued', 'invalid', 'cancelled') OR message_id IS NOT NULL),
    CHECK (state <> 'uploading' OR lease_expires_at IS NOT NULL)
);

-- Partial indexes: each pipeline stage scans only its own state, so claiming
-- stays fast with millions of terminal rows in the table.
CREATE INDEX status_outbox_queued ON status_outbox (priority DESC, created_at)
    WHERE state = 'queued';
CREATE INDEX status_outbox_due ON status_outbox (priority DESC, created_at)
    WHERE state = 'pending_upload';
CREATE INDEX status_outbox_leases ON status_outbox (lease_expires_at) WHERE state = 'uploading';
CREATE INDEX status_outbox_in_doubt ON status_outbox (next_attempt_at)
    WHERE state = 'in_doubt' AND parked_at IS NULL;
CREATE INDEX status_outbox_terminal ON status_outbox (updated_at)
    WHERE state IN ('posted', 'failed', 'invalid', 'cancelled', 'deleted');
-- Listing newest first (operators); only inserts maintain it.
CREATE INDEX status_outbox_created ON status_outbox (created_at);

CREATE TABLE status_attempts (
    status_id   TEXT NOT NULL REFERENCES status_outbox (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    http_status INTEGER,
    latency_ms  INTEGER NOT NULL,
    error       TEXT
);
CREATE INDEX status_attempts_status ON status_attempts (status_id, attempt);

CREATE VIEW status_outbox_summary AS
SELECT instance,
       state,
       COUNT(*) AS count,
       CASE WHEN state IN ('queued', 'pending_upload')
            THEN (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - MIN(created_at)) / 1000.0
       END AS oldest_age_secs
FROM status_outbox
GROUP BY instance, state;

CREATE TABLE status_schedules (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL UNIQUE,
    cron        TEXT NOT NULL,
    timezone    TEXT NOT NULL DEFAULT 'UTC',
    instance    TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('text', 'image', 'voice', 'video')),
    payload     TEXT NOT NULL,
    enabled     INTEGER NOT NULL DEFAULT 1,
    created_at  INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);
