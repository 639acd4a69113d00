//! Clerk Billing events → credits (`SPEC.md` section 9.2).
//!
//! - `subscriptionItem.active`, and `subscriptionItem.updated` of an active
//!   item (a renewal brings a new `period_start`): plan credits become the
//!   plan's allotment for that period.
//! - `paymentAttempt.updated` with status `paid`: each item whose plan is a
//!   plan in the catalog is granted the same way (same idempotency key as the
//!   item event, so the two never double up); each item whose plan is a pack
//!   adds the pack's credits.
//! - `subscriptionItem.canceled` changes nothing: access lasts to period end.
//! - `subscriptionItem.ended` drops plan credits to the default plan's.
//!
//! Plans and packs not in the catalog are logged and change nothing.

use shared::event::billing::{PaymentAttempt, SubscriptionItem};
use sqlx::PgConnection;

use super::{data, Applied, Event, HandlerError};
use crate::credits::{
    ledger::{self, Change, Entry, LedgerError, Outcome},
    Catalog,
};

pub async fn subscription_item(
    conn: &mut PgConnection,
    event: &Event<'_>,
    catalog: &Catalog,
) -> Result<Applied, HandlerError> {
    let item = subscription_item_data(event)?;
    let slug = item.plan.slug.as_deref().unwrap_or_default();
    let grants = matches!(
        event.event_type,
        "subscriptionItem.active" | "subscriptionItem.updated"
    );
    // What changes nothing is settled before the payload is required to be
    // complete: an event we would ignore is never dead-lettered.
    if grants {
        if event.event_type == "subscriptionItem.updated"
            && item.status.as_deref() != Some("active")
        {
            tracing::info!(webhook_id = event.webhook_id, status = ?item.status,
                "update of an item that is not active: no credits change");
            return Ok(Applied::Unchanged);
        }
        if catalog.plan(slug).is_none() {
            tracing::info!(
                webhook_id = event.webhook_id,
                plan = slug,
                "plan not in the catalog: no credits change"
            );
            return Ok(Applied::Unchanged);
        }
    } else if event.event_type == "subscriptionItem.ended" {
        // An item of a plan outside the catalog never granted anything
        // (unless it is the account's current plan, which only a catalog
        // plan can be): its end changes nothing and writes nothing.
        if catalog.plan(slug).is_none()
            && !is_current_item(conn, item.payer.owner(), item.id.as_deref()).await?
        {
            tracing::info!(
                webhook_id = event.webhook_id,
                plan = slug,
                "ended item of a plan not in the catalog: no credits change"
            );
            return Ok(Applied::Unchanged);
        }
    } else {
        tracing::info!(
            webhook_id = event.webhook_id,
            "{}: no credits change",
            event.event_type
        );
        return Ok(Applied::Unchanged);
    }
    let item_id = item.id.as_deref().ok_or_else(|| {
        HandlerError::Malformed(format!("{} without an item id", event.event_type))
    })?;
    let owner = item.payer.owner().ok_or_else(|| {
        HandlerError::Malformed(format!(
            "{} without payer.user_id or payer.organization_id",
            event.event_type
        ))
    })?;
    match event.event_type {
        "subscriptionItem.active" | "subscriptionItem.updated" => {
            let credits = catalog.plan(slug).unwrap_or_default();
            let period_start = item.period_start.unwrap_or(0);
            grant(conn, event, owner, slug, credits, item_id, period_start).await
        }
        "subscriptionItem.ended" => {
            let fallback = catalog
                .default_plan()
                .map(|(slug, credits)| (slug.to_owned(), credits));
            let entry = Entry {
                owner_id: owner,
                idempotency_key: ledger::plan_end_key(item_id, item.period_start.unwrap_or(0)),
                webhook_id: Some(event.webhook_id),
                actor: None,
                change: Change::PlanEnd {
                    item_id: item_id.to_owned(),
                    period_start: item.period_start,
                    fallback,
                },
            };
            record(conn, event, &entry).await
        }
        _ => {
            tracing::info!(
                webhook_id = event.webhook_id,
                item_id,
                "{}: no credits change",
                event.event_type
            );
            Ok(Applied::Unchanged)
        }
    }
}

pub async fn payment_attempt(
    conn: &mut PgConnection,
    event: &Event<'_>,
    catalog: &Catalog,
) -> Result<Applied, HandlerError> {
    let attempt = payment_attempt_data(event)?;
    if attempt.status.as_deref() != Some("paid") {
        return Ok(Applied::Unchanged);
    }
    let attempt_id = attempt
        .key()
        .ok_or_else(|| HandlerError::Malformed("paid payment attempt without an id".to_owned()))?;
    let mut applied = Applied::Unchanged;
    for item in &attempt.subscription_items {
        // Resolved only for an item that changes credits: an attempt whose
        // items are all outside the catalog needs no payer.
        let owner = || {
            attempt.payer.owner().or(item.payer.owner()).ok_or_else(|| {
                HandlerError::Malformed(
                    "paid payment attempt without payer.user_id or payer.organization_id"
                        .to_owned(),
                )
            })
        };
        let Some(item_id) = item.id.as_deref() else {
            tracing::warn!(
                webhook_id = event.webhook_id,
                attempt_id,
                "payment attempt item without an id: skipped"
            );
            continue;
        };
        let slug = item.plan.slug.as_deref().unwrap_or_default();
        let result = if let Some(credits) = catalog.pack(slug) {
            let entry = Entry {
                owner_id: owner()?,
                idempotency_key: ledger::pack_key(attempt_id, item_id),
                webhook_id: Some(event.webhook_id),
                actor: None,
                change: Change::AddPack { credits },
            };
            record(conn, event, &entry).await?
        } else if let Some(credits) = catalog.plan(slug) {
            grant(
                conn,
                event,
                owner()?,
                slug,
                credits,
                item_id,
                item.period_start.unwrap_or(0),
            )
            .await?
        } else {
            tracing::info!(
                webhook_id = event.webhook_id,
                plan = slug,
                "plan or pack not in the catalog: no credits change"
            );
            Applied::Unchanged
        };
        if result == Applied::Processed {
            applied = Applied::Processed;
        }
    }
    Ok(applied)
}

/// Whether `item_id` is `owner`'s current plan item.
async fn is_current_item(
    conn: &mut PgConnection,
    owner: Option<&str>,
    item_id: Option<&str>,
) -> Result<bool, HandlerError> {
    let (Some(owner), Some(item_id)) = (owner, item_id) else {
        return Ok(false);
    };
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM credit_accounts WHERE owner_id = $1 AND plan_item_id = $2)",
    )
    .bind(owner)
    .bind(item_id)
    .fetch_one(conn)
    .await?)
}

/// The typed `data` of a `subscriptionItem.*` event, as
/// [`subscription_item`] reads it (`fuzz/` calls it on arbitrary payloads).
pub fn subscription_item_data(event: &Event<'_>) -> Result<SubscriptionItem, HandlerError> {
    data(event)
}

/// The typed `data` of a `paymentAttempt.*` event, as [`payment_attempt`]
/// reads it (`fuzz/` calls it on arbitrary payloads).
pub fn payment_attempt_data(event: &Event<'_>) -> Result<PaymentAttempt, HandlerError> {
    data(event)
}

async fn grant(
    conn: &mut PgConnection,
    event: &Event<'_>,
    owner: &str,
    slug: &str,
    credits: i32,
    item_id: &str,
    period_start: i64,
) -> Result<Applied, HandlerError> {
    let entry = Entry {
        owner_id: owner,
        idempotency_key: ledger::plan_key(item_id, period_start),
        webhook_id: Some(event.webhook_id),
        actor: None,
        change: Change::PlanGrant {
            slug: slug.to_owned(),
            credits,
            item_id: item_id.to_owned(),
            period_start,
        },
    };
    record(conn, event, &entry).await
}

async fn record(
    conn: &mut PgConnection,
    event: &Event<'_>,
    entry: &Entry<'_>,
) -> Result<Applied, HandlerError> {
    match ledger::apply(conn, entry).await {
        Ok(Outcome::Applied { delta, balance }) => {
            tracing::info!(webhook_id = event.webhook_id, owner_id = entry.owner_id, key = %entry.idempotency_key,
                delta, balance, "credits changed");
            Ok(Applied::Processed)
        }
        Ok(Outcome::Duplicate) => {
            tracing::info!(webhook_id = event.webhook_id, key = %entry.idempotency_key, "credits already applied");
            Ok(Applied::Unchanged)
        }
        Ok(Outcome::Stale(why)) => {
            tracing::info!(webhook_id = event.webhook_id, key = %entry.idempotency_key, why, "no credits change");
            Ok(Applied::Unchanged)
        }
        Err(LedgerError::Database(e)) => Err(HandlerError::Database(e)),
        Err(e) => Err(HandlerError::Malformed(e.to_string())),
    }
}
