-- What each instance's provider does (issue 12 §2, DESIGN.md R6): learned
-- from evidence or set by an operator, kept here so that it survives
-- restarts and is shared by every replica. Until a capability is proven
-- (`yes`), statusd assumes the weaker behaviour.
CREATE TABLE provider_capabilities (
    instance     text PRIMARY KEY,
    -- Does the provider post under the id we supply?
    supplied_ids text NOT NULL DEFAULT 'unknown' CHECK (supplied_ids IN ('unknown', 'yes', 'no')),
    -- Does a look-up by id find a posted status (a message store is kept)?
    lookup_by_id text NOT NULL DEFAULT 'unknown' CHECK (lookup_by_id IN ('unknown', 'yes', 'no')),
    -- The engine, as the provider's session info names it (NOWEB, GOWS, WEBJS…).
    engine       text,
    -- Why the values are what they are (the last evidence, or "set by operator").
    evidence     text NOT NULL DEFAULT '',
    -- Bumped on each write: writers compare and set, so that a "no" learned
    -- by one replica is never overwritten by another's stale "yes".
    version      bigint NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The reconciler leaves out listed statuses that belong to other rows
-- (posted under an id the provider assigned): found by provider_id.
CREATE INDEX status_outbox_provider_id ON status_outbox (provider_id) WHERE provider_id IS NOT NULL;
