-- Events the application writes itself, with only the contract's columns
-- (webhook_id, event_type, payload), have no signed bytes: raw_body may be
-- NULL, and then what is published is the payload's text. Such a row is put
-- in the outbox by a trigger, so the relay publishes it like any other; the
-- ingress's own rows carry their bytes and enqueue themselves, so the
-- trigger's WHEN clause skips them without calling any function.
ALTER TABLE webhook_events ALTER COLUMN raw_body DROP NOT NULL;

CREATE FUNCTION webhook_events_enqueue() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_outbox (event_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER webhook_events_enqueue
    AFTER INSERT ON webhook_events
    FOR EACH ROW
    WHEN (NEW.raw_body IS NULL AND NEW.published_at IS NULL)
    EXECUTE FUNCTION webhook_events_enqueue();

-- The ends of subscription items, one row per item and period. An end blocks
-- grants of its own period and older ones of the same item, never later ones
-- (an item that ended may start again).
CREATE TABLE credit_plan_ends (
    item_id       text        NOT NULL,
    -- Start of the period that ended, Unix milliseconds.
    period_start  bigint      NOT NULL,
    owner_id      text        NOT NULL,
    webhook_id    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (item_id, period_start)
);

-- Ends recorded before this table kept no period: the account's period at
-- the time of the upgrade is the closest known.
INSERT INTO credit_plan_ends (item_id, period_start, owner_id, webhook_id)
SELECT substr(l.idempotency_key, length('plan_end:') + 1),
       COALESCE(a.plan_period_start, 0), l.owner_id, l.webhook_id
FROM credit_ledger l
LEFT JOIN credit_accounts a ON a.owner_id = l.owner_id
WHERE l.reason = 'plan_end' AND l.idempotency_key LIKE 'plan_end:%'
ON CONFLICT DO NOTHING;
