-- no-transaction
-- Events by subject, newest first (the admin API's search by user). Built
-- concurrently, so upgrading a large table does not block the ingress's inserts.
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_events_subject
    ON webhook_events (subject, received_at DESC, id DESC)
    WHERE subject IS NOT NULL;
