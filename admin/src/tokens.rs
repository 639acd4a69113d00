//! API tokens: `admin tokens create|revoke|list`, and the check of a
//! presented token. A token is shown once; only its SHA-256 is stored, and
//! a presented token is found by its hash (never logged, never compared in
//! the clear).

use sha2::{Digest as _, Sha256};
use sqlx::PgPool;

use crate::error::AdminError;

/// Prefix of every token, so a leaked one is recognisable.
const PREFIX: &str = "adm_";

/// One token as `admin tokens list` shows it (never the token itself).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenInfo {
    /// Its name: the actor of the changes made with it.
    pub name: String,
    /// When it was created.
    pub created_at: time::OffsetDateTime,
    /// When it was revoked, if it was.
    pub revoked_at: Option<time::OffsetDateTime>,
}

/// The SHA-256 of a token, in hex.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Creates a token named `name` and returns it (the only time it is seen).
pub async fn create(pool: &PgPool, name: &str) -> Result<String, AdminError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(AdminError::BadRequest {
            code: "empty_name",
            detail: "a token needs a name".to_owned(),
        });
    }
    let secret: [u8; 32] = rand::random();
    let token = format!(
        "{PREFIX}{}",
        secret
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    );
    let inserted = sqlx::query(
        "INSERT INTO admin_tokens (name, token_hash) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(hash(&token))
    .execute(pool)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(AdminError::TokenExists(name.to_owned()));
    }
    Ok(token)
}

/// Revokes the token named `name`; revoking twice is harmless.
pub async fn revoke(pool: &PgPool, name: &str) -> Result<(), AdminError> {
    let updated = sqlx::query(
        "UPDATE admin_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE name = $1",
    )
    .bind(name)
    .execute(pool)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(AdminError::NoSuchToken(name.to_owned()));
    }
    Ok(())
}

/// Every token, oldest first.
pub async fn list(pool: &PgPool) -> Result<Vec<TokenInfo>, AdminError> {
    Ok(sqlx::query_as(
        "SELECT name, created_at, revoked_at FROM admin_tokens ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await?)
}

/// The name of the live token `token` is, if it is one.
pub async fn actor(pool: &PgPool, token: &str) -> Result<Option<String>, AdminError> {
    Ok(sqlx::query_scalar(
        "SELECT name FROM admin_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash(token))
    .fetch_optional(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_the_hex_sha256_of_the_token() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
