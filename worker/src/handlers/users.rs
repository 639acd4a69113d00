//! `user.created`, `user.updated`, `user.deleted`: the local mirror of Clerk
//! users (`SPEC.md` section 9.1).

use shared::event::user::{DeletedUser, User};
use sqlx::PgConnection;

use super::{data, memberships, Applied, Event, HandlerError};

/// Inserts or updates the user. An update older than what is stored, or for a
/// user already deleted, changes nothing.
pub async fn upsert(conn: &mut PgConnection, event: &Event<'_>) -> Result<Applied, HandlerError> {
    let user: User = data(event)?;
    let changed = sqlx::query(
        "INSERT INTO users (id, email, first_name, last_name, clerk_updated_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO UPDATE SET \
             email = EXCLUDED.email, first_name = EXCLUDED.first_name, \
             last_name = EXCLUDED.last_name, clerk_updated_at = EXCLUDED.clerk_updated_at, \
             updated_at = now() \
         WHERE users.deleted_at IS NULL \
           AND COALESCE(users.clerk_updated_at, -1) <= COALESCE(EXCLUDED.clerk_updated_at, -1)",
    )
    .bind(&user.id)
    .bind(user.primary_email())
    .bind(&user.first_name)
    .bind(&user.last_name)
    .bind(user.updated_at)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if changed == 0 {
        tracing::info!(
            user_id = %user.id,
            updated_at = user.updated_at,
            "user event older than the stored user, or user deleted: nothing changed"
        );
        return Ok(Applied::Unchanged);
    }
    Ok(Applied::Processed)
}

/// Marks the user deleted (a tombstone if we never saw it, so a late
/// `user.created` cannot bring it back) and releases its memberships.
pub async fn delete(conn: &mut PgConnection, event: &Event<'_>) -> Result<Applied, HandlerError> {
    let user: DeletedUser = data(event)?;
    mark_deleted(conn, &user.id).await?;
    memberships::release(
        conn,
        &user.id,
        memberships::Release::Webhook(event.webhook_id),
    )
    .await?;
    Ok(Applied::Processed)
}

/// Marks `user_id` deleted, keeping the first deletion time; creates a
/// tombstone for a user never seen.
pub async fn mark_deleted(conn: &mut PgConnection, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO users (id, deleted_at) VALUES ($1, now()) \
         ON CONFLICT (id) DO UPDATE SET deleted_at = COALESCE(users.deleted_at, now()), updated_at = now()",
    )
    .bind(user_id)
    .execute(conn)
    .await
    .map(|_| ())
}
