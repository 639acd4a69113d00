//! `worker replay --from-store`: re-publishes stored events from the
//! `webhook_events` archive.
//!
//! Events go out in id order, in batches, each batch confirmed by the broker.
//! Handlers are idempotent: a processed event is re-published unchanged and the
//! worker skips it as a duplicate. An event that has not been processed and is
//! `dead` or `failed` gets a fresh start (`status = 'published'`,
//! `attempts = 0`, `last_error = NULL`), otherwise the worker would dead-letter
//! it again at once. The rows of a batch stay locked until its confirms are in,
//! so a worker that receives a copy early waits for the reset instead of
//! seeing the old state; a row is reset only if its publish was confirmed.
//! A row the broker never confirmed (`published_at` null) is marked published,
//! as the ingress relay would.

use shared::event_status::PUBLISHED_BODY;
use std::collections::BTreeSet;

use lapin::Connection;
use shared::amqp::{AmqpError, Names, OutgoingEvent, Publisher};
use sqlx::PgPool;
use time::OffsetDateTime;

/// Events per batch of publishes.
pub const BATCH_SIZE: i64 = 200;

/// Which stored events to re-publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSelection {
    /// These svix ids; every one must be stored.
    Ids(Vec<String>),
    /// Everything received at or after `since`, optionally of one type.
    Since {
        /// Lower bound of `received_at`, inclusive.
        since: OffsetDateTime,
        /// Only this event type.
        event_type: Option<String>,
    },
}

impl StoreSelection {
    /// The selection as the audit log records it.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            StoreSelection::Ids(ids) => serde_json::json!({"ids": ids}),
            StoreSelection::Since { since, event_type } => serde_json::json!({
                "since": since.format(&time::format_description::well_known::Rfc3339).ok(),
                "type": event_type,
            }),
        }
    }
}

/// What a replay from the store did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreReplayReport {
    /// Events re-published and confirmed.
    pub republished: u64,
    /// Of those, dead or failed events that were given a fresh start.
    pub reset: u64,
}

impl std::fmt::Display for StoreReplayReport {
    /// `republished=N`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "republished={}", self.republished)
    }
}

/// Replay failures.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Some of the requested ids are not stored; nothing was published.
    #[error("not stored in webhook_events: {}; nothing was re-published", .0.join(", "))]
    UnknownIds(Vec<String>),
    /// The database failed.
    #[error("PostgreSQL failed")]
    Database(#[from] sqlx::Error),
    /// The broker failed or did not confirm a publish.
    #[error(transparent)]
    Broker(#[from] AmqpError),
    /// The replay stopped part-way: the events confirmed before stay
    /// published, the rest are unchanged.
    #[error("stopped after re-publishing {republished} event(s)")]
    Stopped {
        /// Events re-published before the failure.
        republished: u64,
        /// The cause.
        #[source]
        source: Box<ReplayError>,
    },
}

#[derive(sqlx::FromRow)]
struct Stored {
    id: i64,
    webhook_id: String,
    event_type: String,
    raw_body: Vec<u8>,
    traceparent: Option<String>,
}

/// Re-publishes the selected stored events, in id order, with confirms.
/// `progress` is called with the running total after each batch.
pub async fn replay_from_store(
    pool: &PgPool,
    connection: &Connection,
    names: &Names,
    selection: &StoreSelection,
    actor: &str,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<StoreReplayReport, ReplayError> {
    let mut report = StoreReplayReport::default();
    let outcome = replay_with(pool, connection, names, selection, &mut report, progress).await;
    if report.republished > 0 || outcome.is_ok() {
        let audited = crate::audit::record(
            pool,
            &crate::audit::Action {
                action_type: "replay_from_store",
                actor,
                details: serde_json::json!({
                    "selection": selection.describe(),
                    "republished": report.republished,
                    "reset": report.reset,
                    "completed": outcome.is_ok(),
                }),
            },
        )
        .await;
        if let Err(error) = audited {
            tracing::warn!(error.message = %shared::error::Chain(&error), "the replay was not written to the audit log");
        }
    }
    match outcome {
        Ok(()) => Ok(report),
        Err(error) if report.republished > 0 => Err(ReplayError::Stopped {
            republished: report.republished,
            source: Box::new(error),
        }),
        Err(error) => Err(error),
    }
}

async fn replay_with(
    pool: &PgPool,
    connection: &Connection,
    names: &Names,
    selection: &StoreSelection,
    report: &mut StoreReplayReport,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<(), ReplayError> {
    let (ids, since, event_type) = match selection {
        StoreSelection::Ids(ids) => {
            let ids: Vec<String> = ids
                .iter()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let stored: Vec<String> = sqlx::query_scalar(
                "SELECT webhook_id FROM webhook_events WHERE webhook_id = ANY($1)",
            )
            .bind(&ids)
            .fetch_all(pool)
            .await?;
            let stored: BTreeSet<String> = stored.into_iter().collect();
            let unknown: Vec<String> = ids
                .iter()
                .filter(|id| !stored.contains(*id))
                .cloned()
                .collect();
            if !unknown.is_empty() {
                return Err(ReplayError::UnknownIds(unknown));
            }
            (Some(ids), None, None)
        }
        StoreSelection::Since { since, event_type } => (None, Some(*since), event_type.clone()),
    };
    // Events stored after the start are not chased: the ingress publishes them.
    let last_id: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM webhook_event_bodies")
        .fetch_one(pool)
        .await?;
    let Some(last_id) = last_id else {
        return Ok(());
    };
    let publisher = Publisher::open(connection, names).await?;
    let mut after = 0i64;
    loop {
        let mut tx = pool.begin().await?;
        let rows: Vec<Stored> = sqlx::query_as(&format!(
            "SELECT b.id, b.webhook_id, b.event_type, \
             {PUBLISHED_BODY} AS raw_body, b.traceparent \
             FROM webhook_event_bodies b JOIN webhook_event_states s ON s.event_id = b.id \
             WHERE b.id > $1 AND b.id <= $2 \
               AND ($3::text[] IS NULL OR b.webhook_id = ANY($3)) \
               AND ($4::timestamptz IS NULL OR b.received_at >= $4) \
               AND ($5::text IS NULL OR b.event_type = $5) \
             ORDER BY b.id LIMIT $6 FOR UPDATE OF s"
        ))
        .bind(after)
        .bind(last_id)
        .bind(ids.as_deref())
        .bind(since)
        .bind(event_type.as_deref())
        .bind(BATCH_SIZE)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last() else {
            break;
        };
        after = last.id;
        let events: Vec<(i64, OutgoingEvent<'_>)> = rows
            .iter()
            .map(|row| {
                let event = OutgoingEvent {
                    webhook_id: &row.webhook_id,
                    event_type: &row.event_type,
                    body: &row.raw_body,
                    traceparent: row.traceparent.as_deref(),
                };
                (row.id, event)
            })
            .collect();
        let (confirmed, failure) = publisher.publish_confirmed(&events).await;
        let reset = shared::event_status::restart_from_store(&mut tx, &confirmed).await?;
        tx.commit().await?;
        report.republished += confirmed.len() as u64;
        report.reset += u64::try_from(reset).unwrap_or(0);
        if let Some(error) = failure {
            return Err(error.into());
        }
        progress(report.republished);
    }
    Ok(())
}
