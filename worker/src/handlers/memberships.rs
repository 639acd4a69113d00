//! Memberships and the waitlist when a user is deleted (`SPEC.md` section 9.1).

use sqlx::PgConnection;

use super::HandlerError;

/// Who the audit rows name as the actor of these changes.
pub const ACTOR: &str = "clerk_webhook";

/// Serialises promotions across workers, so the waitlist is served strictly in
/// `created_at, id` order and two deletions never promote the same person.
/// Held only from the promotion to the commit.
const WAITLIST_LOCK: i64 = 0x636c_6572_6b5f_776c; // "clerk_wl"

/// Why a user's memberships are released: the audit rows say which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release<'a> {
    /// A `user.deleted` webhook, by its svix id.
    Webhook(&'a str),
    /// `worker sync users` found the user gone from Clerk.
    Sync {
        /// Who ran the reconciliation.
        actor: &'a str,
    },
}

impl<'a> Release<'a> {
    fn action_type(self) -> &'static str {
        match self {
            Release::Webhook(_) => "user_deleted_webhook",
            Release::Sync { .. } => "user_deleted_sync",
        }
    }

    fn actor(self) -> &'a str {
        match self {
            Release::Webhook(_) => ACTOR,
            Release::Sync { actor } => actor,
        }
    }
}

/// Unlinks and cancels every membership of `user_id` and audits each; then,
/// for each one that was active, promotes the oldest waitlisted membership.
/// Everything of the user is canceled before anyone is promoted, so a
/// waitlisted membership of the same user never takes the freed place.
/// Memberships are never deleted. Returns how many memberships were released.
pub async fn release(
    conn: &mut PgConnection,
    user_id: &str,
    cause: Release<'_>,
) -> Result<usize, HandlerError> {
    let webhook_id = match cause {
        Release::Webhook(id) => Some(id),
        Release::Sync { .. } => None,
    };
    let memberships: Vec<(i64, String, Option<String>)> = sqlx::query_as(
        "SELECT id, status, email FROM memberships WHERE user_id = $1 ORDER BY id FOR UPDATE",
    )
    .bind(user_id)
    .fetch_all(&mut *conn)
    .await?;
    if memberships.is_empty() {
        tracing::info!(
            user_id,
            webhook_id,
            "deleted user had no membership: nothing to release"
        );
        return Ok(0);
    }
    for (membership_id, previous_status, email) in &memberships {
        sqlx::query(
            "UPDATE memberships SET user_id = NULL, status = 'canceled', \
             deactivated_at = CASE WHEN status = 'canceled' THEN COALESCE(deactivated_at, now()) ELSE now() END \
             WHERE id = $1",
        )
        .bind(membership_id)
        .execute(&mut *conn)
        .await?;
        let details = serde_json::json!({"previous_status": previous_status, "email": email});
        audit(
            conn,
            cause.action_type(),
            cause.actor(),
            Some(user_id),
            *membership_id,
            webhook_id,
            details,
        )
        .await?;
        tracing::info!(user_id, membership_id, previous_status = %previous_status, "membership canceled");
    }
    for (membership_id, previous_status, _) in &memberships {
        if previous_status == "active" {
            promote_next(conn, *membership_id, user_id, webhook_id).await?;
        }
    }
    Ok(memberships.len())
}

async fn promote_next(
    conn: &mut PgConnection,
    freed_membership_id: i64,
    deleted_user_id: &str,
    webhook_id: Option<&str>,
) -> Result<(), HandlerError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(WAITLIST_LOCK)
        .execute(&mut *conn)
        .await?;
    let next: Option<(i64, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT id, user_id, email FROM memberships WHERE status = 'waitlisted' \
         ORDER BY created_at, id LIMIT 1 FOR UPDATE",
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some((promoted_id, promoted_user, email)) = next else {
        tracing::info!(freed_membership_id, "waitlist empty: nobody to promote");
        return Ok(());
    };
    sqlx::query(
        "UPDATE memberships SET status = 'active', activated_at = clock_timestamp() WHERE id = $1",
    )
    .bind(promoted_id)
    .execute(&mut *conn)
    .await?;
    audit(
        conn,
        "waitlist_promoted",
        ACTOR,
        promoted_user.as_deref(),
        promoted_id,
        webhook_id,
        serde_json::json!({
            "email": email,
            "replaces_membership_id": freed_membership_id,
            "deleted_user_id": deleted_user_id,
        }),
    )
    .await?;
    tracing::info!(
        promoted_membership_id = promoted_id,
        freed_membership_id,
        "waitlist promoted"
    );
    Ok(())
}

async fn audit(
    conn: &mut PgConnection,
    action_type: &str,
    actor: &str,
    user_id: Option<&str>,
    membership_id: i64,
    webhook_id: Option<&str>,
    details: serde_json::Value,
) -> Result<(), HandlerError> {
    sqlx::query(
        "INSERT INTO admin_actions (action_type, actor, user_id, membership_id, webhook_id, details) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(action_type)
    .bind(actor)
    .bind(user_id)
    .bind(membership_id)
    .bind(webhook_id)
    .bind(details)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
