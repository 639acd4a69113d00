//! `worker credits adjust`: an operator's change of one balance, audited and
//! synced to Clerk like any other change.

use sqlx::PgPool;

use super::ledger::{self, Change, Entry, LedgerError, Outcome};

/// What the operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Make the balance exactly this.
    Set(i64),
    /// Add this (negative to take away).
    Add(i64),
}

#[derive(Clone, Debug)]
pub struct Adjustment {
    pub user_id: String,
    pub target: Target,
    pub reason: String,
    pub actor: String,
}

/// The balance before and after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adjusted {
    pub before: i64,
    pub after: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum AdjustError {
    #[error("unknown user {0}: no such user and no credit account")]
    UnknownUser(String),
    #[error("user {0} is deleted")]
    DeletedUser(String),
    #[error("the reason must not be empty")]
    EmptyReason,
    #[error("refused")]
    Refused(#[from] LedgerError),
    #[error("PostgreSQL failed")]
    Database(#[from] sqlx::Error),
}

/// Applies the adjustment: ledger row, `admin_actions` `credits_adjusted`, and
/// a scheduled Clerk sync, in one transaction.
pub async fn adjust(pool: &PgPool, adjustment: &Adjustment) -> Result<Adjusted, AdjustError> {
    if adjustment.reason.trim().is_empty() {
        return Err(AdjustError::EmptyReason);
    }
    let user = &adjustment.user_id;
    let mut tx = pool.begin().await?;
    let (is_user, deleted, has_account): (bool, bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1), \
                EXISTS (SELECT 1 FROM users WHERE id = $1 AND deleted_at IS NOT NULL), \
                EXISTS (SELECT 1 FROM credit_accounts WHERE owner_id = $1)",
    )
    .bind(user)
    .fetch_one(&mut *tx)
    .await?;
    if deleted {
        return Err(AdjustError::DeletedUser(user.clone()));
    }
    if !is_user && !has_account {
        return Err(AdjustError::UnknownUser(user.clone()));
    }
    let change = match adjustment.target {
        Target::Set(target) => Change::SetBalance { target },
        Target::Add(delta) => Change::Adjust { delta },
    };
    let key = format!("admin:{}", uuid_like());
    let entry = Entry {
        owner_id: user,
        idempotency_key: key,
        webhook_id: None,
        actor: Some(&adjustment.actor),
        change,
    };
    let outcome = ledger::apply(&mut tx, &entry).await?;
    let Outcome::Applied { delta, balance } = outcome else {
        // A fresh key is never a duplicate and adjustments are never stale.
        return Err(AdjustError::Database(sqlx::Error::Protocol(format!(
            "unexpected ledger outcome {outcome:?}"
        ))));
    };
    let before = balance - delta;
    sqlx::query(
        "INSERT INTO admin_actions (action_type, actor, user_id, details) VALUES ('credits_adjusted', $1, $2, $3)",
    )
    .bind(&adjustment.actor)
    .bind(user)
    .bind(serde_json::json!({
        "before": before,
        "after": balance,
        "delta": delta,
        "reason": adjustment.reason,
        "request": match adjustment.target {
            Target::Set(n) => serde_json::json!({"set": n}),
            Target::Add(n) => serde_json::json!({"add": n}),
        },
    }))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Adjusted {
        before,
        after: balance,
    })
}

fn uuid_like() -> String {
    format!("{:032x}", rand::random::<u128>())
}
