//! Console sessions (`admin_sessions`): signing in with a live admin token
//! opens one, signing out ends it. The cookie holds a random session id; only
//! its SHA-256 is stored, as for tokens. A session counts while it has not
//! expired and its token is not revoked, so revoking a token ends its
//! sessions at once. Each session has its own CSRF secret, which every
//! console form carries. This module owns every change of the table.

use sqlx::PgPool;

use crate::{error::AdminError, tokens};

/// How long a session lasts after sign-in.
pub const LIFETIME_HOURS: i32 = 12;

/// A session as the console sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Session {
    /// The name of the token it was opened with: the actor of its changes.
    pub actor: String,
    /// The secret its forms carry.
    pub csrf: String,
}

/// A session just opened.
#[derive(Debug)]
pub struct Opened {
    /// The session id, for the cookie (shown once, like a token).
    pub id: String,
    /// The session.
    pub session: Session,
}

/// 32 random bytes in hex.
fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Opens a session for the live token `token`; `None` when it is unknown or
/// revoked. Sessions that have expired or whose token was revoked are
/// removed on the way.
pub async fn open(pool: &PgPool, token: &str) -> Result<Option<Opened>, AdminError> {
    sqlx::query(
        "DELETE FROM admin_sessions WHERE expires_at <= now()
            OR token_id IN (SELECT id FROM admin_tokens WHERE revoked_at IS NOT NULL)",
    )
    .execute(pool)
    .await?;
    let id = random_hex();
    let csrf = random_hex();
    let actor: Option<String> = sqlx::query_scalar(
        "INSERT INTO admin_sessions (session_hash, token_id, csrf_secret, expires_at)
         SELECT $1, id, $2, now() + make_interval(hours => $4)
         FROM admin_tokens WHERE token_hash = $3 AND revoked_at IS NULL
         RETURNING (SELECT name FROM admin_tokens WHERE id = token_id)",
    )
    .bind(tokens::hash(&id))
    .bind(&csrf)
    .bind(tokens::hash(token))
    .bind(LIFETIME_HOURS)
    .fetch_optional(pool)
    .await?;
    Ok(actor.map(|actor| Opened {
        id,
        session: Session { actor, csrf },
    }))
}

/// The live session with id `id`, if there is one.
pub async fn find(pool: &PgPool, id: &str) -> Result<Option<Session>, AdminError> {
    Ok(sqlx::query_as(
        "SELECT t.name AS actor, s.csrf_secret AS csrf
         FROM admin_sessions s JOIN admin_tokens t ON t.id = s.token_id
         WHERE s.session_hash = $1 AND s.expires_at > now() AND t.revoked_at IS NULL",
    )
    .bind(tokens::hash(id))
    .fetch_optional(pool)
    .await?)
}

/// Ends the session with id `id` (signing out); ending it twice is harmless.
pub async fn close(pool: &PgPool, id: &str) -> Result<(), AdminError> {
    sqlx::query("DELETE FROM admin_sessions WHERE session_hash = $1")
        .bind(tokens::hash(id))
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_64_hex_digits_and_differ() {
        let (a, b) = (random_hex(), random_hex());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
