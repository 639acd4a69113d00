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
