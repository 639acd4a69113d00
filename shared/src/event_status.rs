//! `webhook_events.status` and every transition of it, in one place.
//!
//! ```text
//! received ──relay confirmed──▶ published ──handler committed──▶ processed | ignored
//!                                   │  ▲
//!                    failed attempt │  │ replay (dlq replay, replay --from-store)
//!                                   ▼  │
//!                         failed ──▶ dead
//! ```
//!
//! The relay, the consumer, the replays and prune call these functions; no
//! other code writes `status`, `attempts` or `last_error`, or spells a status.

use sqlx::PgConnection;

/// The states of a stored event (`SPEC.md` section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Stored by the ingress; the broker has not confirmed it yet.
    Received,
    /// Confirmed by the broker, not yet applied.
    Published,
    /// A handler committed its effect.
    Processed,
    /// Nobody handles its type.
    Ignored,
    /// An attempt failed; it will be retried.
    Failed,
    /// Dead-lettered: waits for an operator's replay.
    Dead,
}

impl Status {
    /// The column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Received => "received",
            Status::Published => "published",
            Status::Processed => "processed",
            Status::Ignored => "ignored",
            Status::Failed => "failed",
            Status::Dead => "dead",
        }
    }

    /// The status of a column value.
    pub fn parse(value: &str) -> Option<Self> {
        [
            Status::Received,
            Status::Published,
            Status::Processed,
            Status::Ignored,
            Status::Failed,
            Status::Dead,
        ]
        .into_iter()
        .find(|s| s.as_str() == value)
    }
}

/// The bytes an event is published with: the exact signed body, or for an
/// event the application inserted without one, its payload's text.
pub const PUBLISHED_BODY: &str = "COALESCE(raw_body, convert_to(payload::text, 'UTF8'))";

/// The events `prune` may delete: applied or ignored, received before `$1`.
pub const PRUNABLE: &str = "status IN ('processed', 'ignored') AND processed_at IS NOT NULL \
                            AND received_at < $1";

/// The relay's broker confirmed these events (ids): out of the outbox,
/// `published_at` set, `received` becomes `published`.
pub async fn mark_published(conn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH done AS (DELETE FROM webhook_outbox WHERE event_id = ANY($1) RETURNING event_id) \
         UPDATE webhook_events SET published_at = now(), \
         status = CASE WHEN status = 'received' THEN 'published' ELSE status END \
         WHERE id IN (SELECT event_id FROM done)",
    )
    .bind(ids)
    .execute(conn)
    .await
    .map(|_| ())
}

/// A handler committed (`Processed`) or nobody handles the type (`Ignored`):
/// in the handler's transaction.
pub async fn mark_applied(
    conn: &mut PgConnection,
    webhook_id: &str,
    status: Status,
) -> Result<(), sqlx::Error> {
    debug_assert!(matches!(status, Status::Processed | Status::Ignored));
    sqlx::query(
        "UPDATE webhook_events SET status = $2, processed_at = now(), attempts = attempts + 1, \
         last_error = NULL WHERE webhook_id = $1",
    )
    .bind(webhook_id)
    .bind(status.as_str())
    .execute(conn)
    .await
    .map(|_| ())
}

/// A failed attempt of one delivered message.
#[derive(Clone, Copy, Debug)]
pub struct FailedAttempt<'a> {
    /// The svix id.
    pub webhook_id: &'a str,
    /// The message's body: only the row storing these very bytes counts it.
    pub body: &'a [u8],
    /// The message's type, likewise.
    pub event_type: &'a str,
    /// Why it failed.
    pub reason: &'a str,
    /// Retrying cannot help: dead now.
    pub permanent: bool,
    /// Attempts after which the event is dead.
    pub max_attempts: i32,
}

/// What counting a failed attempt found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The row counts this many attempts now (`dead` once they reach the limit).
    Attempts(i32),
    /// A copy of the event committed meanwhile: the failure is moot.
    AlreadyProcessed,
    /// No unprocessed row stores this message: nothing was written.
    NotStored,
}

/// Counts a failed attempt on the row that stores this very message: `failed`,
/// or `dead` when permanent or out of attempts.
pub async fn record_failure(
    conn: &mut PgConnection,
    attempt: &FailedAttempt<'_>,
) -> Result<Recorded, sqlx::Error> {
    let (attempts, processed): (Option<i32>, bool) = sqlx::query_as(&format!(
        "WITH failed AS (\
             UPDATE webhook_events SET attempts = attempts + 1, last_error = $2, \
             status = CASE WHEN $3 OR attempts + 1 >= $4 THEN 'dead' ELSE 'failed' END \
             WHERE webhook_id = $1 AND processed_at IS NULL AND {PUBLISHED_BODY} = $5 AND event_type = $6 \
             RETURNING attempts) \
         SELECT (SELECT attempts FROM failed), \
                EXISTS (SELECT 1 FROM webhook_events \
                        WHERE webhook_id = $1 AND processed_at IS NOT NULL \
                          AND {PUBLISHED_BODY} = $5 AND event_type = $6)"
    ))
    .bind(attempt.webhook_id)
    .bind(attempt.reason)
    .bind(attempt.permanent)
    .bind(attempt.max_attempts)
    .bind(attempt.body)
    .bind(attempt.event_type)
    .fetch_one(conn)
    .await?;
    Ok(match (attempts, processed) {
        (_, true) => Recorded::AlreadyProcessed,
        (Some(attempts), false) => Recorded::Attempts(attempts),
        (None, false) => Recorded::NotStored,
    })
}

/// Dead letters re-published from the DLQ (svix ids) start afresh:
/// `published`, no attempts, no error. Applied events keep their state.
pub async fn restart_replayed(
    conn: &mut PgConnection,
    webhook_ids: &[&str],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_events SET status = 'published', attempts = 0, last_error = NULL \
         WHERE webhook_id = ANY($1) AND processed_at IS NULL",
    )
    .bind(webhook_ids)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Stored events re-published from the archive (ids): out of the outbox, and
/// an unapplied one is `published` again, a `dead` or `failed` one with its
/// attempts and error cleared. Returns how many were dead or failed.
pub async fn restart_from_store(conn: &mut PgConnection, ids: &[i64]) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "WITH dequeued AS (DELETE FROM webhook_outbox WHERE event_id = ANY($1)), \
         changed AS (\
             UPDATE webhook_events AS w SET \
                 status = CASE WHEN w.status IN ('dead', 'failed', 'received') \
                               THEN 'published' ELSE w.status END, \
                 attempts = CASE WHEN w.status IN ('dead', 'failed') THEN 0 ELSE w.attempts END, \
                 last_error = CASE WHEN w.status IN ('dead', 'failed') THEN NULL ELSE w.last_error END, \
                 published_at = COALESCE(w.published_at, now()) \
             FROM webhook_events AS old \
             WHERE w.id = ANY($1) AND w.processed_at IS NULL AND old.id = w.id \
             RETURNING old.status) \
         SELECT count(*) FROM changed WHERE status IN ('dead', 'failed')",
    )
    .bind(ids)
    .fetch_one(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back() {
        for status in [
            Status::Received,
            Status::Published,
            Status::Processed,
            Status::Ignored,
            Status::Failed,
            Status::Dead,
        ] {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        assert_eq!(Status::parse("gone"), None);
    }
}
