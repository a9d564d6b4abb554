-- What each instance's provider does (issue 12 §2, DESIGN.md R6): learned
-- from evidence or set by an operator, kept here so that it survives
-- restarts and is shared by every process on the database. Until a
-- capability is proven (`yes`), statusd assumes the weaker behaviour.
CREATE TABLE provider_capabilities (
    instance     TEXT PRIMARY KEY NOT NULL,
    -- Does the provider post under the id we supply?
    supplied_ids TEXT NOT NULL DEFAULT 'unknown' CHECK (supplied_ids IN ('unknown', 'yes', 'no')),
    -- Does a look-up by id find a posted status (a message store is kept)?
    lookup_by_id TEXT NOT NULL DEFAULT 'unknown' CHECK (lookup_by_id IN ('unknown', 'yes', 'no')),
    -- The engine, as the provider's session info names it (NOWEB, GOWS, WEBJS…).
    engine       TEXT,
    -- Why the values are what they are (the last evidence, or "set by operator").
    evidence     TEXT NOT NULL DEFAULT '',
    -- Bumped on each write: writers compare and set, so that a "no" learned
    -- by one process is never overwritten by another's stale "yes".
    version      INTEGER NOT NULL DEFAULT 0,
    updated_at   INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
) STRICT;

-- The reconciler leaves out listed statuses that belong to other rows
-- (posted under an id the provider assigned): found by provider_id.
CREATE INDEX status_outbox_provider_id ON status_outbox (provider_id) WHERE provider_id IS NOT NULL;
