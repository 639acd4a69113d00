//! One delivery, start to finish: lock the event row, skip it if it was
//! already processed, run the handler, mark the row, commit, then ack.
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

/// The stored event row, locked.
#[derive(sqlx::FromRow)]
struct Row {
    event_type: String,
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
        dead_letter(ctx, &delivery, "", 0, reason).await;
        return;
    };
    let type_hint = delivery.routing_key.to_string();
    let mut outage_delays = outage_backoff(ctx);
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
            Ok(Attempt::AlreadyDead {
                attempts,
                last_error,
            }) => {
                dead_letter(ctx, &delivery, &webhook_id, attempts, &last_error).await;
                return;
            }
            Err(error) => match classify(&error) {
                Failure::Outage => {
                    let delay = outage_delays.next().unwrap_or(ctx.retry_max_delay);
                    tracing::warn!(webhook_id, error.message = %error, retry_in = ?delay,
                        "database unavailable; the event waits, unacked");
                    if !wait(ctx, delay).await {
                        requeue(&delivery).await;
                        return;
                    }
                }
                failure => {
                    let reason = error.to_string();
                    let attempts = match record_failure(ctx, &webhook_id, &reason, failure).await {
                        Ok(Some(attempts)) => attempts,
                        Ok(None) => {
                            ack(&delivery).await;
                            ctx.metrics.event(&type_hint, "duplicate");
                            tracing::info!(webhook_id, event_type = %type_hint, outcome = "duplicate",
                                "a copy of the event committed while this one failed");
                            return;
                        }
                        Err(e) => {
                            // Could not even count it: treat as an outage.
                            let delay = outage_delays.next().unwrap_or(ctx.retry_max_delay);
                            tracing::warn!(webhook_id, error.message = %e, retry_in = ?delay,
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
                        dead_letter(ctx, &delivery, &webhook_id, attempts, &reason).await;
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
    let row = lock_row(&mut tx, webhook_id).await?;
    let row = match row {
        Some(row) => row,
        None => {
            insert_from_message(&mut tx, webhook_id, delivery).await?;
            lock_row(&mut tx, webhook_id)
                .await?
                .ok_or_else(|| HandlerError::Malformed("stored event vanished".to_owned()))?
        }
    };
    if row.processed_at.is_some() {
        tx.commit().await?;
        return Ok(Attempt::AlreadyProcessed);
    }
    if row.status == "dead" {
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
    sqlx::query(
        "UPDATE webhook_events SET status = $2, processed_at = now(), attempts = attempts + 1, \
         last_error = NULL WHERE webhook_id = $1",
    )
    .bind(webhook_id)
    .bind(applied.status())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Attempt::Done {
        applied,
        received_at: row.received_at,
    })
}

async fn lock_row(
    tx: &mut sqlx::PgConnection,
    webhook_id: &str,
) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(
        "SELECT event_type, payload, processed_at, status, attempts, last_error, received_at \
         FROM webhook_events WHERE webhook_id = $1 FOR UPDATE",
    )
    .bind(webhook_id)
    .fetch_optional(tx)
    .await
}

/// A message without a stored row (published by hand, or by an older
/// version) is stored first, as the ingress would have, so it is archived,
/// replayable and deduplicated like any other. It must be a JSON object with a
/// string `type`; anything else is dead-lettered.
async fn insert_from_message(
    tx: &mut sqlx::PgConnection,
    webhook_id: &str,
    delivery: &Delivery,
) -> Result<(), HandlerError> {
    let event_type = shared::event::event_type(&delivery.data).map_err(|e| {
        HandlerError::Malformed(format!(
            "message has no stored event and is not a Clerk event: {e}"
        ))
    })?;
    let text =
        std::str::from_utf8(&delivery.data).map_err(|e| HandlerError::Malformed(e.to_string()))?;
    sqlx::query(
        "INSERT INTO webhook_events (webhook_id, event_type, payload, raw_body, published_at, status) \
         VALUES ($1, $2, $3::jsonb, $4, now(), 'published') ON CONFLICT (webhook_id) DO NOTHING",
    )
    .bind(webhook_id)
    .bind(&event_type)
    .bind(text)
    .bind(delivery.data.as_slice())
    .execute(tx)
    .await?;
    tracing::warn!(
        webhook_id,
        event_type,
        "message had no stored event: stored it from the message"
    );
    Ok(())
}

/// Counts a failed attempt; returns the attempts so far, or `None` when the
/// event turns out to be processed already.
async fn record_failure(
    ctx: &Context,
    webhook_id: &str,
    reason: &str,
    failure: Failure,
) -> Result<Option<i32>, sqlx::Error> {
    // A copy of the event may have committed meanwhile (two copies delivered at
    // once): then the failure is moot and the row must keep its outcome.
    let (attempts, processed): (Option<i32>, bool) = sqlx::query_as(
        "WITH failed AS (\
             UPDATE webhook_events SET attempts = attempts + 1, last_error = $2, \
             status = CASE WHEN $3 OR attempts + 1 >= $4 THEN 'dead' ELSE 'failed' END \
             WHERE webhook_id = $1 AND processed_at IS NULL RETURNING attempts) \
         SELECT (SELECT attempts FROM failed), \
                EXISTS (SELECT 1 FROM webhook_events WHERE webhook_id = $1 AND processed_at IS NOT NULL)",
    )
    .bind(webhook_id)
    .bind(reason)
    .bind(failure == Failure::Permanent)
    .bind(ctx.max_attempts as i32)
    .fetch_one(&ctx.pool)
    .await?;
    if processed {
        return Ok(None);
    }
    // A message without a stored row has made one attempt.
    Ok(Some(attempts.unwrap_or(1)))
}

/// Publishes the message to the dead-letter exchange with its attempts and
/// last error, and acks the original only once the broker confirmed.
async fn dead_letter(
    ctx: &Context,
    delivery: &Delivery,
    webhook_id: &str,
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
            ctx.metrics.dead_lettered(delivery.routing_key.as_str());
        }
        Err(error) => {
            tracing::error!(webhook_id, error.message = %error,
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
        tracing::warn!(error.message = %error, "ack failed after commit; a redelivery will be skipped");
    }
}

async fn requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(error) = delivery.acker.nack(options).await {
        tracing::warn!(error.message = %error, "nack failed; the broker returns the message when the channel closes");
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
