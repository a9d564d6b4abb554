-- Webhooks (issue 13): the provider's events, kept as evidence (DESIGN.md
-- R8). Times are integer milliseconds of the database clock.
--
-- The inbox: every signed event accepted by `POST /v1/webhooks/{instance}`
-- is stored here before the provider is answered 200, and deleted by the
-- processor in the transaction that applies it, so that a restart loses no
-- accepted event.
CREATE TABLE status_webhook_inbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    instance    TEXT NOT NULL,
    request_id  TEXT,
    received_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    body        TEXT NOT NULL
) STRICT;

-- One row per (status, viewer): the highest ack level seen (-1 error,
-- 0 pending, 1 server, 2 delivered, 3 viewed, 4 played), so duplicates,
-- replays and out-of-order acks never lower a level or count twice.
-- `message_id` is the bare pre-generated id (the outbox's `message_id`);
-- views may arrive before the row is `posted`, and are kept for ids no row
-- holds (statuses posted from the phone) until the retention purge.
CREATE TABLE status_views (
    message_id TEXT NOT NULL,
    viewer     TEXT NOT NULL,
    instance   TEXT NOT NULL,
    level      INTEGER NOT NULL CHECK (level BETWEEN -1 AND 4),
    first_at   INTEGER NOT NULL,
    last_at    INTEGER NOT NULL,
    -- When the level first reached 3 (viewed); NULL until then.
    viewed_at  INTEGER,
    PRIMARY KEY (message_id, viewer)
) STRICT;
CREATE INDEX status_views_viewed ON status_views (viewed_at) WHERE viewed_at IS NOT NULL;
CREATE INDEX status_views_last ON status_views (last_at);

-- Proof that a status exists at the provider (a fromMe status event, or any
-- ack of it), by bare message id. It settles an `in_doubt` row as posted
-- without a look-up, and a row still `uploading` when it came as soon as
-- its outcome is unknown. Never a reason to send.
CREATE TABLE status_confirmations (
    message_id   TEXT PRIMARY KEY NOT NULL,
    instance     TEXT NOT NULL,
    event        TEXT NOT NULL,
    confirmed_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
) STRICT;
CREATE INDEX status_confirmations_at ON status_confirmations (confirmed_at);
