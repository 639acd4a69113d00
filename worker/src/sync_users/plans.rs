//! The plans phase: each payer's credit account against its Clerk Billing
//! subscription (`GET /users/{id}/billing/subscription`, or
//! `/organizations/{id}/…`).
//!
//! - The payer's current item (`active`, `past_due`, or `canceled`, which
//!   keeps access to the end of its period; the latest period if several)
//!   whose plan is in the catalog is granted exactly as
//!   `subscriptionItem.active` would: key `plan:{item}:{period_start}`, so the
//!   late webhook for that period changes nothing, and a period older than
//!   the account's changes nothing here either.
//! - Without such an item, the account's current plan item is ended as
//!   `subscriptionItem.ended` would, when Clerk reports it `ended` or
//!   `expired`, lists it no more, or has no subscription for the payer.
//! - Packs come from payments and are left alone.
//!
//! Payers are the local users not deleted, and the organizations that own an
//! account.

use shared::event::billing::{Subscription, SubscriptionItem};

use super::{Run, SyncError};
use crate::credits::ledger::{self, Change, Entry, LedgerError, Outcome};

/// Item statuses that still give access to the plan.
const CURRENT: [&str; 3] = ["active", "past_due", "canceled"];
/// Item statuses of an item that is over.
const OVER: [&str; 2] = ["ended", "expired"];

#[derive(Debug, thiserror::Error)]
enum PlanError {
    #[error("database")]
    Database(#[from] sqlx::Error),
    #[error("ledger")]
    Ledger(#[from] LedgerError),
}

pub(super) async fn reconcile(run: &mut Run<'_>) -> Result<(), SyncError> {
    let payers: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM users WHERE deleted_at IS NULL \
         UNION SELECT owner_id FROM credit_accounts WHERE owner_id LIKE 'org\\_%' ORDER BY 1",
    )
    .fetch_all(run.pool)
    .await?;
    for (done, owner) in payers.iter().enumerate() {
        let api = run.api;
        match run.call(|| api.billing_subscription(owner)).await {
            Ok(subscription) => {
                if let Err(error) =
                    reconcile_payer(run, owner, subscription.unwrap_or_default()).await
                {
                    run.report.failed += 1;
                    tracing::warn!(owner_id = %owner, error.message = %shared::error::Chain(&error),
                        "plan credits not reconciled");
                }
            }
            Err(error) => {
                run.report.failed += 1;
                tracing::warn!(owner_id = %owner, error.message = %shared::error::Chain(&error), "could not read the Billing subscription");
            }
        }
        run.progress.step("payers reconciled", done as u64 + 1);
    }
    Ok(())
}

async fn reconcile_payer(
    run: &mut Run<'_>,
    owner: &str,
    subscription: Subscription,
) -> Result<(), PlanError> {
    let items = subscription.subscription_items;
    let current = items
        .iter()
        .filter(|item| item.id.is_some() && status_in(item, &CURRENT))
        .filter(|item| run.catalog.plan(slug(item)).is_some())
        .max_by_key(|item| item.period_start.unwrap_or(0));
    let mut tx = run.pool.begin().await?;
    let applied = match current {
        Some(item) => {
            let (item_id, slug) = (item.id.as_deref().unwrap_or_default(), slug(item));
            let period_start = item.period_start.unwrap_or(0);
            let credits = run.catalog.plan(slug).unwrap_or_default();
            let entry = Entry {
                owner_id: owner,
                idempotency_key: ledger::plan_key(item_id, period_start),
                webhook_id: None,
                actor: Some(&run.request.actor),
                change: Change::PlanGrant {
                    slug: slug.to_owned(),
                    credits,
                    item_id: item_id.to_owned(),
                    period_start,
                },
            };
            applied(ledger::apply(&mut tx, &entry).await?).then(|| {
                format!("granted plan {slug} ({credits} credits) to {owner}: a missed start")
            })
        }
        None => end_missed(run, &mut tx, owner, &items).await?,
    };
    run.finish(tx).await?;
    if let Some(description) = applied {
        run.report.plans_reconciled += 1;
        run.change(description);
    }
    Ok(())
}

/// Ends the account's current plan item if Clerk says it is over.
async fn end_missed(
    run: &Run<'_>,
    tx: &mut sqlx::PgConnection,
    owner: &str,
    items: &[SubscriptionItem],
) -> Result<Option<String>, PlanError> {
    let current: Option<Option<String>> =
        sqlx::query_scalar("SELECT plan_item_id FROM credit_accounts WHERE owner_id = $1")
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(Some(item_id)) = current else {
        return Ok(None);
    };
    let in_clerk = items.iter().find(|i| i.id.as_deref() == Some(&item_id));
    if in_clerk.is_some_and(|item| !status_in(item, &OVER)) {
        // Upcoming, incomplete, or a status this code does not know: leave it.
        return Ok(None);
    }
    let fallback = run
        .catalog
        .default_plan()
        .map(|(slug, credits)| (slug.to_owned(), credits));
    let period_start = in_clerk.and_then(|item| item.period_start);
    let entry = Entry {
        owner_id: owner,
        idempotency_key: ledger::plan_end_key(&item_id, period_start.unwrap_or(0)),
        webhook_id: None,
        actor: Some(&run.request.actor),
        change: Change::PlanEnd {
            item_id: item_id.clone(),
            period_start,
            fallback,
        },
    };
    Ok(applied(ledger::apply(tx, &entry).await?)
        .then(|| format!("ended plan item {item_id} of {owner}: a missed end")))
}

fn applied(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::Applied { .. })
}

fn slug(item: &SubscriptionItem) -> &str {
    item.plan.slug.as_deref().unwrap_or_default()
}

fn status_in(item: &SubscriptionItem, statuses: &[&str]) -> bool {
    item.status
        .as_deref()
        .is_some_and(|status| statuses.contains(&status))
}
