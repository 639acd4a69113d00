-- The user or organization id an event concerns (shared::event::subject),
-- filled by the ingress at insert; events stored before are filled by the
-- worker's batched backfill (worker::backfill). Nullable, no default: adding
-- it rewrites nothing.
ALTER TABLE webhook_events ADD COLUMN IF NOT EXISTS subject text;
