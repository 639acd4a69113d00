//! One user as the admin sees it: the mirror row, memberships, credit
//! account, recent ledger rows, recent events and audit rows.

use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::{
    audit::{AuditFilter, AuditRow},
    events::EventSummary,
};

/// Ledger, event and audit rows a user view shows.
pub const RECENT: i64 = 20;

/// The local mirror of a Clerk user.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct UserRow {
    /// Primary email address.
    pub email: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// Clerk's `updated_at`, Unix milliseconds.
    pub clerk_updated_at: Option<i64>,
    /// When the mirror row was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the user was deleted, if they were.
    #[serde(with = "time::serde::rfc3339::option")]
    pub deleted_at: Option<OffsetDateTime>,
}

/// A membership of the user.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct MembershipRow {
    /// Its id.
    pub id: i64,
    /// Its email.
    pub email: Option<String>,
    /// `waitlisted`, `active` or `canceled`.
    pub status: String,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it became active.
    #[serde(with = "time::serde::rfc3339::option")]
    pub activated_at: Option<OffsetDateTime>,
    /// When it was canceled.
    #[serde(with = "time::serde::rfc3339::option")]
    pub deactivated_at: Option<OffsetDateTime>,
}

/// A credit account: the balance is `plan_credits + pack_credits`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct CreditAccountRow {
    /// The user or organisation id.
    pub owner_id: String,
    /// `plan_credits + pack_credits`.
    pub balance: i64,
    /// The plan's slug.
    pub plan_slug: Option<String>,
    /// Credits of the plan period.
    pub plan_credits: i32,
    /// Credits bought in packs.
    pub pack_credits: i32,
    /// Start of the plan period, Unix milliseconds.
    pub plan_period_start: Option<i64>,
    /// The balance last written to Clerk.
    pub clerk_synced_credits: Option<i32>,
    /// When it was last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// One change of a balance.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct LedgerRow {
    /// Its id.
    pub id: i64,
    /// The change.
    pub delta: i32,
    /// `plan_grant`, `plan_end`, `credit_pack` or `admin_adjustment`.
    pub reason: String,
    /// What made it unique.
    pub idempotency_key: String,
    /// The event that caused it, when one did.
    pub webhook_id: Option<String>,
    /// Who made it, for an adjustment.
    pub actor: Option<String>,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// `GET /api/admin/users/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserView {
    /// The Clerk user id.
    pub user_id: String,
    /// The mirror row; absent when no `user.created` or sync has stored it.
    pub user: Option<UserRow>,
    /// Memberships with this user id, oldest first.
    pub memberships: Vec<MembershipRow>,
    /// The credit account, when there is one.
    pub credit_account: Option<CreditAccountRow>,
    /// The newest ledger rows, newest first.
    pub ledger: Vec<LedgerRow>,
    /// The newest events about the user.
    pub events: Vec<EventSummary>,
    /// The newest audit rows about the user.
    pub audit: Vec<AuditRow>,
}

/// The user, or `None` when the database knows nothing of that id (no mirror
/// row, no membership, no credit account).
pub async fn view(pool: &PgPool, user_id: &str) -> Result<Option<UserView>, sqlx::Error> {
    if !super::storable(user_id) {
        return Ok(None);
    }
    let user: Option<UserRow> = sqlx::query_as(
        "SELECT email, first_name, last_name, clerk_updated_at, created_at, deleted_at
         FROM users WHERE id = $1",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    let memberships: Vec<MembershipRow> = sqlx::query_as(
        "SELECT id, email, status, created_at, activated_at, deactivated_at
         FROM memberships WHERE user_id = $1 ORDER BY created_at, id",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    let credit_account = account(pool, user_id).await?;
    if user.is_none() && memberships.is_empty() && credit_account.is_none() {
        return Ok(None);
    }
    let ledger = ledger(pool, user_id, RECENT).await?;
    let events = super::events::recent_for(pool, user_id, RECENT).await?;
    let audit = super::audit::list(
        pool,
        &AuditFilter {
            user_id: Some(user_id.to_owned()),
            limit: RECENT,
            ..AuditFilter::default()
        },
    )
    .await?;
    Ok(Some(UserView {
        user_id: user_id.to_owned(),
        user,
        memberships,
        credit_account,
        ledger,
        events,
        audit,
    }))
}

/// The credit account of a user or organisation.
pub async fn account(
    pool: &PgPool,
    owner_id: &str,
) -> Result<Option<CreditAccountRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT owner_id, plan_credits::bigint + pack_credits AS balance, plan_slug, plan_credits,
                pack_credits, plan_period_start, clerk_synced_credits, updated_at
         FROM credit_accounts WHERE owner_id = $1",
    )
    .bind(owner_id)
    .fetch_optional(pool)
    .await
}

/// The newest ledger rows of an owner, newest first.
pub async fn ledger(
    pool: &PgPool,
    owner_id: &str,
    limit: i64,
) -> Result<Vec<LedgerRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, delta, reason, idempotency_key, webhook_id, actor, created_at
         FROM credit_ledger WHERE owner_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(owner_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}
