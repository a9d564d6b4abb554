-- Only rows whose provider assigned its own id need finding by it (the
-- reconciler leaves out listed statuses that belong to other rows). Where
-- the provider kept our id, `provider_id = message_id` and the message-id
-- index finds the row: indexing those too cost every post a random-key
-- index write (about 15% of a single instance's drain on SQLite).
DROP INDEX status_outbox_provider_id;
CREATE INDEX status_outbox_provider_id ON status_outbox (provider_id)
    WHERE provider_id <> message_id;
