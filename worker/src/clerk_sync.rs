//! Writes balances to Clerk's user metadata (`SPEC.md` section 9.4).
//!
//! A balance change leaves a row in `clerk_sync_queue` in its own transaction;
//! this task drains the queue. It never blocks or fails an event. One row per
//! owner coalesces bursts into one write of the latest balance, and writes for
//! one user are spaced by [`MIN_INTERVAL`] (Clerk allows 10 per 10 s per user).
//! A row is leased while its write is in flight, so several workers share the
//! queue without writing the same owner twice at once, and a worker that dies
//! mid-write leaves the row to be taken again when the lease ends.
//!
//! The `user.updated` echo of our own write never causes another write: no
//! handler of user events schedules a sync.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    clerk_api::{ClerkApi, MAX_RETRY_DELAY},
    metrics::Metrics,
};

/// Shortest time between two writes for one user.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long a claimed row is reserved for the claiming worker.
const LEASE: Duration = Duration::from_secs(60);
/// Rows claimed per pass.
/// Rows claimed per pass: their writes (10 s timeout each) fit well in the lease.
const BATCH: i64 = 5;

pub struct Syncer {
    pub pool: PgPool,
    pub api: ClerkApi,
    pub metrics: Arc<Metrics>,
    /// Woken when a balance changed, to write it without waiting for the poll.
    pub wakeup: Arc<Notify>,
    pub poll_interval: Duration,
    /// Base of the exponential backoff after 5xx and connection errors.
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
}

#[derive(sqlx::FromRow)]
struct Claimed {
    owner_id: String,
    requested_at: time::OffsetDateTime,
    attempts: i32,
}

/// The wait before writing again after a failed write: Clerk's hint (capped
/// at [`MAX_RETRY_DELAY`]) or the backoff, whichever is longer, and never
/// less than [`MIN_INTERVAL`].
pub fn retry_delay(hint: Duration, backoff: Duration) -> Duration {
    hint.min(MAX_RETRY_DELAY).max(backoff).max(MIN_INTERVAL)
}

impl Syncer {
    pub async fn run(self, stop: CancellationToken) {
        tracing::info!("Clerk metadata sync enabled");
        while !stop.is_cancelled() {
            let busy = match self.pass(&stop).await {
                Ok(claimed) => claimed as i64 == BATCH,
                Err(error) => {
                    tracing::warn!(error.message = %shared::error::Chain(&error), "Clerk sync pass failed; retrying");
                    false
                }
            };
            if busy {
                continue;
            }
            tokio::select! {
                () = self.wakeup.notified() => {}
                () = tokio::time::sleep(self.poll_interval) => {}
                () = stop.cancelled() => {}
            }
        }
    }

    /// Claims due rows and writes each owner's current balance.
    pub async fn pass(&self, stop: &CancellationToken) -> Result<usize, sqlx::Error> {
        let claimed: Vec<Claimed> = sqlx::query_as(
            "UPDATE clerk_sync_queue SET due_at = clock_timestamp() + make_interval(secs => $2) \
             WHERE owner_id IN (SELECT owner_id FROM clerk_sync_queue WHERE due_at <= clock_timestamp() \
                                ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING owner_id, requested_at, attempts",
        )
        .bind(BATCH)
        .bind(LEASE.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        let count = claimed.len();
        let mut rows = claimed.into_iter();
        for row in rows.by_ref() {
            self.write(row).await?;
            if stop.is_cancelled() {
                break;
            }
        }
        // On shutdown, hand back what was claimed but not written.
        let left: Vec<String> = rows.map(|row| row.owner_id).collect();
        if !left.is_empty() {
            sqlx::query(
                "UPDATE clerk_sync_queue SET due_at = clock_timestamp() WHERE owner_id = ANY($1)",
            )
            .bind(&left)
            .execute(&self.pool)
            .await?;
        }
        Ok(count)
    }

    async fn write(&self, row: Claimed) -> Result<(), sqlx::Error> {
        if !row.owner_id.starts_with("user_") {
            // Organizations own credits too, but the metadata lives on users.
            self.forget(&row, "not a user: nothing to write").await?;
            return Ok(());
        }
        let balance: Option<i64> = sqlx::query_scalar(
            "SELECT (plan_credits + pack_credits)::bigint FROM credit_accounts WHERE owner_id = $1",
        )
        .bind(&row.owner_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(balance) = balance else {
            self.forget(&row, "no credit account").await?;
            return Ok(());
        };
        match self.api.set_credits(&row.owner_id, balance).await {
            Ok(()) => {
                self.metrics.clerk_sync("ok");
                sqlx::query(
                    "UPDATE credit_accounts SET clerk_synced_credits = $2, clerk_synced_at = now() WHERE owner_id = $1",
                )
                .bind(&row.owner_id)
                .bind(i32::try_from(balance).unwrap_or(i32::MAX))
                .execute(&self.pool)
                .await?;
                // Done, unless the balance changed again during the write: then
                // write once more, spaced for Clerk's per-user limit.
                let done = sqlx::query(
                    "DELETE FROM clerk_sync_queue WHERE owner_id = $1 AND requested_at = $2",
                )
                .bind(&row.owner_id)
                .bind(row.requested_at)
                .execute(&self.pool)
                .await?
                .rows_affected();
                if done == 0 {
                    self.reschedule(&row.owner_id, MIN_INTERVAL, 0, None)
                        .await?;
                }
                tracing::info!(owner_id = %row.owner_id, credits = balance, "credits written to Clerk");
            }
            Err(error) => match error.retry_after() {
                Some(hint) => {
                    self.metrics.clerk_sync(error.kind());
                    let attempts = row.attempts.saturating_add(1);
                    let delay = retry_delay(hint, self.backoff(attempts));
                    let reason = shared::error::Chain(&error).to_string();
                    tracing::warn!(owner_id = %row.owner_id, error.message = %reason, attempts, retry_in = ?delay,
                        "Clerk metadata write failed; will retry");
                    self.reschedule(&row.owner_id, delay, attempts, Some(&reason))
                        .await?;
                }
                None => {
                    self.metrics.clerk_sync(error.kind());
                    tracing::error!(owner_id = %row.owner_id, error.message = %shared::error::Chain(&error),
                        "Clerk refused the metadata write; giving up on it");
                    self.forget(&row, "refused").await?;
                }
            },
        }
        Ok(())
    }

    fn backoff(&self, attempts: i32) -> Duration {
        let attempts = u32::try_from(attempts).unwrap_or(0);
        shared::backoff::RetryPolicy::new(self.retry_base_delay, self.retry_max_delay)
            .delay(attempts)
    }

    async fn reschedule(
        &self,
        owner_id: &str,
        delay: Duration,
        attempts: i32,
        error: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE clerk_sync_queue SET due_at = clock_timestamp() + make_interval(secs => $2), \
             attempts = $3, last_error = $4 WHERE owner_id = $1",
        )
        .bind(owner_id)
        .bind(delay.as_secs_f64())
        .bind(attempts)
        .bind(error)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// Drops the row unless the balance changed again meanwhile.
    async fn forget(&self, row: &Claimed, why: &str) -> Result<(), sqlx::Error> {
        tracing::info!(owner_id = %row.owner_id, why, "Clerk sync dropped");
        sqlx::query("DELETE FROM clerk_sync_queue WHERE owner_id = $1 AND requested_at = $2")
            .bind(&row.owner_id)
            .bind(row.requested_at)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_hint_makes_a_write_wait_longer_than_the_cap() {
        let backoff = Duration::from_secs(2);

        assert_eq!(
            retry_delay(Duration::from_secs(86_400), backoff),
            MAX_RETRY_DELAY
        );
        assert_eq!(retry_delay(Duration::MAX, backoff), MAX_RETRY_DELAY);
        assert_eq!(
            retry_delay(Duration::from_secs(5), backoff),
            Duration::from_secs(5)
        );
        assert_eq!(retry_delay(Duration::ZERO, backoff), backoff);
        assert_eq!(retry_delay(Duration::ZERO, Duration::ZERO), MIN_INTERVAL);
    }
}
