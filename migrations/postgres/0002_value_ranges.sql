-- Migration 0002 (PostgreSQL): times statusd can read. PostgreSQL accepts
-- 'infinity' and years up to 294276; statusd's clock type ends in year
-- 262143, and such a value made every read of its row fail. Now an insert
-- outside 1970–9999 fails in the upstream app's own transaction.
--
-- Existing rows are kept: an out-of-range `not_before` becomes NULL and a row
-- not yet sent becomes `invalid`, naming the column; statusd's own columns
-- are brought into range.
UPDATE status_outbox SET
    state = CASE WHEN state IN ('queued', 'pending_upload') THEN 'invalid' ELSE state END,
    last_error = 'migration 0002: not_before: ' || not_before::text || ' is out of range',
    not_before = NULL
WHERE not_before IS NOT NULL
  AND NOT (not_before BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00');

UPDATE status_outbox SET
    next_attempt_at = CASE WHEN next_attempt_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00'
                           THEN next_attempt_at ELSE now() END,
    created_at = CASE WHEN created_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00'
                      THEN created_at ELSE now() END,
    updated_at = now(),
    lease_expires_at = CASE WHEN lease_expires_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00'
                            THEN lease_expires_at WHEN lease_expires_at IS NOT NULL THEN now() END,
    claimed_at = CASE WHEN claimed_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00'
                      THEN claimed_at END,
    parked_at = CASE WHEN parked_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00'
                     THEN parked_at WHEN parked_at IS NOT NULL THEN now() END,
    posted_at = CASE WHEN posted_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00'
                     THEN posted_at WHEN posted_at IS NOT NULL THEN now() END
WHERE NOT (next_attempt_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00')
   OR NOT (created_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00')
   OR NOT (updated_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00')
   OR NOT (lease_expires_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00')
   OR NOT (claimed_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00')
   OR NOT (parked_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00')
   OR NOT (posted_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00');

ALTER TABLE status_outbox
    ADD CONSTRAINT not_before_in_range
        CHECK (not_before BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00'),
    ADD CONSTRAINT times_in_range CHECK (
        next_attempt_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00'
        AND created_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00'
        AND updated_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00'
        AND (lease_expires_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00') IS NOT FALSE
        AND (claimed_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00') IS NOT FALSE
        AND (parked_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00') IS NOT FALSE
        AND (posted_at BETWEEN '1970-01-01 00:00:00+00' AND '9999-12-31 23:59:59+00') IS NOT FALSE);
