//! `worker sync users`: reconciles the local mirror with Clerk. Pages through
//! every Clerk user (`GET /users` with `limit` and `starting_after`, until a
//! short page), creates the users missing locally, and writes each credit
//! balance Clerk does not already hold into the user's metadata.

use std::{fmt, time::Duration};

use serde_json::Value;
use shared::event::user::User;
use sqlx::PgPool;

use crate::clerk_api::{retrying, ClerkApi, ClerkError};

/// Users asked per page (Clerk allows 1 to 500).
pub const PAGE_SIZE: u32 = 100;
/// Calls per request before giving up on it.
const ATTEMPTS: u32 = 5;

/// What a run did (or, with `--dry-run`, would do).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub processed: u64,
    pub created_users: u64,
    pub credits_refreshed: u64,
    pub failed: u64,
}

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "processed={} created_users={} credits_refreshed={} failed={}",
            self.processed, self.created_users, self.credits_refreshed, self.failed
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("listing Clerk users failed after {ATTEMPTS} attempts: {0}")]
    List(ClerkError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

pub struct SyncRequest {
    pub dry_run: bool,
    pub page_size: u32,
    /// Base of the backoff between retries of one call.
    pub retry_base_delay: Duration,
}

/// Runs the reconciliation; `progress` is told the users processed so far
/// after each page.
pub async fn sync_users(
    pool: &PgPool,
    api: &ClerkApi,
    request: &SyncRequest,
    progress: &mut dyn FnMut(u64),
) -> Result<SyncReport, SyncError> {
    let mut report = SyncReport::default();
    let mut after: Option<String> = None;
    loop {
        let page = retrying(ATTEMPTS, request.retry_base_delay, || {
            api.list_users(request.page_size, after.as_deref())
        })
        .await
        .map_err(SyncError::List)?;
        for user in &page {
            report.processed += 1;
            if let Err(error) = reconcile(pool, api, request, user, &mut report).await {
                report.failed += 1;
                tracing::warn!(user_id = user["id"].as_str().unwrap_or("?"), error.message = %error, "user not synced");
            }
        }
        progress(report.processed);
        let full = page.len() >= request.page_size as usize;
        after = page
            .iter()
            .rev()
            .find_map(|u| u["id"].as_str())
            .map(str::to_owned);
        if !full || after.is_none() {
            break;
        }
    }
    Ok(report)
}

#[derive(Debug, thiserror::Error)]
enum UserError {
    #[error("not a Clerk user: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("metadata write: {0}")]
    Clerk(#[from] ClerkError),
}

async fn reconcile(
    pool: &PgPool,
    api: &ClerkApi,
    request: &SyncRequest,
    json: &Value,
    report: &mut SyncReport,
) -> Result<(), UserError> {
    let user = User::deserialize_from(json)?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
        .bind(&user.id)
        .fetch_one(pool)
        .await?;
    if !exists {
        if !request.dry_run {
            sqlx::query(
                "INSERT INTO users (id, email, first_name, last_name, clerk_updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&user.id)
            .bind(user.primary_email())
            .bind(&user.first_name)
            .bind(&user.last_name)
            .bind(user.updated_at)
            .execute(pool)
            .await?;
        }
        report.created_users += 1;
    }
    let balance: Option<i64> = sqlx::query_scalar(
        "SELECT (plan_credits + pack_credits)::bigint FROM credit_accounts WHERE owner_id = $1",
    )
    .bind(&user.id)
    .fetch_optional(pool)
    .await?;
    let Some(balance) = balance else {
        return Ok(());
    };
    if json["public_metadata"]["credits"].as_i64() == Some(balance) {
        return Ok(());
    }
    if !request.dry_run {
        retrying(ATTEMPTS, request.retry_base_delay, || {
            api.set_credits(&user.id, balance)
        })
        .await?;
        sqlx::query(
            "UPDATE credit_accounts SET clerk_synced_credits = $2, clerk_synced_at = now() WHERE owner_id = $1",
        )
        .bind(&user.id)
        .bind(i32::try_from(balance).unwrap_or(i32::MAX))
        .execute(pool)
        .await?;
    }
    report.credits_refreshed += 1;
    Ok(())
}
