//! One delivery, start to finish: lock the event's state, skip it if it was
//! already processed, run the handler, mark the state, commit, then ack. The
//! deliveries that are ready at the same time share one transaction, each in
//! a savepoint of its own ([`batch`]).
//!
//! Only events the ingress verified are applied: a message must match a
//! stored row (same svix id, same raw body, routing key = stored type).
//! Anything else was published straight to the exchange by someone holding
//! the broker's password, and is dead-lettered untouched ([`Refusal`]).
//!
//! Every attempt ends in a [`Decision`] ([`decision`]): ack; retry later,
//! which publishes a copy into a delay queue and acks the delivery, so a
//! failing event never holds a prefetch slot while it waits
//! ([`shared::amqp::retry`]); dead-letter; wait for the database; requeue.
//! PostgreSQL being unreachable is an outage, not a failure of the event: the
//! delivery waits here, unacked, nothing is counted, and the attempt is
//! repeated once the database answers. Waiting here (not in a delay queue) is
//! deliberate: every delivery fails alike during an outage, so the worker's
//! slots fill and it stops taking deliveries, which stay in the worker queue
//! instead of cycling through delay queues while nothing can be applied.

pub mod batch;
pub mod decision;

use std::{sync::Arc, time::Duration};

use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};
use shared::amqp::{retry::Retry, DeadLetter, OutgoingEvent, Publisher};
use shared::backoff::{Delays, RetryPolicy};
use shared::event_status::{self, FailedAttempt, Locked, Recorded, Status};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use decision::{classify, Decision, Done, Failure};

use crate::{
    credits::Catalog,
    handlers::{self, Applied, Event, HandlerError},
    metrics::Metrics,
};
use decision::Counted;

/// What a delivery task needs.
pub struct Context {
    pub pool: PgPool,
    /// Where attempts are applied, several in one transaction.
    pub batches: batch::Batches,
    pub publisher: Arc<Publisher>,
    pub metrics: Arc<Metrics>,
    pub catalog: Arc<Catalog>,
    /// Woken after a commit, so a balance change reaches Clerk promptly.
    pub sync_wakeup: Arc<tokio::sync::Notify>,
    pub max_attempts: u32,
    /// Delays between attempts of a failing event, and between tries while
    /// the database is unavailable.
    pub retry: RetryPolicy,
    /// Cancelled on shutdown: a delivery waiting for the database gives up
    /// its turn and goes back to the queue.
    pub shutdown: CancellationToken,
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

pub(crate) enum Attempt {
    Done {
        /// The event's row, to mark.
        event_id: i64,
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

/// Handles one delivery to the end: acked (applied, a duplicate, or handed
/// to a delay queue or the dead-letter queue), or returned to the queue.
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

/// One delivery and what is known of it.
struct Current<'a> {
    ctx: &'a Context,
    delivery: Delivery,
    webhook_id: String,
    /// The routing key: the event type the metrics count it under.
    type_hint: String,
    started: std::time::Instant,
    /// Waits while the database is unavailable.
    outage_delays: Delays,
}

/// What follows a decision carried out.
enum Flow {
    /// Acked or returned to the queue: done with.
    Finished,
    /// Attempt it again (the database may be back).
    TryAgain,
    /// Another decision follows (a publish was not confirmed: requeue).
    Then(Decision),
}

async fn handle_delivery(ctx: &Context, delivery: Delivery) {
    let Some(webhook_id) = delivery
        .properties
        .message_id()
        .as_ref()
        .map(ToString::to_string)
    else {
        let reason = "message has no message_id (svix-id)";
        tracing::error!(outcome = "dead_lettered", reason, "unidentifiable message");
        if !dead_letter(ctx, &delivery, "", UNVERIFIED_TYPE, 0, reason).await {
            requeue(&delivery).await;
        }
        return;
    };
    let mut current = Current {
        ctx,
        type_hint: delivery.routing_key.to_string(),
        delivery,
        webhook_id,
        started: std::time::Instant::now(),
        outage_delays: ctx.retry.delays(),
    };
    let mut decision = current.decide().await;
    loop {
        decision = match current.carry_out(decision).await {
            Flow::Finished => return,
            Flow::TryAgain => current.decide().await,
            Flow::Then(next) => next,
        };
    }
}

impl Current<'_> {
    /// Makes one attempt and decides what follows; a failure is counted here.
    async fn decide(&self) -> Decision {
        let ctx = self.ctx;
        let routing_key = self.delivery.routing_key.as_str();
        let batched = ctx
            .batches
            .attempt(&self.webhook_id, &self.delivery.data, routing_key)
            .await;
        let attempted = match batched {
            batch::Outcome::Done(attempted) => attempted,
            batch::Outcome::Alone => attempt(ctx, &self.webhook_id, &self.delivery).await,
        };
        match attempted {
            Ok(Attempt::Done {
                applied,
                received_at,
                ..
            }) => Decision::Ack(Done::Applied {
                applied,
                received_at,
            }),
            Ok(Attempt::AlreadyProcessed) => Decision::Ack(Done::Duplicate),
            Ok(Attempt::Refused(refusal)) => Decision::DeadLetter {
                attempts: 0,
                reason: refusal.to_string(),
                verified: false,
            },
            Ok(Attempt::AlreadyDead {
                attempts,
                last_error,
            }) => Decision::DeadLetter {
                attempts,
                reason: last_error,
                verified: true,
            },
            Err(error) => {
                let reason = shared::error::Chain(&error).to_string();
                let failure = classify(&error);
                if failure == Failure::Outage {
                    return Decision::WaitForDatabase { reason };
                }
                let recorded =
                    record_failure(ctx, &self.delivery, &self.webhook_id, &reason, failure).await;
                let before = retry_attempts(&self.delivery);
                decision::after_failure(
                    failure,
                    Counted::from_record(recorded, before),
                    ctx.max_attempts,
                    reason,
                )
            }
        }
    }

    /// Carries a decision out: acks only once what must happen first (the
    /// commit, a confirmed publish to a delay or to the dead-letter queue)
    /// has happened.
    async fn carry_out(&mut self, decision: Decision) -> Flow {
        let ctx = self.ctx;
        let (webhook_id, type_hint) = (self.webhook_id.as_str(), self.type_hint.as_str());
        match decision {
            Decision::Ack(Done::Applied {
                applied,
                received_at,
            }) => {
                ack(&self.delivery).await;
                if applied == Applied::Processed {
                    ctx.sync_wakeup.notify_one();
                }
                ctx.metrics.event(type_hint, applied.outcome());
                ctx.metrics.latency(
                    type_hint,
                    (time::OffsetDateTime::now_utc() - received_at).as_seconds_f64(),
                );
                tracing::info!(
                    webhook_id,
                    event_type = %type_hint,
                    outcome = applied.outcome(),
                    elapsed_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                    "event applied"
                );
            }
            Decision::Ack(Done::Duplicate) => {
                ack(&self.delivery).await;
                ctx.metrics.event(type_hint, "duplicate");
                tracing::info!(webhook_id, event_type = %type_hint, outcome = "duplicate", "event already processed");
            }
            Decision::RetryLater { attempts, reason } => {
                if !self.retry_later(attempts, &reason).await {
                    return Flow::Then(Decision::Requeue);
                }
            }
            Decision::DeadLetter {
                attempts,
                reason,
                verified,
            } => {
                let label = if verified { type_hint } else { UNVERIFIED_TYPE };
                if verified {
                    tracing::error!(webhook_id, event_type = %type_hint, attempts, error.message = %reason,
                        outcome = "dead_lettered", "event failed for good");
                } else {
                    tracing::error!(webhook_id, routing_key = %type_hint, reason, outcome = "dead_lettered",
                        "message refused: not an event the ingress stored; nothing applied");
                }
                if !dead_letter(ctx, &self.delivery, webhook_id, label, attempts, &reason).await {
                    return Flow::Then(Decision::Requeue);
                }
            }
            Decision::WaitForDatabase { reason } => {
                let delay = self.outage_delays.next().unwrap_or(ctx.retry.max);
                tracing::warn!(webhook_id, error.message = %reason, retry_in = ?delay,
                    "database unavailable; the event waits, unacked");
                if !wait(ctx, delay).await {
                    return Flow::Then(Decision::Requeue);
                }
                return Flow::TryAgain;
            }
            Decision::Requeue => requeue(&self.delivery).await,
        }
        Flow::Finished
    }

    /// Hands the event to the delay queue of its step and acks the delivery
    /// once the broker confirmed the copy; if it did not, the delivery goes
    /// back to the queue instead (tried again at once: nothing is lost).
    /// Whether the broker confirmed it.
    async fn retry_later(&self, attempts: i32, reason: &str) -> bool {
        let ctx = self.ctx;
        let (webhook_id, type_hint) = (self.webhook_id.as_str(), self.type_hint.as_str());
        let attempt = u32::try_from(attempts).unwrap_or(1);
        let step = ctx.retry.step(attempt);
        let delay = ctx.retry.delay(attempt);
        let traceparent = header(&self.delivery, shared::amqp::HEADER_TRACEPARENT);
        let retry = Retry {
            event: OutgoingEvent {
                webhook_id,
                event_type: self.delivery.routing_key.as_str(),
                body: &self.delivery.data,
                traceparent: traceparent.as_deref(),
            },
            attempts,
            step,
            delay,
        };
        match ctx.publisher.retry_later(&retry).await {
            Ok(()) => {
                ack(&self.delivery).await;
                ctx.metrics.retry(type_hint);
                tracing::warn!(webhook_id, event_type = %type_hint, attempts, error.message = %reason,
                    retry_in = ?delay, outcome = "retrying", "event failed; retrying");
                true
            }
            Err(error) => {
                tracing::error!(webhook_id, attempts, error.message = %shared::error::Chain(&error),
                    "could not hand the event to its delay queue; it goes back to the queue");
                false
            }
        }
    }
}

/// The failed attempts a retried message counts (its retry header), 0 for
/// a first delivery.
fn retry_attempts(delivery: &Delivery) -> i32 {
    let Some(headers) = delivery.properties.headers().as_ref() else {
        return 0;
    };
    match headers
        .inner()
        .get(shared::amqp::retry::HEADER_RETRY_ATTEMPTS)
    {
        Some(lapin::types::AMQPValue::LongInt(n)) => *n,
        Some(lapin::types::AMQPValue::LongLongInt(n)) => i32::try_from(*n).unwrap_or(i32::MAX),
        _ => 0,
    }
}

/// Tries of an attempt alone that lose a conflict (a deadlock) before the
/// conflict counts as the event's failure.
const CONFLICT_TRIES: usize = 5;

/// One attempt in a transaction of its own (when its batch could not take
/// it), made again at once, within [`CONFLICT_TRIES`], while it loses
/// conflicts with other transactions ([`decision::lost_a_conflict`]).
async fn attempt(
    ctx: &Context,
    webhook_id: &str,
    delivery: &Delivery,
) -> Result<Attempt, HandlerError> {
    // Conflicts clear as soon as the other transaction ends: short waits.
    let mut delays =
        RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(200)).delays();
    for _ in 1..CONFLICT_TRIES {
        match attempt_once(ctx, webhook_id, delivery).await {
            Err(error) if decision::lost_a_conflict(&error) => {
                let delay = delays.next().unwrap_or(Duration::from_millis(200));
                tracing::debug!(webhook_id, error.message = %shared::error::Chain(&error), retry_in = ?delay,
                    "the attempt lost a conflict with another transaction; trying again");
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
    attempt_once(ctx, webhook_id, delivery).await
}

/// [`apply_one`] in a transaction of its own: committed, or rolled back when
/// nothing was applied.
async fn attempt_once(
    ctx: &Context,
    webhook_id: &str,
    delivery: &Delivery,
) -> Result<Attempt, HandlerError> {
    let mut tx = ctx.pool.begin().await?;
    let attempted = apply_one(
        &mut tx,
        &ctx.catalog,
        webhook_id,
        &delivery.data,
        delivery.routing_key.as_str(),
    )
    .await?;
    if matches!(attempted, Attempt::Done { .. }) {
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(attempted)
}

/// Lock, check, apply, mark, in the caller's transaction (a savepoint of a
/// batch, or a transaction of its own); the caller commits.
pub(crate) async fn apply_one(
    tx: &mut sqlx::PgConnection,
    catalog: &Catalog,
    webhook_id: &str,
    body: &[u8],
    routing_key: &str,
) -> Result<Attempt, HandlerError> {
    let message = event_status::Message { webhook_id, body };
    let row = event_status::lock(tx, &[message]).await?.pop().flatten();
    let attempted = apply_locked(tx, catalog, &message, routing_key, row).await?;
    if let Attempt::Done {
        event_id, applied, ..
    } = &attempted
    {
        event_status::mark_applied(tx, &[(*event_id, applied.status())]).await?;
    }
    Ok(attempted)
}

/// Check and apply one message whose state `row` is locked in the caller's
/// transaction (`None`: no event has its svix id). An applied event still
/// has to be marked ([`event_status::mark_applied`]), in that transaction.
pub(crate) async fn apply_locked(
    tx: &mut sqlx::PgConnection,
    catalog: &Catalog,
    message: &event_status::Message<'_>,
    routing_key: &str,
    row: Option<Locked>,
) -> Result<Attempt, HandlerError> {
    match check(message, routing_key, row)? {
        Checked::Ended(attempt) => Ok(attempt),
        Checked::Ready(ready) => {
            let applied = handlers::apply(tx, &ready.event(message), catalog).await?;
            Ok(ready.done(applied))
        }
    }
}

/// What checking a locked message found.
pub(crate) enum Checked {
    /// The attempt ends here: not the stored event, already processed, dead.
    Ended(Attempt),
    /// The stored event, to apply.
    Ready(Ready),
}

/// A message verified to be its stored event, neither processed nor dead.
pub(crate) struct Ready {
    row: Locked,
    /// Its JSON, parsed from the delivered body (the stored one, verified).
    payload: serde_json::Value,
}

impl Ready {
    /// The event its handler applies.
    pub(crate) fn event<'a>(&'a self, message: &event_status::Message<'a>) -> Event<'a> {
        Event {
            webhook_id: message.webhook_id,
            event_type: &self.row.event_type,
            payload: &self.payload,
        }
    }

    /// The attempt, once its handler did `applied`.
    pub(crate) fn done(&self, applied: Applied) -> Attempt {
        Attempt::Done {
            event_id: self.row.id,
            applied,
            received_at: self.row.received_at,
        }
    }
}

/// Whether the message whose state `row` is locked is to be applied.
pub(crate) fn check(
    message: &event_status::Message<'_>,
    routing_key: &str,
    row: Option<Locked>,
) -> Result<Checked, HandlerError> {
    // Before anything that counts an attempt or marks the row: a message the
    // ingress did not store changes nothing, its row included.
    let row = match verify(row, routing_key) {
        Ok(row) => row,
        Err(refusal) => return Ok(Checked::Ended(Attempt::Refused(refusal))),
    };
    if row.processed_at.is_some() {
        return Ok(Checked::Ended(Attempt::AlreadyProcessed));
    }
    if Status::parse(&row.status) == Some(Status::Dead) {
        return Ok(Checked::Ended(Attempt::AlreadyDead {
            attempts: row.attempts,
            last_error: row.last_error.unwrap_or_default(),
        }));
    }
    // The message's body is the stored one (verified above): its JSON is the
    // stored payload, without reading it back from the database.
    let payload: serde_json::Value = serde_json::from_slice(message.body)
        .map_err(|error| HandlerError::Malformed(format!("the body is not JSON: {error}")))?;
    Ok(Checked::Ready(Ready { row, payload }))
}

/// Whether the message is the event the ingress stored: a row with its svix
/// id, the same raw body, and the stored type as routing key (the ingress,
/// its relay and every replay publish exactly that).
fn verify(row: Option<Locked>, routing_key: &str) -> Result<Locked, Refusal> {
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
/// last error, and acks the original only once the broker confirmed; whether
/// it did. `type_label` is the event type the metrics count it under.
async fn dead_letter(
    ctx: &Context,
    delivery: &Delivery,
    webhook_id: &str,
    type_label: &str,
    attempts: i32,
    reason: &str,
) -> bool {
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
            true
        }
        Err(error) => {
            tracing::error!(webhook_id, error.message = %shared::error::Chain(&error),
                "could not dead-letter; the message goes back to the queue");
            false
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
