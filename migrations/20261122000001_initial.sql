-- Every table of the product contract (SPEC.md section 6). Later migrations add
-- columns and indexes, not tables. Columns beyond the contract have defaults,
-- because the application that shares this database inserts rows itself.

-- The archive of every verified delivery, keyed by its svix-id.
CREATE TABLE webhook_events (
    id            bigserial   PRIMARY KEY,
    webhook_id    text        NOT NULL UNIQUE,
    event_type    text        NOT NULL,
    -- The event as received, for queries; raw_body keeps the exact bytes that
    -- were signed, and is what gets published.
    payload       jsonb       NOT NULL,
    raw_body      bytea       NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    processed_at  timestamptz,
    status        text        NOT NULL DEFAULT 'received'
                  CHECK (status IN ('received', 'published', 'processed', 'ignored', 'failed', 'dead')),
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text,
    -- W3C trace context of the request that received the event.
    traceparent   text
);

-- The relay's work list stays small: only rows the broker has not confirmed.
CREATE INDEX webhook_events_unpublished ON webhook_events (id) WHERE published_at IS NULL;
CREATE INDEX webhook_events_type_received ON webhook_events (event_type, received_at);
CREATE INDEX webhook_events_received ON webhook_events (received_at);

-- Local mirror of Clerk users.
CREATE TABLE users (
    id                text        PRIMARY KEY,
    email             text,
    first_name        text,
    last_name         text,
    -- Clerk's updated_at in Unix milliseconds: older updates are ignored.
    clerk_updated_at  bigint,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz
);

CREATE TABLE memberships (
    id              bigserial   PRIMARY KEY,
    email           text,
    user_id         text,
    status          text        NOT NULL DEFAULT 'waitlisted'
                    CHECK (status IN ('waitlisted', 'active', 'canceled')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    activated_at    timestamptz,
    deactivated_at  timestamptz
);

CREATE INDEX memberships_user_id ON memberships (user_id) WHERE user_id IS NOT NULL;
-- The waitlist, in the order it is served.
CREATE INDEX memberships_waitlist ON memberships (created_at, id) WHERE status = 'waitlisted';

-- Audit log of every change made on someone's behalf.
CREATE TABLE admin_actions (
    id             bigserial   PRIMARY KEY,
    action_type    text        NOT NULL,
    actor          text        NOT NULL DEFAULT 'system',
    user_id        text,
    membership_id  bigint,
    webhook_id     text,
    details        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX admin_actions_user_id ON admin_actions (user_id);
CREATE INDEX admin_actions_webhook_id ON admin_actions (webhook_id);

-- Credit balance per owner (a Clerk user id or organization id):
-- plan_credits + pack_credits.
CREATE TABLE credit_accounts (
    owner_id           text        PRIMARY KEY,
    plan_slug          text,
    plan_credits       integer     NOT NULL DEFAULT 0,
    pack_credits       integer     NOT NULL DEFAULT 0,
    -- Start of the plan period the plan credits belong to, Unix milliseconds.
    plan_period_start  bigint,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Append-only: every change of a balance writes one row in the same transaction.
CREATE TABLE credit_ledger (
    id               bigserial   PRIMARY KEY,
    owner_id         text        NOT NULL,
    delta            integer     NOT NULL,
    reason           text        NOT NULL
                     CHECK (reason IN ('plan_grant', 'plan_end', 'credit_pack', 'admin_adjustment')),
    idempotency_key  text        NOT NULL UNIQUE,
    webhook_id       text,
    actor            text,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX credit_ledger_owner ON credit_ledger (owner_id, id);
