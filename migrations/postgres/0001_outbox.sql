-- statusd outbox (PostgreSQL). Times are timestamptz from the database clock.

CREATE TABLE status_outbox (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    instance         text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('text', 'image', 'voice', 'video')),
    payload          jsonb NOT NULL,
    dedupe_key       text UNIQUE,
    message_id       text UNIQUE,
    state            text NOT NULL DEFAULT 'queued' CHECK (state IN (
                        'queued', 'pending_upload', 'uploading', 'in_doubt', 'posted',
                        'failed', 'invalid', 'cancelled', 'deleted')),
    priority         integer NOT NULL DEFAULT 0,
    not_before       timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    claimed_at       timestamptz,
    reconcile_attempts integer NOT NULL DEFAULT 0,
    parked_at        timestamptz,
    provider_id      text,
    last_error       text,
    last_http_status integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    posted_at        timestamptz,
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
    status_id   uuid NOT NULL REFERENCES status_outbox (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    outcome     text NOT NULL,
    http_status integer,
    latency_ms  bigint NOT NULL,
    error       text
);
CREATE INDEX status_attempts_status ON status_attempts (status_id, attempt);

CREATE VIEW status_outbox_summary AS
SELECT instance,
       state,
       COUNT(*) AS count,
       CASE WHEN state IN ('queued', 'pending_upload')
            THEN EXTRACT(EPOCH FROM now() - MIN(created_at))::double precision
       END AS oldest_age_secs
FROM status_outbox
GROUP BY instance, state;

CREATE TABLE status_schedules (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    cron        text NOT NULL,
    timezone    text NOT NULL DEFAULT 'UTC',
    instance    text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('text', 'image', 'voice', 'video')),
    payload     jsonb NOT NULL,
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Wake-up: tell listening daemons that work may be claimable. The payload is
-- constant so that PostgreSQL folds the notifications of one transaction.
CREATE FUNCTION status_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('status_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER status_outbox_insert_notify
    AFTER INSERT ON status_outbox
    FOR EACH ROW WHEN (NEW.state IN ('queued', 'pending_upload'))
    EXECUTE FUNCTION status_outbox_notify();

CREATE TRIGGER status_outbox_update_notify
    AFTER UPDATE OF state ON status_outbox
    FOR EACH ROW WHEN (NEW.state IN ('queued', 'pending_upload') AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION status_outbox_notify();
