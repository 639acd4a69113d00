-- Sessions of the operators' console: signing in with an admin token opens
-- one. Only the SHA-256 of the session id (the cookie) is kept; a session
-- counts only while it has not expired and its token is not revoked.
CREATE TABLE IF NOT EXISTS admin_sessions (
    id           bigserial PRIMARY KEY,
    session_hash text NOT NULL UNIQUE,
    token_id     bigint NOT NULL REFERENCES admin_tokens (id) ON DELETE CASCADE,
    -- The per-session token every console form carries (CSRF protection).
    csrf_secret  text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS admin_sessions_expires_at ON admin_sessions (expires_at);
CREATE INDEX IF NOT EXISTS admin_sessions_token_id ON admin_sessions (token_id);
