//! One delivery, start to finish: lock the event row, skip it if it was
//! already processed, run the handler, mark the row, commit, then ack.
//!
//! Only events the ingress verified are applied: a message must match a
//! stored row (same svix id, same raw body, routing key = stored type).
//! Anything else was published straight to the exchange by someone holding
//! the broker's password, and is dead-lettered untouched ([`Refusal`]).
//!
//! Failures are decided in one place, [`classify`]: a malformed payload is
//! dead-lettered at once; a database error is retried with exponential
//! backoff and jitter up to `max_attempts`, then dead-lettered; PostgreSQL
//! being unreachable is an outage, not a failure of the event: the delivery
//! stays unacked, nothing is counted, and the attempt is repeated once the
//! database answers.

use std::{sync::Arc, time::Duration};

use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};
use serde_json::Value;
use shared::amqp::{DeadLetter, OutgoingEvent, Publisher};
use shared::event_status::{self, FailedAttempt, Recorded, Status, PUBLISHED_BODY};
use sqlx::{types::Json, PgPool};
use tokio_util::sync::CancellationToken;

use crate::{
    credits::Catalog,
    handlers::{self, Applied, Event, HandlerError},
    metrics::Metrics,
};

/// What a delivery task needs.
pub struct Context {
    pub pool: PgPool,
    pub publisher: Arc<Publisher>,
    pub metrics: Arc<Metrics>,
    pub catalog: Arc<Catalog>,
    /// Woken after a commit, so a balance change reaches Clerk promptly.
    pub sync_wakeup: Arc<tokio::sync::Notify>,
    pub max_attempts: u32,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// Cancelled on shutdown: a delivery waiting to retry gives up its turn
    /// and goes back to the queue.
    pub shutdown: CancellationToken,
}

/// How a failure is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Retrying cannot help: dead-letter now.
    Permanent,
    /// Count an attempt and retry after a backoff.
    Transient,
    /// The database is unreachable: nothing is counted, retry when it is back.
    Outage,
}

/// The one place that decides how an error is treated.
pub fn classify(error: &HandlerError) -> Failure {
    match error {
        HandlerError::Malformed(_) => Failure::Permanent,
        HandlerError::Database(e) => classify_database(e),
    }
}

fn classify_database(error: &sqlx::Error) -> Failure {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Failure::Outage,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // connection exceptions, the server shutting down, too many connections
            Some(code)
                if code.starts_with("08")
                    || matches!(code, "57P01" | "57P02" | "57P03" | "53300") =>
            {
                Failure::Outage
            }
            // data exceptions and integrity violations never go away by themselves
            Some(code) if code.starts_with("22") || code.starts_with("23") => Failure::Permanent,
            _ => Failure::Transient,
        },
        _ => Failure::Transient,
    }
}

/// Why a message is refused without being applied: it is not the event the
/// ingress verified and stored. The stored row, if any, is left as it is (the
/// genuine message may still come, or be re-published from the store).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No row has the message's svix id.
    #[error("no stored event with this svix id: not received through the ingress")]
    NotStored,
    /// A row has the svix id, but its raw body is not the message's body.
    #[error("the body differs from the stored event's: not the event the ingress received")]
    BodyDiffers,
    /// The body is the stored one, but it was routed as another type.
    #[error("the routing key differs from the stored event type {stored}")]
    TypeDiffers {
        /// The stored event type.
        stored: String,
    },
}

/// Metric label of the event type for messages refused or without an id:
/// their routing key is whatever the publisher chose.
const UNVERIFIED_TYPE: &str = "unverified";

/// The stored event row, locked.
#[derive(sqlx::FromRow)]
struct Row {
    event_type: String,
    /// Whether the stored raw body is the delivered body, byte for byte.
    genuine_body: bool,
    payload: Json<Value>,
    processed_at: Option<time::OffsetDateTime>,
    status: String,
    attempts: i32,
    last_error: Option<String>,
    received_at: time::OffsetDateTime,
}

enum Attempt {
    Done {
        applied: Applied,
        /// When the ingress received the event.
        received_at: time::OffsetDateTime,
    },
    AlreadyProcessed,
    /// Not an event the ingress stored: dead-letter it, touch nothing.
    Refused(Refusal),
    /// The row says an earlier run dead-lettered it but the ack was lost.
    AlreadyDead {
        attempts: i32,
        last_error: String,
    },
}

/// Handles one delivery to the end: acked, dead-lettered, or (on shutdown
/// during a retry wait) returned to the queue.
pub async fn handle(ctx: &Context, delivery: Delivery) {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        "event.process",
        event_type = %delivery.routing_key,
        webhook_id = delivery.properties.message_id().as_ref().map(|id| id.as_str()).unwrap_or_default(),
    );
    if let Some(traceparent) = header(&delivery, shared::amqp::HEADER_TRACEPARENT) {
        shared::telemetry::set_remote_parent(&span, &traceparent);
    }
    handle_delivery(ctx, delivery).instrument(span).await;
}

async fn handle_delivery(ctx: &Context, delivery: Delivery) {
    let started = std::time::Instant::now();
    let Some(webhook_id) = delivery
        .properties
        .message_id()
        .as_ref()
        .map(ToString::to_string)
    else {
        let reason = "message has no message_id (svix-id)";
        tracing::error!(outcome = "dead_lettered", reason, "unidentifiable message");
        dead_letter(ctx, &delivery, "", UNVERIFIED_TYPE, 0, reason).await;
        return;
    };
    let type_hint = delivery.routing_key.to_string();
    let mut outage_delays = outage_backoff(ctx);
    // Failed attempts of this delivery, for a failure no row can count.
    let mut failures_here = 0;
    loop {
        let result = attempt(ctx, &webhook_id, &delivery).await;
        match result {
            Ok(Attempt::Done {
                applied,
                received_at,
            }) => {
                ack(&delivery).await;
                if applied == Applied::Processed {
                    ctx.sync_wakeup.notify_one();
                }
                ctx.metrics.event(&type_hint, applied.outcome());
                ctx.metrics.latency(
                    &type_hint,
                    (time::OffsetDateTime::now_utc() - received_at).as_seconds_f64(),
                );
                tracing::info!(
                    webhook_id,
                    event_type = %type_hint,
                    outcome = applied.outcome(),
                    elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "event applied"
                );
                return;
            }
            Ok(Attempt::AlreadyProcessed) => {
                ack(&delivery).await;
                ctx.metrics.event(&type_hint, "duplicate");
                tracing::info!(webhook_id, event_type = %type_hint, outcome = "duplicate", "event already processed");
                return;
            }
            Ok(Attempt::Refused(refusal)) => {
                let reason = refusal.to_string();
                tracing::error!(webhook_id, routing_key = %type_hint, reason, outcome = "dead_lettered",
                    "message refused: not an event the ingress stored; nothing applied");
                dead_letter(ctx, &delivery, &webhook_id, UNVERIFIED_TYPE, 0, &reason).await;
                return;
            }
            Ok(Attempt::AlreadyDead {
                attempts,
                last_error,
            }) => {
                dead_letter(
                    ctx,
                    &delivery,
                    &webhook_id,
                    &type_hint,
                    attempts,
                    &last_error,
                )
                .await;
                return;
            }
            Err(error) => match classify(&error) {
                Failure::Outage => {
                    let delay = outage_delays.next().unwrap_or(ctx.retry_max_delay);
                    tracing::warn!(webhook_id, error.message = %shared::error::Chain(&error), retry_in = ?delay,
                        "database unavailable; the event waits, unacked");
                    if !wait(ctx, delay).await {
                        requeue(&delivery).await;
                        return;
                    }
                }
                failure => {
                    let reason = shared::error::Chain(&error).to_string();
                    failures_here += 1;
                    let recorded = record_failure(ctx, &delivery, &webhook_id, &reason, failure);
                    let attempts = match recorded.await {
                        Ok(Recorded::Attempts(attempts)) => attempts,
                        // Failed before the message was checked against the
                        // store: count here, leave the row alone.
                        Ok(Recorded::NotStored) => failures_here,
                        Ok(Recorded::AlreadyProcessed) => {
                            ack(&delivery).await;
                            ctx.metrics.event(&type_hint, "duplicate");
                            tracing::info!(webhook_id, event_type = %type_hint, outcome = "duplicate",
                                "a copy of the event committed while this one failed");
                            return;
                        }
                        Err(e) => {
                            // Could not even count it: treat as an outage.
                            let delay = outage_delays.next().unwrap_or(ctx.retry_max_delay);
                            tracing::warn!(webhook_id, error.message = %shared::error::Chain(&e), retry_in = ?delay,
                                "database unavailable while recording a failure");
                            if !wait(ctx, delay).await {
                                requeue(&delivery).await;
                                return;
                            }
                            continue;
                        }
                    };
                    if failure == Failure::Permanent || attempts >= ctx.max_attempts as i32 {
                        tracing::error!(webhook_id, event_type = %type_hint, attempts, error.message = %reason,
                            outcome = "dead_lettered", "event failed for good");
                        dead_letter(ctx, &delivery, &webhook_id, &type_hint, attempts, &reason)
                            .await;
                        return;
                    }
                    let delay = retry_delay(ctx, attempts);
                    ctx.metrics.retry(&type_hint);
                    tracing::warn!(webhook_id, event_type = %type_hint, attempts, error.message = %reason,
                        retry_in = ?delay, outcome = "retrying", "event failed; retrying");
                    if !wait(ctx, delay).await {
                        requeue(&delivery).await;
                        return;
                    }
                }
            },
        }
    }
}

/// One transaction: lock, check, apply, mark, commit.
async fn attempt(
    ctx: &Context,
    webhook_id: &str,
    delivery: &Delivery,
) -> Result<Attempt, HandlerError> {
    let mut tx = ctx.pool.begin().await?;
    let row = lock_row(&mut tx, webhook_id, &delivery.data).await?;
    // Before anything that counts an attempt or marks the row: a message the
    // ingress did not store changes nothing, its row included.
    let row = match verify(row, delivery.routing_key.as_str()) {
        Ok(row) => row,
        Err(refusal) => {
            tx.rollback().await?;
            return Ok(Attempt::Refused(refusal));
        }
    };
    if row.processed_at.is_some() {
        tx.commit().await?;
        return Ok(Attempt::AlreadyProcessed);
    }
    if Status::parse(&row.status) == Some(Status::Dead) {
        tx.commit().await?;
        return Ok(Attempt::AlreadyDead {
            attempts: row.attempts,
            last_error: row.last_error.unwrap_or_default(),
        });
    }
    let event = Event {
        webhook_id,
        event_type: &row.event_type,
        payload: &row.payload.0,
    };
    let applied = handlers::apply(&mut tx, &event, &ctx.catalog).await?;
    event_status::mark_applied(&mut tx, webhook_id, applied.status()).await?;
    tx.commit().await?;
    Ok(Attempt::Done {
        applied,
        received_at: row.received_at,
    })
}

/// Locks the row of `webhook_id` and compares its raw body with `body`.
async fn lock_row(
    tx: &mut sqlx::PgConnection,
    webhook_id: &str,
    body: &[u8],
) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT event_type, payload, {PUBLISHED_BODY} = $2 AS genuine_body, processed_at, \
             status, attempts, last_error, received_at FROM webhook_events \
             WHERE webhook_id = $1 FOR UPDATE"
    ))
    .bind(webhook_id)
    .bind(body)
    .fetch_optional(tx)
    .await
}

/// Whether the message is the event the ingress stored: a row with its svix
/// id, the same raw body, and the stored type as routing key (the ingress,
/// its relay and every replay publish exactly that).
fn verify(row: Option<Row>, routing_key: &str) -> Result<Row, Refusal> {
    let row = row.ok_or(Refusal::NotStored)?;
    if !row.genuine_body {
        return Err(Refusal::BodyDiffers);
    }
    if row.event_type != routing_key {
        return Err(Refusal::TypeDiffers {
            stored: row.event_type,
        });
    }
    Ok(row)
}

/// Counts a failed attempt on the row that stores this very message. A copy
/// of the event may have committed meanwhile (two copies delivered at once):
/// then the failure is moot and the row keeps its outcome. A message that is
/// not the stored one never counts on its row.
async fn record_failure(
    ctx: &Context,
    delivery: &Delivery,
    webhook_id: &str,
    reason: &str,
    failure: Failure,
) -> Result<Recorded, sqlx::Error> {
    let mut conn = ctx.pool.acquire().await?;
    event_status::record_failure(
        &mut conn,
        &FailedAttempt {
            webhook_id,
            body: &delivery.data,
            event_type: delivery.routing_key.as_str(),
            reason,
            permanent: failure == Failure::Permanent,
            max_attempts: ctx.max_attempts as i32,
        },
    )
    .await
}

/// Publishes the message to the dead-letter exchange with its attempts and
/// last error, and acks the original only once the broker confirmed.
/// `type_label` is the event type the metrics count it under.
async fn dead_letter(
    ctx: &Context,
    delivery: &Delivery,
    webhook_id: &str,
    type_label: &str,
    attempts: i32,
    reason: &str,
) {
    let traceparent = header(delivery, shared::amqp::HEADER_TRACEPARENT);
    let letter = DeadLetter {
        event: OutgoingEvent {
            webhook_id,
            event_type: delivery.routing_key.as_str(),
            body: &delivery.data,
            traceparent: traceparent.as_deref(),
        },
        attempts,
        last_error: reason,
    };
    match ctx.publisher.dead_letter(&letter).await {
        Ok(()) => {
            ack(delivery).await;
            ctx.metrics.dead_lettered(type_label);
        }
        Err(error) => {
            tracing::error!(webhook_id, error.message = %shared::error::Chain(&error),
                "could not dead-letter; the message goes back to the queue");
            requeue(delivery).await;
        }
    }
}

fn header(delivery: &Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        lapin::types::AMQPValue::LongString(s) => {
            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        _ => None,
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The broker redelivers it; the row is processed, so that is a no-op.
        tracing::warn!(error.message = %shared::error::Chain(&error), "ack failed after commit; a redelivery will be skipped");
    }
}

async fn requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(error) = delivery.acker.nack(options).await {
        tracing::warn!(error.message = %shared::error::Chain(&error), "nack failed; the broker returns the message when the channel closes");
    }
}

/// Waits `delay` unless shutdown comes first; false on shutdown.
async fn wait(ctx: &Context, delay: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = ctx.shutdown.cancelled() => false,
    }
}

fn retry_delay(ctx: &Context, attempts: i32) -> Duration {
    let attempts = u32::try_from(attempts).unwrap_or(0);
    shared::backoff::jittered(ctx.retry_base_delay, ctx.retry_max_delay, attempts)
}

fn outage_backoff(ctx: &Context) -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::default()
        .with_min_delay(ctx.retry_base_delay.min(Duration::from_millis(500)))
        .with_max_delay(ctx.retry_max_delay)
        .with_jitter()
        .without_max_times()
        .build()
}
