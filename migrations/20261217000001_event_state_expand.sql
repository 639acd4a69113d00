-- The mutable state of each stored event, apart from the event itself.
--
-- Until now every state change (published, processed, each failed attempt)
-- rewrote the whole row of webhook_events, body included, and every one of
-- its indexes. From the next migration on, the event is written once into
-- webhook_event_bodies and never rewritten, its state lives in this narrow
-- table, and webhook_events is a view joining the two under the names and
-- columns it always had.
--
-- This step only adds. It takes no lock that blocks the table's readers or
-- writers for longer than creating an empty table does, and the services of
-- the previous release keep working unchanged: a trigger copies every state
-- they write into the new table (and deletes it with its event). `worker migrate` then copies the state of
-- the rows stored before, in batches of 1,000 (shared::event_status::
-- copy_states), and only then applies the contract step.
-- No foreign key: checking one would lock each event's row as its state is
-- written (a write of its own), and the writers keep both in step anyway:
-- the ingress inserts both in one statement, prune and the view's delete
-- remove both.
CREATE TABLE webhook_event_states (
    event_id      bigint      PRIMARY KEY,
    published_at  timestamptz,
    processed_at  timestamptz,
    status        text        NOT NULL DEFAULT 'received'
                  CHECK (status IN ('received', 'published', 'processed', 'ignored', 'failed', 'dead')),
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text
) WITH (fillfactor = 70);

-- What the relay still has to publish: this replaces webhook_outbox.
CREATE INDEX webhook_event_states_unpublished
    ON webhook_event_states (event_id) WHERE published_at IS NULL;

-- What the backlog gauges read (was webhook_events_unprocessed).
CREATE INDEX webhook_event_states_unprocessed
    ON webhook_event_states (published_at)
    WHERE processed_at IS NULL AND status IN ('published', 'failed');

-- Runs as the owner, so the services' roles need no grant on the new table
-- before the grants file runs again.
CREATE FUNCTION webhook_events_copy_state() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM webhook_event_states WHERE event_id = OLD.id;
        RETURN NULL;
    END IF;
    INSERT INTO webhook_event_states AS s
        (event_id, published_at, processed_at, status, attempts, last_error)
    VALUES (NEW.id, NEW.published_at, NEW.processed_at, NEW.status, NEW.attempts, NEW.last_error)
    ON CONFLICT (event_id) DO UPDATE SET
        published_at = EXCLUDED.published_at,
        processed_at = EXCLUDED.processed_at,
        status = EXCLUDED.status,
        attempts = EXCLUDED.attempts,
        last_error = EXCLUDED.last_error;
    RETURN NULL;
END
$$;

CREATE TRIGGER webhook_events_copy_state
    AFTER INSERT OR DELETE OR UPDATE OF published_at, processed_at, status, attempts, last_error
    ON webhook_events
    FOR EACH ROW
    EXECUTE FUNCTION webhook_events_copy_state();
