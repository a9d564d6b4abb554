-- Operators' view (issue 11 §5).
--
-- Instances the daemon paused (401/403, session not working), written by the
-- daemon when it pauses or resumes one, so that `statusd stats` (another
-- process) and the dashboard can say why and since when. Cleared on resume.
CREATE TABLE status_instance_pauses (
    instance   TEXT PRIMARY KEY NOT NULL,
    reason     TEXT NOT NULL,
    since      INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    updated_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);

-- The summary no longer counts rows scheduled for later (`not_before` in the
-- future) in the oldest pending age: they wait by design. They are counted
-- apart as `scheduled`. A due row's age runs from when it became due.
DROP VIEW IF EXISTS status_outbox_summary;
CREATE VIEW status_outbox_summary AS
SELECT instance,
       state,
       COUNT(*) AS count,
       CASE WHEN state IN ('queued', 'pending_upload')
            THEN (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
                  - MIN(CASE WHEN not_before IS NULL
                               OR not_before <= CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
                             THEN max(created_at, coalesce(not_before, created_at)) END)) / 1000.0
       END AS oldest_age_secs,
       SUM(CASE WHEN state IN ('queued', 'pending_upload')
                 AND not_before > CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
                THEN 1 ELSE 0 END) AS scheduled
FROM status_outbox
GROUP BY instance, state;
