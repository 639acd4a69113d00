-- The relay's work list moves to its own small table. Marking a row published
-- then changes no indexed column of webhook_events, so PostgreSQL can update
-- it in place (a HOT update: no new index entries, a small WAL record) instead
-- of writing a new version of a ~3 KB row into every index. The worker's
-- update of processed_at/status profits the same way. The free space left in
-- each page (fillfactor) is what lets those updates stay on their page.
CREATE TABLE webhook_outbox (
    event_id  bigint PRIMARY KEY REFERENCES webhook_events (id) ON DELETE CASCADE
);

INSERT INTO webhook_outbox (event_id)
SELECT id FROM webhook_events WHERE published_at IS NULL;

DROP INDEX webhook_events_unpublished;

ALTER TABLE webhook_events SET (fillfactor = 80);
