-- An event the ingress stores keeps its body once: `raw_body`, the exact
-- signed bytes. Its `payload` column stays NULL and the `webhook_events`
-- view reads the payload from those bytes (they are the JSON text the
-- ingress verified, so the value is the one `payload` used to hold). The
-- body is then about half as large, fits in its row instead of going to the
-- TOAST table, and is written once instead of twice.
--
-- Rows stored before keep their `payload`, and so do the events the
-- application inserts without signed bytes (`raw_body` NULL): a row needs one
-- or the other. Only the catalog changes: the constraint is checked on the
-- rows written from now on (the older ones all have a payload), so nothing
-- is scanned or rewritten under the lock, which is not waited for more than
-- a second (`worker migrate` tries again).
SET LOCAL lock_timeout = '1s';

ALTER TABLE webhook_event_bodies ALTER COLUMN payload DROP NOT NULL;
ALTER TABLE webhook_event_bodies
    ADD CONSTRAINT webhook_event_bodies_payload_or_raw_body
    CHECK (payload IS NOT NULL OR raw_body IS NOT NULL) NOT VALID;

CREATE OR REPLACE VIEW webhook_events AS
SELECT b.id, b.webhook_id, b.event_type,
       COALESCE(b.payload, convert_from(b.raw_body, 'UTF8')::jsonb) AS payload,
       b.raw_body, b.received_at,
       s.published_at, s.processed_at, s.status, s.attempts, s.last_error,
       b.traceparent, b.subject
FROM webhook_event_bodies b
JOIN webhook_event_states s ON s.event_id = b.id;

-- An update through the view keeps the table's `payload` as it is (NULL for a
-- body stored once) unless the update changes the payload itself, instead of
-- writing back the payload the view computed from the bytes.
CREATE OR REPLACE FUNCTION webhook_events_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF (NEW.id, NEW.webhook_id, NEW.event_type, NEW.payload, NEW.raw_body, NEW.received_at,
        NEW.traceparent, NEW.subject)
       IS DISTINCT FROM
       (OLD.id, OLD.webhook_id, OLD.event_type, OLD.payload, OLD.raw_body, OLD.received_at,
        OLD.traceparent, OLD.subject) THEN
        UPDATE webhook_event_bodies SET
            id = NEW.id, webhook_id = NEW.webhook_id, event_type = NEW.event_type,
            payload = CASE WHEN NEW.payload IS DISTINCT FROM OLD.payload
                           THEN NEW.payload ELSE payload END,
            raw_body = NEW.raw_body, received_at = NEW.received_at,
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
