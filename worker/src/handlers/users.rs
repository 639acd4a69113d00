//! `user.created`, `user.updated`, `user.deleted`: the local mirror of Clerk
//! users (`SPEC.md` section 9.1).

use std::collections::HashSet;

use shared::event::user::{DeletedUser, User};
use sqlx::PgConnection;

use super::{data, memberships, Applied, Event, HandlerError};

/// Inserts or updates the user. An update older than what is stored, or for a
/// user already deleted, changes nothing.
pub async fn upsert(conn: &mut PgConnection, event: &Event<'_>) -> Result<Applied, HandlerError> {
    let user: User = data(event)?;
    let changed = upsert_many(conn, &[&user]).await?;
    Ok(outcome(event.webhook_id, &user, !changed.is_empty()))
}

/// Several users' upserts ([`upsert`]) in one statement: the ids of those it
/// changed. The ids must be distinct (one statement cannot change a row
/// twice); rows are taken in id order, as every batch takes them.
pub async fn upsert_many(
    conn: &mut PgConnection,
    users: &[&User],
) -> Result<HashSet<String>, sqlx::Error> {
    let mut sorted: Vec<&User> = users.to_vec();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    debug_assert!(sorted.windows(2).all(|pair| pair[0].id != pair[1].id));
    let ids: Vec<&str> = sorted.iter().map(|user| user.id.as_str()).collect();
    let emails: Vec<Option<&str>> = sorted.iter().map(|user| user.primary_email()).collect();
    let first_names: Vec<Option<&str>> = sorted
        .iter()
        .map(|user| user.first_name.as_deref())
        .collect();
    let last_names: Vec<Option<&str>> = sorted
        .iter()
        .map(|user| user.last_name.as_deref())
        .collect();
    let updated: Vec<Option<i64>> = sorted.iter().map(|user| user.updated_at).collect();
    let changed: Vec<String> = sqlx::query_scalar(
        "INSERT INTO users (id, email, first_name, last_name, clerk_updated_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
         ON CONFLICT (id) DO UPDATE SET \
             email = EXCLUDED.email, first_name = EXCLUDED.first_name, \
             last_name = EXCLUDED.last_name, clerk_updated_at = EXCLUDED.clerk_updated_at, \
             updated_at = now() \
         WHERE users.deleted_at IS NULL \
           AND COALESCE(users.clerk_updated_at, -1) <= COALESCE(EXCLUDED.clerk_updated_at, -1) \
         RETURNING id",
    )
    .bind(&ids)
    .bind(&emails)
    .bind(&first_names)
    .bind(&last_names)
    .bind(&updated)
    .fetch_all(conn)
    .await?;
    Ok(changed.into_iter().collect())
}

/// What the upsert of event `webhook_id` did, logged when it changed nothing.
pub fn outcome(webhook_id: &str, user: &User, changed: bool) -> Applied {
    if changed {
        return Applied::Processed;
    }
    tracing::info!(
        webhook_id,
        user_id = %user.id,
        updated_at = user.updated_at,
        "user event older than the stored user, or user deleted: nothing changed"
    );
    Applied::Unchanged
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
