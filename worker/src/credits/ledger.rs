//! Every change of a credit balance: the account row is locked (changes to one
//! account serialise), the idempotency key is checked, the account updated,
//! one `credit_ledger` row written and a Clerk metadata sync scheduled, all in
//! the caller's transaction. So an owner's ledger always sums to its balance.

use sqlx::PgConnection;

/// Why a balance changes; the `credit_ledger.reason` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    PlanGrant,
    PlanEnd,
    CreditPack,
    AdminAdjustment,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::PlanGrant => "plan_grant",
            Reason::PlanEnd => "plan_end",
            Reason::CreditPack => "credit_pack",
            Reason::AdminAdjustment => "admin_adjustment",
        }
    }
}

/// What a change does to the account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A plan period starts (or renews, or the plan changed): plan credits
    /// become the plan's allotment. Older periods change nothing.
    PlanGrant {
        slug: String,
        credits: i32,
        item_id: String,
        period_start: i64,
    },
    /// The plan's item ended: plan credits fall back to the default plan's
    /// allotment (0 without one). Only the account's current item, in its
    /// current or a later period, can end them; any end is remembered so a
    /// late start of that period (or an older one) grants nothing.
    PlanEnd {
        item_id: String,
        /// The period that ended (`None`: the item's current one).
        period_start: Option<i64>,
        fallback: Option<(String, i32)>,
    },
    /// A pack was paid: its credits are added.
    AddPack { credits: i32 },
    /// An operator's adjustment of the balance by `delta` (pack credits first).
    Adjust { delta: i64 },
    /// An operator sets the balance to `target`.
    SetBalance { target: i64 },
}

/// A change with its bookkeeping.
#[derive(Clone, Debug)]
pub struct Entry<'a> {
    pub owner_id: &'a str,
    /// Unique per change. For a plan end the ledger derives it from the
    /// period it resolves ([`plan_end_key`]).
    pub idempotency_key: String,
    pub webhook_id: Option<&'a str>,
    pub actor: Option<&'a str>,
    pub change: Change,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied {
        delta: i64,
        balance: i64,
    },
    /// The idempotency key was used before: nothing changed.
    Duplicate,
    /// The change is older than the account's state: nothing changed.
    Stale(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("PostgreSQL failed")]
    Database(#[from] sqlx::Error),
    #[error("the balance would become {0}, below zero")]
    Negative(i64),
    #[error("the balance would leave the 32-bit range")]
    Overflow,
}

#[derive(sqlx::FromRow)]
struct Account {
    plan_credits: i32,
    pack_credits: i32,
    plan_period_start: Option<i64>,
    plan_item_id: Option<String>,
}

/// Applies `entry` in the caller's transaction.
pub async fn apply(conn: &mut PgConnection, entry: &Entry<'_>) -> Result<Outcome, LedgerError> {
    if let Change::PlanEnd {
        item_id,
        period_start,
        fallback,
    } = &entry.change
    {
        return end_plan(conn, entry, item_id, *period_start, fallback.as_ref()).await;
    }
    sqlx::query(
        "INSERT INTO credit_accounts (owner_id) VALUES ($1) ON CONFLICT (owner_id) DO NOTHING",
    )
    .bind(entry.owner_id)
    .execute(&mut *conn)
    .await?;
    let account: Account = sqlx::query_as(
        "SELECT plan_credits, pack_credits, plan_period_start, plan_item_id \
         FROM credit_accounts WHERE owner_id = $1 FOR UPDATE",
    )
    .bind(entry.owner_id)
    .fetch_one(&mut *conn)
    .await?;
    if key_used(conn, &entry.idempotency_key).await? {
        return Ok(Outcome::Duplicate);
    }
    let plan = i64::from(account.plan_credits);
    let pack = i64::from(account.pack_credits);
    let (new_plan, new_pack) = match &entry.change {
        Change::PlanGrant {
            slug,
            credits,
            item_id,
            period_start,
        } => {
            if ended(conn, item_id, *period_start).await? {
                return Ok(Outcome::Stale(
                    "this period of the subscription item already ended",
                ));
            }
            if account
                .plan_period_start
                .is_some_and(|stored| stored > *period_start)
            {
                return Ok(Outcome::Stale("a later plan period is already applied"));
            }
            sqlx::query(
                "UPDATE credit_accounts SET plan_slug = $2, plan_item_id = $3, plan_period_start = $4 \
                 WHERE owner_id = $1",
            )
            .bind(entry.owner_id)
            .bind(slug)
            .bind(item_id)
            .bind(period_start)
            .execute(&mut *conn)
            .await?;
            (i64::from(*credits), pack)
        }
        // Applied by `end_plan` before any account is touched.
        Change::PlanEnd { .. } => return Ok(Outcome::Stale("not a balance change")),
        Change::AddPack { credits } => (plan, pack + i64::from(*credits)),
        Change::Adjust { .. } | Change::SetBalance { .. } => {
            let delta = match &entry.change {
                Change::SetBalance { target } => target.checked_sub(plan + pack),
                Change::Adjust { delta } => Some(*delta),
                _ => Some(0),
            }
            .ok_or(LedgerError::Overflow)?;
            let delta = &delta;
            let balance = (plan + pack)
                .checked_add(*delta)
                .ok_or(LedgerError::Overflow)?;
            if balance < 0 {
                return Err(LedgerError::Negative(balance));
            }
            // Pack credits absorb a decrease first, then plan credits.
            let from_pack = (*delta).max(-pack);
            (plan + (delta - from_pack), pack + from_pack)
        }
    };
    let to_i32 = |v: i64| i32::try_from(v).map_err(|_| LedgerError::Overflow);
    let (new_plan, new_pack) = (to_i32(new_plan)?, to_i32(new_pack)?);
    let delta = i64::from(new_plan) + i64::from(new_pack) - plan - pack;
    let delta32 = to_i32(delta)?;
    sqlx::query(
        "UPDATE credit_accounts SET plan_credits = $2, pack_credits = $3, updated_at = now() WHERE owner_id = $1",
    )
    .bind(entry.owner_id)
    .bind(new_plan)
    .bind(new_pack)
    .execute(&mut *conn)
    .await?;
    book(
        conn,
        entry,
        delta32,
        reason(&entry.change),
        &entry.idempotency_key,
    )
    .await?;
    Ok(Outcome::Applied {
        delta,
        balance: i64::from(new_plan) + i64::from(new_pack),
    })
}

/// Records the end of `item_id`'s period and, when that is the account's
/// current plan, drops the plan credits to the fallback. An account is never
/// created for an end: an item that never granted writes only its end.
async fn end_plan(
    conn: &mut PgConnection,
    entry: &Entry<'_>,
    item_id: &str,
    period_start: Option<i64>,
    fallback: Option<&(String, i32)>,
) -> Result<Outcome, LedgerError> {
    let account: Option<Account> = sqlx::query_as(
        "SELECT plan_credits, pack_credits, plan_period_start, plan_item_id \
         FROM credit_accounts WHERE owner_id = $1 FOR UPDATE",
    )
    .bind(entry.owner_id)
    .fetch_optional(&mut *conn)
    .await?;
    let current = account
        .as_ref()
        .filter(|a| a.plan_item_id.as_deref() == Some(item_id));
    let period = period_start
        .or_else(|| current.and_then(|a| a.plan_period_start))
        .unwrap_or(0);
    let recorded = sqlx::query(
        "INSERT INTO credit_plan_ends (item_id, period_start, owner_id, webhook_id) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(item_id)
    .bind(period)
    .bind(entry.owner_id)
    .bind(entry.webhook_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let key = plan_end_key(item_id, period);
    if recorded == 0 || key_used(conn, &key).await? {
        return Ok(Outcome::Duplicate);
    }
    let Some(account) = current else {
        return Ok(Outcome::Stale(
            "the ended item is not the account's current plan",
        ));
    };
    if account
        .plan_period_start
        .is_some_and(|stored| stored > period)
    {
        return Ok(Outcome::Stale(
            "a later period of this item is already applied",
        ));
    }
    let plan = i64::from(account.plan_credits);
    let new_plan = fallback.map_or(0, |(_, credits)| *credits);
    let delta = i64::from(new_plan) - plan;
    let delta32 = i32::try_from(delta).map_err(|_| LedgerError::Overflow)?;
    sqlx::query(
        "UPDATE credit_accounts SET plan_slug = $2, plan_item_id = NULL, plan_credits = $3, \
         updated_at = now() WHERE owner_id = $1",
    )
    .bind(entry.owner_id)
    .bind(fallback.map(|(slug, _)| slug.as_str()))
    .bind(new_plan)
    .execute(&mut *conn)
    .await?;
    book(conn, entry, delta32, Reason::PlanEnd, &key).await?;
    Ok(Outcome::Applied {
        delta,
        balance: i64::from(new_plan) + i64::from(account.pack_credits),
    })
}

/// Whether an end of `item_id` covers `period_start`.
async fn ended(
    conn: &mut PgConnection,
    item_id: &str,
    period_start: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM credit_plan_ends WHERE item_id = $1 AND period_start >= $2)",
    )
    .bind(item_id)
    .bind(period_start)
    .fetch_one(conn)
    .await
}

/// Writes the change's ledger row and, when the balance moved, asks for a
/// Clerk sync.
async fn book(
    conn: &mut PgConnection,
    entry: &Entry<'_>,
    delta: i32,
    reason: Reason,
    key: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO credit_ledger (owner_id, delta, reason, idempotency_key, webhook_id, actor) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(entry.owner_id)
    .bind(delta)
    .bind(reason.as_str())
    .bind(key)
    .bind(entry.webhook_id)
    .bind(entry.actor)
    .execute(&mut *conn)
    .await?;
    if delta != 0 {
        schedule_sync(conn, entry.owner_id).await?;
    }
    Ok(())
}

fn reason(change: &Change) -> Reason {
    match change {
        Change::PlanGrant { .. } => Reason::PlanGrant,
        Change::PlanEnd { .. } => Reason::PlanEnd,
        Change::AddPack { .. } => Reason::CreditPack,
        Change::Adjust { .. } | Change::SetBalance { .. } => Reason::AdminAdjustment,
    }
}

/// `plan:{subscription item id}:{period_start}`.
pub fn plan_key(item_id: &str, period_start: i64) -> String {
    format!("plan:{item_id}:{period_start}")
}

/// `plan_end:{subscription item id}:{period_start}`.
pub fn plan_end_key(item_id: &str, period_start: i64) -> String {
    format!("plan_end:{item_id}:{period_start}")
}

/// `pack:{payment attempt id}:{item id}`.
pub fn pack_key(attempt_id: &str, item_id: &str) -> String {
    format!("pack:{attempt_id}:{item_id}")
}

async fn key_used(conn: &mut PgConnection, key: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM credit_ledger WHERE idempotency_key = $1)")
        .bind(key)
        .fetch_one(conn)
        .await
}

/// Asks for the owner's balance to be written to Clerk. One row per owner: a
/// burst of changes coalesces into one write of the latest balance, and a new
/// request is not due before [`crate::clerk_sync::MIN_INTERVAL`] after the
/// last write.
pub async fn schedule_sync(conn: &mut PgConnection, owner_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO clerk_sync_queue (owner_id, due_at) \
         SELECT $1, GREATEST(clock_timestamp(), \
             (SELECT clerk_synced_at + make_interval(secs => $2) FROM credit_accounts WHERE owner_id = $1)) \
         ON CONFLICT (owner_id) DO UPDATE SET requested_at = clock_timestamp()",
    )
    .bind(owner_id)
    .bind(crate::clerk_sync::MIN_INTERVAL.as_secs_f64())
    .execute(conn)
    .await
    .map(|_| ())
}
