//! `worker sync users`: heals what webhooks missed, by asking Clerk.
//!
//! 1. Pages through every Clerk user (`GET /users`, `limit` and
//!    `starting_after`, until a short page): creates the users missing
//!    locally, refreshes those Clerk changed since, pushes balances to Clerk.
//! 2. Every local user Clerk did not list is asked for by id: a 404 gives it
//!    exactly the effects of `user.deleted` (audited as `user_deleted_sync`).
//! 3. Every payer's Billing subscription is compared with its credit account,
//!    and a missed plan start or end gets the rule the webhook would have
//!    applied, with the same idempotency key ([`plans`]).
//!
//! With `dry_run`, every change is made in a transaction that is rolled back,
//! so the counts and the listed changes are exactly what a real run would do.

mod plans;
mod users;

use std::{collections::HashSet, fmt, time::Duration};

use sqlx::PgPool;

use crate::{
    clerk_api::{retrying, ClerkApi, ClerkError},
    credits::Catalog,
};

/// Users asked per page (Clerk allows 1 to 500).
pub const PAGE_SIZE: u32 = 100;
/// Calls per request before giving up on it.
const ATTEMPTS: u32 = 5;

/// What a run did (or, with `--dry-run`, would do).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    /// Clerk users looked at.
    pub processed: u64,
    /// Users created locally.
    pub created_users: u64,
    /// Balances written to Clerk's metadata.
    pub credits_refreshed: u64,
    /// Users or payers that could not be reconciled.
    pub failed: u64,
    /// Local users Clerk no longer has, released as `user.deleted` would.
    pub deleted_users: u64,
    /// Local users refreshed from a newer Clerk copy.
    pub refreshed_users: u64,
    /// Credit accounts whose plan credits were brought in line with Clerk Billing.
    pub plans_reconciled: u64,
}

impl SyncReport {
    /// Local rows and Clerk metadata the run changed.
    pub fn changed(&self) -> u64 {
        self.created_users
            + self.credits_refreshed
            + self.deleted_users
            + self.refreshed_users
            + self.plans_reconciled
    }
}

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "processed={} created_users={} credits_refreshed={} failed={} \
             deleted_users={} refreshed_users={} plans_reconciled={}",
            self.processed,
            self.created_users,
            self.credits_refreshed,
            self.failed,
            self.deleted_users,
            self.refreshed_users,
            self.plans_reconciled
        )
    }
}

/// Why a run stopped before the end.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Clerk's user list could not be read.
    #[error("listing Clerk users failed after {ATTEMPTS} attempts")]
    List(#[source] ClerkError),
    /// The database failed.
    #[error("database")]
    Database(#[from] sqlx::Error),
}

/// What to reconcile and how.
pub struct SyncRequest {
    /// Change nothing; report and list what would change.
    pub dry_run: bool,
    /// Users per `GET /users` page.
    pub page_size: u32,
    /// Base of the backoff between retries of one call.
    pub retry_base_delay: Duration,
    /// Who asked, for the audit rows and the ledger.
    pub actor: String,
}

/// Where a run reports as it goes.
pub trait Progress {
    /// `done` items of `phase` so far.
    fn step(&mut self, phase: &str, done: u64);
    /// One change made (or, in a dry run, that would be made).
    fn change(&mut self, description: &str);
}

/// A [`Progress`] that ignores everything.
pub struct Quiet;

impl Progress for Quiet {
    fn step(&mut self, _: &str, _: u64) {}
    fn change(&mut self, _: &str) {}
}

/// What every phase shares.
struct Run<'a> {
    pool: &'a PgPool,
    api: &'a ClerkApi,
    catalog: &'a Catalog,
    request: &'a SyncRequest,
    progress: &'a mut (dyn Progress + Send + Sync),
    report: SyncReport,
}

impl Run<'_> {
    /// Calls Clerk with the run's retry policy.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, ClerkError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClerkError>>,
    {
        retrying(ATTEMPTS, self.request.retry_base_delay, op).await
    }

    /// Commits `tx`, or rolls it back in a dry run.
    async fn finish(&self, tx: sqlx::Transaction<'_, sqlx::Postgres>) -> Result<(), sqlx::Error> {
        if self.request.dry_run {
            tx.rollback().await
        } else {
            tx.commit().await
        }
    }

    fn change(&mut self, description: String) {
        tracing::info!(dry_run = self.request.dry_run, "{description}");
        self.progress.change(&description);
    }
}

/// Runs the reconciliation.
pub async fn sync_users(
    pool: &PgPool,
    api: &ClerkApi,
    catalog: &Catalog,
    request: &SyncRequest,
    progress: &mut (dyn Progress + Send + Sync),
) -> Result<SyncReport, SyncError> {
    let mut run = Run {
        pool,
        api,
        catalog,
        request,
        progress,
        report: SyncReport::default(),
    };
    let outcome = async {
        let seen: HashSet<String> = users::page_through(&mut run).await?;
        users::confirm_missing(&mut run, &seen).await?;
        plans::reconcile(&mut run).await
    }
    .await;
    let report = run.report;
    // One row for what changed, also when the run stopped part-way (its
    // changes are committed as it goes); none for a dry run, or for a run
    // that stopped before changing anything.
    if !request.dry_run && (outcome.is_ok() || report.changed() > 0) {
        let mut details = serde_json::to_value(report).unwrap_or_default();
        if let Some(details) = details.as_object_mut() {
            details.insert("completed".to_owned(), outcome.is_ok().into());
        }
        let audited = crate::audit::record(
            pool,
            &crate::audit::Action {
                action_type: "sync_users",
                actor: &request.actor,
                details,
            },
        )
        .await;
        match (&outcome, audited) {
            (Ok(()), Err(error)) => return Err(error.into()),
            (Err(_), Err(error)) => {
                tracing::warn!(error.message = %shared::error::Chain(&error),
                    "the stopped sync was not written to the audit log");
            }
            (_, Ok(())) => {}
        }
    }
    outcome.map(|()| report)
}
