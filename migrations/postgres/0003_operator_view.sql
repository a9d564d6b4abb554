-- Operators' view (issue 11 §5).
--
-- Instances the daemon paused (401/403, session not working), written by the
-- daemon when it pauses or resumes one, so that `statusd stats` (another
-- process) and the dashboard can say why and since when. Cleared on resume.
CREATE TABLE status_instance_pauses (
    instance   text PRIMARY KEY,
    reason     text NOT NULL,
    since      timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
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
            THEN EXTRACT(EPOCH FROM now() - MIN(GREATEST(created_at, not_before))
                         FILTER (WHERE not_before IS NULL OR not_before <= now()))::double precision
       END AS oldest_age_secs,
       COUNT(*) FILTER (WHERE state IN ('queued', 'pending_upload') AND not_before > now()) AS scheduled
FROM status_outbox
GROUP BY instance, state;
