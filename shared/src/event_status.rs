//! The state of a stored event (`webhook_event_states`, read through the
//! `webhook_events` view as its `status`, `published_at`, `processed_at`,
//! `attempts` and `last_error`) and every transition of it, in one place.
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
/// event the application inserted without one, its payload's text. Reads the
/// columns of `webhook_event_bodies` (or of the `webhook_events` view).
pub const PUBLISHED_BODY: &str = published_body!();

/// The payload of an event, from the columns of `webhook_event_bodies`: the
/// signed bytes' JSON (the ingress stores the body once, as `raw_body`), or
/// the `payload` of a row stored before that or inserted by the application.
/// The `webhook_events` view's `payload` column is this expression.
pub const PAYLOAD: &str = "COALESCE(payload, convert_from(raw_body, 'UTF8')::jsonb)";

/// [`PUBLISHED_BODY`] as a literal, for the statements built with `concat!`.
macro_rules! published_body {
    () => {
        "COALESCE(raw_body, convert_to(payload::text, 'UTF8'))"
    };
}
use published_body;

/// The events `prune` may delete: applied or ignored, received before `$1`
/// (columns of the `webhook_events` view).
pub const PRUNABLE: &str = "status IN ('processed', 'ignored') AND processed_at IS NOT NULL \
                            AND received_at < $1";

/// The events the relay has to publish, oldest first: `$1` of them, locked
/// (`FOR UPDATE SKIP LOCKED`, so relays share the work) until the caller's
/// transaction ends, with what a publish needs.
pub const UNPUBLISHED: &str = concat!(
    "SELECT b.id, b.webhook_id, b.event_type, ",
    published_body!(),
    " AS raw_body, b.traceparent \
     FROM webhook_event_states s JOIN webhook_event_bodies b ON b.id = s.event_id \
     WHERE s.published_at IS NULL \
     ORDER BY s.event_id LIMIT $1 FOR UPDATE OF s SKIP LOCKED"
);

/// The relay's broker confirmed these events (ids): `published_at` set,
/// `received` becomes `published`.
pub async fn mark_published(conn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_event_states SET published_at = now(), \
         status = CASE WHEN status = 'received' THEN 'published' ELSE status END \
         WHERE event_id = ANY($1) AND published_at IS NULL",
    )
    .bind(ids)
    .execute(conn)
    .await
    .map(|_| ())
}

/// The state of one stored event, locked for the caller's transaction, with
/// what the consumer needs of its body.
#[derive(Debug, sqlx::FromRow)]
pub struct Locked {
    /// The row's id.
    pub id: i64,
    /// The stored type.
    pub event_type: String,
    /// Whether the stored bytes equal the message's.
    pub genuine_body: bool,
    /// When a handler committed, if one did.
    pub processed_at: Option<time::OffsetDateTime>,
    /// The status column.
    pub status: String,
    /// Attempts counted so far.
    pub attempts: i32,
    /// The last failure.
    pub last_error: Option<String>,
    /// When the ingress stored it.
    pub received_at: time::OffsetDateTime,
}

/// A message to check against the store: its svix id and its body.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    /// The message's svix id.
    pub webhook_id: &'a str,
    /// The message's body.
    pub body: &'a [u8],
}

/// Locks the states of the events the `messages` name (not their bodies,
/// which nobody writes), in svix-id order (bytewise, as Rust sorts), and
/// compares each stored body with the message's. Returns one answer per
/// message, in the order given: the locked state, or `None` when no event
/// has that svix id. One statement for any number of messages, each naming
/// a different event (the caller leaves copies out). Two transactions that
/// lock their event states this way, before anything else, never wait for
/// each other's event states in a cycle (the rows their handlers write are
/// another matter: a deadlock there is a lost conflict, tried again).
pub async fn lock(
    conn: &mut PgConnection,
    messages: &[Message<'_>],
) -> Result<Vec<Option<Locked>>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Found {
        webhook_id: String,
        #[sqlx(flatten)]
        locked: Locked,
    }
    let ids: Vec<&str> = messages.iter().map(|m| m.webhook_id).collect();
    let bodies: Vec<&[u8]> = messages.iter().map(|m| m.body).collect();
    // `= ANY` keeps the plan on the indexes whatever the batch's size.
    let found: Vec<Found> = sqlx::query_as(concat!(
        "SELECT b.webhook_id, b.id, b.event_type, ",
        published_body!(),
        " = ($2::bytea[])[array_position($1::text[], b.webhook_id)] AS genuine_body, \
             s.processed_at, s.status, s.attempts, s.last_error, b.received_at \
         FROM webhook_event_bodies b JOIN webhook_event_states s ON s.event_id = b.id \
         WHERE b.webhook_id = ANY($1) \
         ORDER BY b.webhook_id COLLATE \"C\" FOR UPDATE OF s",
    ))
    .bind(&ids)
    .bind(&bodies)
    .fetch_all(conn)
    .await?;
    let mut answers: Vec<Option<Locked>> = messages.iter().map(|_| None).collect();
    for row in found {
        if let Some(index) = ids.iter().position(|id| *id == row.webhook_id) {
            answers[index] = Some(row.locked);
        }
    }
    Ok(answers)
}

/// Handlers committed (`Processed`) or nobody handles the type (`Ignored`):
/// in the handlers' transaction, on rows [`lock`] returned (ids, each with
/// its status). One statement for any number of events.
pub async fn mark_applied(
    conn: &mut PgConnection,
    applied: &[(i64, Status)],
) -> Result<(), sqlx::Error> {
    debug_assert!(applied
        .iter()
        .all(|(_, status)| matches!(status, Status::Processed | Status::Ignored)));
    if applied.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = applied.iter().map(|(id, _)| *id).collect();
    let ignored: Vec<i64> = applied
        .iter()
        .filter(|(_, status)| *status == Status::Ignored)
        .map(|(id, _)| *id)
        .collect();
    sqlx::query(
        "UPDATE webhook_event_states SET \
             status = CASE WHEN event_id = ANY($2) THEN $3 ELSE $4 END, \
             processed_at = now(), attempts = attempts + 1, last_error = NULL \
         WHERE event_id = ANY($1)",
    )
    .bind(&ids)
    .bind(&ignored)
    .bind(Status::Ignored.as_str())
    .bind(Status::Processed.as_str())
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
        "WITH stored AS (\
             SELECT id FROM webhook_event_bodies \
             WHERE webhook_id = $1 AND {PUBLISHED_BODY} = $5 AND event_type = $6), \
         failed AS (\
             UPDATE webhook_event_states AS s SET attempts = s.attempts + 1, last_error = $2, \
             status = CASE WHEN $3 OR s.attempts + 1 >= $4 THEN 'dead' ELSE 'failed' END \
             FROM stored WHERE s.event_id = stored.id AND s.processed_at IS NULL \
             RETURNING s.attempts) \
         SELECT (SELECT attempts FROM failed), \
                EXISTS (SELECT 1 FROM webhook_event_states s JOIN stored ON s.event_id = stored.id \
                        WHERE s.processed_at IS NOT NULL)"
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
        "UPDATE webhook_event_states AS s SET status = 'published', attempts = 0, last_error = NULL \
         FROM webhook_event_bodies b \
         WHERE b.webhook_id = ANY($1) AND s.event_id = b.id AND s.processed_at IS NULL",
    )
    .bind(webhook_ids)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Stored events re-published from the archive (ids): published now (the
/// relay leaves them), and an unapplied one is `published` again, a `dead`
/// or `failed` one with its attempts and error cleared. Returns how many were
/// dead or failed.
pub async fn restart_from_store(conn: &mut PgConnection, ids: &[i64]) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "WITH changed AS (\
             UPDATE webhook_event_states AS s SET \
                 status = CASE WHEN s.status IN ('dead', 'failed', 'received') \
                               THEN 'published' ELSE s.status END, \
                 attempts = CASE WHEN s.status IN ('dead', 'failed') THEN 0 ELSE s.attempts END, \
                 last_error = CASE WHEN s.status IN ('dead', 'failed') THEN NULL ELSE s.last_error END, \
                 published_at = COALESCE(s.published_at, now()) \
             FROM webhook_event_states AS old \
             WHERE s.event_id = ANY($1) AND s.processed_at IS NULL AND old.event_id = s.event_id \
             RETURNING old.status) \
         SELECT count(*) FROM changed WHERE status IN ('dead', 'failed')",
    )
    .bind(ids)
    .fetch_one(conn)
    .await
}

/// Events copied per statement by [`copy_states`].
pub const COPY_BATCH: i64 = 1000;

/// The expand step of the split (migration `20261217000001`): copies the
/// state of every row of the `webhook_events` table that has none in
/// `webhook_event_states` yet, [`COPY_BATCH`] rows per statement, each its
/// own short transaction, so the services writing meanwhile never wait for
/// more than one batch. Rows they insert or change meanwhile are copied by
/// the expand step's trigger, and a row it copied first is left alone.
/// Returns how many states it copied.
pub async fn copy_states(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let mut after = 0i64;
    let mut copied = 0u64;
    loop {
        let (last, count): (Option<i64>, i64) = sqlx::query_as(
            "WITH batch AS (\
                 SELECT id, published_at, processed_at, status, attempts, last_error \
                 FROM webhook_events WHERE id > $1 ORDER BY id LIMIT $2), \
             copied AS (\
                 INSERT INTO webhook_event_states \
                     (event_id, published_at, processed_at, status, attempts, last_error) \
                 SELECT * FROM batch ON CONFLICT (event_id) DO NOTHING RETURNING 1) \
             SELECT (SELECT max(id) FROM batch), (SELECT count(*) FROM copied)",
        )
        .bind(after)
        .bind(COPY_BATCH)
        .fetch_one(&mut *conn)
        .await?;
        let Some(last) = last else {
            return Ok(copied);
        };
        after = last;
        copied += u64::try_from(count).unwrap_or(0);
    }
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
