-- The contract step of the split the previous migration began.
--
-- `worker migrate` applies it once it has copied the state of every older
-- row; the catch-up below only finds rows when something else applied the
-- migrations, and copies them without blocking anyone (it reads under the
-- weakest lock). Then, under one short exclusive lock that changes only the
-- catalog, nothing on disk:
--   webhook_events (the table)  becomes webhook_event_bodies, without its
--                               state columns (dropping a column rewrites
--                               nothing);
--   webhook_outbox              goes: an unpublished event is one whose
--                               state has no published_at (indexed);
--   webhook_events              becomes a view with the same columns in the
--                               same order, which the application and the
--                               operators read, insert into, update and
--                               delete from as before.
-- Should a long transaction hold the table, the lock is not waited for more
-- than a second (the services' statements queue behind a waiting lock
-- request); `worker migrate` gives way and tries again.
SET LOCAL lock_timeout = '1s';

INSERT INTO webhook_event_states (event_id, published_at, processed_at, status, attempts, last_error)
SELECT e.id, e.published_at, e.processed_at, e.status, e.attempts, e.last_error
FROM webhook_events e
WHERE NOT EXISTS (SELECT 1 FROM webhook_event_states s WHERE s.event_id = e.id)
ON CONFLICT (event_id) DO NOTHING;

LOCK TABLE webhook_events, webhook_outbox IN ACCESS EXCLUSIVE MODE;

DROP TRIGGER webhook_events_copy_state ON webhook_events;
DROP FUNCTION webhook_events_copy_state();
DROP TRIGGER webhook_events_enqueue ON webhook_events;
DROP FUNCTION webhook_events_enqueue();
DROP TABLE webhook_outbox;

ALTER TABLE webhook_events RENAME TO webhook_event_bodies;
ALTER TABLE webhook_event_bodies
    DROP COLUMN published_at,
    DROP COLUMN processed_at,
    DROP COLUMN status,
    DROP COLUMN attempts,
    DROP COLUMN last_error;
-- Bodies are only inserted (and their subject filled once): no free space
-- needs keeping for updates.
ALTER TABLE webhook_event_bodies SET (fillfactor = 100);

CREATE VIEW webhook_events AS
SELECT b.id, b.webhook_id, b.event_type, b.payload, b.raw_body, b.received_at,
       s.published_at, s.processed_at, s.status, s.attempts, s.last_error,
       b.traceparent, b.subject
FROM webhook_event_bodies b
JOIN webhook_event_states s ON s.event_id = b.id;

ALTER VIEW webhook_events ALTER COLUMN id SET DEFAULT nextval('webhook_events_id_seq');
ALTER VIEW webhook_events ALTER COLUMN received_at SET DEFAULT now();
ALTER VIEW webhook_events ALTER COLUMN status SET DEFAULT 'received';
ALTER VIEW webhook_events ALTER COLUMN attempts SET DEFAULT 0;

-- Writes through the view, as the table took them. They run as the owner:
-- a role granted INSERT, UPDATE or DELETE on the view needs nothing on the
-- tables behind it. (INSERT … ON CONFLICT cannot target a view: an
-- application that used it inserts with WHERE NOT EXISTS instead.)
CREATE FUNCTION webhook_events_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    INSERT INTO webhook_event_bodies
        (id, webhook_id, event_type, payload, raw_body, received_at, traceparent, subject)
    VALUES (NEW.id, NEW.webhook_id, NEW.event_type, NEW.payload, NEW.raw_body,
            NEW.received_at, NEW.traceparent, NEW.subject);
    INSERT INTO webhook_event_states
        (event_id, published_at, processed_at, status, attempts, last_error)
    VALUES (NEW.id, NEW.published_at, NEW.processed_at, NEW.status, NEW.attempts,
            NEW.last_error);
    RETURN NEW;
END
$$;

CREATE FUNCTION webhook_events_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF (NEW.id, NEW.webhook_id, NEW.event_type, NEW.payload, NEW.raw_body, NEW.received_at,
        NEW.traceparent, NEW.subject)
       IS DISTINCT FROM
       (OLD.id, OLD.webhook_id, OLD.event_type, OLD.payload, OLD.raw_body, OLD.received_at,
        OLD.traceparent, OLD.subject) THEN
        UPDATE webhook_event_bodies SET
            id = NEW.id, webhook_id = NEW.webhook_id, event_type = NEW.event_type,
            payload = NEW.payload, raw_body = NEW.raw_body, received_at = NEW.received_at,
            traceparent = NEW.traceparent, subject = NEW.subject
        WHERE id = OLD.id;
    END IF;
    IF (NEW.published_at, NEW.processed_at, NEW.status, NEW.attempts, NEW.last_error)
       IS DISTINCT FROM
       (OLD.published_at, OLD.processed_at, OLD.status, OLD.attempts, OLD.last_error) THEN
        UPDATE webhook_event_states SET
            published_at = NEW.published_at, processed_at = NEW.processed_at,
            status = NEW.status, attempts = NEW.attempts, last_error = NEW.last_error
        WHERE event_id = NEW.id;
    END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION webhook_events_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    DELETE FROM webhook_event_states WHERE event_id = OLD.id;
    DELETE FROM webhook_event_bodies WHERE id = OLD.id;
    RETURN OLD;
END
$$;

CREATE TRIGGER webhook_events_insert INSTEAD OF INSERT ON webhook_events
    FOR EACH ROW EXECUTE FUNCTION webhook_events_insert();
CREATE TRIGGER webhook_events_update INSTEAD OF UPDATE ON webhook_events
    FOR EACH ROW EXECUTE FUNCTION webhook_events_update();
CREATE TRIGGER webhook_events_delete INSTEAD OF DELETE ON webhook_events
    FOR EACH ROW EXECUTE FUNCTION webhook_events_delete();
