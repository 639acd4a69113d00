//! The audit log (`admin_actions`) of what operators change: one row per
//! command or API call that changes state, naming who, what was selected and
//! what changed. The handlers' own rows (deletions, promotions) are written by
//! the handlers in their transaction.

use serde_json::Value;
use sqlx::PgPool;

/// One audited operation.
pub struct Action<'a> {
    /// `dlq_replay`, `replay_from_store`, `prune`, `sync_users`, …
    pub action_type: &'a str,
    /// Who asked: `--actor` (the operating-system user by default), or the
    /// admin token's name.
    pub actor: &'a str,
    /// What was selected and what changed.
    pub details: Value,
}

/// Writes the row.
pub async fn record(pool: &PgPool, action: &Action<'_>) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO admin_actions (action_type, actor, details) VALUES ($1, $2, $3)")
        .bind(action.action_type)
        .bind(action.actor)
        .bind(&action.details)
        .execute(pool)
        .await
        .map(|_| ())
}
