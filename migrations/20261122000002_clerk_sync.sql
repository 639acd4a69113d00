-- Credits: which subscription item the plan credits belong to, so the end of a
-- replaced item cannot take away the credits of the plan that replaced it.
ALTER TABLE credit_accounts ADD COLUMN plan_item_id text;

-- The balance last written to Clerk, and when.
ALTER TABLE credit_accounts ADD COLUMN clerk_synced_credits integer;
ALTER TABLE credit_accounts ADD COLUMN clerk_synced_at timestamptz;

-- Pending writes of a balance to Clerk's user metadata: one row per owner, so
-- a burst of changes for one user coalesces into one write. Rows are written
-- in the transaction that changed the balance, and survive restarts.
CREATE TABLE clerk_sync_queue (
    owner_id      text        PRIMARY KEY,
    requested_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    due_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text
);

CREATE INDEX clerk_sync_queue_due ON clerk_sync_queue (due_at);
