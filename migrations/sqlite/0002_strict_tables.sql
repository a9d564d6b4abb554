-- Migration 0002 (SQLite): the public tables become STRICT, with range
-- checks, so that an upstream app that writes a wrongly typed value (a REAL or
-- TEXT `not_before`, a BLOB payload, a non-canonical UUID `id`) gets the error
-- in its own transaction instead of stalling the pipeline later.
--
-- Existing rows are copied, never dropped. A value of the wrong type is
-- converted when that is unambiguous (the REAL 5.0 or the TEXT '5' in an
-- integer column, a number in a text column, an upper-case, braced or
-- hyphen-less UUID). Otherwise the column falls back (NULL, 0, or now) and
-- the row says so in last_error; a row not yet sent (queued,
-- pending_upload) becomes `invalid`, naming the column. Rows that may have
-- been sent keep their state: only an operator may decide to send them again.
--
-- Needs SQLite 3.37 or later (STRICT) in every program that opens the file.

-- Each row's new id: the canonical form of its UUID; a fresh one when the
-- old id is not a UUID or its canonical form is already taken.
CREATE TABLE status_outbox_0002_ids AS
SELECT rid, old_id,
       CASE WHEN hex GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]' AND rank = 1
            THEN substr(hex, 1, 8) || '-' || substr(hex, 9, 4) || '-' || substr(hex, 13, 4)
                 || '-' || substr(hex, 17, 4) || '-' || substr(hex, 21, 12)
            ELSE lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' ||
                        substr(hex(randomblob(2)), 2) || '-' ||
                        substr('89ab', 1 + (abs(random()) % 4), 1) ||
                        substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))
       END AS new_id,
       (hex GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]' AND rank = 1) AS kept
FROM (SELECT rowid AS rid, id AS old_id, hex,
             row_number() OVER (PARTITION BY hex ORDER BY rowid) AS rank
      FROM (SELECT rowid, id,
                   lower(replace(replace(replace(CAST(id AS TEXT), '-', ''), '{', ''), '}', '')) AS hex
            FROM status_outbox));

CREATE TABLE status_outbox_0002 (
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
    priority         INTEGER NOT NULL DEFAULT 0 CHECK (priority BETWEEN -2147483648 AND 2147483647),
    not_before       INTEGER CHECK (not_before BETWEEN 0 AND 253402300799999),
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts BETWEEN -2147483648 AND 2147483647),
    next_attempt_at  INTEGER NOT NULL DEFAULT 0 CHECK (next_attempt_at BETWEEN 0 AND 253402300799999),
    lease_owner      TEXT,
    lease_expires_at INTEGER CHECK (lease_expires_at BETWEEN 0 AND 253402300799999),
    claimed_at       INTEGER CHECK (claimed_at BETWEEN 0 AND 253402300799999),
    reconcile_attempts INTEGER NOT NULL DEFAULT 0 CHECK (reconcile_attempts BETWEEN -2147483648 AND 2147483647),
    parked_at        INTEGER CHECK (parked_at BETWEEN 0 AND 253402300799999),
    provider_id      TEXT,
    last_error       TEXT,
    last_http_status INTEGER CHECK (last_http_status BETWEEN -2147483648 AND 2147483647),
    created_at       INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)) CHECK (created_at BETWEEN 0 AND 253402300799999),
    updated_at       INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)) CHECK (updated_at BETWEEN 0 AND 253402300799999),
    posted_at        INTEGER CHECK (posted_at BETWEEN 0 AND 253402300799999),
    -- The daemon compares ids in this form (lower-case, hyphenated): any
    -- other spelling of a UUID would be posted but its outcome never found.
    CONSTRAINT id_is_a_canonical_uuid CHECK (id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'),
    -- Rule 1: from pending_upload on, the message id is durable.
    CHECK (state IN ('queued', 'invalid', 'cancelled') OR message_id IS NOT NULL),
    CHECK (state <> 'uploading' OR lease_expires_at IS NOT NULL)
) STRICT;

INSERT INTO status_outbox_0002 (id, instance, kind, payload, dedupe_key, message_id, state,
    priority, not_before, attempts, next_attempt_at, lease_expires_at, claimed_at, reconcile_attempts, parked_at, last_http_status, created_at, updated_at, posted_at, lease_owner, provider_id, last_error)
SELECT m.new_id, CAST(o.instance AS TEXT), CAST(o.kind AS TEXT), CAST(o.payload AS TEXT),
       CAST(o.dedupe_key AS TEXT), CAST(o.message_id AS TEXT),
       CASE WHEN e.errors <> '' AND o.state IN ('queued', 'pending_upload') THEN 'invalid'
            ELSE o.state END,
       CASE WHEN ((o.priority IS NULL OR typeof(o.priority) = 'integer' OR (typeof(o.priority) = 'real' AND o.priority = CAST(o.priority AS INTEGER)) OR (typeof(o.priority) = 'text' AND CAST(CAST(o.priority AS INTEGER) AS TEXT) = o.priority)) AND (o.priority IS NULL OR CAST(o.priority AS INTEGER) BETWEEN -2147483648 AND 2147483647)) THEN CAST(o.priority AS INTEGER) ELSE 0 END,
       CASE WHEN ((o.not_before IS NULL OR typeof(o.not_before) = 'integer' OR (typeof(o.not_before) = 'real' AND o.not_before = CAST(o.not_before AS INTEGER)) OR (typeof(o.not_before) = 'text' AND CAST(CAST(o.not_before AS INTEGER) AS TEXT) = o.not_before)) AND (o.not_before IS NULL OR CAST(o.not_before AS INTEGER) BETWEEN 0 AND 253402300799999)) THEN CAST(o.not_before AS INTEGER) ELSE NULL END,
       CASE WHEN ((o.attempts IS NULL OR typeof(o.attempts) = 'integer' OR (typeof(o.attempts) = 'real' AND o.attempts = CAST(o.attempts AS INTEGER)) OR (typeof(o.attempts) = 'text' AND CAST(CAST(o.attempts AS INTEGER) AS TEXT) = o.attempts)) AND (o.attempts IS NULL OR CAST(o.attempts AS INTEGER) BETWEEN -2147483648 AND 2147483647)) THEN CAST(o.attempts AS INTEGER) ELSE 0 END,
       CASE WHEN ((o.next_attempt_at IS NULL OR typeof(o.next_attempt_at) = 'integer' OR (typeof(o.next_attempt_at) = 'real' AND o.next_attempt_at = CAST(o.next_attempt_at AS INTEGER)) OR (typeof(o.next_attempt_at) = 'text' AND CAST(CAST(o.next_attempt_at AS INTEGER) AS TEXT) = o.next_attempt_at)) AND (o.next_attempt_at IS NULL OR CAST(o.next_attempt_at AS INTEGER) BETWEEN 0 AND 253402300799999)) THEN CAST(o.next_attempt_at AS INTEGER) ELSE 0 END,
       CASE WHEN ((o.lease_expires_at IS NULL OR typeof(o.lease_expires_at) = 'integer' OR (typeof(o.lease_expires_at) = 'real' AND o.lease_expires_at = CAST(o.lease_expires_at AS INTEGER)) OR (typeof(o.lease_expires_at) = 'text' AND CAST(CAST(o.lease_expires_at AS INTEGER) AS TEXT) = o.lease_expires_at)) AND (o.lease_expires_at IS NULL OR CAST(o.lease_expires_at AS INTEGER) BETWEEN 0 AND 253402300799999)) THEN CAST(o.lease_expires_at AS INTEGER) ELSE CASE WHEN o.state = 'uploading' THEN 0 END END,
       CASE WHEN ((o.claimed_at IS NULL OR typeof(o.claimed_at) = 'integer' OR (typeof(o.claimed_at) = 'real' AND o.claimed_at = CAST(o.claimed_at AS INTEGER)) OR (typeof(o.claimed_at) = 'text' AND CAST(CAST(o.claimed_at AS INTEGER) AS TEXT) = o.claimed_at)) AND (o.claimed_at IS NULL OR CAST(o.claimed_at AS INTEGER) BETWEEN 0 AND 253402300799999)) THEN CAST(o.claimed_at AS INTEGER) ELSE NULL END,
       CASE WHEN ((o.reconcile_attempts IS NULL OR typeof(o.reconcile_attempts) = 'integer' OR (typeof(o.reconcile_attempts) = 'real' AND o.reconcile_attempts = CAST(o.reconcile_attempts AS INTEGER)) OR (typeof(o.reconcile_attempts) = 'text' AND CAST(CAST(o.reconcile_attempts AS INTEGER) AS TEXT) = o.reconcile_attempts)) AND (o.reconcile_attempts IS NULL OR CAST(o.reconcile_attempts AS INTEGER) BETWEEN -2147483648 AND 2147483647)) THEN CAST(o.reconcile_attempts AS INTEGER) ELSE 0 END,
       CASE WHEN ((o.parked_at IS NULL OR typeof(o.parked_at) = 'integer' OR (typeof(o.parked_at) = 'real' AND o.parked_at = CAST(o.parked_at AS INTEGER)) OR (typeof(o.parked_at) = 'text' AND CAST(CAST(o.parked_at AS INTEGER) AS TEXT) = o.parked_at)) AND (o.parked_at IS NULL OR CAST(o.parked_at AS INTEGER) BETWEEN 0 AND 253402300799999)) THEN CAST(o.parked_at AS INTEGER) ELSE NULL END,
       CASE WHEN ((o.last_http_status IS NULL OR typeof(o.last_http_status) = 'integer' OR (typeof(o.last_http_status) = 'real' AND o.last_http_status = CAST(o.last_http_status AS INTEGER)) OR (typeof(o.last_http_status) = 'text' AND CAST(CAST(o.last_http_status AS INTEGER) AS TEXT) = o.last_http_status)) AND (o.last_http_status IS NULL OR CAST(o.last_http_status AS INTEGER) BETWEEN -2147483648 AND 2147483647)) THEN CAST(o.last_http_status AS INTEGER) ELSE NULL END,
       CASE WHEN ((o.created_at IS NULL OR typeof(o.created_at) = 'integer' OR (typeof(o.created_at) = 'real' AND o.created_at = CAST(o.created_at AS INTEGER)) OR (typeof(o.created_at) = 'text' AND CAST(CAST(o.created_at AS INTEGER) AS TEXT) = o.created_at)) AND (o.created_at IS NULL OR CAST(o.created_at AS INTEGER) BETWEEN 0 AND 253402300799999)) THEN CAST(o.created_at AS INTEGER) ELSE CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) END,
       CASE WHEN ((o.updated_at IS NULL OR typeof(o.updated_at) = 'integer' OR (typeof(o.updated_at) = 'real' AND o.updated_at = CAST(o.updated_at AS INTEGER)) OR (typeof(o.updated_at) = 'text' AND CAST(CAST(o.updated_at AS INTEGER) AS TEXT) = o.updated_at)) AND (o.updated_at IS NULL OR CAST(o.updated_at AS INTEGER) BETWEEN 0 AND 253402300799999)) THEN CAST(o.updated_at AS INTEGER) ELSE CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) END,
       CASE WHEN ((o.posted_at IS NULL OR typeof(o.posted_at) = 'integer' OR (typeof(o.posted_at) = 'real' AND o.posted_at = CAST(o.posted_at AS INTEGER)) OR (typeof(o.posted_at) = 'text' AND CAST(CAST(o.posted_at AS INTEGER) AS TEXT) = o.posted_at)) AND (o.posted_at IS NULL OR CAST(o.posted_at AS INTEGER) BETWEEN 0 AND 253402300799999)) THEN CAST(o.posted_at AS INTEGER) ELSE NULL END,
       CAST(o.lease_owner AS TEXT), CAST(o.provider_id AS TEXT),
       CASE WHEN e.errors <> '' THEN 'migration 0002: ' || rtrim(e.errors, '; ')
            ELSE CAST(o.last_error AS TEXT) END
FROM status_outbox o
JOIN status_outbox_0002_ids m ON m.rid = o.rowid
JOIN (SELECT o.rowid AS rid,
             CASE WHEN m.kept THEN '' ELSE 'id: ' || quote(m.old_id) || ' is not a UUID or is taken (new id given); ' END ||
               CASE WHEN ((o.priority IS NULL OR typeof(o.priority) = 'integer' OR (typeof(o.priority) = 'real' AND o.priority = CAST(o.priority AS INTEGER)) OR (typeof(o.priority) = 'text' AND CAST(CAST(o.priority AS INTEGER) AS TEXT) = o.priority)) AND (o.priority IS NULL OR CAST(o.priority AS INTEGER) BETWEEN -2147483648 AND 2147483647)) THEN '' ELSE 'priority: ' || quote(o.priority) || ' is not an integer in range; ' END ||
               CASE WHEN ((o.not_before IS NULL OR typeof(o.not_before) = 'integer' OR (typeof(o.not_before) = 'real' AND o.not_before = CAST(o.not_before AS INTEGER)) OR (typeof(o.not_before) = 'text' AND CAST(CAST(o.not_before AS INTEGER) AS TEXT) = o.not_before)) AND (o.not_before IS NULL OR CAST(o.not_before AS INTEGER) BETWEEN 0 AND 253402300799999)) THEN '' ELSE 'not_before: ' || quote(o.not_before) || ' is not an integer in range; ' END ||
               CASE WHEN ((o.attempts IS NULL OR typeof(o.attempts) = 'integer' OR (typeof(o.attempts) = 'real' AND o.attempts = CAST(o.attempts AS INTEGER)) OR (typeof(o.attempts) = 'text' AND CAST(CAST(o.attempts AS INTEGER) AS TEXT) = o.attempts)) AND (o.attempts IS NULL OR CAST(o.attempts AS INTEGER) BETWEEN -2147483648 AND 2147483647)) THEN '' ELSE 'attempts: ' || quote(o.attempts) || ' is not an integer in range; ' END ||
               CASE WHEN ((o.next_attempt_at IS NULL OR typeof(o.next_attempt_at) = 'integer' OR (typeof(o.next_attempt_at) = 'real' AND o.next_attempt_at = CAST(o.next_attempt_at AS INTEGER)) OR (typeof(o.next_attempt_at) = 'text' AND CAST(CAST(o.next_attempt_at AS INTEGER) AS TEXT) = o.next_attempt_at)) AND (o.next_attempt_at IS NULL OR CAST(o.next_attempt_at AS INTEGER) BETWEEN 0 AND 253402300799999)) THEN '' ELSE 'next_attempt_at: ' || quote(o.next_attempt_at) || ' is not an integer in range; ' END ||
               CASE WHEN ((o.lease_expires_at IS NULL OR typeof(o.lease_expires_at) = 'integer' OR (typeof(o.lease_expires_at) = 'real' AND o.lease_expires_at = CAST(o.lease_expires_at AS INTEGER)) OR (typeof(o.lease_expires_at) = 'text' AND CAST(CAST(o.lease_expires_at AS INTEGER) AS TEXT) = o.lease_expires_at)) AND (o.lease_expires_at IS NULL OR CAST(o.lease_expires_at AS INTEGER) BETWEEN 0 AND 253402300799999)) THEN '' ELSE 'lease_expires_at: ' || quote(o.lease_expires_at) || ' is not an integer in range; ' END ||
               CASE WHEN ((o.claimed_at IS NULL OR typeof(o.claimed_at) = 'integer' OR (typeof(o.claimed_at) = 'real' AND o.claimed_at = CAST(o.claimed_at AS INTEGER)) OR (typeof(o.claimed_at) = 'text' AND CAST(CAST(o.claimed_at AS INTEGER) AS TEXT) = o.claimed_at)) AND (o.claimed_at IS NULL OR CAST(o.claimed_at AS INTEGER) BETWEEN 0 AND 253402300799999)) THEN '' ELSE 'claimed_at: ' || quote(o.claimed_at) || ' is not an integer in range; ' END ||
               CASE WHEN ((o.reconcile_attempts IS NULL OR typeof(o.reconcile_attempts) = 'integer' OR (typeof(o.reconcile_attempts) = 'real' AND o.reconcile_attempts = CAST(o.reconcile_attempts AS INTEGER)) OR (typeof(o.reconcile_attempts) = 'text' AND CAST(CAST(o.reconcile_attempts AS INTEGER) AS TEXT) = o.reconcile_attempts)) AND (o.reconcile_attempts IS NULL OR CAST(o.reconcile_attempts AS INTEGER) BETWEEN -2147483648 AND 2147483647)) THEN '' ELSE 'reconcile_attempts: ' || quote(o.reconcile_attempts) || ' is not an integer in range; ' END ||
               CASE WHEN ((o.parked_at IS NULL OR typeof(o.parked_at) = 'integer' OR (typeof(o.parked_at) = 'real' AND o.parked_at = CAST(o.parked_at AS INTEGER)) OR (typeof(o.parked_at) = 'text' AND CAST(CAST(o.parked_at AS INTEGER) AS TEXT) = o.parked_at)) AND (o.parked_at IS NULL OR CAST(o.parked_at AS INTEGER) BETWEEN 0 AND 253402300799999)) THEN '' ELSE 'parked_at: ' || quote(o.parked_at) || ' is not an integer in range; ' END ||
               CASE WHEN ((o.last_http_status IS NULL OR typeof(o.last_http_status) = 'integer' OR (typeof(o.last_http_status) = 'real' AND o.last_http_status = CAST(o.last_http_status AS INTEGER)) OR (typeof(o.last_http_status) = 'text' AND CAST(CAST(o.last_http_status AS INTEGER) AS TEXT) = o.last_http_status)) AND (o.last_http_status IS NULL OR CAST(o.last_http_status AS INTEGER) BETWEEN -2147483648 AND 2147483647)) THEN '' ELSE 'last_http_status: ' || quote(o.last_http_status) || ' is not an integer in range; ' END ||
               CASE WHEN ((o.created_at IS NULL OR typeof(o.created_at) = 'integer' OR (typeof(o.created_at) = 'real' AND o.created_at = CAST(o.created_at AS INTEGER)) OR (typeof(o.created_at) = 'text' AND CAST(CAST(o.created_at AS INTEGER) AS TEXT) = o.created_at)) AND (o.created_at IS NULL OR CAST(o.created_at AS INTEGER) BETWEEN 0 AND 253402300799999)) THEN '' ELSE 'created_at: ' || quote(o.created_at) || ' is not an integer in range; ' END ||
               CASE WHEN ((o.updated_at IS NULL OR typeof(o.updated_at) = 'integer' OR (typeof(o.updated_at) = 'real' AND o.updated_at = CAST(o.updated_at AS INTEGER)) OR (typeof(o.updated_at) = 'text' AND CAST(CAST(o.updated_at AS INTEGER) AS TEXT) = o.updated_at)) AND (o.updated_at IS NULL OR CAST(o.updated_at AS INTEGER) BETWEEN 0 AND 253402300799999)) THEN '' ELSE 'updated_at: ' || quote(o.updated_at) || ' is not an integer in range; ' END ||
               CASE WHEN ((o.posted_at IS NULL OR typeof(o.posted_at) = 'integer' OR (typeof(o.posted_at) = 'real' AND o.posted_at = CAST(o.posted_at AS INTEGER)) OR (typeof(o.posted_at) = 'text' AND CAST(CAST(o.posted_at AS INTEGER) AS TEXT) = o.posted_at)) AND (o.posted_at IS NULL OR CAST(o.posted_at AS INTEGER) BETWEEN 0 AND 253402300799999)) THEN '' ELSE 'posted_at: ' || quote(o.posted_at) || ' is not an integer in range; ' END AS errors
      FROM status_outbox o JOIN status_outbox_0002_ids m ON m.rid = o.rowid) e ON e.rid = o.rowid;

CREATE TABLE status_attempts_0002 (
    status_id   TEXT NOT NULL REFERENCES status_outbox_0002 (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    http_status INTEGER,
    latency_ms  INTEGER NOT NULL,
    error       TEXT
) STRICT;

-- History is statusd's own writing; values are converted, unreadable ones
-- become 0 / NULL (nothing to mark: the row's state is what counts).
INSERT INTO status_attempts_0002
SELECT m.new_id,
       CASE WHEN (o.attempt IS NULL OR typeof(o.attempt) = 'integer' OR (typeof(o.attempt) = 'real' AND o.attempt = CAST(o.attempt AS INTEGER)) OR (typeof(o.attempt) = 'text' AND CAST(CAST(o.attempt AS INTEGER) AS TEXT) = o.attempt)) THEN CAST(o.attempt AS INTEGER) ELSE 0 END,
       CASE WHEN (o.started_at IS NULL OR typeof(o.started_at) = 'integer' OR (typeof(o.started_at) = 'real' AND o.started_at = CAST(o.started_at AS INTEGER)) OR (typeof(o.started_at) = 'text' AND CAST(CAST(o.started_at AS INTEGER) AS TEXT) = o.started_at)) THEN CAST(o.started_at AS INTEGER) ELSE 0 END,
       CASE WHEN (o.finished_at IS NULL OR typeof(o.finished_at) = 'integer' OR (typeof(o.finished_at) = 'real' AND o.finished_at = CAST(o.finished_at AS INTEGER)) OR (typeof(o.finished_at) = 'text' AND CAST(CAST(o.finished_at AS INTEGER) AS TEXT) = o.finished_at)) THEN CAST(o.finished_at AS INTEGER) ELSE 0 END,
       CAST(o.outcome AS TEXT),
       CASE WHEN (o.http_status IS NULL OR typeof(o.http_status) = 'integer' OR (typeof(o.http_status) = 'real' AND o.http_status = CAST(o.http_status AS INTEGER)) OR (typeof(o.http_status) = 'text' AND CAST(CAST(o.http_status AS INTEGER) AS TEXT) = o.http_status)) THEN CAST(o.http_status AS INTEGER) ELSE NULL END,
       CASE WHEN (o.latency_ms IS NULL OR typeof(o.latency_ms) = 'integer' OR (typeof(o.latency_ms) = 'real' AND o.latency_ms = CAST(o.latency_ms AS INTEGER)) OR (typeof(o.latency_ms) = 'text' AND CAST(CAST(o.latency_ms AS INTEGER) AS TEXT) = o.latency_ms)) THEN CAST(o.latency_ms AS INTEGER) ELSE 0 END,
       CAST(o.error AS TEXT)
FROM status_attempts o JOIN status_outbox_0002_ids m ON m.old_id = o.status_id;

CREATE TABLE status_schedules_0002 (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL UNIQUE,
    cron        TEXT NOT NULL,
    timezone    TEXT NOT NULL DEFAULT 'UTC',
    instance    TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('text', 'image', 'voice', 'video')),
    payload     TEXT NOT NULL,
    enabled     INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created_at  INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
) STRICT;

INSERT INTO status_schedules_0002
SELECT CAST(o.id AS TEXT), CAST(o.name AS TEXT), CAST(o.cron AS TEXT), CAST(o.timezone AS TEXT),
       CAST(o.instance AS TEXT), o.kind, CAST(o.payload AS TEXT),
       CASE WHEN o.enabled IN (0, 1) THEN CAST(o.enabled AS INTEGER) ELSE 0 END,
       CASE WHEN (o.created_at IS NULL OR typeof(o.created_at) = 'integer' OR (typeof(o.created_at) = 'real' AND o.created_at = CAST(o.created_at AS INTEGER)) OR (typeof(o.created_at) = 'text' AND CAST(CAST(o.created_at AS INTEGER) AS TEXT) = o.created_at)) THEN CAST(o.created_at AS INTEGER) ELSE CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) END
FROM status_schedules o;

-- Old tables out (history first: its foreign key points at the old outbox),
-- new ones renamed in; the rename carries the history's foreign key along.
DROP VIEW status_outbox_summary;
DROP TABLE status_attempts;
DROP TABLE status_outbox;
DROP TABLE status_schedules;
DROP TABLE status_outbox_0002_ids;
ALTER TABLE status_outbox_0002 RENAME TO status_outbox;
ALTER TABLE status_attempts_0002 RENAME TO status_attempts;
ALTER TABLE status_schedules_0002 RENAME TO status_schedules;

CREATE INDEX status_outbox_queued ON status_outbox (priority DESC, created_at)
    WHERE state = 'queued';
CREATE INDEX status_outbox_due ON status_outbox (priority DESC, created_at)
    WHERE state = 'pending_upload';
CREATE INDEX status_outbox_leases ON status_outbox (lease_expires_at) WHERE state = 'uploading';
CREATE INDEX status_outbox_in_doubt ON status_outbox (next_attempt_at)
    WHERE state = 'in_doubt' AND parked_at IS NULL;
CREATE INDEX status_outbox_terminal ON status_outbox (updated_at)
    WHERE state IN ('posted', 'failed', 'invalid', 'cancelled', 'deleted');
CREATE INDEX status_outbox_created ON status_outbox (created_at);
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
