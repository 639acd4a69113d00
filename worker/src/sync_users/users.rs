//! The users phase: page through Clerk's users, create and refresh the local
//! mirror, push balances; then confirm, one by one, the local users Clerk did
//! not list, and release those it no longer has.

use std::collections::HashSet;

use serde_json::Value;
use shared::event::user::User;

use super::{Run, SyncError};
use crate::{
    clerk_api::ClerkError,
    handlers::{memberships, users::mark_deleted, HandlerError},
};

#[derive(Debug, thiserror::Error)]
enum UserError {
    #[error("not a Clerk user")]
    Parse(#[from] serde_json::Error),
    #[error("database")]
    Database(#[from] sqlx::Error),
    #[error("Clerk call")]
    Clerk(#[from] ClerkError),
    #[error("releasing memberships")]
    Release(#[from] HandlerError),
}

/// Pages through every Clerk user; returns the ids seen.
pub(super) async fn page_through(run: &mut Run<'_>) -> Result<HashSet<String>, SyncError> {
    let mut seen = HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let (api, size) = (run.api, run.request.page_size);
        let page = run
            .call(|| api.list_users(size, after.as_deref()))
            .await
            .map_err(SyncError::List)?;
        for json in &page {
            if let Some(id) = json["id"].as_str() {
                seen.insert(id.to_owned());
            }
            reconcile_logged(run, json).await;
        }
        run.progress.step("users processed", run.report.processed);
        let full = page.len() >= size as usize;
        after = page
            .iter()
            .rev()
            .find_map(|u| u["id"].as_str())
            .map(str::to_owned);
        if !full || after.is_none() {
            return Ok(seen);
        }
    }
}

/// Asks Clerk for each local user it did not list: a 404 is a deletion the
/// webhook never brought; an answer is a user created during the paging.
pub(super) async fn confirm_missing(
    run: &mut Run<'_>,
    seen: &HashSet<String>,
) -> Result<(), SyncError> {
    let local: Vec<String> =
        sqlx::query_scalar("SELECT id FROM users WHERE deleted_at IS NULL ORDER BY id")
            .fetch_all(run.pool)
            .await?;
    let missing: Vec<String> = local.into_iter().filter(|id| !seen.contains(id)).collect();
    for (done, user_id) in missing.iter().enumerate() {
        let api = run.api;
        match run.call(|| api.get_user(user_id)).await {
            Ok(None) => {
                if let Err(error) = delete(run, user_id).await {
                    run.report.failed += 1;
                    tracing::warn!(user_id, error.message = %shared::error::Chain(&error), "deleted user not released");
                }
            }
            Ok(Some(json)) => reconcile_logged(run, &json).await,
            Err(error) => {
                run.report.failed += 1;
                tracing::warn!(user_id, error.message = %shared::error::Chain(&error), "could not ask Clerk about a user");
            }
        }
        run.progress.step("absent users checked", done as u64 + 1);
    }
    Ok(())
}

async fn reconcile_logged(run: &mut Run<'_>, json: &Value) {
    run.report.processed += 1;
    if let Err(error) = reconcile(run, json).await {
        run.report.failed += 1;
        tracing::warn!(user_id = json["id"].as_str().unwrap_or("?"), error.message = %shared::error::Chain(&error),
            error.cause_chain = ?error, "user not synced");
    }
}

/// The effects of `user.deleted`, for a user Clerk answered 404 about.
async fn delete(run: &mut Run<'_>, user_id: &str) -> Result<(), UserError> {
    let mut tx = run.pool.begin().await?;
    mark_deleted(&mut tx, user_id).await?;
    let released = memberships::release(
        &mut tx,
        user_id,
        memberships::Release::Sync {
            actor: &run.request.actor,
        },
    )
    .await?;
    run.finish(tx).await?;
    run.report.deleted_users += 1;
    run.change(format!(
        "deleted user {user_id} (gone from Clerk; {released} memberships released)"
    ));
    Ok(())
}

async fn reconcile(run: &mut Run<'_>, json: &Value) -> Result<(), UserError> {
    let user = User::deserialize_from(json)?;
    let local: Option<(Option<i64>, bool)> =
        sqlx::query_as("SELECT clerk_updated_at, deleted_at IS NOT NULL FROM users WHERE id = $1")
            .bind(&user.id)
            .fetch_optional(run.pool)
            .await?;
    match local {
        None => {
            if !run.request.dry_run {
                sqlx::query(
                    "INSERT INTO users (id, email, first_name, last_name, clerk_updated_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&user.id)
                .bind(user.primary_email())
                .bind(&user.first_name)
                .bind(&user.last_name)
                .bind(user.updated_at)
                .execute(run.pool)
                .await?;
            }
            run.report.created_users += 1;
            run.change(format!("created user {}", user.id));
        }
        Some((stored, false)) if newer(user.updated_at, stored) => {
            if !run.request.dry_run {
                sqlx::query(
                    "UPDATE users SET email = $2, first_name = $3, last_name = $4, \
                     clerk_updated_at = $5, updated_at = now() \
                     WHERE id = $1 AND deleted_at IS NULL \
                       AND COALESCE(clerk_updated_at, -1) < COALESCE($5, -1)",
                )
                .bind(&user.id)
                .bind(user.primary_email())
                .bind(&user.first_name)
                .bind(&user.last_name)
                .bind(user.updated_at)
                .execute(run.pool)
                .await?;
            }
            run.report.refreshed_users += 1;
            run.change(format!("refreshed user {} from Clerk", user.id));
        }
        Some(_) => {}
    }
    push_balance(run, &user.id, json).await
}

fn newer(clerk: Option<i64>, stored: Option<i64>) -> bool {
    clerk.unwrap_or(-1) > stored.unwrap_or(-1)
}

/// Writes the user's balance into Clerk's metadata if Clerk holds another.
async fn push_balance(run: &mut Run<'_>, user_id: &str, json: &Value) -> Result<(), UserError> {
    let balance: Option<i64> = sqlx::query_scalar(
        "SELECT (plan_credits + pack_credits)::bigint FROM credit_accounts WHERE owner_id = $1",
    )
    .bind(user_id)
    .fetch_optional(run.pool)
    .await?;
    let Some(balance) = balance else {
        return Ok(());
    };
    if json["public_metadata"]["credits"].as_i64() == Some(balance) {
        return Ok(());
    }
    if !run.request.dry_run {
        let api = run.api;
        run.call(|| api.set_credits(user_id, balance)).await?;
        sqlx::query(
            "UPDATE credit_accounts SET clerk_synced_credits = $2, clerk_synced_at = now() WHERE owner_id = $1",
        )
        .bind(user_id)
        .bind(i32::try_from(balance).unwrap_or(i32::MAX))
        .execute(run.pool)
        .await?;
    }
    run.report.credits_refreshed += 1;
    Ok(())
}
