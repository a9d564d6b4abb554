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
-- of the same name brings it back.
CREATE TABLE status_instances (
    name       text PRIMARY KEY
               CONSTRAINT instance_name_shape CHECK (name ~ '^[a-z0-9_-]{1,64}$'),
    settings   jsonb NOT NULL
               CONSTRAINT settings_is_an_object CHECK (jsonb_typeof(settings) = 'object')
               CONSTRAINT settings_hold_no_token CHECK (NOT (settings ? 'access_token')),
    enabled    boolean NOT NULL DEFAULT true,
    removed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Every running daemon LISTENs on this channel and reloads its instances.
CREATE FUNCTION status_instances_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('status_instances', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER status_instances_changed_notify
    AFTER INSERT OR UPDATE OR DELETE ON status_instances
    FOR EACH STATEMENT EXECUTE FUNCTION status_instances_notify();
