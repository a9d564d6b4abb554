-- Fair scheduling across instances (issue 14).
--
-- The claim takes each instance's due rows up to that instance's budget, one
-- ordered index probe per instance (a per-instance cursor), instead of one
-- global FIFO scan: these indexes serve it.
CREATE INDEX status_outbox_due_by_instance ON status_outbox (instance, priority DESC, created_at)
    WHERE state = 'pending_upload';
CREATE INDEX status_outbox_queued_by_instance ON status_outbox (instance, priority DESC, created_at)
    WHERE state = 'queued';

-- Instance leases: each instance is served by one replica at a time, so that
-- its rate and in-flight cap hold for the whole deployment. A replica renews
-- its leases every quarter lease; one that dies leaves them to expire, and
-- another replica takes them over. Times: integer milliseconds, database
-- clock.
CREATE TABLE status_instance_leases (
    instance   TEXT PRIMARY KEY NOT NULL,
    owner      TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;

-- Replicas alive (a heartbeat with each lease renewal): the fair share of
-- instances per replica is the number of instances over the live replicas.
CREATE TABLE status_replicas (
    owner   TEXT PRIMARY KEY NOT NULL,
    seen_at INTEGER NOT NULL
) STRICT;
