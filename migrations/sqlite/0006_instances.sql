-- Instances added, changed and removed at runtime (issue 14), beside the
-- ones in the configuration file (which win on a name clash).
--
-- `settings` holds the same keys as an `[instances.NAME]` table of the
-- configuration file, as a JSON object (so a setting added there needs no
-- migration here), with one rule: no access token. A token is named by
-- `access_token_env` (an environment variable) or `access_token_file` (a
-- file), read by each daemon from its own environment; the CHECK makes the
-- table refuse a token even from a hand-written INSERT.
--
-- `removed_at` keeps a removed instance's name known, so that its rows wait
-- (reported as paused) rather than becoming `invalid`; `statusd instance add`
-- of the same name brings it back. Times are milliseconds since the epoch.
CREATE TABLE status_instances (
    name       TEXT PRIMARY KEY NOT NULL
               CONSTRAINT instance_name_shape CHECK (length(name) BETWEEN 1 AND 64
                   AND name NOT GLOB '*[^a-z0-9_-]*'),
    settings   TEXT NOT NULL
               CONSTRAINT settings_is_an_object CHECK (json_valid(settings) AND json_type(settings) = 'object')
               CONSTRAINT settings_hold_no_token CHECK (json_type(settings, '$.access_token') IS NULL),
    enabled    INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    removed_at INTEGER,
    created_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    updated_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
) STRICT;
