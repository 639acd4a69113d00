-- no-transaction
-- The events published but not applied yet, for the stall gauge
-- (clerk_worker_oldest_unprocessed_age_seconds). Built concurrently, so
-- upgrading a large table does not block the ingress's inserts.
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_events_unprocessed
    ON webhook_events (published_at)
    WHERE processed_at IS NULL AND status IN ('published', 'failed');
