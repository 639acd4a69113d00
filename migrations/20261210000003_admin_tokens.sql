-- Tokens of the admin API (`admin tokens create NAME`): only the SHA-256 of
-- each token is kept; NAME is the actor of every change made with it.
CREATE TABLE IF NOT EXISTS admin_tokens (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
